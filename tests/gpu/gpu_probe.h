/* gpu_probe.h - how many CUDA devices are visible, asked in a child process: a process
 * that forks its ranks must not start CUDA itself first. */
#ifndef ARNORM_GPU_PROBE_H
#define ARNORM_GPU_PROBE_H

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

#endif
