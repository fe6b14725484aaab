/*
 * arnorm.h - fused all-reduce + residual add + RMSNorm for tensor-parallel inference.
 *
 * One public header, valid C99 and C++. Every rank of a tensor-parallel group holds a
 * partial sum `partial` [T x H] of a row-parallel layer. arnorm computes, in one call,
 *
 *     a            = sum over ranks of partial          (fp32, rank order, one rounding)
 *     residual_out = a + residual                       (rounded to the storage type)
 *     norm_out     = residual_out * rsqrt(mean(residual_out^2) + eps) * (weight_bias + weight)
 *
 * with weight_bias = 1.0 for Gemma (scale 1 + w) and 0.0 for Llama (scale w). Results are
 * bitwise identical on every rank, run to run, and whatever the token count or the path
 * (docs/numerics.md gives the exact arithmetic and the error bound).
 *
 * Backends: CUDA (one kernel over NVLink peer memory, NCCL + norm kernel as fallback) and
 * CPU (ranks are processes on one host, buffers in POSIX shared memory).
 *
 * Worked example: one process per rank, rank 0 ships the unique id by any means.
 *
 *     arnormUniqueId id;
 *     if (rank == 0) arnormGetUniqueId(&id);
 *     broadcast(&id, sizeof id);                      // MPI, torch.distributed, a file...
 *
 *     arnormConfig_t cfg = ARNORM_CONFIG_INITIALIZER;  // unset fields mean "default"
 *     arnormComm_t comm;
 *     ARNORM_CHECK(arnormCommInitRank(&comm, nranks, id, rank, &cfg));
 *
 *     // per layer, after the row-parallel matmul wrote `partial` [tokens x hidden] bf16:
 *     ARNORM_CHECK(arnormAllReduceResidualRMSNorm(
 *         partial, residual, residual,  normed,       // residual updated in place
 *         gamma, arnormBfloat16, 1e-6f, 1.0f,          // Gemma: scale by 1 + gamma
 *         tokens, hidden, arnormBfloat16, comm, stream));
 *
 *     arnormCommDestroy(comm);
 *
 * where ARNORM_CHECK is yours, e.g. abort with arnormGetErrorString(r) and
 * arnormGetLastError(comm). Calls are stream-ordered on CUDA (`stream` is a cudaStream_t,
 * NULL for the legacy stream) and synchronous on the CPU backend (`stream` ignored).
 *
 * Collective rule: every rank of a communicator makes the same sequence of collective
 * calls with the same tokens, hidden and dtype. A rank that diverges makes its peers wait
 * until the configured timeout, after which every waiting call fails with arnormTimeout
 * or arnormRemoteError and the communicator stays in that error state. A failed call may
 * have written the rows it finished before the failure (rows are processed in order);
 * the others are untouched. Check mode (config.checkMode) verifies the shapes of every
 * call across ranks instead of leaving a mismatch undefined: a mismatch fails the call on
 * every rank with arnormInvalidUsage before anything is written. On CUDA it synchronizes
 * the stream once per call and skips calls being captured into a graph.
 *
 * Thread safety: a communicator is used by one thread at a time.
 */
#ifndef ARNORM_H
#define ARNORM_H

#include <limits.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ARNORM_API __attribute__((visibility("default")))
#else
#define ARNORM_API
#endif

#define ARNORM_MAJOR 0
#define ARNORM_MINOR 1
#define ARNORM_PATCH 0
#define ARNORM_VERSION (ARNORM_MAJOR * 10000 + ARNORM_MINOR * 100 + ARNORM_PATCH)

/* ---------------------------------------------------------------- types */

/* Opaque communicator: one rank's membership in a group. */
typedef struct arnormComm *arnormComm_t;

/* A cudaStream_t on the CUDA backend (converts implicitly); ignored on the CPU backend. */
typedef void *arnormStream_t;

