/* bench_device.h - where the benchmark's buffers live and how its calls are timed: host
 * memory and wall clock on the CPU backend, device memory and CUDA events/graphs on CUDA. */
#ifndef ARNORM_BENCH_DEVICE_H
#define ARNORM_BENCH_DEVICE_H

#include <stddef.h>

#include "arnorm.h"

typedef int (*benchCallFn)(void *ctx); /* one arnorm call; 0 on success */

typedef struct {
    const char *name;
    int (*setup)(int rank, int nranks); /* select the device, create the stream */
    void *(*alloc)(size_t bytes);
    void (*release)(void *p);
    void (*upload)(void *dst, const void *src, size_t bytes);
    void (*download)(void *dst, const void *src, size_t bytes);
    int (*sync)(void);
    arnormStream_t (*stream)(void);
    /* Times `iters` calls; `graph`: captured once in a CUDA graph and replayed. Calls
     * barrier() right before starting the clock. Returns us per call (device time on
     * CUDA), < 0 on failure; *hostUs gets the host's us per call to issue them. */
    double (*time)(benchCallFn call, void *ctx, int iters, int graph, void (*barrier)(void),
                   double *hostUs);
    /* us per launch of an empty kernel (stream loop, or graph node when graph); *hostUs as
     * above */
    double (*emptyKernel)(int iters, int graph, double *hostUs);
    void (*teardown)(void);
} benchDevice;

extern const benchDevice benchHost;
#if defined(ARNORM_BENCH_WITH_CUDA)
extern const benchDevice benchCuda;
int benchCudaDeviceCount(void);
#endif

#endif
