/* cuda_check.h - the benchmarks' CUDA return-code check: names the call, file and line,
 * then runs `onFail` (return -1, exit(1), ...). */
#ifndef ARNORM_BENCH_CUDA_CHECK_H
#define ARNORM_BENCH_CUDA_CHECK_H

#include <cuda_runtime.h>
#include <stdio.h>

#define BENCH_CUDA_CHECK(call, onFail)                                                     \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess) {                                                           \
            fprintf(stderr, "CUDA %s:%d %s: %s\n", __FILE__, __LINE__, #call,              \
                    cudaGetErrorString(e_));                                               \
            onFail;                                                                        \
        }                                                                                  \
    } while (0)

#endif /* ARNORM_BENCH_CUDA_CHECK_H */
