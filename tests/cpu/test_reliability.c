/*
 * test_reliability.c - faults on the CPU backend: every wait is bounded, failures reach
 * every rank, nothing hangs, outputs of a failed call are untouched, nothing is left in
 * /dev/shm. Each scenario forks its ranks; the launcher kills anything that hangs (a FAIL).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

enum { T = 8, H = 256, N = T * H };

typedef struct {
    int scenario;
} scenarioArg;

typedef struct {
    uint16_t partial[N], residual[N], resOut[N], normOut[N], weight[H];
} bufs;

static arnormResult_t call(arnormComm_t comm, bufs *b, size_t tokens, size_t hidden) {
    return arnormAllReduceResidualRMSNorm(b->partial, b->residual, b->resOut, b->normOut,
                                          b->weight, arnormBfloat16, 1e-6f, 1.0f, tokens, hidden,
                                          arnormBfloat16, comm, NULL);
}

/* A failed call: the expected code, the culprit named, outputs untouched, the comm in error
 * state, every later call refused at once. */
static int expectFailure(arnormComm_t comm, bufs *b, arnormResult_t r, arnormResult_t want,
                         const char *needle, double ms, double maxMs) {
    char m[512]; /* the comm's message dies with the comm (aborted below) */
    snprintf(m, sizeof m, "%s", arnormGetLastError(comm));
    TU_CHECK(r == want, "got %s (%s), want %s", arnormGetErrorString(r), m,
             arnormGetErrorString(want));
    TU_CHECK(strstr(m, needle), "message '%s' does not name '%s'", m, needle);
    TU_CHECK(ms < maxMs, "took %.0f ms (bound %.0f ms)", ms, maxMs);
    TU_CHECK(tuFirstUnwritten(b->normOut, N, arnormBfloat16) == 0 &&
             tuFirstUnwritten(b->resOut, N, arnormBfloat16) == 0,
             "a failed call wrote its outputs");
    arnormResult_t async;
    TU_OK(arnormCommGetAsyncError(comm, &async));
    TU_CHECK(async == want, "async error %s", arnormGetErrorString(async));
    double t0 = tuNowMs();
    TU_CHECK(call(comm, b, T, H) == want, "a comm in error state accepted a call");
    TU_CHECK(tuNowMs() - t0 < 50, "a refused call waited");
    t0 = tuNowMs();
    TU_OK(arnormCommAbort(comm));
    TU_CHECK(tuNowMs() - t0 < 100, "abort took %.0f ms", tuNowMs() - t0);
    printf("  rank failed as expected in %.0f ms: %s\n", ms, m);
    return 0;
}

static void freshBufs(bufs *b, int rank) {
    tuFill(b->partial, N, arnormBfloat16, 11 + (uint64_t)rank, 1.0);
    tuFill(b->residual, N, arnormBfloat16, 5, 1.0);
    tuFill(b->weight, H, arnormBfloat16, 6, 1.0);
    tuPoison(b->resOut, sizeof b->resOut);
    tuPoison(b->normOut, sizeof b->normOut);
}

