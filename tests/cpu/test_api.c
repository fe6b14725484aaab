/*
 * test_api.c - every public entry point refuses bad input with a clear error that names the
 * argument, and leaves the caller's buffers untouched; eligibility reasons; result strings.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static int checks;

/* The call must fail with `want` and a message containing `needle`. */
#define EXPECT_ERR(call, want, needle, comm)                                              \
    do {                                                                                  \
        arnormResult_t r_ = (call);                                                       \
        const char *m_ = arnormGetLastError(comm);                                        \
        TU_CHECK(r_ == (want), "%s: got %s (%s), want %s", #call, arnormGetErrorString(r_), \
                 m_, arnormGetErrorString(want));                                         \
        TU_CHECK(strstr(m_, (needle)) != NULL, "%s: message '%s' does not name '%s'", #call, \
                 m_, (needle));                                                           \
        checks++;                                                                         \
    } while (0)

enum { T = 4, H = 64, N = T * H };

typedef struct {
    uint16_t partial[N], residual[N], resOut[N], normOut[N], weight[H];
} bufs;

static void fillBufs(bufs *b, uint64_t seed) {
    tuFill(b->partial, N, arnormBfloat16, seed, 1.0);
    tuFill(b->residual, N, arnormBfloat16, seed + 1, 1.0);
    tuFill(b->weight, H, arnormBfloat16, seed + 2, 1.0);
    memset(b->resOut, 0x5a, sizeof b->resOut);
    memset(b->normOut, 0x5a, sizeof b->normOut);
}

static int untouched(const bufs *b, const bufs *before) { return !memcmp(b, before, sizeof *b); }

