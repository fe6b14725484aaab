/*
 * arnorm_internal.h - what the host core and the backends share.
 *
 * Data path of one call: public entry (ops.c) -> validation -> dispatch (dispatch.c picks
 * the algo) -> backend ops table (cpu/, cuda/) -> kernel.
 */
#ifndef ARNORM_INTERNAL_H
#define ARNORM_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>

#include "arnorm.h"
#include "op_args.h"

#define ARNORM_COMM_MAGIC 0x434f4d4du /* "COMM" while alive */
#define ARNORM_ID_MAGIC 0x61724944u   /* "arID" */

/* What arnormGetUniqueId puts into arnormUniqueId.internal. */
typedef struct {
    uint32_t magic;
    uint32_t hasNcclId;        /* 1 when ncclId holds an ncclUniqueId */
    uint64_t nonce;            /* random; names the CPU backend's segment */
    char shmName[64];          /* POSIX shm name of the CPU backend's segment */
    char ncclId[128];          /* ncclUniqueId (NCCL_UNIQUE_ID_BYTES) */
} arnormIdPayload;

/* Every setting of a communicator, resolved: config field, else environment, else default. */
typedef struct {
    arnormBackend_t backend;
    arnormAlgo_t algo;
    long long fuseMaxBytes;    /* < 0 until the backend default is known */
    long long oneShotMaxBytes;
    long long oneShotMaxBytesF32; /* the same for fp32 calls: differs only by the CPU default */
    long long oneShotMaxBytesWide; /* the same for 16-bit rows of more than
                                      ARNORM_NARROW_HIDDEN elements: differs only by the CUDA
                                      default */
    long long workspaceBytes;
    long long timeoutMs;
    int usePdl;
    int checkMode;
} arnormSettings;

/* Rows up to this many elements run in the CUDA backend's 512-thread kernels, wider ones in
 * the 1024-thread kernels, where the two-shot's fixed cost is higher (docs/performance.md,
 * version 8): the one-shot's default limit differs between the two. */
#define ARNORM_NARROW_HIDDEN 4096

/* The one-shot's limit (bytes per rank tensor) for calls of `dtype` with rows of `hidden`
 * elements: one rule for the fused dispatch and the plain all-reduce. */
static inline long long arnormOneShotMaxBytes(const arnormSettings *s, arnormDataType_t dtype,
                                              size_t hidden) {
    if (dtype == arnormFloat32) return s->oneShotMaxBytesF32;
    return hidden > ARNORM_NARROW_HIDDEN ? s->oneShotMaxBytesWide : s->oneShotMaxBytes;
}

struct arnormComm;

/* The operations a check-mode descriptor names. */
enum { OP_FUSED = 1, OP_ALLREDUCE = 2, OP_NORM = 3 };

/* A backend: the same operations behind every path. Args are validated before. */
typedef struct {
    const char *name;
    /* algo is OneShot, TwoShot or Fallback (never Auto / NormOnly). */
    arnormResult_t (*fused)(struct arnormComm *comm, const arnormNormArgs *args,
                            arnormAlgo_t algo, arnormStream_t stream);
    arnormResult_t (*allReduce)(struct arnormComm *comm, const void *send, void *recv,
                                size_t count, arnormDataType_t dtype, arnormStream_t stream);
    arnormResult_t (*norm)(struct arnormComm *comm, const arnormNormArgs *args,
                           arnormStream_t stream);
    /* arnormReasonNone when `ptr` may be used by the fused path of this rank. */
    arnormReason_t (*pointerReason)(struct arnormComm *comm, const void *ptr);
    /* Check mode (optional, may be NULL; op is an OP_* value): fails on every rank when ranks' shapes differ,
     * before anything of the call is enqueued on `stream`. */
    arnormResult_t (*checkCall)(struct arnormComm *comm, int op, size_t tokens, size_t hidden,
                                int dtype, arnormStream_t stream);
    /* Frees the backend state. abort != 0: never wait for peers or pending work. */
    arnormResult_t (*destroy)(struct arnormComm *comm, int abort);
    /* Optional: turns errors found by the device since the last call (a kernel's timeout)
     * into the comm's sticky error, for arnormCommGetAsyncError. */
    arnormResult_t (*pollAsync)(struct arnormComm *comm);
} arnormBackendOps;

struct arnormComm {
    uint32_t magic;
    int rank;
    int nranks;
    arnormSettings settings;
    const arnormBackendOps *ops;
    void *impl;                 /* backend state */
    arnormReason_t groupReason; /* why no call of this group can fuse, or ReasonNone */
    size_t workspaceBytes;      /* memory this rank holds for the fused path */
    volatile int asyncError;    /* arnormResult_t; sticky once set */
    char lastError[512];
    char failMessage[512];      /* what put the comm into its error state */
    const void *fusablePtrs[16]; /* pointers pointerReason accepted: engines reuse buffers */
};

/* ---- errors and logging (error.c) ---- */
/* Records a message for `comm` (or this thread when comm is NULL) and returns r. */
arnormResult_t arnormError(struct arnormComm *comm, arnormResult_t r, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Like arnormError, and puts the communicator into the sticky error state. */
arnormResult_t arnormFail(struct arnormComm *comm, arnormResult_t r, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
enum { ARNORM_LOG_NONE = 0, ARNORM_LOG_WARN = 1, ARNORM_LOG_INFO = 2 };
void arnormLog(int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#define ARNORM_TRY(call)                                                                   \
    do {                                                                                   \
        arnormResult_t arnormTryResult_ = (call);                                          \
        if (arnormTryResult_ != arnormSuccess) return arnormTryResult_;                   \
    } while (0)

/* ---- settings (config.c) ---- */
/* Validates `config` (NULL = defaults) and resolves it against the environment. */
arnormResult_t arnormResolveSettings(const arnormConfig_t *config, arnormSettings *out);
/* Fills the backend-dependent defaults left unset (< 0) for a group of nranks. */
void arnormSettingsFinish(arnormSettings *s, arnormBackend_t backend, int nranks, int smMajor);
long long arnormDefaultFuseMaxBytes(arnormBackend_t backend, int nranks, int smMajor);

/* ---- dispatch (dispatch.c) ---- */
/* Fills info (algo, reason, budget) for a fused call on the given tensors (NULLs skipped). */
void arnormDispatch(struct arnormComm *comm, const void *const *ptrs, int nptrs, size_t tokens,
                    size_t hidden, size_t rowStride, int dtype, arnormFuseInfo_t *info);

/* ---- communicator registry (comm.c): handles are checked before any use ---- */
arnormResult_t arnormCheckComm(arnormComm_t comm);

/* ---- backends ---- */
extern const arnormBackendOps arnormCpuOps;
arnormResult_t arnormCpuInit(struct arnormComm *comm, const arnormIdPayload *id);

/* CUDA backend entry points (src/cuda); absent when built without CUDA. */
int arnormCudaUsable(void); /* built with CUDA and a device is visible */
arnormResult_t arnormCudaGetNcclId(char ncclId[128]);
arnormResult_t arnormCudaInitRank(struct arnormComm *comm, const arnormIdPayload *id);
arnormResult_t arnormCudaInitAll(struct arnormComm **comms, int ndev, const int *devlist);
arnormResult_t arnormCudaInitFromNccl(struct arnormComm *comm, void *ncclComm);

#endif /* ARNORM_INTERNAL_H */
