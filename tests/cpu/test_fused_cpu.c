/*
 * test_fused_cpu.c - the fused operation on the CPU backend, world sizes 1, 2, 3, 4, 8:
 * every dtype, hidden sizes 1 .. 65536, token counts below, at and over the budget; fp64
 * reference within tolerance; all elements written; bitwise identical across ranks, run to
 * run, across paths (auto, one-shot, fallback), in place and out of place, and per row
 * whatever the token count (batch invariance).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define SLOT_BYTES (6u << 20)

static const size_t hiddens[] = {1, 7, 640, 2304, 4096, 5376, 65536};

typedef struct {
    arnormDataType_t dtype;
    uint64_t seed;
} caseArg;

/* Runs the fused call with fresh poisoned outputs; checks every element was written. */
static int runFused(arnormComm_t comm, const tuProblem *p, int rank, const void *partial,
                    void *resOut, void *normOut, size_t bytes, arnormAlgo_t algo,
                    const char *what) {
    TU_OK(arnormCommSetAlgo(comm, algo));
    if (normOut != partial) tuPoison(normOut, bytes);
    if (resOut != partial && resOut != p->residual) tuPoison(resOut, bytes);
    arnormResult_t r = arnormAllReduceResidualRMSNorm(
        partial, p->residual, resOut, normOut, p->weight, p->weightType, p->eps, p->weightBias,
        p->tokens, p->hidden, p->dtype, comm, NULL);
    TU_CHECK(r == arnormSuccess, "rank %d %s T=%zu H=%zu %s: %s: %s", rank, what, p->tokens,
             p->hidden, tuDtypeName(p->dtype), arnormGetErrorString(r), arnormGetLastError(comm));
    size_t n = p->tokens * p->hidden;
    long long u = tuFirstUnwritten(normOut, n, p->dtype);
    TU_CHECK(u < 0, "rank %d %s: normOut[%lld] not written", rank, what, u);
    u = tuFirstUnwritten(resOut, n, p->dtype);
    TU_CHECK(u < 0, "rank %d %s: residualOut[%lld] not written", rank, what, u);
    return 0;
}

