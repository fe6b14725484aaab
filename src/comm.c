/*
 * comm.c - communicator life cycle: unique id, init (backend choice), destroy, abort,
 * queries; and the registry that lets every entry point refuse a dead handle.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "arnorm_internal.h"

/* ------------------------------------------------------------------ registry */

static pthread_mutex_t registryLock = PTHREAD_MUTEX_INITIALIZER;
static struct arnormComm **registry;
static size_t registryCount, registryCap;

static int registryAdd(struct arnormComm *c) {
    pthread_mutex_lock(&registryLock);
    if (registryCount == registryCap) {
        size_t cap = registryCap ? 2 * registryCap : 16;
        void *p = realloc(registry, cap * sizeof *registry);
        if (!p) {
            pthread_mutex_unlock(&registryLock);
            return 0;
        }
        registry = p;
        registryCap = cap;
    }
    registry[registryCount++] = c;
    pthread_mutex_unlock(&registryLock);
    return 1;
}

static int registryRemove(struct arnormComm *c) {
    int found = 0;
    pthread_mutex_lock(&registryLock);
    for (size_t i = 0; i < registryCount; i++)
        if (registry[i] == c) {
            registry[i] = registry[--registryCount];
            found = 1;
            break;
        }
    pthread_mutex_unlock(&registryLock);
    return found;
}

arnormResult_t arnormCheckComm(arnormComm_t comm) {
    if (!comm) return arnormError(NULL, arnormInvalidArgument, "comm: NULL");
    int live = 0;
    pthread_mutex_lock(&registryLock);
    for (size_t i = 0; i < registryCount && !live; i++) live = registry[i] == comm;
    pthread_mutex_unlock(&registryLock);
    if (!live)
        return arnormError(NULL, arnormInvalidUsage, "comm: not a live communicator "
                           "(destroyed, aborted, or never initialized)");
    return arnormSuccess;
}

/* ------------------------------------------------------------------ unique id */

#if !defined(ARNORM_WITH_CUDA)
int arnormCudaUsable(void) { return 0; }
#endif

arnormResult_t arnormGetUniqueId(arnormUniqueId *uniqueId) {
    if (!uniqueId) return arnormError(NULL, arnormInvalidArgument, "uniqueId: NULL pointer");
    arnormIdPayload id;
    memset(&id, 0, sizeof id);
    id.magic = ARNORM_ID_MAGIC;
    if (getrandom(&id.nonce, sizeof id.nonce, 0) != (ssize_t)sizeof id.nonce)
        return arnormError(NULL, arnormSystemError, "getrandom failed");
    /* Unpredictable name: created O_EXCL 0600, so a guessed name cannot be pre-planted. */
    snprintf(id.shmName, sizeof id.shmName, "/arnorm-%u-%016llx", (unsigned)getuid(),
             (unsigned long long)id.nonce);
#if defined(ARNORM_WITH_CUDA)
    if (arnormCudaUsable()) {
        ARNORM_TRY(arnormCudaGetNcclId(id.ncclId));
        id.hasNcclId = 1;
    }
#endif
    memset(uniqueId, 0, sizeof *uniqueId);
    memcpy(uniqueId->internal, &id, sizeof id);
    return arnormSuccess;
}

/* ------------------------------------------------------------------ init / destroy */

static arnormResult_t newComm(int nranks, int rank, const arnormConfig_t *config,
                              struct arnormComm **out) {
    arnormSettings s;
    ARNORM_TRY(arnormResolveSettings(config, &s));
    struct arnormComm *c = calloc(1, sizeof *c);
    if (!c) return arnormError(NULL, arnormOutOfMemory, "allocating a communicator");
    c->rank = rank;
    c->nranks = nranks;
    c->settings = s;
    c->groupReason = arnormReasonNone;
    *out = c;
    return arnormSuccess;
}

