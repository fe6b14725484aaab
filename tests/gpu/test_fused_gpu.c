/*
 * test_fused_gpu.c - the CUDA backend end to end, through the public API.
 *
 *   test_fused_gpu mp|sp WORLD [quick]
 *
 * mp: one process per GPU (fork, CUDA initialized only after the fork), arnormCommInitRank.
 * sp: one process, arnormCommInitAll, one thread per GPU.
 * For every case (dtype, hidden, tokens): fresh random data (seeded, printed), outputs
 * poisoned before each call and checked fully written; the fused result checked against
 * the fp64 reference (tests/common), bitwise identical across ranks, run to run, across
 * one-shot / two-shot / chunked workspace and across token counts (sub-batches), and
 * bitwise equal to arnormAllReduce + arnormResidualRMSNorm; its error no larger than the
 * NCCL fallback's. Then CUDA graph capture + replay with new data each replay, the plain
 * all-reduce (bitwise vs a host rank-order fp32 sum), and a workspace-failure vote.
 * Without a GPU: prints "SKIP: no CUDA device" and exits 77 (ctest shows it as skipped).
 */
#define _GNU_SOURCE
#include <cuda_runtime.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "arnorm.h"
#include "gpu_test.h"
#include "testutil.h"

#define MAXW 8
#define MAXCASES 512

typedef struct {
    pthread_barrier_t bar;
    arnormUniqueId id;
    uint64_t hash[MAXCASES][MAXW];
    int failed;
} Shared;

static Shared *sh;
static int gQuick;
static uint64_t gSeed;

#define CK(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            fprintf(stderr, "FAIL rank %d %s:%d: %s: %s\n", rank, __FILE__, __LINE__, #call, \
                    cudaGetErrorString(e_));                                                  \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)