typedef enum {
    arnormSuccess = 0,
    arnormInvalidArgument = 1, /* a bad argument; the message names it */
    arnormInvalidUsage = 2,    /* a valid argument in the wrong state (destroyed comm, ...) */
    arnormSystemError = 3,     /* an OS call failed (shm_open, mmap, ...) */
    arnormCudaError = 4,       /* a CUDA runtime call failed */
    arnormNcclError = 5,       /* an NCCL call failed */
    arnormTimeout = 6,         /* a wait on a peer ran past the configured bound */
    arnormRemoteError = 7,     /* a peer failed, exited or aborted */
    arnormOutOfMemory = 8,     /* workspace or host allocation failed (on some rank) */
    arnormNotSupported = 9,    /* built without, or no device for, what was asked */
    arnormInternalError = 10,  /* a bug in arnorm: please report */
    arnormNumResults = 11
} arnormResult_t;

typedef enum {
    arnormBfloat16 = 0,
    arnormFloat16 = 1,
    arnormFloat32 = 2,
    arnormNumDataTypes = 3
} arnormDataType_t;

typedef enum {
    arnormBackendAuto = 0, /* CUDA when a GPU is visible and arnorm was built with CUDA */
    arnormBackendCpu = 1,
    arnormBackendCuda = 2,
    arnormNumBackends = 3
} arnormBackend_t;

/* How a fused call is carried out. Auto lets the dispatcher choose (see arnormCanFuse). */
typedef enum {
    arnormAlgoAuto = 0,
    arnormAlgoNormOnly = 1, /* one rank: residual add + norm, one kernel */
    arnormAlgoOneShot = 2,  /* fused, Lamport one-shot (small messages) */
    arnormAlgoTwoShot = 3,  /* fused, reduce-scatter + norm + all-gather (large) */
    arnormAlgoFallback = 4, /* unfused: all-reduce (NCCL on CUDA), then the norm kernel */
    arnormNumAlgos = 5
} arnormAlgo_t;

/* Why the fused path does not apply to a call. */
typedef enum {
    arnormReasonNone = 0,            /* it applies */
    arnormReasonSingleRank = 1,      /* one rank: nothing to reduce (norm-only path) */
    arnormReasonNotDevicePointer = 2,/* CUDA backend, pointer not device memory of this GPU */
    arnormReasonNotContiguous = 3,   /* row stride != hidden */
    arnormReasonMisaligned = 4,      /* pointer or row not 16-byte aligned */
    arnormReasonUnsupportedDtype = 5,
    arnormReasonOverBudget = 6,      /* tokens > maxTokens for this hidden size and dtype */
    arnormReasonMultiHost = 7,       /* ranks on several hosts */
    arnormReasonNoPeerAccess = 8,    /* some pair of GPUs has no P2P */
    arnormReasonNoWorkspace = 9,     /* fused workspace could not be set up */
    arnormReasonDisabled = 10,       /* fused path disabled by config/env (algo, budget 0) */
    arnormNumReasons = 11
} arnormReason_t;

/* Answer of arnormCanFuse. */
typedef struct {
    int canFuse;           /* 1 when the fused path would run */
    arnormAlgo_t algo;     /* what a call with these arguments would run */
    arnormReason_t reason; /* arnormReasonNone when canFuse */
    size_t maxTokens;      /* token budget of the fused path for this hidden and dtype */
} arnormFuseInfo_t;

/* Bootstrap bytes: produced by one rank, copied verbatim to all others. */
#define ARNORM_UNIQUE_ID_BYTES 256
typedef struct {
    char internal[ARNORM_UNIQUE_ID_BYTES];
} arnormUniqueId;

/* ---------------------------------------------------------------- config */

#define ARNORM_CONFIG_MAGIC 0x61726e6fu /* "arno" */
#define ARNORM_CONFIG_UNDEF_INT INT_MIN
#define ARNORM_CONFIG_UNDEF_LL LLONG_MIN

/*
 * Communicator options. Always start from ARNORM_CONFIG_INITIALIZER: a struct without the
 * magic is refused. An unset field takes its environment variable (read once per process
 * and logged once with ARNORM_DEBUG=INFO), else the built-in default.
 */