/* Publishes an initialized comm, or frees a failed one keeping its message for the thread. */
static arnormResult_t finishInit(struct arnormComm *c, arnormResult_t r, arnormComm_t *out) {
    if (r == arnormSuccess && !registryAdd(c)) {
        c->ops->destroy(c, 1);
        r = arnormError(c, arnormOutOfMemory, "registering the communicator");
    }
    if (r != arnormSuccess) {
        arnormError(NULL, r, "%s", c->lastError); /* the message outlives the comm */
        free(c);
        return r;
    }
    c->magic = ARNORM_COMM_MAGIC;
    *out = c;
    arnormLog(ARNORM_LOG_INFO, "rank %d/%d ready on the %s backend, workspace %zu bytes",
              c->rank, c->nranks, c->ops->name, c->workspaceBytes);
    return arnormSuccess;
}

arnormResult_t arnormCommInitRank(arnormComm_t *comm, int nranks, arnormUniqueId uniqueId,
                                  int rank, const arnormConfig_t *config) {
    if (!comm) return arnormError(NULL, arnormInvalidArgument, "comm: NULL pointer");
    *comm = NULL;
    if (nranks < 1)
        return arnormError(NULL, arnormInvalidArgument, "nranks: %d < 1", nranks);
    if (rank < 0 || rank >= nranks)
        return arnormError(NULL, arnormInvalidArgument, "rank: %d outside [0, %d)", rank,
                           nranks);
    arnormIdPayload id;
    memcpy(&id, uniqueId.internal, sizeof id);
    if (id.magic != ARNORM_ID_MAGIC || id.shmName[0] != '/' ||
        !memchr(id.shmName, 0, sizeof id.shmName))
        return arnormError(NULL, arnormInvalidArgument,
                           "uniqueId: not produced by arnormGetUniqueId");
    struct arnormComm *c = NULL;
    ARNORM_TRY(newComm(nranks, rank, config, &c));
    arnormResult_t r;
    arnormBackend_t want = c->settings.backend;
    if (want == arnormBackendAuto)
        want = arnormCudaUsable() && id.hasNcclId ? arnormBackendCuda : arnormBackendCpu;
    if (want == arnormBackendCuda) {
#if defined(ARNORM_WITH_CUDA)
        if (!id.hasNcclId)
            r = arnormError(c, arnormInvalidUsage, "backend cuda: the unique id was made on a "
                            "host without a usable GPU");
        else
            r = arnormCudaInitRank(c, &id);
#else
        r = arnormError(c, arnormNotSupported, "backend cuda: arnorm was built without CUDA");
#endif
    } else {
        r = arnormCpuInit(c, &id);
    }
    return finishInit(c, r, comm);
}

arnormResult_t arnormCommInitAll(arnormComm_t *comms, int ndev, const int *devlist,
                                 const arnormConfig_t *config) {
    if (!comms) return arnormError(NULL, arnormInvalidArgument, "comms: NULL pointer");
    if (ndev < 1) return arnormError(NULL, arnormInvalidArgument, "ndev: %d < 1", ndev);
#if defined(ARNORM_WITH_CUDA)
    struct arnormComm **cs = calloc((size_t)ndev, sizeof *cs);
    if (!cs) return arnormError(NULL, arnormOutOfMemory, "allocating %d communicators", ndev);
    arnormResult_t r = arnormSuccess;
    for (int i = 0; i < ndev && r == arnormSuccess; i++) r = newComm(ndev, i, config, &cs[i]);
    if (r == arnormSuccess && cs[0]->settings.backend == arnormBackendCpu)
        r = arnormError(NULL, arnormInvalidArgument, "config.backend: arnormCommInitAll is "
                        "single-process multi-GPU; the CPU backend needs one process per rank");
    if (r == arnormSuccess) {
        r = arnormCudaInitAll(cs, ndev, devlist);
        if (r != arnormSuccess) arnormError(NULL, r, "%s", cs[0]->lastError);
    }
    if (r != arnormSuccess) {
        for (int i = 0; i < ndev; i++) free(cs[i]);
        free(cs);
        return r;
    }
    int registered = 0;
    while (registered < ndev && registryAdd(cs[registered])) registered++;
    if (registered < ndev) { /* out of memory for the registry: undo everything */
        for (int i = 0; i < ndev; i++) {
            if (i < registered) registryRemove(cs[i]);
            cs[i]->ops->destroy(cs[i], 1);
            free(cs[i]);
        }
        free(cs);
        return arnormError(NULL, arnormOutOfMemory, "registering %d communicators", ndev);
    }
    for (int i = 0; i < ndev; i++) {
        cs[i]->magic = ARNORM_COMM_MAGIC;
        comms[i] = cs[i];
    }
    free(cs);
    return arnormSuccess;
#else
    (void)devlist;
    (void)config;
    return arnormError(NULL, arnormNotSupported, "arnormCommInitAll: built without CUDA");
#endif
}

