/*
 * test_soak_gpu.c - 10^6 fused calls on the CUDA backend (one process per GPU), bf16,
 * H 4096, token counts varying call to call over one-shot and two-shot sizes (1 .. 1024).
 * The first result for each token count is checked against the fp64 reference; every
 * 10^5 calls (and the last) the outputs are poisoned first and then compared bit for bit
 * with that first result. Time per call (stream loop; calls 10^4..2x10^4, after a warm-up
 * window, and the last 10^4), host RSS (after the first check, half-way and at the end)
 * and free device memory are reported: no drift, leak or slowdown. The process's RSS grew
 * by ~16 MiB after the first check in the runs of 2026-11-28 (host-side CUDA memory), so a
 * leak is judged on the second half: a leak grows with the calls, in both halves.
 *   usage: test_soak_gpu [world [calls]]      (without enough GPUs: SKIP, exit 77)
 */
#define _GNU_SOURCE
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gpu_test.h"
#include "testutil.h"

enum { H = 4096, NT = 16 };
static const size_t kTokens[NT] = {1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 128, 129, 256, 512, 1024};
static long calls = 1000000;

typedef struct {
    tuProblem p;
    void *part, *res, *weight; /* device copies of this rank's inputs */
    uint16_t *golden[2];       /* host: first residual_out and norm_out */
} Shape;

