/*
 * test_soak.c - 10^6 fused calls on the CPU backend (2 ranks) with token counts varying
 * call to call: every 10^5 calls the outputs are checked bit for bit against the first
 * result for that token count (itself checked against the fp64 reference); memory (RSS)
 * and time per call are reported at the start and the end: no drift, leak or slowdown.
 *   usage: test_soak [calls]
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

enum { H = 512, MAXT = 8 };

static long calls = 1000000;

static int rankMain(int rank, int nranks, arnormUniqueId id, void *shared, void *arg) {
    (void)shared;
    (void)arg;
    arnormComm_t comm = tuInitCpu(rank, nranks, id, 0, 0);
    TU_CHECK(comm, "init");
    tuProblem p[MAXT + 1];
    static uint16_t golden[MAXT + 1][2][MAXT * H], res[MAXT * H], norm[MAXT * H];
    for (int t = 1; t <= MAXT; t++) {
        TU_CHECK(!tuProblemMake(&p[t], nranks, (size_t)t, H, arnormBfloat16, arnormBfloat16,
                                1.0f, tuMix(tuSeed(), (uint64_t)t)), "alloc");
        TU_OK(arnormAllReduceResidualRMSNorm(p[t].partials[rank], p[t].residual, golden[t][0],
                                             golden[t][1], p[t].weight, arnormBfloat16, p[t].eps,
                                             1.0f, (size_t)t, H, arnormBfloat16, comm, NULL));
        TU_CHECK(tuCheck(&p[t], golden[t][0], golden[t][1], NULL) == 0, "T=%d wrong", t);
    }
    const long window = calls / 100 < 10000 ? calls / 100 : 10000;
    double tStart = 0, tEnd = 0, t0 = (tuNowMs() * 1e3);
    long rss0 = 0, checks = 0;
    uint64_t rng = 12345;
    for (long i = 0; i < calls; i++) {
        rng = tuMix(rng, (uint64_t)i);
        const int t = 1 + (int)(rng % MAXT); /* same sequence on every rank */
        TU_OK(arnormAllReduceResidualRMSNorm(p[t].partials[rank], p[t].residual, res, norm,
                                             p[t].weight, arnormBfloat16, p[t].eps, 1.0f,
                                             (size_t)t, H, arnormBfloat16, comm, NULL));
        if (i % 100000 == 0 || i == calls - 1) {
            TU_CHECK(!memcmp(res, golden[t][0], (size_t)t * H * 2) &&
                         !memcmp(norm, golden[t][1], (size_t)t * H * 2),
                     "call %ld (T=%d) differs from the first result", i, t);
            checks++;
        }
        if (i == window - 1) {
            tStart = ((tuNowMs() * 1e3) - t0) / window;
            rss0 = tuRssKb();
        }
        if (i == calls - window) t0 = (tuNowMs() * 1e3);
    }
    tEnd = ((tuNowMs() * 1e3) - t0) / window;
    long rss1 = tuRssKb();
    if (rank == 0)
        printf("%ld calls, %ld bitwise checks: time per call %.2f us (first %ld) -> %.2f us "
               "(last %ld); RSS %ld KiB -> %ld KiB\n", calls, checks, tStart, window, tEnd,
               window, rss0, rss1);
    TU_CHECK(rss1 - rss0 < 1024, "RSS grew by %ld KiB", rss1 - rss0);
    TU_CHECK(tEnd < 3 * tStart + 5, "slowdown: %.2f us -> %.2f us per call", tStart, tEnd);
    for (int t = 1; t <= MAXT; t++) tuProblemFree(&p[t]);
    TU_OK(arnormCommDestroy(comm));
    return 0;
}

int main(int argc, char **argv) {
    tuSeed();
    if (argc > 1) calls = atol(argv[1]);
    int failed = tuLaunch(2, rankMain, NULL, 0, 1500);
    printf("%s\n", failed ? "FAILED" : "PASSED");
    return failed;
}