static int testFusedArgs(arnormComm_t comm) {
    bufs b, before;
    fillBufs(&b, 7);
    before = b;
    const arnormDataType_t bf = arnormBfloat16;
#define FUSED(p, r, ro, no, w, wt, eps, bias, t, h, dt)                                   \
    arnormAllReduceResidualRMSNorm(p, r, ro, no, w, wt, eps, bias, t, h, dt, comm, NULL)
    EXPECT_ERR(FUSED(NULL, b.residual, b.resOut, b.normOut, b.weight, bf, 1e-6f, 1, T, H, bf),
               arnormInvalidArgument, "partial", comm);
    EXPECT_ERR(FUSED(b.partial, NULL, b.resOut, b.normOut, b.weight, bf, 1e-6f, 1, T, H, bf),
               arnormInvalidArgument, "residual", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, NULL, b.normOut, b.weight, bf, 1e-6f, 1, T, H, bf),
               arnormInvalidArgument, "residualOut", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, NULL, b.weight, bf, 1e-6f, 1, T, H, bf),
               arnormInvalidArgument, "normOut", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.normOut, NULL, bf, 1e-6f, 1, T, H, bf),
               arnormInvalidArgument, "weight", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.normOut, b.weight, bf, 1e-6f, 1, T, H,
                     (arnormDataType_t)7), arnormInvalidArgument, "dtype", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.normOut, b.weight, (arnormDataType_t)-1,
                     1e-6f, 1, T, H, bf), arnormInvalidArgument, "weightType", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.normOut, b.weight, arnormFloat16, 1e-6f,
                     1, T, H, bf), arnormInvalidArgument, "weightType", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.normOut, b.weight, bf, 1e-6f, 1, 0, H, bf),
               arnormInvalidArgument, "tokens", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.normOut, b.weight, bf, 1e-6f, 1, T, 0, bf),
               arnormInvalidArgument, "hidden", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.normOut, b.weight, bf, 1e-6f, 1, T, 65537,
                     bf), arnormInvalidArgument, "hidden", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.normOut, b.weight, bf, 1e-6f, 1,
                     SIZE_MAX / 2, H, bf), arnormInvalidArgument, "overflows", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.normOut, b.weight, bf, -1.0f,
                     1, T, H, bf), arnormInvalidArgument, "eps", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.normOut, b.weight, bf, 0.0f / 0.0f, 1, T,
                     H, bf), arnormInvalidArgument, "eps", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.normOut, b.weight, bf, 1e-6f,
                     1.0f / 0.0f, T, H, bf), arnormInvalidArgument, "weightBias", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.resOut, b.weight, bf, 1e-6f, 1, T, H, bf),
               arnormInvalidArgument, "alias", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.residual, b.weight, bf, 1e-6f, 1, T, H, bf),
               arnormInvalidArgument, "normOut aliases residual", comm);
    EXPECT_ERR(FUSED(b.partial, b.residual, b.resOut, b.partial + 1, b.weight, bf, 1e-6f, 1, T, H,
                     bf), arnormInvalidArgument, "partially overlap", comm);
    TU_CHECK(untouched(&b, &before), "a refused fused call modified the caller's buffers");
    /* residual + norm alone */
    EXPECT_ERR(arnormResidualRMSNorm(NULL, NULL, NULL, b.normOut, b.weight, bf, 1e-6f, 1, T, H, bf,
                                     comm, NULL), arnormInvalidArgument, "input", comm);
    EXPECT_ERR(arnormResidualRMSNorm(b.partial, b.residual, NULL, b.normOut, b.weight, bf, 1e-6f, 1,
                                     T, H, bf, comm, NULL), arnormInvalidArgument, "residualOut", comm);
    /* all-reduce */
    EXPECT_ERR(arnormAllReduce(NULL, b.resOut, N, bf, comm, NULL), arnormInvalidArgument,
               "sendbuff", comm);
    EXPECT_ERR(arnormAllReduce(b.partial, NULL, N, bf, comm, NULL), arnormInvalidArgument,
               "recvbuff", comm);
    EXPECT_ERR(arnormAllReduce(b.partial, b.resOut, 0, bf, comm, NULL), arnormInvalidArgument,
               "count", comm);
    EXPECT_ERR(arnormAllReduce(b.partial, b.partial + 3, N, bf, comm, NULL), arnormInvalidArgument,
               "partially overlap", comm);
    EXPECT_ERR(arnormAllReduce(b.partial, b.resOut, N, (arnormDataType_t)3, comm, NULL),
               arnormInvalidArgument, "dtype", comm);
    TU_CHECK(untouched(&b, &before), "a refused call modified the caller's buffers");
    /* queries */
    arnormFuseInfo_t info;
    EXPECT_ERR(arnormCanFuse(comm, b.partial, T, H, H, bf, NULL), arnormInvalidArgument, "info", comm);
    EXPECT_ERR(arnormCanFuse(comm, b.partial, T, 0, H, bf, &info), arnormInvalidArgument, "hidden",
               comm);
    EXPECT_ERR(arnormCommSetAlgo(comm, arnormAlgoNormOnly), arnormInvalidArgument, "algo", comm);
    EXPECT_ERR(arnormCommSetAlgo(comm, (arnormAlgo_t)42), arnormInvalidArgument, "algo", comm);
    EXPECT_ERR(arnormCommCount(comm, NULL), arnormInvalidArgument, "NULL", comm);
    /* the comm still works after all those refusals */
    TU_OK(FUSED(b.partial, b.residual, b.resOut, b.normOut, b.weight, bf, 1e-6f, 1, T, H, bf));
    TU_CHECK(tuFirstUnwritten(b.normOut, N, bf) < 0, "normOut");
#undef FUSED
    return 0;
}