static int rankMain(int rank, int nranks, arnormUniqueId id, void *shared, void *argp) {
    (void)shared;
    const int scenario = ((scenarioArg *)argp)->scenario;
    static bufs b;
    freshBufs(&b, rank);
    switch (scenario) {
    case 0: { /* a rank killed mid-run: peers fail fast with a remote error naming it */
        arnormComm_t comm = tuInitCpu(rank, nranks, id, 20000, 0);
        TU_CHECK(comm, "init");
        for (int i = 0; i < 3; i++) TU_OK(call(comm, &b, T, H));
        if (rank == nranks - 1) raise(SIGKILL);
        freshBufs(&b, rank);
        double t0 = tuNowMs();
        arnormResult_t r = call(comm, &b, T, H);
        char name[32];
        snprintf(name, sizeof name, "rank %d", nranks - 1);
        /* the dead rank's pid is checked while waiting; peers of peers see the flag */
        return expectFailure(comm, &b, r, arnormRemoteError, "rank", tuNowMs() - t0, 5000);
    }
    case 1: { /* a rank that skips one call: the others time out naming it (the first to
                 time out flags the group, the rest fail at once with a remote error) */
        arnormComm_t comm = tuInitCpu(rank, nranks, id, 400, 0);
        TU_CHECK(comm, "init");
        for (int i = 0; i < 5; i++) {
            if (rank == 1 && i == 2) continue;
            freshBufs(&b, rank);
            double t0 = tuNowMs();
            arnormResult_t r = call(comm, &b, T, H);
            if (r != arnormSuccess && i == 4)
                return expectFailure(comm, &b, r, r == arnormTimeout ? arnormTimeout
                                                                      : arnormRemoteError,
                                     "from rank 1", tuNowMs() - t0, 3000);
            TU_CHECK(r == arnormSuccess, "rank %d call %d: %s", rank, i, arnormGetLastError(comm));
        }
        TU_CHECK(rank == 1, "rank %d's last call should have failed", rank);
        struct timespec d = {1, 500000000}; /* stay alive: the others must time out */
        nanosleep(&d, NULL);
        TU_OK(arnormCommDestroy(comm));
        return 0;
    }
    case 2:   /* check mode: a different token count is an error on every rank, no hang */
    case 3: { /* ... and a different hidden size */
        arnormComm_t comm = tuInitCpu(rank, nranks, id, 5000, 1);
        TU_CHECK(comm, "init");
        TU_OK(call(comm, &b, T, H));
        size_t tokens = scenario == 2 && rank == 1 ? T / 2 : T;
        size_t hidden = scenario == 3 && rank == 1 ? H / 2 : H;
        freshBufs(&b, rank);
        arnormResult_t r = call(comm, &b, tokens, hidden);
        TU_CHECK(r == arnormInvalidUsage, "mismatch gave %s", arnormGetErrorString(r));
        TU_CHECK(strstr(arnormGetLastError(comm), scenario == 2 ? "tokens=" : "hidden="),
                 "message: %s", arnormGetLastError(comm));
        TU_CHECK(tuFirstUnwritten(b.normOut, N, arnormBfloat16) == 0, "outputs written");
        printf("  rank %d: %s\n", rank, arnormGetLastError(comm));
        /* the group is still in step: the next matching call works */
        TU_OK(call(comm, &b, T, H));
        TU_OK(arnormCommDestroy(comm));
        return 0;
    }
    case 4: { /* allocation failure injected on one rank: every rank gets an error */
        double t0 = tuNowMs();
        arnormComm_t comm = tuInitCpu(rank, nranks, id, 5000, 0);
        TU_CHECK(!comm, "init succeeded despite a failed rank");
        TU_CHECK(tuNowMs() - t0 < 4000, "init failure took %.0f ms", tuNowMs() - t0);
        printf("  rank %d: init refused: %s\n", rank, arnormGetLastError(NULL));
        return 0;
    }
    case 5: { /* a rank aborts: the others' next call fails fast with a remote error */
        arnormComm_t comm = tuInitCpu(rank, nranks, id, 20000, 0);
        TU_CHECK(comm, "init");
        TU_OK(call(comm, &b, T, H));
        tuBarrier(); /* every rank done with the first call: an abort ends any call in flight */
        if (rank == 0) {
            TU_OK(arnormCommAbort(comm));
            return 0;
        }
        freshBufs(&b, rank);
        double t0 = tuNowMs();
        arnormResult_t r = call(comm, &b, T, H);
        return expectFailure(comm, &b, r, arnormRemoteError, "aborted", tuNowMs() - t0, 3000);
    }
    case 7: { /* an unreachable peer: the last rank never joins; the others' init ends at
                 the bound with an error, nothing is left behind */
        if (rank == nranks - 1) return 0;
        double t0 = tuNowMs();
        arnormComm_t comm = tuInitCpu(rank, nranks, id, 1000, 0);
        const double ms = tuNowMs() - t0;
        TU_CHECK(!comm, "init succeeded without rank %d", nranks - 1);
        TU_CHECK(ms < 4000, "init failure took %.0f ms (bound 1000 ms)", ms);
        printf("  rank %d: init refused after %.0f ms: %s\n", rank, ms, arnormGetLastError(NULL));
        return 0;
    }
    case 6: { /* a workspace larger than /dev/shm can hold: a clear error on every rank */
        arnormConfig_t cfg = ARNORM_CONFIG_INITIALIZER;
        cfg.backend = arnormBackendCpu;
        cfg.timeoutMs = 2000;
        cfg.workspaceBytes = 1LL << 42; /* 4 TiB per slot */
        arnormComm_t comm;
        arnormResult_t r = arnormCommInitRank(&comm, nranks, id, rank, &cfg);
        TU_CHECK(r != arnormSuccess, "a 16 TiB workspace was accepted");
        TU_CHECK(r == arnormOutOfMemory && strstr(arnormGetLastError(NULL), "shared memory"),
                 "message: %s", arnormGetLastError(NULL));
        printf("  rank %d: %s: %s\n", rank, arnormGetErrorString(r), arnormGetLastError(NULL));
        return 0;
    }
    }
    return 1;
}

/* Names of this user's arnorm segments in /dev/shm. */
static int countSegments(void) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "arnorm-%u-", (unsigned)getuid());
    DIR *d = opendir("/dev/shm");
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix))) n++;
    closedir(d);
    return n;
}

int main(void) {
    tuSeed();
    static const char *names[] = {"rank killed mid-run", "rank skips a call",
                                  "token count differs (check mode)",
                                  "hidden size differs (check mode)",
                                  "allocation fails on one rank", "rank aborts",
                                  "/dev/shm too small", "a rank never joins (unreachable peer)"};
    const int before = countSegments();
    int failed = 0;
    for (int s = 0; s < 8; s++)
        for (int world = 2; world <= 4; world += 2) {
            printf("%s, world %d\n", names[s], world);
            fflush(stdout);
            scenarioArg arg = {s};
            tuKilledRank = s == 0 ? world - 1 : -1;
            if (s == 4) setenv("ARNORM_INJECT_INIT_FAILURE", "1", 1);
            int rc = tuLaunch(world, rankMain, &arg, 0, 60);
            unsetenv("ARNORM_INJECT_INIT_FAILURE");
            if (rc) printf("FAIL: %s, world %d\n", names[s], world);
            failed |= rc;
        }
    int after = countSegments();
    if (after != before) {
        printf("FAIL: %d arnorm segments left in /dev/shm\n", after - before);
        failed = 1;
    } else {
        printf("no segment left in /dev/shm (killed ranks included)\n");
    }
    printf("%s\n", failed ? "FAILED" : "PASSED");
    return failed;
}