typedef struct {
    size_t size;          /* sizeof(arnormConfig_t), set by the initializer */
    unsigned int magic;   /* ARNORM_CONFIG_MAGIC */
    unsigned int version; /* ARNORM_VERSION the caller was compiled against */
    int backend;          /* arnormBackend_t                        ARNORM_BACKEND=auto|cpu|cuda */
    int algo;             /* arnormAlgo_t forced for fused calls    ARNORM_ALGO=auto|oneshot|twoshot|fallback */
    long long fuseMaxBytes;    /* fused path up to this many bytes per rank tensor (T*H*size);
                                  0 disables fusing. Default: per backend and world size.
                                                                    ARNORM_FUSE_MAX_BYTES */
    long long oneShotMaxBytes; /* one-shot up to this, two-shot above; default per backend,
                                  world size, dtype and row width (CPU: 0, fp32 64 KiB);
                                  a value set applies to every call
                                                                    ARNORM_ONESHOT_MAX_BYTES */
    long long workspaceBytes;  /* fused workspace per slot; larger calls are chunked
                                                                    ARNORM_WORKSPACE_BYTES */
    long long timeoutMs;       /* bound on every wait for a peer (default 30000)
                                                                    ARNORM_TIMEOUT_MS */
    int usePdl;           /* CUDA sm_90+: programmatic dependent launch (default 1) ARNORM_PDL */
    int checkMode;        /* 1: verify every call's shape matches across ranks (costs a
                             round trip; CUDA: a stream sync; default 0) ARNORM_CHECK */
} arnormConfig_t;

#define ARNORM_CONFIG_INITIALIZER                                                        \
    {                                                                                    \
        sizeof(arnormConfig_t), ARNORM_CONFIG_MAGIC, ARNORM_VERSION,                    \
            ARNORM_CONFIG_UNDEF_INT, ARNORM_CONFIG_UNDEF_INT, ARNORM_CONFIG_UNDEF_LL,    \
            ARNORM_CONFIG_UNDEF_LL, ARNORM_CONFIG_UNDEF_LL, ARNORM_CONFIG_UNDEF_LL,      \
            ARNORM_CONFIG_UNDEF_INT, ARNORM_CONFIG_UNDEF_INT                             \
    }

/* ---------------------------------------------------------------- errors, version */

ARNORM_API const char *arnormGetErrorString(arnormResult_t result);
ARNORM_API const char *arnormGetReasonString(arnormReason_t reason);
ARNORM_API const char *arnormGetAlgoString(arnormAlgo_t algo);
/* Last error message of `comm`, or of this thread's last call without a usable comm when
 * `comm` is NULL (init failures, invalid handles). Never NULL; "" when none. The text lives
 * in the communicator: valid until its next call, destroy or abort. */
ARNORM_API const char *arnormGetLastError(arnormComm_t comm);
ARNORM_API arnormResult_t arnormGetVersion(int *version);

/* ---------------------------------------------------------------- communicators */

/* Fills `uniqueId`; call on one rank and send the bytes to every rank. */
ARNORM_API arnormResult_t arnormGetUniqueId(arnormUniqueId *uniqueId);

/* Collective over `nranks` processes; `config` may be NULL (all defaults). On the CUDA
 * backend the current device (cudaSetDevice) is the rank's GPU. A failure on any rank
 * (workspace allocation included) is reported on every rank. */
ARNORM_API arnormResult_t arnormCommInitRank(arnormComm_t *comm, int nranks, arnormUniqueId uniqueId,
                                  int rank, const arnormConfig_t *config);

/* CUDA: one process drives `ndev` GPUs (devlist NULL means 0..ndev-1); comms[i] gets rank i. */
ARNORM_API arnormResult_t arnormCommInitAll(arnormComm_t *comms, int ndev, const int *devlist,
                                 const arnormConfig_t *config);

/* CUDA: join an engine's existing NCCL communicator (an ncclComm_t passed as void*);
 * collective over its ranks. arnorm uses it for bootstrap and the fallback, never frees it. */
ARNORM_API arnormResult_t arnormCommInitFromNccl(arnormComm_t *comm, void *ncclComm,
                                      const arnormConfig_t *config);