#define AK(call)                                                                              \
    do {                                                                                      \
        arnormResult_t r_ = (call);                                                           \
        if (r_ != arnormSuccess) {                                                            \
            fprintf(stderr, "FAIL rank %d %s:%d: %s -> %s: %s\n", rank, __FILE__, __LINE__,  \
                    #call, arnormGetErrorString(r_), arnormGetLastError(comm));               \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)
#define REQ(cond, ...)                                                                        \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "FAIL rank %d %s:%d: ", rank, __FILE__, __LINE__);               \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fprintf(stderr, "\n");                                                            \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)

/* Device allocations rounded up to 256 bytes: NCCL's LL all-reduce reads whole 8-byte words
 * past the end of an odd-sized buffer (seen by compute-sanitizer at H=7, T=1). */
static cudaError_t dmalloc(void **p, size_t bytes) { return cudaMalloc(p, (bytes + 255) / 256 * 256); }
#define cudaMalloc(p, n) dmalloc((void **)(p), (n))

static uint64_t fnv(const void *p, size_t n, uint64_t h) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

typedef struct {
    arnormDataType_t dt, wt;
    size_t H, T;
} Case;

static int buildCases(Case *cs, int world) {
    static const size_t Hs[] = {640, 2304, 2560, 3584, 4096, 5376, 7168, 8192, 16384, 1000, 7};
    static const size_t Ts[] = {1, 3, 16, 128, 129, 1000, 4096, 16384};
    int n = 0;
    for (size_t hi = 0; hi < sizeof Hs / sizeof Hs[0]; hi++)
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            size_t H = Hs[hi], T = Ts[ti];
            size_t lim = gQuick ? ((size_t)1 << 20) : ((size_t)1 << 22);
            if (T * H > lim && !(T == 4096 && H == 4096 && !gQuick) &&
                !(T == 16384 && H == 640 && !gQuick) && !(T == 1000 && H == 16384) &&
                !(T == 1000 && H == 8192)) /* more rows than one wave of norm blocks */
                continue;
            if (gQuick && !(T == 1 || T == 3 || T == 129 || T == 1000)) continue;
            if (gQuick == 2 && !((H == 640 || H == 1000 || H == 7) && T <= 3)) continue;
            cs[n++] = (Case){arnormBfloat16, arnormBfloat16, H, T};
            if (T == 1 || T == 129 || (T == 1000 && H <= 4096)) {
                cs[n++] = (Case){arnormFloat16, arnormFloat16, H, T};
                cs[n++] = (Case){arnormFloat32, arnormFloat32, H, T};
                cs[n++] = (Case){arnormBfloat16, arnormFloat32, H, T};
            }
        }
    (void)world;
    return n;
}

typedef struct {
    int rank, world;
    arnormComm_t comm, small; /* small: a 64 KiB workspace, so calls are chunked */
    cudaStream_t stream;
} Rank;

static int barrier(void) {
    pthread_barrier_wait(&sh->bar);
    return sh->failed;
}

/* Runs one fused call with poisoned outputs; downloads both outputs. */
static int fusedOnce(Rank *R, arnormComm_t comm, arnormAlgo_t algo, const void *dPart,
                     const void *dRes, void *dRO, void *dNO, const void *dW, const Case *c,
                     size_t T, void *hRO, void *hNO) {
    int rank = R->rank;
    size_t bytes = T * c->H * tuSize(c->dt);
    AK(arnormCommSetAlgo(comm, algo));
    CK(cudaMemsetAsync(dRO, 0xff, bytes, R->stream));
    CK(cudaMemsetAsync(dNO, 0xff, bytes, R->stream));
    AK(arnormAllReduceResidualRMSNorm(dPart, dRes, dRO, dNO, dW, c->wt, 1e-6f, c->H % 2 ? 1.0f : 0.0f,
                                      T, c->H, c->dt, comm, R->stream));
    CK(cudaMemcpyAsync(hRO, dRO, bytes, cudaMemcpyDeviceToHost, R->stream));
    CK(cudaMemcpyAsync(hNO, dNO, bytes, cudaMemcpyDeviceToHost, R->stream));
    CK(cudaStreamSynchronize(R->stream));
    long long u1 = tuFirstUnwritten(hRO, T * c->H, c->dt), u2 = tuFirstUnwritten(hNO, T * c->H, c->dt);
    REQ(u1 < 0 && u2 < 0, "algo %s T=%zu H=%zu %s: element %lld/%lld left unwritten",
        arnormGetAlgoString(algo), T, c->H, tuDtypeName(c->dt), u1, u2);
    return 0;
}

/* The CPU backend's rows (one rank) on the host's rank-order all-reduce of the partials
 * must give the GPU's bits: numerics.h is one definition for both backends. */
static arnormComm_t gCpu; /* one CPU communicator per process, made by the first case */

static int sameAsCpuBackend(int rank, const tuProblem *p, const Case *c, const char *ro0,
                            const char *no0) {
    const size_t T = c->T, H = c->H, n = T * H, es = tuSize(c->dt), bytes = n * es;
    arnormComm_t comm = gCpu; /* AK names it in its message */
    if (!gCpu) {
        arnormUniqueId id;
        AK(arnormGetUniqueId(&id));
        comm = gCpu = tuInitCpu(0, 1, id, 0, 0);
        REQ(gCpu, "CPU communicator for the cross-backend check");
    }
    char *ar = malloc(bytes), *ro = malloc(bytes), *no = malloc(bytes);
    REQ(ar && ro && no, "host alloc");
    tuRankOrderSum(ar, (void *const *)p->partials, p->nranks, n, c->dt);
    tuPoison(ro, bytes);
    tuPoison(no, bytes);
    AK(arnormResidualRMSNorm(ar, p->residual, ro, no, p->weight, c->wt, 1e-6f,
                             H % 2 ? 1.0f : 0.0f, T, H, c->dt, gCpu, NULL));
    size_t bad = n;
    for (size_t i = 0; i < n && bad == n; i++)
        if (memcmp(ro + i * es, ro0 + i * es, es) || memcmp(no + i * es, no0 + i * es, es)) bad = i;
    REQ(bad == n, "T=%zu H=%zu %s/w%s: element %zu (row %zu) differs from the CPU backend: "
        "residual_out %g vs %g, norm_out %g vs %g", T, H, tuDtypeName(c->dt),
        tuDtypeName(c->wt), bad, bad / H, tuLoad(ro0, bad, c->dt), tuLoad(ro, bad, c->dt),
        tuLoad(no0, bad, c->dt), tuLoad(no, bad, c->dt));
    free(ar);
    free(ro);
    free(no);
    return 0;
}

static int runCase(Rank *R, int ci, const Case *c) {
    const int rank = R->rank, world = R->world;
    arnormComm_t comm = R->comm;
    const size_t T = c->T, H = c->H, n = T * H, es = tuSize(c->dt), bytes = n * es;
    tuProblem p;
    uint64_t seed = tuMix(gSeed, (uint64_t)ci * 7919);
    REQ(tuProblemMake(&p, world, T, H, c->dt, c->wt, H % 2 ? 1.0f : 0.0f, seed) == 0, "host alloc");
    void *dPart, *dRes, *dRO, *dNO, *dW, *dAR;
    CK(cudaMalloc(&dPart, bytes));
    CK(cudaMalloc(&dRes, bytes));
    CK(cudaMalloc(&dRO, bytes));
    CK(cudaMalloc(&dNO, bytes));
    CK(cudaMalloc(&dAR, bytes));
    CK(cudaMalloc(&dW, H * tuSize(c->wt)));
    CK(cudaMemcpy(dPart, p.partials[rank], bytes, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dRes, p.residual, bytes, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dW, p.weight, H * tuSize(c->wt), cudaMemcpyHostToDevice));
    char *ro0 = malloc(bytes), *no0 = malloc(bytes), *ro = malloc(bytes), *no = malloc(bytes);
    REQ(ro0 && no0 && ro && no, "host alloc");

    /* 1. reference result: one-shot on world > 1, norm only on world 1 */
    arnormAlgo_t first = world > 1 ? arnormAlgoOneShot : arnormAlgoAuto;
    if (fusedOnce(R, comm, first, dPart, dRes, dRO, dNO, dW, c, T, ro0, no0)) return 1;
    double worst = 0;
    size_t wrong = tuCheck(&p, ro0, no0, &worst);
    REQ(wrong == 0, "%s T=%zu H=%zu %s/w%s: %zu elements outside tolerance (worst %.3g x tol)",
        arnormGetAlgoString(first), T, H, tuDtypeName(c->dt), tuDtypeName(c->wt), wrong, worst);
    /* 1b. the CPU backend's bits (rank 0: the ranks' bits are compared in step 6) */
    if (rank == 0 && sameAsCpuBackend(rank, &p, c, ro0, no0)) return 1;
    /* 2. run to run, and every other path: same bits */
    arnormAlgo_t algos[4] = {first, arnormAlgoTwoShot, arnormAlgoAuto, arnormAlgoOneShot};
    int nalg = world > 1 ? 4 : 2;
    for (int a = 0; a < nalg; a++) {
        arnormComm_t use = a == 3 ? R->small : comm;
        if (algos[a] == arnormAlgoAuto && world > 1) { /* Auto may pick the NCCL fallback */
            arnormFuseInfo_t fi;
            AK(arnormCommSetAlgo(use, arnormAlgoAuto));
            AK(arnormCanFuse(use, dPart, T, H, H, c->dt, &fi));
            if (!fi.canFuse) continue;
        }
        if (fusedOnce(R, use, algos[a], dPart, dRes, dRO, dNO, dW, c, T, ro, no)) return 1;
        REQ(!memcmp(ro, ro0, bytes) && !memcmp(no, no0, bytes),
            "%s%s T=%zu H=%zu %s: bits differ from the first run", a == 3 ? "chunked " : "",
            arnormGetAlgoString(algos[a]), T, H, tuDtypeName(c->dt));
    }
    AK(arnormCommSetAlgo(comm, arnormAlgoAuto));
    /* 3. batch invariance: a sub-batch of rows gives the rows' bits */
    if (T > 1 && H % 8 == 0) {
        size_t r0 = T / 3, m = T - r0 > 5 ? 5 : T - r0;
        if (m > 1 && T > 16) m = 1 + (T / 7) % 17;
        if (r0 + m > T) m = T - r0;
        size_t off = r0 * H * es;
        if (fusedOnce(R, comm, world > 1 ? arnormAlgoTwoShot : arnormAlgoAuto,
                      (char *)dPart + off, (char *)dRes + off, dRO, dNO, dW, c, m, ro, no))
            return 1;
        REQ(!memcmp(ro, ro0 + off, m * H * es) && !memcmp(no, no0 + off, m * H * es),
            "rows [%zu, %zu) alone differ from the same rows of T=%zu (H=%zu %s)", r0, r0 + m,
            T, H, tuDtypeName(c->dt));
    }
    /* 4. all-reduce + norm = fused, bit for bit (Lamport all-reduce) */
    if (world > 1) {
        AK(arnormAllReduce(dPart, dAR, n, c->dt, comm, R->stream));
        CK(cudaMemsetAsync(dRO, 0xff, bytes, R->stream));
        CK(cudaMemsetAsync(dNO, 0xff, bytes, R->stream));
        AK(arnormResidualRMSNorm(dAR, dRes, dRO, dNO, dW, c->wt, 1e-6f, H % 2 ? 1.0f : 0.0f, T, H,
                                 c->dt, comm, R->stream));
        CK(cudaMemcpyAsync(ro, dRO, bytes, cudaMemcpyDeviceToHost, R->stream));
        CK(cudaMemcpyAsync(no, dNO, bytes, cudaMemcpyDeviceToHost, R->stream));
        CK(cudaStreamSynchronize(R->stream));
        REQ(!memcmp(ro, ro0, bytes) && !memcmp(no, no0, bytes),
            "arnormAllReduce + arnormResidualRMSNorm differ from the fused call (T=%zu H=%zu %s)",
            T, H, tuDtypeName(c->dt));
        /* 5. NCCL fallback: checked, and no more accurate than the fused path */
        if (fusedOnce(R, comm, arnormAlgoFallback, dPart, dRes, dRO, dNO, dW, c, T, ro, no))
            return 1;
        double fworst = 0;
        size_t fwrong = tuCheck(&p, NULL, no, &fworst);
        REQ(worst <= fworst || worst <= 1.0, "fused error %.3g x tol > fallback's %.3g", worst, fworst);
        if (ci % 16 == 0 && rank == 0)
            printf("  T=%zu H=%zu %s: fused worst %.3f tol, NCCL fallback worst %.3f tol (%zu out)\n",
                   T, H, tuDtypeName(c->dt), worst, fworst, fwrong);
        AK(arnormCommSetAlgo(comm, arnormAlgoAuto));
    }
    /* 6. identical on every rank */
    sh->hash[ci][rank] = fnv(no0, bytes, fnv(ro0, bytes, 1469598103934665603ULL));
    cudaFree(dPart);
    cudaFree(dRes);
    cudaFree(dRO);
    cudaFree(dNO);
    cudaFree(dAR);
    cudaFree(dW);
    free(ro0);
    free(no0);
    free(ro);
    free(no);
    tuProblemFree(&p);
    return 0;
}

/* CUDA graph: two fused calls per replay (rotation crosses replays), new data each time. */
static int runGraph(Rank *R) {
    const int rank = R->rank, world = R->world;
    arnormComm_t comm = R->comm;
    const Case c = {arnormBfloat16, arnormBfloat16, 4096, 16};
    const size_t n = c.T * c.H, bytes = n * 2;
    void *dPart, *dRes, *dRO, *dNO, *dW, *dP2, *dRO2, *dNO2;
    CK(cudaMalloc(&dPart, bytes));
    CK(cudaMalloc(&dP2, bytes));
    CK(cudaMalloc(&dRes, bytes));
    CK(cudaMalloc(&dRO, bytes));
    CK(cudaMalloc(&dNO, bytes));
    CK(cudaMalloc(&dRO2, bytes));
    CK(cudaMalloc(&dNO2, bytes));
    CK(cudaMalloc(&dW, c.H * 2));
    for (int algo = 0; algo < (world > 1 ? 2 : 1); algo++) {
        AK(arnormCommSetAlgo(comm, algo ? arnormAlgoTwoShot : arnormAlgoOneShot));
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(R->stream, cudaStreamCaptureModeThreadLocal));
        AK(arnormAllReduceResidualRMSNorm(dPart, dRes, dRO, dNO, dW, c.wt, 1e-6f, 0.0f, c.T, c.H,
                                          c.dt, comm, R->stream));
        AK(arnormAllReduceResidualRMSNorm(dP2, dRes, dRO2, dNO2, dW, c.wt, 1e-6f, 0.0f, c.T, c.H,
                                          c.dt, comm, R->stream));
        CK(cudaStreamEndCapture(R->stream, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        char *ro = malloc(bytes), *no = malloc(bytes);
        for (int rep = 0; rep < 7; rep++) {
            tuProblem p, q;
            uint64_t seed = tuMix(gSeed, 900000 + (uint64_t)rep * 31 + (uint64_t)algo);
            REQ(!tuProblemMake(&p, world, c.T, c.H, c.dt, c.wt, 0.0f, seed), "alloc");
            REQ(!tuProblemMake(&q, world, c.T, c.H, c.dt, c.wt, 0.0f, tuMix(seed, 5)), "alloc");
            memcpy(q.residual, p.residual, bytes);
            memcpy(q.weight, p.weight, c.H * 2);
            CK(cudaMemcpy(dPart, p.partials[rank], bytes, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(dP2, q.partials[rank], bytes, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(dRes, p.residual, bytes, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(dW, p.weight, c.H * 2, cudaMemcpyHostToDevice));
            CK(cudaMemsetAsync(dRO, 0xff, bytes, R->stream));
            CK(cudaMemsetAsync(dNO, 0xff, bytes, R->stream));
            CK(cudaMemsetAsync(dRO2, 0xff, bytes, R->stream));
            CK(cudaMemsetAsync(dNO2, 0xff, bytes, R->stream));
            CK(cudaGraphLaunch(ge, R->stream));
            CK(cudaStreamSynchronize(R->stream));
            double worst;
            CK(cudaMemcpy(ro, dRO, bytes, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(no, dNO, bytes, cudaMemcpyDeviceToHost));
            REQ(tuCheck(&p, ro, no, &worst) == 0, "graph replay %d call 1: wrong (%.3g)", rep, worst);
            CK(cudaMemcpy(ro, dRO2, bytes, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(no, dNO2, bytes, cudaMemcpyDeviceToHost));
            REQ(tuCheck(&q, ro, no, &worst) == 0, "graph replay %d call 2: wrong (%.3g)", rep, worst);
            tuProblemFree(&p);
            tuProblemFree(&q);
            /* an eager call between replays keeps the rotation in device memory honest */
            if (rep == 3)
                AK(arnormAllReduceResidualRMSNorm(dPart, dRes, dRO, dNO, dW, c.wt, 1e-6f, 0.0f,
                                                  c.T, c.H, c.dt, comm, R->stream));
        }
        free(ro);
        free(no);
        cudaGraphExecDestroy(ge);
        cudaGraphDestroy(g);
    }
    AK(arnormCommSetAlgo(comm, arnormAlgoAuto));
    cudaFree(dPart); cudaFree(dP2); cudaFree(dRes); cudaFree(dRO); cudaFree(dNO);
    cudaFree(dRO2); cudaFree(dNO2); cudaFree(dW);
    return 0;
}

/* Plain all-reduce: bitwise equal to the host's rank-order fp32 sum rounded once. */
static int runAllReduce(Rank *R) {
    const int rank = R->rank, world = R->world;
    arnormComm_t comm = R->comm;
    const size_t counts[] = {1, 7, 4096, 100003, 3000001};
    const size_t ncounts = gQuick == 2 ? 3 : sizeof counts / sizeof counts[0];
    for (int dti = 0; dti < 3; dti++)
        for (size_t ci = 0; ci < ncounts; ci++) {
            arnormDataType_t dt = (arnormDataType_t)dti;
            size_t n = counts[ci], es = tuSize(dt);
            void **parts = calloc((size_t)world, sizeof(void *));
            for (int r = 0; r < world; r++) {
                parts[r] = malloc(n * es);
                tuFill(parts[r], n, dt, tuMix(gSeed, 5000 + ci * 10 + (size_t)r + 100 * (size_t)dti), 1.0);
            }
            char *want = malloc(n * es), *got = malloc(n * es);
            tuRankOrderSum(want, parts, world, n, dt);
            void *d, *o;
            CK(cudaMalloc(&d, n * es));
            CK(cudaMalloc(&o, n * es));
            CK(cudaMemcpy(d, parts[rank], n * es, cudaMemcpyHostToDevice));
            for (int inplace = 0; inplace < 2; inplace++) {
                void *dst = inplace ? d : o;
                /* poison on the call's stream: R->stream does not wait for the legacy
                 * default stream, so a plain cudaMemset could land after the call (seen:
                 * element 0 poisoned after a correct call, session 5) */
                if (!inplace) CK(cudaMemsetAsync(o, 0xff, n * es, R->stream));
                AK(arnormAllReduce(d, dst, n, dt, comm, R->stream));
                CK(cudaStreamSynchronize(R->stream));
                CK(cudaMemcpy(got, dst, n * es, cudaMemcpyDeviceToHost));
                if (world > 1)
                    for (size_t i = 0; i < n; i++)
                        REQ(!memcmp(got + i * es, want + i * es, es),
                            "all-reduce %s n=%zu%s: element %zu = %g, want %g", tuDtypeName(dt),
                            n, inplace ? " in place" : "", i, tuLoad(got, i, dt), tuLoad(want, i, dt));
            }
            cudaFree(d);
            cudaFree(o);
            for (int r = 0; r < world; r++) free(parts[r]);
            free(parts);
            free(want);
            free(got);
        }
    return 0;
}

static int runRank(Rank *R) {
    const int rank = R->rank;
    arnormComm_t comm = R->comm;
    CK(cudaStreamCreateWithFlags(&R->stream, cudaStreamNonBlocking));
    size_t ws = 0;
    AK(arnormCommWorkspaceBytes(comm, &ws));
    if (rank == 0) printf("  workspace %zu bytes per rank\n", ws);
    static Case cs[MAXCASES];
    int nc = buildCases(cs, R->world);
    for (int i = 0; i < nc; i++) {
        int bad = runCase(R, i, &cs[i]);
        if (bad) sh->failed = 1;
        if (barrier()) return 1;
        for (int r = 1; r < R->world; r++)
            REQ(sh->hash[i][r] == sh->hash[i][0],
                "case %d (T=%zu H=%zu %s): rank %d's outputs differ from rank 0's", i, cs[i].T,
                cs[i].H, tuDtypeName(cs[i].dt), r);
    }
    if (rank == 0) printf("  %d cases: reference, paths, ranks, batch invariance OK\n", nc);
    if (runGraph(R)) sh->failed = 1;
    if (barrier()) return 1;
    if (rank == 0) printf("  CUDA graph replay OK\n");
    if (runAllReduce(R)) sh->failed = 1;
    if (barrier()) return 1;
    if (rank == 0) printf("  all-reduce OK\n");
    cudaStreamDestroy(R->stream);
    return 0;
}

static arnormConfig_t smallCfg(void) {
    arnormConfig_t c = ARNORM_CONFIG_INITIALIZER;
    c.workspaceBytes = 65536;
    return c;
}

static int mpRank(int rank, int world) {
    Rank R = {rank, world, NULL, NULL, NULL};
    if (cudaSetDevice(rank) != cudaSuccess) return 1;
    if (rank == 0) {
        if (arnormGetUniqueId(&sh->id) != arnormSuccess) return 1;
    }
    pthread_barrier_wait(&sh->bar);
    arnormComm_t comm = NULL;
    AK(arnormCommInitRank(&R.comm, world, sh->id, rank, NULL));
    comm = R.comm;
    pthread_barrier_wait(&sh->bar);
    if (rank == 0) arnormGetUniqueId(&sh->id);
    pthread_barrier_wait(&sh->bar);
    arnormConfig_t sc = smallCfg();
    AK(arnormCommInitRank(&R.small, world, sh->id, rank, &sc));
    int rc = runRank(&R);
    /* a failed workspace allocation on one rank is an error on every rank, no hang */
    if (!rc && world > 1) {
        pthread_barrier_wait(&sh->bar);
        if (rank == 0) arnormGetUniqueId(&sh->id);
        pthread_barrier_wait(&sh->bar);
        setenv("ARNORM_TEST_FAIL_WORKSPACE_RANK", "1", 1);
        arnormComm_t bad = NULL;
        arnormResult_t r = arnormCommInitRank(&bad, world, sh->id, rank, NULL);
        unsetenv("ARNORM_TEST_FAIL_WORKSPACE_RANK");
        REQ(r == arnormOutOfMemory && bad == NULL, "workspace vote: rank %d got %s", rank,
            arnormGetErrorString(r));
        if (rank == 0) printf("  workspace failure on rank 1 -> arnormOutOfMemory on every rank: OK\n");
    }
    AK(arnormCommDestroy(R.small));
    AK(arnormCommDestroy(R.comm));
    return rc;
}

typedef struct {
    Rank R;
    int rc;
} SpArg;

static void *spThread(void *p) {
    SpArg *a = p;
    cudaSetDevice(a->R.rank);
    a->rc = runRank(&a->R);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s mp|sp WORLD [quick|tiny]\n", argv[0]);
        return 2;
    }
    const int sp = !strcmp(argv[1], "sp");
    const int world = atoi(argv[2]);
    gQuick = argc > 3 && !strcmp(argv[3], "quick") ? 1 : argc > 3 && !strcmp(argv[3], "tiny") ? 2 : 0;
    int ndev = probeDevices();
    if (ndev == 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    if (world < 1 || world > MAXW) return 2;
    if (world > ndev) {
        printf("SKIP: world %d needs %d GPUs, %d visible\n", world, world, ndev);
        return 77;
    }
    gSeed = tuSeed();
    sh = mmap(NULL, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 1;
    memset(sh, 0, sizeof *sh);
    pthread_barrierattr_t ba;
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    pthread_barrier_init(&sh->bar, &ba, (unsigned)world);
    printf("test_fused_gpu %s world %d%s\n", sp ? "single-process" : "multi-process", world,
           gQuick ? " quick" : "");
    fflush(stdout);
    int failed = 0;
    if (!sp) {
        pid_t pids[MAXW];
        for (int r = 0; r < world; r++) {
            pids[r] = fork();
            if (pids[r] == 0) {
                int rc = mpRank(r, world);
                fflush(stdout);
                fflush(stderr);
                _exit(rc);
            }
        }
        time_t t0 = time(NULL);
        int left = world;
        while (left > 0) {
            int st;
            pid_t w = waitpid(-1, &st, WNOHANG);
            if (w > 0) {
                left--;
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                    if (!failed) /* the others would wait for it forever: stop them */
                        for (int r = 0; r < world; r++)
                            if (pids[r] != w) kill(pids[r], SIGKILL);
                    failed = 1;
                }
                continue;
            }
            if (time(NULL) - t0 > 900) {
                fprintf(stderr, "FAIL: ranks still running after 900 s (a hang): killing\n");
                for (int r = 0; r < world; r++) kill(pids[r], SIGKILL);
                failed = 1;
                break;
            }
            usleep(2000);
        }
    } else {
        arnormComm_t comms[MAXW], smalls[MAXW];
        int rank = 0;
        arnormComm_t comm = NULL;
        AK(arnormCommInitAll(comms, world, NULL, NULL));
        arnormConfig_t sc = smallCfg();
        AK(arnormCommInitAll(smalls, world, NULL, &sc));
        SpArg args[MAXW];
        pthread_t th[MAXW];
        for (int r = 0; r < world; r++) {
            args[r].R = (Rank){r, world, comms[r], smalls[r], NULL};
            args[r].rc = 0;
            pthread_create(&th[r], NULL, spThread, &args[r]);
        }
        for (int r = 0; r < world; r++) {
            pthread_join(th[r], NULL);
            if (args[r].rc) failed = 1;
        }
        for (int r = 0; r < world; r++) {
            comm = comms[r];
            AK(arnormCommDestroy(comms[r]));
            AK(arnormCommDestroy(smalls[r]));
        }
    }
    printf("%s: test_fused_gpu %s world %d\n", failed ? "FAILED" : "PASSED", sp ? "sp" : "mp", world);
    return failed;
}