static int testInit(void) {
    arnormUniqueId id;
    arnormComm_t comm;
    TU_OK(arnormGetUniqueId(&id));
    EXPECT_ERR(arnormGetUniqueId(NULL), arnormInvalidArgument, "uniqueId", NULL);
    EXPECT_ERR(arnormCommInitRank(NULL, 1, id, 0, NULL), arnormInvalidArgument, "comm", NULL);
    EXPECT_ERR(arnormCommInitRank(&comm, 0, id, 0, NULL), arnormInvalidArgument, "nranks", NULL);
    EXPECT_ERR(arnormCommInitRank(&comm, 2, id, 2, NULL), arnormInvalidArgument, "rank", NULL);
    EXPECT_ERR(arnormCommInitRank(&comm, 2, id, -1, NULL), arnormInvalidArgument, "rank", NULL);
    arnormUniqueId zero;
    memset(&zero, 0, sizeof zero);
    EXPECT_ERR(arnormCommInitRank(&comm, 1, zero, 0, NULL), arnormInvalidArgument, "uniqueId", NULL);
    arnormConfig_t raw;
    memset(&raw, 0, sizeof raw); /* not from ARNORM_CONFIG_INITIALIZER */
    EXPECT_ERR(arnormCommInitRank(&comm, 1, id, 0, &raw), arnormInvalidArgument,
               "ARNORM_CONFIG_INITIALIZER", NULL);
    arnormConfig_t cfg = ARNORM_CONFIG_INITIALIZER;
    cfg.size = 8;
    EXPECT_ERR(arnormCommInitRank(&comm, 1, id, 0, &cfg), arnormInvalidArgument, "size", NULL);
    cfg = (arnormConfig_t)ARNORM_CONFIG_INITIALIZER;
    cfg.version = 990000;
    EXPECT_ERR(arnormCommInitRank(&comm, 1, id, 0, &cfg), arnormInvalidArgument, "compiled", NULL);
    cfg = (arnormConfig_t)ARNORM_CONFIG_INITIALIZER;
    cfg.backend = 9;
    EXPECT_ERR(arnormCommInitRank(&comm, 1, id, 0, &cfg), arnormInvalidArgument, "config.backend",
               NULL);
    cfg = (arnormConfig_t)ARNORM_CONFIG_INITIALIZER;
    cfg.timeoutMs = 0;
    EXPECT_ERR(arnormCommInitRank(&comm, 1, id, 0, &cfg), arnormInvalidArgument, "config.timeoutMs",
               NULL);
    cfg = (arnormConfig_t)ARNORM_CONFIG_INITIALIZER;
    cfg.workspaceBytes = 100;
    EXPECT_ERR(arnormCommInitRank(&comm, 1, id, 0, &cfg), arnormInvalidArgument,
               "config.workspaceBytes", NULL);
    cfg = (arnormConfig_t)ARNORM_CONFIG_INITIALIZER;
    cfg.usePdl = 3;
    EXPECT_ERR(arnormCommInitRank(&comm, 1, id, 0, &cfg), arnormInvalidArgument, "config.usePdl",
               NULL);
    /* a destroyed communicator is refused everywhere, never dereferenced */
    cfg = (arnormConfig_t)ARNORM_CONFIG_INITIALIZER;
    cfg.backend = arnormBackendCpu;
    TU_OK(arnormCommInitRank(&comm, 1, id, 0, &cfg));
    int rc = testFusedArgs(comm);
    if (rc) return rc;
    TU_OK(arnormCommDestroy(comm));
    bufs b;
    fillBufs(&b, 3);
    EXPECT_ERR(arnormAllReduceResidualRMSNorm(b.partial, b.residual, b.resOut, b.normOut, b.weight,
                                              arnormBfloat16, 1e-6f, 1, T, H, arnormBfloat16, comm,
                                              NULL), arnormInvalidUsage, "not a live", NULL);
    EXPECT_ERR(arnormCommDestroy(comm), arnormInvalidUsage, "not a live", NULL);
    EXPECT_ERR(arnormCommAbort(NULL), arnormInvalidArgument, "comm", NULL);
    arnormResult_t async;
    EXPECT_ERR(arnormCommGetAsyncError(comm, &async), arnormInvalidUsage, "not a live", NULL);
#if !defined(ARNORM_TEST_HAS_CUDA)
    (void)0;
#endif
    return 0;
}

