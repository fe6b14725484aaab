/*
 * floors.cu - arnorm-floors: what the machine itself allows, measured with no arnorm code,
 * so each arnorm figure can be set against its floor (docs/performance.md).
 *
 *   graph node       an empty kernel as a CUDA-graph node (graph of 100, replayed)
 *   stream launch    host time to enqueue an empty kernel, and the GPU time per kernel
 *   one-way latency  a flag bounced between GPU 0 and GPU 1 through peer memory by one
 *                    thread on each (round trip / 2), with plain volatile stores (what a
 *                    Lamport push is) and with release/acquire at system scope; and an
 *                    8 KiB message of 512 16-byte chunks (the one-shot's trip at T = 1)
 *   SM stores        16-byte loads from local memory stored into a peer's memory by a full
 *                    grid (what the fused kernels' pushes do), one direction and both at
 *                    once, 64 KiB to -s MiB: us per copy as a node of a CUDA graph (launch
 *                    cost amortized, comparable with arnorm-bench's graph figures) and GB/s
 *   copy engine      cudaMemcpyAsync between the GPUs (peer access on), the same sizes and
 *                    directions
 *   HBM copy         a local device-to-device copy kernel (bytes read + written)
 *
 * Usage: arnorm-floors [-r repeats] [-s MiB for the bandwidth rows]. Needs two GPUs with
 * peer access for the NVLink rows (skipped, with a line saying so, otherwise). Every wait
 * on the GPU is bounded by a deadline; every CUDA call is checked.
 */
#include <cuda_runtime.h>

#include <algorithm>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <vector>

#include "cuda_check.h"

#define CK(call) BENCH_CUDA_CHECK(call, exit(1))

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

static double nowUs() {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

/* Milliseconds between two recorded events, once the second has completed. */
static double elapsedMs(cudaEvent_t e0, cudaEvent_t e1) {
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    return ms;
}

/* GPU time of what enqueue() puts on stream s, in ms. */
template <typename F>
static double timeMs(cudaStream_t s, cudaEvent_t e0, cudaEvent_t e1, F enqueue) {
    CK(cudaEventRecord(e0, s));
    enqueue();
    CK(cudaEventRecord(e1, s));
    return elapsedMs(e0, e1);
}

static void row(const char *what, double value, const char *unit, const char *how) {
    printf("  %-28s %10.2f %-5s  %s\n", what, value, unit, how);
}

__device__ __forceinline__ unsigned long long globalTimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__global__ void emptyKernel() {}

/* ------------------------------------------------------------------ launch floors */

static void launchFloors(int repeats) {
    cudaStream_t s;
    CK(cudaSetDevice(0));
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    const int nodes = 100;
    cudaGraph_t g;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < nodes; i++) emptyKernel<<<1, 32, 0, s>>>();
    CK(cudaGetLastError());
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&exec, g, 0));
    CK(cudaGraphLaunch(exec, s));
    CK(cudaStreamSynchronize(s));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<double> node, gpu, host;
    for (int r = 0; r < repeats; r++) {
        double ms = timeMs(s, e0, e1, [&] {
            for (int k = 0; k < 10; k++) CK(cudaGraphLaunch(exec, s));
        });
        node.push_back(ms * 1e3 / (10.0 * nodes));

        double t0 = 0, t1 = 0;
        ms = timeMs(s, e0, e1, [&] {
            t0 = nowUs();
            for (int k = 0; k < nodes; k++) emptyKernel<<<1, 32, 0, s>>>();
            t1 = nowUs();
            CK(cudaGetLastError());
        });
        host.push_back((t1 - t0) / nodes);
        gpu.push_back(ms * 1e3 / nodes);
    }
    row("empty kernel, graph node", median(node), "us", "graph of 100 empty kernels, replayed");
    row("empty kernel, stream launch", median(host), "us", "host time to enqueue one");
    row("empty kernel, stream loop", median(gpu), "us", "GPU time per kernel, 100 in a row");
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(g));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    CK(cudaStreamDestroy(s));
}

/* ------------------------------------------------------------------ one-way latency */

/* One thread per GPU. The pinger (GPU 0) writes i into the ponger's flag and waits for i
 * in its own; the ponger answers each i. mode 0: volatile stores and loads (a Lamport
 * push and poll); mode 1: st.release.sys / ld.acquire.sys. The pinger's time is written to
 * *out (ns), or 0 when a deadline passed. */