static int rankMain(int rank, int nranks, arnormUniqueId id, void *shared, void *arg) {
    (void)shared;
    (void)arg;
    TU_CUDA(cudaSetDevice(rank));
    arnormConfig_t cfg = ARNORM_CONFIG_INITIALIZER;
    cfg.backend = arnormBackendCuda;
    arnormComm_t comm;
    TU_OK(arnormCommInitRank(&comm, nranks, id, rank, &cfg));
    cudaStream_t stream;
    TU_CUDA(cudaStreamCreate(&stream));
    const size_t maxBytes = 1024 * H * 2;
    void *dRes, *dNorm;
    TU_CUDA(cudaMalloc(&dRes, maxBytes));
    TU_CUDA(cudaMalloc(&dNorm, maxBytes));
    uint16_t *hRes = malloc(maxBytes), *hNorm = malloc(maxBytes);
    TU_CHECK(hRes && hNorm, "host alloc");
    memset(hRes, 0, maxBytes); /* resident before the first RSS reading */
    memset(hNorm, 0, maxBytes);
    Shape s[NT];
    for (int k = 0; k < NT; k++) {
        const size_t T = kTokens[k], bytes = T * H * 2;
        TU_CHECK(!tuProblemMake(&s[k].p, nranks, T, H, arnormBfloat16, arnormBfloat16, 1.0f,
                                tuMix(tuSeed(), (uint64_t)T)), "alloc");
        TU_CUDA(cudaMalloc(&s[k].part, bytes));
        TU_CUDA(cudaMalloc(&s[k].res, bytes));
        TU_CUDA(cudaMalloc(&s[k].weight, H * 2));
        TU_CUDA(cudaMemcpy(s[k].part, s[k].p.partials[rank], bytes, cudaMemcpyHostToDevice));
        TU_CUDA(cudaMemcpy(s[k].res, s[k].p.residual, bytes, cudaMemcpyHostToDevice));
        TU_CUDA(cudaMemcpy(s[k].weight, s[k].p.weight, H * 2, cudaMemcpyHostToDevice));
        s[k].golden[0] = malloc(bytes);
        s[k].golden[1] = malloc(bytes);
        TU_CHECK(s[k].golden[0] && s[k].golden[1], "host alloc");
    }
#define CALL(k)                                                                            \
    arnormAllReduceResidualRMSNorm(s[k].part, s[k].res, dRes, dNorm, s[k].weight,         \
                                   arnormBfloat16, s[k].p.eps, 1.0f, kTokens[k], H,       \
                                   arnormBfloat16, comm, stream)
    /* one poisoned, fully checked call per shape: the golden results */
    for (int k = 0; k < NT; k++) {
        const size_t bytes = kTokens[k] * H * 2;
        TU_CUDA(cudaMemsetAsync(dRes, 0xff, bytes, stream));
        TU_CUDA(cudaMemsetAsync(dNorm, 0xff, bytes, stream));
        TU_OK(CALL(k));
        TU_CUDA(cudaMemcpyAsync(s[k].golden[0], dRes, bytes, cudaMemcpyDeviceToHost, stream));
        TU_CUDA(cudaMemcpyAsync(s[k].golden[1], dNorm, bytes, cudaMemcpyDeviceToHost, stream));
        TU_CUDA(cudaStreamSynchronize(stream));
        double err = 0;
        size_t bad = tuCheck(&s[k].p, s[k].golden[0], s[k].golden[1], &err);
        TU_CHECK(bad == 0, "T=%zu: %zu elements wrong (max err %.2f x tol)", kTokens[k], bad, err);
    }
    const long window = calls / 100 < 10000 ? calls / 100 : 10000;
    double tStart = 0, tEnd = 0, t0 = 0;
    long rss0 = 0, rssMid = 0, checks = 0;
    size_t free0 = 0, free1 = 0, total = 0;
    uint64_t rng = 977;
    for (long i = 0; i < calls; i++) {
        rng = tuMix(rng, (uint64_t)i);
        const int k = (int)(rng % NT); /* the same sequence on every rank */
        const size_t bytes = kTokens[k] * H * 2;
        const int check = i % 100000 == 99999 || i == calls - 1;
        if (check) {
            TU_CUDA(cudaMemsetAsync(dRes, 0xff, bytes, stream));
            TU_CUDA(cudaMemsetAsync(dNorm, 0xff, bytes, stream));
        }
        TU_OK(CALL(k));
        if (check) {
            TU_CUDA(cudaMemcpyAsync(hRes, dRes, bytes, cudaMemcpyDeviceToHost, stream));
            TU_CUDA(cudaMemcpyAsync(hNorm, dNorm, bytes, cudaMemcpyDeviceToHost, stream));
            TU_CUDA(cudaStreamSynchronize(stream));
            TU_CHECK(!memcmp(hRes, s[k].golden[0], bytes) && !memcmp(hNorm, s[k].golden[1], bytes),
                     "call %ld (T=%zu) differs from the first result", i, kTokens[k]);
            checks++;
        }
        if (i == window - 1) { /* warm-up done */
            TU_CUDA(cudaStreamSynchronize(stream));
            t0 = (tuNowMs() * 1e3);
        }
        if (i == 2 * window - 1) {
            TU_CUDA(cudaStreamSynchronize(stream));
            tStart = ((tuNowMs() * 1e3) - t0) / window;
        }
        if (check && checks == 1) {
            rss0 = tuRssKb();
            TU_CUDA(cudaMemGetInfo(&free0, &total));
        }
        if (check && checks == (calls / 100000 + 1) / 2) rssMid = tuRssKb();
        if (i == calls - window - 1) {
            TU_CUDA(cudaStreamSynchronize(stream));
            t0 = (tuNowMs() * 1e3);
        }
    }
    TU_CUDA(cudaStreamSynchronize(stream));
    tEnd = ((tuNowMs() * 1e3) - t0) / window;
    long rss1 = tuRssKb();
    if (rssMid == 0) rssMid = rss0; /* a short run: one check */
    TU_CUDA(cudaMemGetInfo(&free1, &total));
    arnormResult_t async = arnormSuccess;
    TU_OK(arnormCommGetAsyncError(comm, &async));
    TU_CHECK(async == arnormSuccess, "async error: %s", arnormGetLastError(comm));
    printf("rank %d: %ld calls (T 1..1024, H %d, bf16), %ld bitwise checks: time per call "
           "%.2f us (calls %ld..%ld) -> %.2f us (last %ld); RSS %ld -> %ld -> %ld KiB (first "
           "check, half-way, end); free device memory %zu -> %zu MiB\n", rank, calls, H,
           checks, tStart, window, 2 * window, tEnd, window, rss0, rssMid, rss1, free0 >> 20,
           free1 >> 20);
    TU_CHECK(rss1 - rssMid < 1024, "RSS grew by %ld KiB in the second half", rss1 - rssMid);
    TU_CHECK(free1 + (1u << 20) >= free0, "device memory fell by %zu KiB", (free0 - free1) >> 10);
    TU_CHECK(tEnd < 1.5 * tStart + 2, "slowdown: %.2f us -> %.2f us per call", tStart, tEnd);
    for (int k = 0; k < NT; k++) {
        cudaFree(s[k].part);
        cudaFree(s[k].res);
        cudaFree(s[k].weight);
        free(s[k].golden[0]);
        free(s[k].golden[1]);
        tuProblemFree(&s[k].p);
    }
    cudaFree(dRes);
    cudaFree(dNorm);
    free(hRes);
    free(hNorm);
    TU_OK(arnormCommDestroy(comm));
    return 0;
}

int main(int argc, char **argv) {
    const int world = argc > 1 ? atoi(argv[1]) : 2;
    if (argc > 2) calls = atol(argv[2]);
    if (world < 2 || calls < 3000) {
        fprintf(stderr, "usage: test_soak_gpu [world >= 2 [calls >= 3000]]\n");
        return 2;
    }
    if (probeDevices() < world) {
        printf("SKIP: needs %d CUDA devices\n", world);
        return 77;
    }
    tuSeed();
    int failed = tuLaunch(world, rankMain, NULL, 0, 1200);
    printf("%s\n", failed ? "FAILED" : "PASSED");
    return failed;
}