static int testStrings(void) {
    for (int r = 0; r < arnormNumResults; r++)
        for (int q = r + 1; q < arnormNumResults; q++)
            TU_CHECK(strcmp(arnormGetErrorString((arnormResult_t)r), arnormGetErrorString((arnormResult_t)q)),
                     "results %d and %d share a string", r, q);
    TU_CHECK(strstr(arnormGetErrorString(arnormNumResults), "unknown"), "unknown result");
    for (int r = 0; r < arnormNumReasons; r++)
        TU_CHECK(strlen(arnormGetReasonString((arnormReason_t)r)) > 5, "reason %d", r);
    int v = 0;
    TU_OK(arnormGetVersion(&v));
    TU_CHECK(v == ARNORM_VERSION, "version %d", v);
    size_t mt = 0;
    TU_OK(arnormDefaultMaxTokens(arnormBackendCpu, 2, 4096, arnormBfloat16, &mt));
    TU_CHECK(mt > 0, "default budget");
    /* the CUDA sm_90 budgets measured in sessions 7-8 (src/config.c): 128 / 32 / 32 MiB at
     * TP2 / TP3 / TP4 per rank tensor, 0.5 MiB beyond; none on one GPU */
    const size_t cudaTokens[9] = {0, 0, 16384, 4096, 4096, 64, 64, 64, 64};
    for (int n = 1; n <= 8; n++) {
        TU_OK(arnormDefaultMaxTokens(arnormBackendCuda, n, 4096, arnormBfloat16, &mt));
        TU_CHECK(mt == cudaTokens[n], "CUDA TP%d budget: %zu tokens of 4096 bf16", n, mt);
    }
    EXPECT_ERR(arnormDefaultMaxTokens(arnormBackendCpu, 0, 4096, arnormBfloat16, &mt),
               arnormInvalidArgument, "nranks", NULL);
    return 0;
}

/* A fusable call's shape and the algorithm the dispatcher must pick for it. */
typedef struct {
    size_t tokens, hidden;
    arnormDataType_t dtype;
    arnormAlgo_t algo;
} Pick;

static int expectPicks(arnormComm_t comm, const Pick *picks, size_t n) {
    _Alignas(16) static uint16_t buf[64];
    arnormFuseInfo_t info;
    for (size_t i = 0; i < n; i++) {
        TU_OK(arnormCanFuse(comm, buf, picks[i].tokens, picks[i].hidden, picks[i].hidden,
                            picks[i].dtype, &info));
        TU_CHECK(info.canFuse && info.algo == picks[i].algo, "%zu x %zu %s: algo %s, want %s",
                 picks[i].tokens, picks[i].hidden, tuDtypeName(picks[i].dtype),
                 arnormGetAlgoString(info.algo), arnormGetAlgoString(picks[i].algo));
    }
    return 0;
}

/* Two ranks: the eligibility reasons of arnormCanFuse. */
static int reasonsRank(int rank, int nranks, arnormUniqueId id, void *shared, void *arg) {
    (void)shared;
    (void)arg;
    arnormComm_t comm = tuInitCpu(rank, nranks, id, 0, 0);
    TU_CHECK(comm, "init");
    _Alignas(16) static uint16_t buf[64];
    arnormFuseInfo_t info;
    TU_OK(arnormCanFuse(comm, buf, 1, 4096, 4096, arnormBfloat16, &info));
    TU_CHECK(info.canFuse && info.reason == arnormReasonNone && info.algo == arnormAlgoOneShot,
             "small call should fuse: %s", arnormGetReasonString(info.reason));
    TU_CHECK(info.maxTokens == (1u << 20) / (4096 * 2), "budget %zu", info.maxTokens);
    TU_OK(arnormCanFuse(comm, buf, info.maxTokens + 1, 4096, 4096, arnormBfloat16, &info));
    TU_CHECK(!info.canFuse && info.reason == arnormReasonOverBudget && info.algo == arnormAlgoFallback,
             "over budget: %s", arnormGetReasonString(info.reason));
    TU_OK(arnormCanFuse(comm, buf, 1, 4096, 4100, arnormBfloat16, &info));
    TU_CHECK(info.reason == arnormReasonNotContiguous, "stride: %s", arnormGetReasonString(info.reason));
    TU_OK(arnormCanFuse(comm, buf + 1, 1, 4096, 4096, arnormBfloat16, &info));
    TU_CHECK(info.reason == arnormReasonMisaligned, "misaligned: %s", arnormGetReasonString(info.reason));
    TU_OK(arnormCanFuse(comm, buf, 1, 4096, 4096, (arnormDataType_t)5, &info));
    TU_CHECK(info.reason == arnormReasonUnsupportedDtype, "dtype: %s", arnormGetReasonString(info.reason));
    /* the CPU defaults: 16-bit types take the two-shot once every rank owns a row, fp32
       the one-shot up to 64 KiB per rank tensor (docs/performance.md) */
    static const Pick picks[] = {
        {2, 4096, arnormBfloat16, arnormAlgoTwoShot}, {2, 4096, arnormFloat16, arnormAlgoTwoShot},
        {2, 4096, arnormFloat32, arnormAlgoOneShot},  {4, 4096, arnormFloat32, arnormAlgoOneShot},
        {5, 4096, arnormFloat32, arnormAlgoTwoShot},  {8, 4096, arnormFloat32, arnormAlgoTwoShot}};
    if (expectPicks(comm, picks, sizeof picks / sizeof picks[0])) return 1;
    TU_OK(arnormCommSetAlgo(comm, arnormAlgoFallback));
    TU_OK(arnormCanFuse(comm, buf, 1, 4096, 4096, arnormBfloat16, &info));
    TU_CHECK(info.reason == arnormReasonDisabled, "disabled: %s", arnormGetReasonString(info.reason));
    TU_OK(arnormCommDestroy(comm));
    return 0;
}