/* Waits for this rank's work, frees everything. Not collective on the CPU backend. */
ARNORM_API arnormResult_t arnormCommDestroy(arnormComm_t comm);
/* Frees everything without waiting for peers or pending work; never blocks on a peer. */
ARNORM_API arnormResult_t arnormCommAbort(arnormComm_t comm);
/* arnormSuccess, or the error (timeout, remote error) that put the comm in error state. */
ARNORM_API arnormResult_t arnormCommGetAsyncError(arnormComm_t comm, arnormResult_t *asyncError);
ARNORM_API arnormResult_t arnormCommCount(arnormComm_t comm, int *count);
ARNORM_API arnormResult_t arnormCommUserRank(arnormComm_t comm, int *rank);
ARNORM_API arnormResult_t arnormCommGetBackend(arnormComm_t comm, arnormBackend_t *backend);
/* Overrides the config's algo for later fused calls on this comm (tests, benchmarks).
 * Every rank must set the same algo. */
ARNORM_API arnormResult_t arnormCommSetAlgo(arnormComm_t comm, arnormAlgo_t algo);
/* Bytes of shared/device memory this rank holds for the fused path. */
ARNORM_API arnormResult_t arnormCommWorkspaceBytes(arnormComm_t comm, size_t *bytes);

/* ---------------------------------------------------------------- operations */

/*
 * Fused all-reduce + residual add + RMSNorm over row-major contiguous [tokens x hidden]
 * tensors of `dtype`. `weight` has `hidden` elements of `weightType` (= dtype or
 * arnormFloat32). `residual` is identical on every rank.
 *
 * In place: `residualOut` may alias `partial` or `residual`; `normOut` may alias
 * `partial`. `residualOut` and `normOut` must not alias each other, and no buffer may
 * partially overlap another. 1 <= hidden <= 65536, tokens >= 1.
 * Dispatch: one rank -> norm only; eligible (arnormCanFuse) -> fused; else fallback.
 */
ARNORM_API arnormResult_t arnormAllReduceResidualRMSNorm(const void *partial, const void *residual,
                                              void *residualOut, void *normOut,
                                              const void *weight, arnormDataType_t weightType,
                                              float eps, float weightBias, size_t tokens,
                                              size_t hidden, arnormDataType_t dtype,
                                              arnormComm_t comm, arnormStream_t stream);

/* Sum all-reduce of `count` elements; recvbuff may alias sendbuff (in place). Sums in
 * fp32 in rank order, rounds once: identical bits on every rank. */
ARNORM_API arnormResult_t arnormAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                               arnormDataType_t dtype, arnormComm_t comm,
                               arnormStream_t stream);

/*
 * Residual add + RMSNorm on this rank alone (the one-rank path, and the second half of the
 * fallback). `residual` may be NULL (plain RMSNorm of `input`); `residualOut` receives
 * input + residual and may be NULL only when `residual` is NULL. Aliasing as above with
 * `input` in the role of `partial`. Same per-row arithmetic as the fused path.
 */
ARNORM_API arnormResult_t arnormResidualRMSNorm(const void *input, const void *residual,
                                     void *residualOut, void *normOut, const void *weight,
                                     arnormDataType_t weightType, float eps, float weightBias,
                                     size_t tokens, size_t hidden, arnormDataType_t dtype,
                                     arnormComm_t comm, arnormStream_t stream);

/*
 * Would arnormAllReduceResidualRMSNorm fuse a call on `ptr` (any of its tensors) of
 * [tokens x hidden] with rows `rowStride` elements apart? Fills `info` (the algo, the
 * reason when not, and the token budget maxTokens = fuseMaxBytes / (hidden * size)).
 * The role of the field's can_use_fused / max_token_num pair. Local, not collective.
 */
ARNORM_API arnormResult_t arnormCanFuse(arnormComm_t comm, const void *ptr, size_t tokens, size_t hidden,
                             size_t rowStride, arnormDataType_t dtype, arnormFuseInfo_t *info);

/* The default token budget of a group of `nranks` on `backend` (Auto: CUDA when usable),
 * before config and environment overrides; for engines sizing buffers before init. */
ARNORM_API arnormResult_t arnormDefaultMaxTokens(arnormBackend_t backend, int nranks, size_t hidden,
                                      arnormDataType_t dtype, size_t *maxTokens);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* ARNORM_H */