arnormResult_t arnormCommInitFromNccl(arnormComm_t *comm, void *ncclComm,
                                      const arnormConfig_t *config) {
    if (!comm) return arnormError(NULL, arnormInvalidArgument, "comm: NULL pointer");
    *comm = NULL;
    if (!ncclComm) return arnormError(NULL, arnormInvalidArgument, "ncclComm: NULL");
#if defined(ARNORM_WITH_CUDA)
    struct arnormComm *c = NULL;
    ARNORM_TRY(newComm(1, 0, config, &c)); /* rank and size come from the NCCL comm */
    return finishInit(c, arnormCudaInitFromNccl(c, ncclComm), comm);
#else
    (void)config;
    return arnormError(NULL, arnormNotSupported, "arnormCommInitFromNccl: built without CUDA");
#endif
}

static arnormResult_t teardown(arnormComm_t comm, int abort) {
    ARNORM_TRY(arnormCheckComm(comm));
    if (!registryRemove(comm)) return arnormCheckComm(comm);
    arnormResult_t r = comm->ops->destroy(comm, abort);
    if (r != arnormSuccess) arnormError(NULL, r, "%s", comm->lastError);
    comm->magic = 0;
    free(comm);
    return r;
}

arnormResult_t arnormCommDestroy(arnormComm_t comm) { return teardown(comm, 0); }
arnormResult_t arnormCommAbort(arnormComm_t comm) { return teardown(comm, 1); }

/* ------------------------------------------------------------------ queries */

#define QUERY(name, type, expr)                                                            \
    arnormResult_t name(arnormComm_t comm, type *out) {                                     \
        ARNORM_TRY(arnormCheckComm(comm));                                                  \
        if (!out) return arnormError(comm, arnormInvalidArgument, #name ": NULL output");   \
        *out = (expr);                                                                      \
        return arnormSuccess;                                                               \
    }

arnormResult_t arnormCommGetAsyncError(arnormComm_t comm, arnormResult_t *asyncError) {
    ARNORM_TRY(arnormCheckComm(comm));
    if (!asyncError)
        return arnormError(comm, arnormInvalidArgument, "asyncError: NULL output");
    if (comm->asyncError == arnormSuccess && comm->ops->pollAsync) comm->ops->pollAsync(comm);
    *asyncError = (arnormResult_t)comm->asyncError;
    return arnormSuccess;
}
QUERY(arnormCommCount, int, comm->nranks)
QUERY(arnormCommUserRank, int, comm->rank)
QUERY(arnormCommGetBackend, arnormBackend_t, comm->settings.backend)
QUERY(arnormCommWorkspaceBytes, size_t, comm->workspaceBytes)

arnormResult_t arnormCommSetAlgo(arnormComm_t comm, arnormAlgo_t algo) {
    ARNORM_TRY(arnormCheckComm(comm));
    if ((int)algo < 0 || algo >= arnormNumAlgos || algo == arnormAlgoNormOnly)
        return arnormError(comm, arnormInvalidArgument,
                           "algo: %d is not auto, oneshot, twoshot or fallback", (int)algo);
    comm->settings.algo = algo;
    return arnormSuccess;
}