/* Two ranks: a oneShotMaxBytes the user sets applies to every dtype and row width (the
 * CUDA defaults differ by both; docs/performance.md, version 8). */
static int switchRank(int rank, int nranks, arnormUniqueId id, void *shared, void *arg) {
    (void)shared;
    (void)arg;
    arnormConfig_t cfg = ARNORM_CONFIG_INITIALIZER;
    cfg.backend = arnormBackendCpu;
    cfg.oneShotMaxBytes = 64 << 10;
    arnormComm_t comm = NULL;
    TU_OK(arnormCommInitRank(&comm, nranks, id, rank, &cfg));
    static const Pick picks[] = {{8, 4096, arnormBfloat16, arnormAlgoOneShot}, /* 64 KiB */
                                 {9, 4096, arnormBfloat16, arnormAlgoTwoShot},
                                 {4, 8192, arnormFloat16, arnormAlgoOneShot}, /* wide, 64 KiB */
                                 {5, 8192, arnormFloat16, arnormAlgoTwoShot},
                                 {4, 4096, arnormFloat32, arnormAlgoOneShot}, /* fp32, 64 KiB */
                                 {5, 4096, arnormFloat32, arnormAlgoTwoShot}};
    if (expectPicks(comm, picks, sizeof picks / sizeof picks[0])) return 1;
    TU_OK(arnormCommDestroy(comm));
    return 0;
}

int main(void) {
    tuSeed();
    int failed = 0;
    /* a malformed environment variable fails init with its name (the environment is read
       once per process: in a child forked before any other call) */
    static const char *const badEnv[][2] = {
        {"ARNORM_ALGO", "sideways"}, {"ARNORM_PDL", "2"}, {"ARNORM_CHECK", "yes"},
        {"ARNORM_TIMEOUT_MS", "10s"}};
    for (size_t i = 0; i < sizeof badEnv / sizeof badEnv[0]; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            setenv(badEnv[i][0], badEnv[i][1], 1);
            arnormUniqueId id;
            arnormComm_t comm;
            arnormGetUniqueId(&id);
            arnormResult_t r = arnormCommInitRank(&comm, 1, id, 0, NULL);
            _exit(r == arnormInvalidArgument && strstr(arnormGetLastError(NULL), badEnv[i][0])
                      ? 0
                      : 1);
        }
        int st;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "FAIL: %s=%s was not refused by name\n", badEnv[i][0], badEnv[i][1]);
            failed = 1;
        }
    }
    failed |= testStrings() || testInit();
    failed |= tuLaunch(2, reasonsRank, NULL, 0, 120);
    failed |= tuLaunch(2, switchRank, NULL, 0, 120);
    printf("%d refusals checked\n%s\n", checks, failed ? "FAILED" : "PASSED");
    return failed;
}
