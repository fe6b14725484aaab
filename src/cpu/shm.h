/* shm.h - private POSIX shared-memory segments: 0600, O_EXCL, no symlinks, space reserved. */
#ifndef ARNORM_SHM_H
#define ARNORM_SHM_H

#include <stddef.h>

#include "arnorm_internal.h"

typedef struct {
    void *base;
    size_t size;
} arnormShm;

/* Creates `name` (must not exist) of `size` bytes, owner-only, and maps it. The space is
 * reserved up front so an exhausted /dev/shm is an error here, not a SIGBUS later. */
arnormResult_t arnormShmCreate(struct arnormComm *comm, const char *name, size_t size,
                               arnormShm *out);
/* Opens and maps an existing segment, waiting up to timeoutMs for its creator; refuses one
 * not owned by this user, not 0600, or smaller than `size`. */
arnormResult_t arnormShmOpen(struct arnormComm *comm, const char *name, size_t size,
                             long long timeoutMs, arnormShm *out);
void arnormShmUnlink(const char *name);
void arnormShmUnmap(arnormShm *shm);

#endif
