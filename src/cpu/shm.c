/* shm.c - POSIX shared-memory segments for the CPU backend. */
#define _GNU_SOURCE
#include "cpu/shm.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static arnormResult_t mapFd(struct arnormComm *comm, int fd, const char *name, size_t size,
                            arnormShm *out) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return arnormError(comm, arnormSystemError, "mmap of shared segment %s (%zu bytes): %s",
                           name, size, strerror(errno));
    out->base = p;
    out->size = size;
    return arnormSuccess;
}

arnormResult_t arnormShmCreate(struct arnormComm *comm, const char *name, size_t size,
                               arnormShm *out) {
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return arnormError(comm, arnormSystemError, "shm_open(%s, O_EXCL): %s", name,
                           strerror(errno));
    int err = posix_fallocate(fd, 0, (off_t)size);
    if (err == EINVAL || err == EOPNOTSUPP) err = ftruncate(fd, (off_t)size) ? errno : 0;
    if (err) {
        close(fd);
        shm_unlink(name);
        return arnormError(comm, err == ENOSPC ? arnormOutOfMemory : arnormSystemError,
                           "reserving %zu bytes of shared memory for %s: %s (is /dev/shm "
                           "full or too small?)", size, name, strerror(err));
    }
    return mapFd(comm, fd, name, size, out);
}

arnormResult_t arnormShmOpen(struct arnormComm *comm, const char *name, size_t size,
                             long long timeoutMs, arnormShm *out) {
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int fd = shm_open(name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0);
        if (fd >= 0) {
            struct stat st;
            if (fstat(fd, &st) != 0) {
                close(fd);
                return arnormError(comm, arnormSystemError, "fstat %s: %s", name,
                                   strerror(errno));
            }
            if (st.st_uid != geteuid() || (st.st_mode & 0777) != 0600) {
                close(fd);
                return arnormError(comm, arnormSystemError,
                                   "shared segment %s is not private to this user "
                                   "(uid %u, mode %o): refusing it", name,
                                   (unsigned)st.st_uid, (unsigned)(st.st_mode & 0777));
            }
            if ((size_t)st.st_size >= size) return mapFd(comm, fd, name, size, out);
            close(fd); /* creator has not reserved the space yet */
        } else if (errno != ENOENT) {
            return arnormError(comm, arnormSystemError, "shm_open(%s): %s", name,
                               strerror(errno));
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long ms = (now.tv_sec - t0.tv_sec) * 1000LL + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (ms > timeoutMs)
            return arnormFail(comm, arnormTimeout,
                              "rank 0 did not create shared segment %s within %lld ms", name,
                              timeoutMs);
        struct timespec d = {0, 1000000};
        nanosleep(&d, NULL);
    }
}

void arnormShmUnlink(const char *name) { shm_unlink(name); }

void arnormShmUnmap(arnormShm *shm) {
    if (shm->base) munmap(shm->base, shm->size);
    shm->base = NULL;
}
