/* gpu_test.h - what the GPU suites share: how many CUDA devices are visible (asked in a
 * child process: a process that forks its ranks must not start CUDA itself first), and a
 * CUDA return-code check for TU_CHECK-style rank functions. */
#ifndef ARNORM_GPU_TEST_H
#define ARNORM_GPU_TEST_H

#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

static inline int probeDevices(void) {
    pid_t pid = fork();
    if (pid == 0) {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
        _exit(n > 100 ? 100 : n);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 0;
}

/* Fails the rank function (TU_CHECK, testutil.h) when a CUDA call does not succeed. */
#define TU_CUDA(call)                                                                      \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        TU_CHECK(e_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));             \
    } while (0)

#endif
