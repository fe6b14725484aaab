/*
 * test_faults_gpu.c - faults on the CUDA backend, multi-process, 2 GPUs:
 *   skip: rank 1 stops calling (and stays alive)      -> rank 0 must not hang
 *   kill: rank 1 is SIGKILLed after one good call     -> rank 0 must not hang
 * Rank 0's next call: the kernel's bounded spin ends (timeoutMs = 1000), the stream
 * synchronizes within a few seconds, arnormCommGetAsyncError reports the failure naming
 * rank 1, later calls are refused at once, and arnormCommAbort returns.
 *   shape: check mode on; after a good call, rank 1 calls with 4 tokens, rank 0 with 8
 *          -> both calls fail with arnormInvalidUsage naming the other rank and its
 *          shape, both ranks' outputs are untouched, later calls are refused.
 * Without 2 GPUs: prints SKIP and exits 77.
 */
#define _GNU_SOURCE
#include <cuda_runtime.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gpu_test.h"
#include "testutil.h"

enum { T = 8, H = 4096, N = T * H };

typedef struct {
    void *partial, *residual, *resOut, *normOut, *weight;
    cudaStream_t stream;
} devBufs;

static arnormResult_t callT(arnormComm_t comm, devBufs *d, size_t tokens) {
    return arnormAllReduceResidualRMSNorm(d->partial, d->residual, d->resOut, d->normOut,
                                          d->weight, arnormBfloat16, 1e-6f, 1.0f, tokens, H,
                                          arnormBfloat16, comm, d->stream);
}
static arnormResult_t call(arnormComm_t comm, devBufs *d) { return callT(comm, d, T); }

/* Check mode: rank 1 calls with fewer tokens than rank 0. */
static int shapeMismatch(int rank, arnormComm_t comm, devBufs *d) {
    static uint16_t before[2][N], after[2][N];
    TU_CUDA(cudaMemsetAsync(d->resOut, 0xff, N * 2, d->stream));
    TU_CUDA(cudaMemsetAsync(d->normOut, 0xff, N * 2, d->stream));
    TU_CUDA(cudaMemcpyAsync(before[0], d->resOut, N * 2, cudaMemcpyDeviceToHost, d->stream));
    TU_CUDA(cudaMemcpyAsync(before[1], d->normOut, N * 2, cudaMemcpyDeviceToHost, d->stream));
    TU_CUDA(cudaStreamSynchronize(d->stream));
    double t0 = tuNowMs();
    arnormResult_t r = callT(comm, d, rank == 1 ? T / 2 : T);
    double ms = tuNowMs() - t0;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", arnormGetLastError(comm));
    TU_CUDA(cudaStreamSynchronize(d->stream));
    TU_CUDA(cudaMemcpy(after[0], d->resOut, N * 2, cudaMemcpyDeviceToHost));
    TU_CUDA(cudaMemcpy(after[1], d->normOut, N * 2, cudaMemcpyDeviceToHost));
    printf("  shape, rank %d: call %s after %.1f ms: %s\n", rank, arnormGetErrorString(r), ms, msg);
    TU_CHECK(r == arnormInvalidUsage, "rank %d: a shape mismatch gave %s", rank,
             arnormGetErrorString(r));
    char want[64];
    snprintf(want, sizeof want, "check mode: rank %d called the fused op with tokens=%d", 1 - rank,
             rank ? T : T / 2);
    TU_CHECK(strstr(msg, want), "message does not name the peer and its shape: %s", msg);
    TU_CHECK(!memcmp(before, after, sizeof before), "rank %d: outputs were touched", rank);
    arnormResult_t async = arnormSuccess;
    TU_OK(arnormCommGetAsyncError(comm, &async));
    TU_CHECK(async == arnormInvalidUsage, "async error %s", arnormGetErrorString(async));
    TU_CHECK(call(comm, d) != arnormSuccess, "a comm in error state accepted a call");
    t0 = tuNowMs();
    arnormCommAbort(comm);
    TU_CHECK(tuNowMs() - t0 < 2000, "abort took %.0f ms", tuNowMs() - t0);
    return 0;
}

