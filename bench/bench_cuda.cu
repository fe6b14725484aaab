/* bench_cuda.cu - the benchmark's CUDA device: cudaMalloc buffers, one stream, CUDA events,
 * graph capture and replay, and the empty-kernel floor measured in the same run. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <time.h>

extern "C" {
#include "bench_device.h"
}

#include "cuda_check.h"

#define CK(call) BENCH_CUDA_CHECK(call, return -1)

static cudaStream_t benchStream;

__global__ void emptyKernel() {}

static int cudaSetup(int rank, int nranks) {
    (void)nranks;
    int n = 0;
    CK(cudaGetDeviceCount(&n));
    CK(cudaSetDevice(rank % n));
    CK(cudaStreamCreateWithFlags(&benchStream, cudaStreamNonBlocking));
    return 0;
}

static void *cudaAllocBuf(size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess) return NULL;
    return p;
}
static void cudaReleaseBuf(void *p) { cudaFree(p); }
static void cudaUpload(void *dst, const void *src, size_t bytes) {
    if (cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) != cudaSuccess)
        fprintf(stderr, "upload failed\n");
}
static void cudaDownload(void *dst, const void *src, size_t bytes) {
    if (cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) != cudaSuccess)
        fprintf(stderr, "download failed\n");
}
static int cudaSyncAll(void) {
    CK(cudaStreamSynchronize(benchStream));
    return 0;
}
static arnormStream_t cudaGetStream(void) { return (arnormStream_t)benchStream; }

static double nowUs(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

static double cudaTime(benchCallFn call, void *ctx, int iters, int graph,
                       void (*barrier)(void), double *hostUs) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    cudaGraphExec_t exec = NULL;
    cudaGraph_t g = NULL;
    if (graph) {
        CK(cudaStreamBeginCapture(benchStream, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < iters; i++)
            if (call(ctx)) {
                cudaStreamEndCapture(benchStream, &g);
                return -1;
            }
        CK(cudaStreamEndCapture(benchStream, &g));
        CK(cudaGraphInstantiate(&exec, g, 0));
        CK(cudaGraphLaunch(exec, benchStream)); /* upload + warm */
        CK(cudaStreamSynchronize(benchStream));
    }
    barrier();
    CK(cudaEventRecord(e0, benchStream));
    double h0 = nowUs();
    if (graph) {
        CK(cudaGraphLaunch(exec, benchStream));
    } else {
        for (int i = 0; i < iters; i++)
            if (call(ctx)) return -1;
    }
    *hostUs = (nowUs() - h0) / iters; /* issuing only: the calls run asynchronously */
    CK(cudaEventRecord(e1, benchStream));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    if (exec) cudaGraphExecDestroy(exec);
    if (g) cudaGraphDestroy(g);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms * 1000.0 / iters;
}

static int launchEmpty(void *ctx) {
    (void)ctx;
    emptyKernel<<<1, 1, 0, benchStream>>>();
    return cudaGetLastError() != cudaSuccess;
}

static void noBarrier(void) {}

static double cudaEmpty(int iters, int graph, double *hostUs) {
    cudaTime(launchEmpty, NULL, iters, graph, noBarrier, hostUs); /* warm */
    return cudaTime(launchEmpty, NULL, iters, graph, noBarrier, hostUs);
}

static void cudaTeardown(void) {
    if (benchStream) cudaStreamDestroy(benchStream);
    benchStream = NULL;
}

extern "C" int benchCudaDeviceCount(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
    return n;
}

extern "C" const benchDevice benchCuda = {
    "cuda", cudaSetup, cudaAllocBuf, cudaReleaseBuf, cudaUpload, cudaDownload,
    cudaSyncAll, cudaGetStream, cudaTime, cudaEmpty, cudaTeardown};