__global__ void pingPong(volatile unsigned *mine, unsigned *peer, int iters, int ping, int mode,
                         unsigned long long timeoutNs, unsigned long long *out) {
    const unsigned long long deadline = globalTimer() + timeoutNs;
    unsigned long long t0 = globalTimer();
    for (int i = 1; i <= iters; i++) {
        if (ping) {
            if (mode == 0)
                *(volatile unsigned *)peer = (unsigned)i;
            else
                asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(peer), "r"(i) : "memory");
        }
        for (unsigned n = 0;; n++) {
            unsigned v;
            if (mode == 0)
                v = *mine;
            else
                asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(mine) : "memory");
            if (v == (unsigned)i) break;
            if ((n & 255u) == 0 && globalTimer() > deadline) {
                if (ping) *out = 0;
                return;
            }
        }
        if (!ping) {
            if (mode == 0)
                *(volatile unsigned *)peer = (unsigned)i;
            else
                asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(peer), "r"(i) : "memory");
        }
    }
    if (ping) *out = globalTimer() - t0;
}

/* The same with an 8 KiB message, the one-shot's data trip at T = 1 (H = 4096 bf16): each of
 * 512 threads stores a 16-byte chunk {i, i, i, i} into the peer's buffer, and on the other
 * side each thread polls its own chunk until it holds i, then the block meets at a barrier
 * (the row tree needs every chunk) before it answers. */
__device__ __forceinline__ void stVolatile16(uint4 *p, unsigned u) {
    asm volatile("st.volatile.global.v4.u32 [%0], {%1,%1,%1,%1};" ::"l"(p), "r"(u) : "memory");
}

__global__ void messagePingPong(const uint4 *mine, uint4 *peer, int iters, int ping,
                                unsigned long long timeoutNs, unsigned long long *out) {
    __shared__ int failed;
    if (threadIdx.x == 0) failed = 0;
    __syncthreads();
    const unsigned long long deadline = globalTimer() + timeoutNs;
    const unsigned long long t0 = globalTimer();
    const int t = threadIdx.x;
    for (int i = 1; i <= iters; i++) {
        const unsigned u = (unsigned)i;
        if (ping) stVolatile16(&peer[t], u);
        for (unsigned n = 0;; n++) {
            uint4 v;
            asm volatile("ld.volatile.global.v4.u32 {%0,%1,%2,%3}, [%4];"
                         : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(&mine[t]) : "memory");
            if (v.x == u && v.w == u) break;
            if ((n & 255u) == 0 && globalTimer() > deadline) {
                failed = 1;
                break;
            }
        }
        __syncthreads();
        if (failed) {
            if (ping && t == 0) *out = 0;
            return;
        }
        if (!ping) stVolatile16(&peer[t], u);
    }
    if (ping && t == 0) *out = globalTimer() - t0;
}

/* ------------------------------------------------------------------ bandwidth */