static int rankMain(int rank, int nranks, arnormUniqueId id, void *shared, void *arg) {
    (void)shared;
    const int scenario = *(const int *)arg; /* 0 skip, 1 kill, 2 shape */
    TU_CUDA(cudaSetDevice(rank));
    arnormConfig_t cfg = ARNORM_CONFIG_INITIALIZER;
    cfg.backend = arnormBackendCuda;
    cfg.timeoutMs = 1000;
    cfg.checkMode = scenario == 2;
    arnormComm_t comm;
    TU_OK(arnormCommInitRank(&comm, nranks, id, rank, &cfg));
    devBufs d;
    static uint16_t host[N];
    void **bufs[5] = {&d.partial, &d.residual, &d.resOut, &d.normOut, &d.weight};
    for (int i = 0; i < 5; i++) {
        TU_CUDA(cudaMalloc(bufs[i], N * 2));
        tuFill(host, N, arnormBfloat16, tuMix(tuSeed(), (uint64_t)(i * 8 + rank)), 1.0);
        TU_CUDA(cudaMemcpy(*bufs[i], host, N * 2, cudaMemcpyHostToDevice));
    }
    TU_CUDA(cudaStreamCreate(&d.stream));
    TU_OK(call(comm, &d));
    TU_CUDA(cudaStreamSynchronize(d.stream));
    if (scenario == 2) return shapeMismatch(rank, comm, &d);
    if (rank == 1) {
        if (scenario == 1) raise(SIGKILL);
        struct timespec s = {4, 0}; /* skip: stay alive, make no call */
        nanosleep(&s, NULL);
        TU_OK(arnormCommAbort(comm));
        return 0;
    }
    double t0 = tuNowMs();
    arnormResult_t r = call(comm, &d);
    cudaError_t e = cudaStreamSynchronize(d.stream);
    double ms = tuNowMs() - t0;
    arnormResult_t async = arnormSuccess;
    TU_OK(arnormCommGetAsyncError(comm, &async));
    char msg[512];
    snprintf(msg, sizeof msg, "%s", arnormGetLastError(comm));
    printf("  %s: call %s, stream %s after %.0f ms, async error %s: %s\n",
           scenario ? "kill" : "skip", arnormGetErrorString(r), cudaGetErrorString(e), ms,
           arnormGetErrorString(async), msg);
    TU_CHECK(ms < 5000, "rank 0 waited %.0f ms (bound 1000 ms)", ms);
    TU_CHECK(async != arnormSuccess || r != arnormSuccess, "the failure went unreported");
    TU_CHECK(strstr(msg, "rank 1"), "message does not name rank 1: %s", msg);
    t0 = tuNowMs();
    TU_CHECK(call(comm, &d) != arnormSuccess, "a comm in error state accepted a call");
    TU_CHECK(tuNowMs() - t0 < 100, "a refused call waited");
    t0 = tuNowMs();
    arnormCommAbort(comm);
    TU_CHECK(tuNowMs() - t0 < 2000, "abort took %.0f ms", tuNowMs() - t0);
    return 0;
}

int main(void) {
    if (probeDevices() < 2) {
        printf("SKIP: needs 2 CUDA devices\n");
        return 77;
    }
    tuSeed();
    int failed = 0;
    static const char *names[3] = {"rank skips calls", "rank killed", "shapes differ (check mode)"};
    for (int scenario = 0; scenario < 3; scenario++) {
        tuKilledRank = scenario == 1 ? 1 : -1;
        int rc = tuLaunch(2, rankMain, &scenario, 0, 60);
        printf("%s: %s\n", names[scenario], rc ? "FAIL" : "ok");
        failed |= rc;
    }
    printf("%s\n", failed ? "FAILED" : "PASSED");
    return failed;
}