static int rankMain(int rank, int nranks, arnormUniqueId id, void *shared, void *argp) {
    const caseArg *arg = argp;
    arnormComm_t comm = tuInitCpu(rank, nranks, id, 60000, 0);
    TU_CHECK(comm, "init");
    const arnormDataType_t dt = arg->dtype;
    const size_t es = tuSize(dt);
    int cases = 0, failures = 0;
    for (size_t hi = 0; hi < sizeof hiddens / sizeof hiddens[0]; hi++) {
        const size_t H = hiddens[hi];
        arnormFuseInfo_t info;
        TU_OK(arnormCanFuse(comm, NULL, 1, H, H, dt, &info));
        size_t over = info.maxTokens + 1;
        size_t tokensList[5] = {1, 3, 128, 129, over};
        for (int ti = 0; ti < 5; ti++) {
            const size_t T = tokensList[ti];
            if (T > 129 && T * H * es > (2u << 20)) continue;
            if (T >= 128 && H > 4096) continue;
            const uint64_t seed = tuMix(arg->seed, H * 1000 + T);
            const arnormDataType_t wt = (H % 2) ? arnormFloat32 : dt; /* both weight kinds */
            const float bias = (T % 2) ? 1.0f : 0.0f;                  /* Gemma and Llama */
            tuProblem p;
            TU_CHECK(!tuProblemMake(&p, nranks, T, H, dt, wt, bias, seed), "alloc");
            const size_t n = T * H, bytes = n * es;
            void *res = malloc(bytes), *norm = malloc(bytes), *res2 = malloc(bytes),
                 *norm2 = malloc(bytes), *inplace = malloc(bytes), *resCopy = malloc(bytes);
            TU_CHECK(res && norm && res2 && norm2 && inplace && resCopy, "alloc");
            const void *mine = p.partials[rank];
            TU_CHECK(arnormCanFuse(comm, mine, T, H, H, dt, &info) == arnormSuccess, "canFuse");

            /* 1. auto, out of place: the reference */
            if (runFused(comm, &p, rank, mine, res, norm, bytes, arnormAlgoAuto, "auto")) return 1;
            if (rank == 0) {
                double worst;
                size_t wrong = tuCheck(&p, res, norm, &worst);
                if (wrong) {
                    fprintf(stderr, "FAIL world %d %s T=%zu H=%zu algo %s: %zu wrong "
                            "(worst %.2f x tol)\n", nranks, tuDtypeName(dt), T, H,
                            arnormGetAlgoString(info.algo), wrong, worst);
                    failures++;
                }
            }
            /* 2. same inputs again, and every forced path: the same bits */
            const arnormAlgo_t algos[4] = {arnormAlgoAuto, arnormAlgoOneShot, arnormAlgoTwoShot,
                                           arnormAlgoFallback};
            for (int ai = 0; ai < 4; ai++) {
                if (runFused(comm, &p, rank, mine, res2, norm2, bytes, algos[ai], "repeat"))
                    return 1;
                if (memcmp(res, res2, bytes) || memcmp(norm, norm2, bytes)) {
                    fprintf(stderr, "FAIL world %d %s T=%zu H=%zu: algo %s differs from auto\n",
                            nranks, tuDtypeName(dt), T, H, arnormGetAlgoString(algos[ai]));
                    failures++;
                }
            }
            TU_OK(arnormCommSetAlgo(comm, arnormAlgoAuto));
            /* 3. in place: residualOut = partial, then normOut = partial, then
                  residualOut = residual */
            memcpy(inplace, mine, bytes);
            if (runFused(comm, &p, rank, inplace, inplace, norm2, bytes, arnormAlgoAuto,
                         "residualOut=partial")) return 1;
            if (memcmp(inplace, res, bytes) || memcmp(norm2, norm, bytes)) {
                fprintf(stderr, "FAIL %s T=%zu H=%zu: residualOut=partial differs\n",
                        tuDtypeName(dt), T, H);
                failures++;
            }
            memcpy(inplace, mine, bytes);
            if (runFused(comm, &p, rank, inplace, res2, inplace, bytes, arnormAlgoAuto,
                         "normOut=partial")) return 1;
            if (memcmp(res2, res, bytes) || memcmp(inplace, norm, bytes)) {
                fprintf(stderr, "FAIL %s T=%zu H=%zu: normOut=partial differs\n",
                        tuDtypeName(dt), T, H);
                failures++;
            }
            memcpy(resCopy, p.residual, bytes);
            void *savedResidual = p.residual;
            p.residual = resCopy;
            if (runFused(comm, &p, rank, mine, resCopy, norm2, bytes, arnormAlgoAuto,
                         "residualOut=residual")) return 1;
            p.residual = savedResidual;
            if (memcmp(resCopy, res, bytes) || memcmp(norm2, norm, bytes)) {
                fprintf(stderr, "FAIL %s T=%zu H=%zu: residualOut=residual differs\n",
                        tuDtypeName(dt), T, H);
                failures++;
            }
            /* 4. batch invariance: the last row alone gives the bits it had in the batch */
            if (T > 1) {
                tuProblem one = p;
                one.tokens = 1;
                void *lastPartial = (char *)mine + (T - 1) * H * es;
                one.residual = (char *)p.residual + (T - 1) * H * es;
                if (runFused(comm, &one, rank, lastPartial, res2, norm2, H * es, arnormAlgoAuto,
                             "single row")) return 1;
                if (memcmp(res2, (char *)res + (T - 1) * H * es, H * es) ||
                    memcmp(norm2, (char *)norm + (T - 1) * H * es, H * es)) {
                    fprintf(stderr, "FAIL %s T=%zu H=%zu: last row differs alone (batch "
                            "invariance)\n", tuDtypeName(dt), T, H);
                    failures++;
                }
            }
            /* 5. every rank the same bits */
            char *slot = (char *)shared + (size_t)rank * SLOT_BYTES;
            TU_CHECK(2 * bytes <= SLOT_BYTES, "slot too small");
            memcpy(slot, res, bytes);
            memcpy(slot + bytes, norm, bytes);
            tuBarrier();
            if (rank == 0)
                for (int q = 1; q < nranks; q++)
                    if (memcmp(shared, (char *)shared + (size_t)q * SLOT_BYTES, 2 * bytes)) {
                        fprintf(stderr, "FAIL %s T=%zu H=%zu: rank %d differs from rank 0\n",
                                tuDtypeName(dt), T, H, q);
                        failures++;
                    }
            tuBarrier();
            free(res); free(norm); free(res2); free(norm2); free(inplace); free(resCopy);
            tuProblemFree(&p);
            cases++;
        }
    }
    TU_OK(arnormCommDestroy(comm));
    if (rank == 0)
        printf("world %d %s: %d cases, %s\n", nranks, tuDtypeName(dt), cases,
               failures ? "FAILED" : "ok");
    return failures != 0;
}

int main(int argc, char **argv) {
    const uint64_t seed = tuSeed();
    int worlds[] = {1, 2, 3, 4, 8};
    int nw = 5;
    if (argc > 1) { /* one world size, for ctest to run them in parallel */
        worlds[0] = atoi(argv[1]);
        nw = 1;
    }
    int failed = 0;
    for (int wi = 0; wi < nw; wi++)
        for (int d = 0; d < arnormNumDataTypes; d++) {
            caseArg arg = {(arnormDataType_t)d, tuMix(seed, (uint64_t)(wi * 16 + d))};
            failed |= tuLaunch(worlds[wi], rankMain, &arg, (size_t)worlds[wi] * SLOT_BYTES, 600);
        }
    printf("%s\n", failed ? "FAILED" : "PASSED");
    return failed;
}