/* dst[i] = src[i], 16 bytes per thread per step: dst may be a peer's memory. */
__global__ void copy16(uint4 *__restrict__ dst, const uint4 *__restrict__ src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

struct Gpu {
    int dev;
    cudaStream_t s;
    cudaEvent_t e0, e1;
    void *src, *dst, *flag, *msg;
    unsigned long long *out;
    int sms;
};

static void setupGpu(Gpu &g, int dev, size_t bytes) {
    g.dev = dev;
    CK(cudaSetDevice(dev));
    CK(cudaStreamCreateWithFlags(&g.s, cudaStreamNonBlocking));
    CK(cudaEventCreate(&g.e0));
    CK(cudaEventCreate(&g.e1));
    CK(cudaMalloc(&g.src, bytes));
    CK(cudaMalloc(&g.dst, bytes));
    CK(cudaMemset(g.src, 0x5a, bytes)); /* contents do not matter: bytes moved do */
    CK(cudaMalloc(&g.flag, 256));
    CK(cudaMemset(g.flag, 0, 256));
    CK(cudaMalloc(&g.msg, 512 * 16));
    CK(cudaMallocManaged(&g.out, sizeof(unsigned long long)));
    CK(cudaDeviceGetAttribute(&g.sms, cudaDevAttrMultiProcessorCount, dev));
}

/* Moves `bytes` from a into b's memory (and, when both, from b into a's at the same time)
 * by `kind` (0: SM stores, 1: copy engine), as a CUDA graph of kReps copies replayed on
 * each GPU: per copy, the time a graph node of this size takes (what an arnorm call in a
 * graph competes with; launch cost amortized). Returns us per copy (median, the slower GPU). */
static const int kReps = 20;
static double peerCopyUs(Gpu &a, Gpu &b, size_t bytes, int kind, int both, int repeats) {
    Gpu *g[2] = {&a, &b};
    const int n = both ? 2 : 1;
    cudaGraphExec_t exec[2] = {nullptr, nullptr};
    for (int i = 0; i < n; i++) {
        Gpu &me = *g[i], &peer = *g[1 - i];
        CK(cudaSetDevice(me.dev));
        cudaGraph_t graph;
        CK(cudaStreamBeginCapture(me.s, cudaStreamCaptureModeThreadLocal));
        for (int k = 0; k < kReps; k++) {
            if (kind == 0) {
                copy16<<<me.sms * 4, 512, 0, me.s>>>((uint4 *)peer.dst, (const uint4 *)me.src,
                                                    bytes / 16);
                CK(cudaGetLastError());
            } else {
                /* peer copies are not capturable; with peer access on, a UVA copy is */
                CK(cudaMemcpyAsync(peer.dst, me.src, bytes, cudaMemcpyDefault, me.s));
            }
        }
        CK(cudaStreamEndCapture(me.s, &graph));
        CK(cudaGraphInstantiate(&exec[i], graph, 0));
        CK(cudaGraphDestroy(graph));
    }
    std::vector<double> v;
    for (int r = 0; r < repeats + 1; r++) {
        for (int i = 0; i < n; i++) {
            CK(cudaSetDevice(g[i]->dev));
            CK(cudaEventRecord(g[i]->e0, g[i]->s));
            CK(cudaGraphLaunch(exec[i], g[i]->s));
            CK(cudaEventRecord(g[i]->e1, g[i]->s));
        }
        double worst = 0;
        for (int i = 0; i < n; i++) {
            CK(cudaSetDevice(g[i]->dev));
            worst = std::max(worst, elapsedMs(g[i]->e0, g[i]->e1));
        }
        if (r > 0) v.push_back(worst * 1e3 / kReps); /* the first is a warm-up */
    }
    for (int i = 0; i < n; i++) {
        CK(cudaSetDevice(g[i]->dev));
        CK(cudaGraphExecDestroy(exec[i]));
    }
    return median(v);
}

static double hbmCopy(Gpu &a, size_t bytes, int repeats) {
    CK(cudaSetDevice(a.dev));
    std::vector<double> v;
    for (int r = 0; r < repeats + 1; r++) {
        const double ms = timeMs(a.s, a.e0, a.e1, [&] {
            copy16<<<a.sms * 4, 512, 0, a.s>>>((uint4 *)a.dst, (const uint4 *)a.src, bytes / 16);
            CK(cudaGetLastError());
        });
        if (r > 0) v.push_back(2.0 * bytes / (ms * 1e-3) / 1e9);
    }
    return median(v);
}

/* One-way latency in us (median of repeats), or -1 when a deadline passed. mode 0 / 1: a
 * flag (pingPong's modes); 2: an 8 KiB message (messagePingPong). */
static double oneWay(Gpu &a, Gpu &b, int mode, int repeats) {
    const int iters = 2000;
    std::vector<double> v;
    for (int r = 0; r < repeats; r++) {
        for (Gpu *g : {&a, &b}) {
            CK(cudaSetDevice(g->dev));
            CK(cudaMemset(g->flag, 0, 256));
            CK(cudaMemset(g->msg, 0, 512 * 16));
            CK(cudaDeviceSynchronize());
        }
        *a.out = 1;
        /* the ponger first, so that it is waiting when the first ping comes */
        for (int side = 0; side < 2; side++) {
            Gpu &me = side == 0 ? b : a, &peer = side == 0 ? a : b;
            const int ping = side == 1;
            CK(cudaSetDevice(me.dev));
            if (mode < 2)
                pingPong<<<1, 1, 0, me.s>>>((volatile unsigned *)me.flag, (unsigned *)peer.flag,
                                            iters, ping, mode, 2000000000ull, me.out);
            else
                messagePingPong<<<1, 512, 0, me.s>>>((const uint4 *)me.msg, (uint4 *)peer.msg,
                                                     iters, ping, 2000000000ull, me.out);
            CK(cudaGetLastError());
        }
        CK(cudaStreamSynchronize(a.s));
        CK(cudaSetDevice(b.dev));
        CK(cudaStreamSynchronize(b.s));
        if (*a.out == 0) return -1;
        v.push_back(*a.out * 1e-3 / (2.0 * iters));
    }
    return median(v);
}

int main(int argc, char **argv) {
    int repeats = 9;
    size_t mib = 64;
    for (int o; (o = getopt(argc, argv, "r:s:h")) != -1;) {
        if (o == 'r') repeats = atoi(optarg);
        else if (o == 's') mib = (size_t)atol(optarg);
        else {
            fprintf(stderr, "usage: arnorm-floors [-r repeats] [-s MiB]\n");
            return o == 'h' ? 0 : 2;
        }
    }
    if (repeats < 1 || mib < 1) {
        fprintf(stderr, "arnorm-floors: -r and -s must be positive\n");
        return 2;
    }
    int n = 0;
    CK(cudaGetDeviceCount(&n));
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("# arnorm-floors: %d x %s, %d SMs, median of %d repeats\n", n, p.name,
           p.multiProcessorCount, repeats);
    printf("# %-28s %10s %-5s  %s\n", "floor", "value", "unit", "how");
    launchFloors(repeats);

    const size_t bytes = mib << 20;
    Gpu a, b;
    setupGpu(a, 0, bytes);
    row("HBM copy (read + write)", hbmCopy(a, bytes, repeats), "GB/s", "local copy kernel");
    int can01 = 0, can10 = 0;
    if (n >= 2) {
        CK(cudaDeviceCanAccessPeer(&can01, 0, 1));
        CK(cudaDeviceCanAccessPeer(&can10, 1, 0));
    }
    if (!can01 || !can10) {
        printf("# SKIP the NVLink rows: %s\n", n < 2 ? "one GPU visible" : "no peer access 0 <-> 1");
        return 0;
    }
    setupGpu(b, 1, bytes);
    CK(cudaSetDevice(0));
    CK(cudaDeviceEnablePeerAccess(1, 0));
    CK(cudaSetDevice(1));
    CK(cudaDeviceEnablePeerAccess(0, 0));
    char how[96];
    double lat0 = oneWay(a, b, 0, repeats), lat1 = oneWay(a, b, 1, repeats);
    double lat2 = oneWay(a, b, 2, repeats);
    if (lat0 < 0 || lat1 < 0 || lat2 < 0) {
        printf("# FAIL: a ping-pong wait passed its 2 s deadline (peers not co-resident?)\n");
        return 1;
    }
    row("one-way latency, volatile", lat0, "us", "flag ping-pong GPU 0 <-> 1, round trip / 2");
    row("one-way latency, rel/acq sys", lat1, "us", "the same with st.release / ld.acquire.sys");
    row("one-way latency, 8 KiB message", lat2, "us",
        "512 threads push 16 B each, the peer's 512 poll their own, barrier");
    /* per size: us per copy as a graph node, and the bandwidth that gives (bytes / time) */
    for (size_t kb : {(size_t)64, (size_t)256, (size_t)1024, (size_t)4096, mib << 10}) {
        if (kb > (mib << 10)) continue;
        const size_t sz = kb << 10;
        for (int kind = 0; kind < 2; kind++)
            for (int both = 0; both < 2; both++) {
                const double us = peerCopyUs(a, b, sz, kind, both, repeats);
                char what[48];
                snprintf(what, sizeof what, "%s %s %zu KiB", kind ? "copy engine" : "SM stores",
                         both ? "both ways" : "one way", kb);
                snprintf(how, sizeof how, "us per copy in a graph of %d (%.0f GB/s%s)", kReps,
                         sz / (us * 1e-6) / 1e9, both ? " each way" : "");
                row(what, us, "us", how);
            }
    }
    return 0;
}
