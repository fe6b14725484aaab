/* bench_host.c - the benchmark's host-memory device: CPU backend, wall-clock timing. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_device.h"

static int hostSetup(int rank, int nranks) { (void)rank; (void)nranks; return 0; }
static void *hostAlloc(size_t bytes) { return aligned_alloc(64, (bytes + 63) / 64 * 64); }
static void hostRelease(void *p) { free(p); }
static void hostCopy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static int hostSync(void) { return 0; }
static arnormStream_t hostStream(void) { return NULL; }
static void hostTeardown(void) {}

static double nowUs(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

static double hostTime(benchCallFn call, void *ctx, int iters, int graph,
                       void (*barrier)(void), double *hostUs) {
    (void)graph;
    barrier();
    double t0 = nowUs();
    for (int i = 0; i < iters; i++)
        if (call(ctx)) return -1;
    *hostUs = (nowUs() - t0) / iters;
    return *hostUs;
}

static double hostEmpty(int iters, int graph, double *hostUs) {
    (void)iters;
    (void)graph;
    *hostUs = 0;
    return 0;
}

const benchDevice benchHost = {"cpu", hostSetup, hostAlloc, hostRelease, hostCopy, hostCopy,
                               hostSync, hostStream, hostTime, hostEmpty, hostTeardown};
