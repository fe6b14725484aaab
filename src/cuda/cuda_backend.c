/*
 * cuda_backend.c - the CUDA backend's host side (C11 over the CUDA runtime and NCCL).
 *
 * Bootstrap: an NCCL communicator per rank (from the unique id, from the engine's own comm,
 * or ncclCommInitAll for one process driving every GPU). Workspace: 3 Lamport slots per
 * rank in one cudaMalloc, filled with the sentinel; a small control block (rotation state)
 * in device memory; an error word in host-mapped memory that kernels set on a timeout.
 *  - multi-process: IPC handles and host ids exchanged by ncclAllGather on the group's
 *    comm; every peer's handle opened (never our own); a vote (ncclAllReduce, min) turns a
 *    failure on one rank into the same answer on every rank.
 *  - single process: peer access enabled between every pair, peers' pointers used as is.
 * Destroy waits for this rank's work (and, single-process, the group's devices), closes
 * handles, then frees.
 */
#define _GNU_SOURCE
#include <cuda_runtime.h>
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../arnorm_internal.h"
#include "../dtype.h"
#include "kernels.h"

#define MAXR ARNORM_CUDA_MAX_RANKS

/* Shared by the communicators of one arnormCommInitAll: NCCL comms are finalized together
 * (ncclCommFinalize is collective) when the last one goes. */
typedef struct {
    int refs;
    int ndev;
    int devs[MAXR];
    ncclComm_t nccls[MAXR];
    pthread_mutex_t lock;
} CudaGroup;

typedef struct {
    int device;
    int smCount;
    int testMaxUnits; /* ARNORM_TEST_MAX_UNITS (tests only), 0 = none */
    int smMajor;
    ncclComm_t nccl;
    int ownNccl;       /* we created it (not InitFromNccl) */
    CudaGroup *group;  /* single-process group, or NULL */
    cudaStream_t initStream;
    void *staging;     /* small device buffer for bootstrap collectives */
    void *buf;         /* this rank's 3 Lamport slots */
    long long slotBytes;
    void *peer[MAXR];  /* every rank's buf in this address space */
    int opened[MAXR];  /* peer[r] came from cudaIpcOpenMemHandle */
    arnormKCtrl *ctrl;
    int *errHost;      /* host-mapped error word */
    int *errDev;
    int haveWorkspace;
    long long hostPrevUsed;        /* host mirror of ctrl->prevUsed (sizes grids only) */
    size_t lastTokens, lastHidden; /* check mode: this rank's last checked call */
    int lastDtype;
    int warnedCapture;
} CudaImpl;

typedef struct {
    int ok;
    int device;
    char busId[32];
    char hostId[160];
    cudaIpcMemHandle_t handle;
} PeerInfo;

/* ------------------------------------------------------------------ helpers */

#define CU(comm, call)                                                                        \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            (void)cudaGetLastError();                                                         \
            return arnormError((comm), arnormCudaError, "%s failed: %s", #call,              \
                               cudaGetErrorString(e_));                                       \
        }                                                                                     \
    } while (0)

#define NC(comm, call)                                                                        \
    do {                                                                                      \
        ncclResult_t n_ = (call);                                                             \
        if (n_ != ncclSuccess)                                                                \
            return arnormError((comm), arnormNcclError, "%s failed: %s", #call,              \
                               ncclGetErrorString(n_));                                       \
    } while (0)

static ncclDataType_t ncclType(int dtype) {
    return dtype == arnormBfloat16 ? ncclBfloat16 : dtype == arnormFloat16 ? ncclFloat16 : ncclFloat32;
}

static void hostIdentity(char *out, size_t n) {
    char host[64] = {0}, boot[64] = {0};
    gethostname(host, sizeof host - 1);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(boot, sizeof boot, f)) boot[0] = 0;
        fclose(f);
    }
    size_t l = strlen(boot);
    while (l && (boot[l - 1] == '\n' || boot[l - 1] == ' ')) boot[--l] = 0;
    memset(out, 0, n);
    snprintf(out, n, "%s|%s", host, boot);
}

/* Current device switch for the duration of an op (restored by deviceRestore). */
static int deviceEnter(int want) {
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess) cur = -1;
    if (cur != want) cudaSetDevice(want);
    return cur;
}
static void deviceRestore(int prev, int want) {
    if (prev >= 0 && prev != want) cudaSetDevice(prev);
}

/* Slot size: holds a one-shot of workspaceBytes (N regions) and a two-shot of as much. */
static long long slotBytesFor(const arnormSettings *s, int nranks) {
    long long w = s->workspaceBytes > 0 ? s->workspaceBytes : (8LL << 20);
    long long n = nranks < 2 ? 2 : nranks;
    long long b = n * (w + 64) + (n + 2) * 4096;
    return (b + 4095) / 4096 * 4096;
}

/* The peer-visible buffer of a rank: 3 rotating slots, then check mode's exchange area. */
static size_t workspaceBufBytes(const CudaImpl *im) {
    return (size_t)(3 * im->slotBytes) + ARNORM_KCHECK_BYTES;
}

/* All a rank holds for the fused path (the buffer and the control block), as reported in
 * comm->workspaceBytes. */
static size_t workspaceTotalBytes(const CudaImpl *im) {
    return workspaceBufBytes(im) + sizeof(arnormKCtrl);
}

static int envInt(const char *name, int dflt) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : dflt;
}

/* Allocates this rank's buffers (buf, ctrl, err word) and fills them. 0 on success. */
static cudaError_t allocWorkspace(CudaImpl *im, int rank) {
    cudaError_t e;
    if (envInt("ARNORM_TEST_FAIL_WORKSPACE_RANK", -1) == rank) return cudaErrorMemoryAllocation;
    e = cudaMalloc(&im->buf, workspaceBufBytes(im));
    if (e != cudaSuccess) { im->buf = NULL; return e; }
    e = cudaMalloc((void **)&im->ctrl, sizeof(arnormKCtrl));
    if (e != cudaSuccess) { im->ctrl = NULL; return e; }
    e = cudaHostAlloc((void **)&im->errHost, 64, cudaHostAllocMapped | cudaHostAllocPortable);
    if (e != cudaSuccess) { im->errHost = NULL; return e; }
    *(volatile int *)im->errHost = 0;
    e = cudaHostGetDevicePointer((void **)&im->errDev, im->errHost, 0);
    if (e != cudaSuccess) return e;
    e = cudaMemsetAsync(im->ctrl, 0, sizeof(arnormKCtrl), im->initStream);
    if (e != cudaSuccess) return e;
    e = (cudaError_t)arnormKFill32(im->buf, ARNORM_SENTINEL_WORD, workspaceBufBytes(im) / 4,
                                   im->initStream);
    if (e != cudaSuccess) return e;
    return cudaStreamSynchronize(im->initStream);
}

static void freeWorkspace(CudaImpl *im) {
    for (int r = 0; r < MAXR; r++) {
        if (im->opened[r] && im->peer[r]) cudaIpcCloseMemHandle(im->peer[r]);
        im->opened[r] = 0;
        im->peer[r] = NULL;
    }
    if (im->buf) cudaFree(im->buf);
    if (im->ctrl) cudaFree(im->ctrl);
    if (im->errHost) cudaFreeHost(im->errHost);
    im->buf = NULL;
    im->ctrl = NULL;
    im->errHost = im->errDev = NULL;
    im->haveWorkspace = 0;
    (void)cudaGetLastError();
}

static void freeImpl(CudaImpl *im, int abort) {
    if (!im) return;
    freeWorkspace(im);
    if (im->staging) cudaFree(im->staging);
    if (im->initStream) cudaStreamDestroy(im->initStream);
    if (im->group) {
        CudaGroup *g = im->group;
        pthread_mutex_lock(&g->lock);
        int left = --g->refs;
        pthread_mutex_unlock(&g->lock);
        if (left == 0) {
            if (abort) {
                for (int i = 0; i < g->ndev; i++) ncclCommAbort(g->nccls[i]);
            } else {
                ncclGroupStart();
                for (int i = 0; i < g->ndev; i++) ncclCommFinalize(g->nccls[i]);
                ncclGroupEnd();
                for (int i = 0; i < g->ndev; i++) ncclCommDestroy(g->nccls[i]);
            }
            pthread_mutex_destroy(&g->lock);
            free(g);
        }
    } else if (im->ownNccl && im->nccl) {
        if (abort)
            ncclCommAbort(im->nccl);
        else
            ncclCommDestroy(im->nccl);
    }
    (void)cudaGetLastError();
    free(im);
}

/* ------------------------------------------------------------------ async errors */

static const char *opName(int op) { return op == OP_ALLREDUCE ? "all-reduce" : "fused"; }

static arnormResult_t checkAsync(struct arnormComm *comm, CudaImpl *im) {
    if (!im->errHost) return arnormSuccess;
    volatile int *err = im->errHost;
    const int v = err[0];
    if (v >= ARNORM_KERR_MISMATCH) { /* check mode: a peer's call descriptor differed */
        const int peer = v - ARNORM_KERR_MISMATCH;
        const unsigned long long tokens =
            (unsigned long long)(unsigned)err[1] | (unsigned long long)(unsigned)err[2] << 31;
        return arnormFail(comm, arnormInvalidUsage,
                          "check mode: rank %d called the %s op with tokens=%llu hidden=%u "
                          "dtype=%u, rank %d with tokens=%llu hidden=%llu dtype=%d",
                          peer, opName((unsigned)err[4] >> 8), tokens, (unsigned)err[3],
                          (unsigned)err[4] & 0xffu, comm->rank, (unsigned long long)im->lastTokens,
                          (unsigned long long)im->lastHidden, im->lastDtype);
    }
    if (v)
        return arnormFail(comm, arnormTimeout,
                          "rank %d: a wait for rank %d timed out after %lld ms (the ranks' "
                          "call sequences diverged, or rank %d stopped)",
                          comm->rank, v - 1, comm->settings.timeoutMs, v - 1);
    return arnormSuccess;
}

/* ------------------------------------------------------------------ ops */

static void fillLamport(CudaImpl *im, struct arnormComm *comm, arnormKArgs *k) {
    for (int r = 0; r < comm->nranks; r++) k->peerBuf[r] = im->peer[r];
    k->ctrl = im->ctrl;
    k->errWord = im->errDev;
    k->slotBytes = im->slotBytes;
    k->timeoutNs = comm->settings.timeoutMs * 1000000LL;
    k->rank = comm->rank;
    k->nranks = comm->nranks;
    k->smCount = im->smCount;
    k->pdl = comm->settings.usePdl && im->smMajor >= 9;
    k->clusters = im->smMajor >= 9;
    k->maxUnits = im->testMaxUnits;
}

/* Rows per launch of a Lamport algo; 0 when not even one row fits. */
static long long chunkRows(int algo, long long hidden, int dtype, int nranks, long long slot) {
    long long pitch = arnormKPitch(hidden, dtype);
    long long rows;
    if (algo == arnormKOneShot) {
        rows = slot / ((long long)nranks * pitch);
    } else {
        rows = (slot - (long long)nranks * pitch) / (2 * pitch);
        while (rows > 0 && arnormKUsedBytes(algo, rows, hidden, dtype, nranks) > slot) rows--;
    }
    return rows > 0 ? rows : 0;
}

/* Runs rows [0, rows) of `base` through the Lamport kernels, chunk by chunk. */
static arnormResult_t runLamport(struct arnormComm *comm, CudaImpl *im, arnormKArgs base,
                                 long long rows, long long totalCount, int algo,
                                 cudaStream_t stream) {
    const int n = comm->nranks;
    long long per = chunkRows(algo, base.hidden, base.dtype, n, im->slotBytes);
    if (algo == arnormKTwoShot && per < n) { /* rows too wide for a two-shot chunk */
        algo = arnormKOneShot;
        per = chunkRows(algo, base.hidden, base.dtype, n, im->slotBytes);
    }
    if (per < 1)
        return arnormError(comm, arnormInternalError,
                           "a row of %lld elements does not fit the %lld-byte workspace slot",
                           base.hidden, im->slotBytes);
    const size_t es = arnormDtypeSize((arnormDataType_t)base.dtype);
    { /* equal chunks: no tiny last chunk */
        long long nch = (rows + per - 1) / per;
        per = (rows + nch - 1) / nch;
    }
    for (long long r0 = 0; r0 < rows; r0 += per) {
        arnormKArgs k = base;
        long long nr = rows - r0 < per ? rows - r0 : per;
        size_t off = (size_t)r0 * (size_t)base.hidden * es;
        k.input = (const char *)base.input + off;
        if (base.residual) k.residual = (const char *)base.residual + off;
        if (base.residualOut) k.residualOut = (char *)base.residualOut + off;
        if (base.normOut) k.normOut = (char *)base.normOut + off;
        k.rows = nr;
        long long left = totalCount - r0 * base.hidden;
        k.count = nr * base.hidden < left ? nr * base.hidden : left;
        k.algo = algo;
        k.clearHint = im->hostPrevUsed;
        int e = arnormKLaunch(&k, stream);
        im->hostPrevUsed = arnormKUsedBytes(algo, nr, k.hidden, k.dtype, n);
        if (e != 0)
            return arnormError(comm, arnormCudaError, "launching the %s kernel: %s",
                               algo == arnormKOneShot ? "one-shot" : "two-shot",
                               cudaGetErrorString((cudaError_t)e));
    }
    return arnormSuccess;
}

static void normArgsToK(const arnormNormArgs *a, arnormKArgs *k) {
    memset(k, 0, sizeof *k);
    k->input = a->input;
    k->residual = a->residual;
    k->residualOut = a->residualOut;
    k->normOut = a->normOut;
    k->weight = a->weight;
    k->dtype = a->dtype;
    k->weightType = a->weightType;
    k->eps = a->eps;
    k->weightBias = a->weightBias;
    k->rows = (long long)a->tokens;
    k->hidden = (long long)a->hidden;
    k->count = (long long)(a->tokens * a->hidden);
    k->doNorm = 1;
}

static arnormResult_t launchNorm(struct arnormComm *comm, CudaImpl *im, const arnormNormArgs *a,
                                 cudaStream_t stream) {
    arnormKArgs k;
    normArgsToK(a, &k);
    k.algo = arnormKNorm;
    k.smCount = im->smCount;
    k.pdl = comm->settings.usePdl && im->smMajor >= 9;
    int e = arnormKLaunch(&k, stream);
    if (e != 0)
        return arnormError(comm, arnormCudaError, "launching the norm kernel: %s",
                           cudaGetErrorString((cudaError_t)e));
    return arnormSuccess;
}

static arnormResult_t cudaNorm(struct arnormComm *comm, const arnormNormArgs *a,
                               arnormStream_t stream) {
    CudaImpl *im = comm->impl;
    ARNORM_TRY(checkAsync(comm, im));
    int prev = deviceEnter(im->device);
    arnormResult_t r = launchNorm(comm, im, a, (cudaStream_t)stream);
    deviceRestore(prev, im->device);
    return r;
}

static arnormResult_t cudaFused(struct arnormComm *comm, const arnormNormArgs *a,
                                arnormAlgo_t algo, arnormStream_t stream) {
    CudaImpl *im = comm->impl;
    ARNORM_TRY(checkAsync(comm, im));
    cudaStream_t s = (cudaStream_t)stream;
    int prev = deviceEnter(im->device);
    arnormResult_t r = arnormSuccess;
    if (algo == arnormAlgoFallback || !im->haveWorkspace || comm->nranks < 2) {
        if (comm->nranks > 1) {
            ncclResult_t n = ncclAllReduce(a->input, a->normOut, a->tokens * a->hidden,
                                           ncclType(a->dtype), ncclSum, im->nccl, s);
            if (n != ncclSuccess)
                r = arnormError(comm, arnormNcclError, "ncclAllReduce (fallback): %s",
                                ncclGetErrorString(n));
        } else if (a->input != a->normOut) {
            cudaError_t e = cudaMemcpyAsync(a->normOut, a->input,
                                            a->tokens * a->hidden *
                                                arnormDtypeSize((arnormDataType_t)a->dtype),
                                            cudaMemcpyDeviceToDevice, s);
            if (e != cudaSuccess)
                r = arnormError(comm, arnormCudaError, "cudaMemcpyAsync: %s",
                                cudaGetErrorString(e));
        }
        if (r == arnormSuccess) {
            arnormNormArgs b = *a;
            b.input = a->normOut;
            r = launchNorm(comm, im, &b, s);
        }
    } else {
        arnormKArgs k;
        normArgsToK(a, &k);
        fillLamport(im, comm, &k);
        r = runLamport(comm, im, k, k.rows, k.count,
                       algo == arnormAlgoTwoShot ? arnormKTwoShot : arnormKOneShot, s);
    }
    deviceRestore(prev, im->device);
    return r;
}

static arnormResult_t cudaAllReduce(struct arnormComm *comm, const void *send, void *recv,
                                    size_t count, arnormDataType_t dtype, arnormStream_t stream) {
    CudaImpl *im = comm->impl;
    ARNORM_TRY(checkAsync(comm, im));
    cudaStream_t s = (cudaStream_t)stream;
    const size_t es = arnormDtypeSize(dtype);
    int prev = deviceEnter(im->device);
    arnormResult_t r = arnormSuccess;
    if (comm->nranks == 1) {
        if (send != recv) {
            cudaError_t e = cudaMemcpyAsync(recv, send, count * es, cudaMemcpyDeviceToDevice, s);
            if (e != cudaSuccess)
                r = arnormError(comm, arnormCudaError, "cudaMemcpyAsync: %s",
                                cudaGetErrorString(e));
        }
    } else if (!im->haveWorkspace || comm->settings.algo == arnormAlgoFallback) {
        ncclResult_t n = ncclAllReduce(send, recv, count, ncclType(dtype), ncclSum, im->nccl, s);
        if (n != ncclSuccess)
            r = arnormError(comm, arnormNcclError, "ncclAllReduce: %s", ncclGetErrorString(n));
    } else {
        arnormKArgs k;
        memset(&k, 0, sizeof k);
        k.input = send;
        k.residualOut = recv;
        k.dtype = dtype;
        k.weightType = dtype;
        k.hidden = count < ARNORM_AR_ROW ? (long long)count : ARNORM_AR_ROW;
        k.rows = ((long long)count + k.hidden - 1) / k.hidden;
        k.count = (long long)count;
        k.doNorm = 0;
        fillLamport(im, comm, &k);
        int algo;
        if (comm->settings.algo == arnormAlgoOneShot)
            algo = arnormKOneShot;
        else if (comm->settings.algo == arnormAlgoTwoShot)
            algo = arnormKTwoShot;
        else
            algo = (long long)(count * es) <= arnormOneShotMaxBytes(&comm->settings, dtype,
                                                                       (size_t)k.hidden)
                       ? arnormKOneShot
                       : arnormKTwoShot;
        r = runLamport(comm, im, k, k.rows, k.count, algo, s);
    }
    deviceRestore(prev, im->device);
    return r;
}

/*
 * Check mode: a one-warp kernel swaps this call's descriptor with every peer through the
 * workspace (bounded wait) and the host waits for it, so a mismatch fails the call on every
 * rank before anything of it is enqueued; the cost is a stream synchronization per call.
 * Skipped (once warned) while the stream is being captured, and without a workspace.
 */
static arnormResult_t cudaCheckCall(struct arnormComm *comm, int op, size_t tokens,
                                    size_t hidden, int dtype, arnormStream_t stream) {
    CudaImpl *im = comm->impl;
    ARNORM_TRY(checkAsync(comm, im));
    if (comm->nranks < 2 || !im->haveWorkspace) return arnormSuccess;
    cudaStream_t s = (cudaStream_t)stream;
    enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(s, &cap) != cudaSuccess) (void)cudaGetLastError();
    if (cap != cudaStreamCaptureStatusNone) {
        if (!im->warnedCapture)
            arnormLog(ARNORM_LOG_WARN, "rank %d: check mode skips calls captured in a CUDA "
                      "graph (it synchronizes the stream)", comm->rank);
        im->warnedCapture = 1;
        return arnormSuccess;
    }
    /* 31-bit words: none can hold the sentinel 0x80000000 */
    const unsigned desc[4] = {(unsigned)(tokens & 0x7fffffffu),
                              (unsigned)((tokens >> 31) & 0x7fffffffu),
                              (unsigned)(hidden & 0x7fffffffu),
                              (unsigned)dtype | (unsigned)op << 8};
    im->lastTokens = tokens;
    im->lastHidden = hidden;
    im->lastDtype = dtype;
    arnormKArgs k;
    memset(&k, 0, sizeof k);
    fillLamport(im, comm, &k);
    int prev = deviceEnter(im->device);
    int e = arnormKCheck(&k, desc, s);
    cudaError_t se = e == 0 ? cudaStreamSynchronize(s) : cudaSuccess;
    deviceRestore(prev, im->device);
    if (e != 0)
        return arnormError(comm, arnormCudaError, "launching the check-mode kernel: %s",
                           cudaGetErrorString((cudaError_t)e));
    if (se != cudaSuccess)
        return arnormFail(comm, arnormCudaError, "check mode: cudaStreamSynchronize: %s",
                          cudaGetErrorString(se));
    return checkAsync(comm, im);
}

static arnormReason_t cudaPointerReason(struct arnormComm *comm, const void *ptr) {
    CudaImpl *im = comm->impl;
    struct cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
        (void)cudaGetLastError();
        return arnormReasonNotDevicePointer;
    }
    if (attr.type == cudaMemoryTypeManaged) return arnormReasonNone;
    if (attr.type == cudaMemoryTypeDevice && attr.device == im->device) return arnormReasonNone;
    return arnormReasonNotDevicePointer;
}

static arnormResult_t cudaDestroy(struct arnormComm *comm, int abort) {
    CudaImpl *im = comm->impl;
    if (!im) return arnormSuccess;
    int prev = deviceEnter(im->device);
    arnormResult_t r = arnormSuccess;
    if (!abort) {
        cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess)
            r = arnormError(comm, arnormCudaError, "cudaDeviceSynchronize: %s",
                            cudaGetErrorString(e));
        if (im->group) /* peers of this process write into our buffer: let them finish */
            for (int i = 0; i < im->group->ndev; i++) {
                cudaSetDevice(im->group->devs[i]);
                cudaDeviceSynchronize();
            }
        cudaSetDevice(im->device);
        if (r == arnormSuccess) r = checkAsync(comm, im);
#ifdef ARNORM_KERNEL_STAMPS
        arnormKStampsPrint(comm->rank);
#endif
    }
    freeImpl(im, abort);
    comm->impl = NULL;
    if (prev >= 0) cudaSetDevice(prev);
    return r;
}

static arnormResult_t cudaPollAsync(struct arnormComm *comm) {
    return checkAsync(comm, comm->impl);
}

static const arnormBackendOps cudaOps = {
    "cuda", cudaFused, cudaAllReduce, cudaNorm, cudaPointerReason, cudaCheckCall, cudaDestroy,
    cudaPollAsync,
};

/* ------------------------------------------------------------------ init */

int arnormCudaUsable(void) {
    static int cached = -1;
    if (cached < 0) {
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess) (void)cudaGetLastError();
        cached = e == cudaSuccess && n > 0;
    }
    return cached;
}

arnormResult_t arnormCudaGetNcclId(char ncclId[128]) {
    ncclUniqueId id;
    NC(NULL, ncclGetUniqueId(&id));
    memcpy(ncclId, &id, sizeof id < 128 ? sizeof id : 128);
    return arnormSuccess;
}

static arnormResult_t implBasics(struct arnormComm *comm, CudaImpl *im, int device) {
    im->device = device;
    CU(comm, cudaSetDevice(device));
    CU(comm, cudaDeviceGetAttribute(&im->smCount, cudaDevAttrMultiProcessorCount, device));
    CU(comm, cudaDeviceGetAttribute(&im->smMajor, cudaDevAttrComputeCapabilityMajor, device));
    im->testMaxUnits = envInt("ARNORM_TEST_MAX_UNITS", 0);
    if (im->testMaxUnits < 0) im->testMaxUnits = 0;
    if (im->testMaxUnits)
        arnormLog(ARNORM_LOG_WARN, "cuda: ARNORM_TEST_MAX_UNITS=%d: Lamport grids capped (a "
                  "test setting: slower)", im->testMaxUnits);
    CU(comm, cudaStreamCreateWithFlags(&im->initStream, cudaStreamNonBlocking));
    CU(comm, cudaMalloc(&im->staging, 4096));
    arnormSettingsFinish(&comm->settings, arnormBackendCuda, comm->nranks, im->smMajor);
    im->slotBytes = slotBytesFor(&comm->settings, comm->nranks);
    return arnormSuccess;
}

/* Minimum of `v` over the group (every rank gets the same answer). */
static arnormResult_t voteMin(struct arnormComm *comm, CudaImpl *im, int *v) {
    CU(comm, cudaMemcpyAsync(im->staging, v, sizeof(int), cudaMemcpyHostToDevice, im->initStream));
    NC(comm, ncclAllReduce(im->staging, im->staging, 1, ncclInt32, ncclMin, im->nccl, im->initStream));
    CU(comm, cudaMemcpyAsync(v, im->staging, sizeof(int), cudaMemcpyDeviceToHost, im->initStream));
    CU(comm, cudaStreamSynchronize(im->initStream));
    return arnormSuccess;
}

/* Multi-process workspace: allocate, vote, exchange handles + host ids, open, vote. */
static arnormResult_t setupMultiProcess(struct arnormComm *comm, CudaImpl *im) {
    const int n = comm->nranks, rank = comm->rank;
    comm->groupReason = arnormReasonNone;
    if (n == 1) return arnormSuccess;
    if (n > MAXR) {
        comm->groupReason = arnormReasonNoWorkspace;
        arnormLog(ARNORM_LOG_WARN, "cuda: %d ranks > %d: fused path off (NCCL fallback)", n, MAXR);
        return arnormSuccess;
    }
    cudaError_t ae = allocWorkspace(im, rank);
    int ok = ae == cudaSuccess;
    if (!ok) (void)cudaGetLastError();
    int all = ok;
    ARNORM_TRY(voteMin(comm, im, &all));
    if (!all) {
        freeWorkspace(im);
        if (!ok)
            return arnormError(comm, arnormOutOfMemory,
                               "rank %d: allocating the %zu-byte fused workspace: %s", rank,
                               workspaceBufBytes(im), cudaGetErrorString(ae));
        return arnormError(comm, arnormOutOfMemory,
                           "rank %d: another rank failed to allocate its fused workspace", rank);
    }
    /* exchange handles and host identities */
    PeerInfo mine;
    memset(&mine, 0, sizeof mine);
    mine.ok = 1;
    mine.device = im->device;
    hostIdentity(mine.hostId, sizeof mine.hostId);
    cudaDeviceGetPCIBusId(mine.busId, sizeof mine.busId, im->device);
    CU(comm, cudaIpcGetMemHandle(&mine.handle, im->buf));
    const size_t isz = (sizeof(PeerInfo) + 15) / 16 * 16;
    void *dev = NULL;
    CU(comm, cudaMalloc(&dev, isz * (size_t)n));
    PeerInfo *all_ = calloc((size_t)n, isz);
    if (!all_) {
        cudaFree(dev);
        return arnormError(comm, arnormOutOfMemory, "host allocation");
    }
    arnormResult_t r = arnormSuccess;
    cudaError_t e = cudaMemcpyAsync((char *)dev + isz * (size_t)rank, &mine, sizeof mine,
                                    cudaMemcpyHostToDevice, im->initStream);
    ncclResult_t nr = ncclSuccess;
    if (e == cudaSuccess)
        nr = ncclAllGather((char *)dev + isz * (size_t)rank, dev, isz, ncclUint8, im->nccl,
                           im->initStream);
    for (int i = 0; i < n && e == cudaSuccess && nr == ncclSuccess; i++)
        e = cudaMemcpyAsync((char *)all_ + isz * (size_t)i, (char *)dev + isz * (size_t)i,
                            sizeof(PeerInfo), cudaMemcpyDeviceToHost, im->initStream);
    if (e == cudaSuccess && nr == ncclSuccess) e = cudaStreamSynchronize(im->initStream);
    cudaFree(dev);
    if (e != cudaSuccess)
        r = arnormError(comm, arnormCudaError, "exchanging IPC handles: %s", cudaGetErrorString(e));
    else if (nr != ncclSuccess)
        r = arnormError(comm, arnormNcclError, "ncclAllGather of IPC handles: %s",
                        ncclGetErrorString(nr));
    if (r != arnormSuccess) {
        free(all_);
        return r;
    }
    int sameHost = 1;
    for (int i = 0; i < n; i++) {
        PeerInfo *p = (PeerInfo *)((char *)all_ + isz * (size_t)i);
        if (strncmp(p->hostId, mine.hostId, sizeof mine.hostId) != 0) sameHost = 0;
    }
    int openOk = sameHost;
    im->peer[rank] = im->buf;
    for (int i = 0; i < n && openOk; i++) {
        if (i == rank) continue;
        PeerInfo *p = (PeerInfo *)((char *)all_ + isz * (size_t)i);
        void *ptr = NULL;
        cudaError_t oe = cudaIpcOpenMemHandle(&ptr, p->handle, cudaIpcMemLazyEnablePeerAccess);
        if (oe != cudaSuccess) {
            (void)cudaGetLastError();
            arnormLog(ARNORM_LOG_WARN, "cuda: rank %d cannot open rank %d's workspace (%s): "
                      "fused path off", rank, i, cudaGetErrorString(oe));
            openOk = 0;
            break;
        }
        im->peer[i] = ptr;
        im->opened[i] = 1;
    }
    free(all_);
    int allSame = sameHost, allOpen = openOk;
    ARNORM_TRY(voteMin(comm, im, &allSame));
    ARNORM_TRY(voteMin(comm, im, &allOpen));
    if (!allSame || !allOpen) {
        freeWorkspace(im);
        comm->groupReason = !allSame ? arnormReasonMultiHost : arnormReasonNoPeerAccess;
        return arnormSuccess;
    }
    im->haveWorkspace = 1;
    comm->workspaceBytes = workspaceTotalBytes(im);
    return arnormSuccess;
}

static arnormResult_t initFromNcclComm(struct arnormComm *comm, ncclComm_t nccl, int own) {
    CudaImpl *im = calloc(1, sizeof *im);
    if (!im) return arnormError(comm, arnormOutOfMemory, "allocating the CUDA backend state");
    im->nccl = nccl;
    im->ownNccl = own;
    int dev = -1;
    arnormResult_t r = arnormSuccess;
    ncclResult_t n = ncclCommCuDevice(nccl, &dev);
    if (n != ncclSuccess) r = arnormError(comm, arnormNcclError, "ncclCommCuDevice: %s", ncclGetErrorString(n));
    int prev = -1;
    cudaGetDevice(&prev);
    if (r == arnormSuccess) r = implBasics(comm, im, dev);
    if (r == arnormSuccess) r = setupMultiProcess(comm, im);
    if (r != arnormSuccess) {
        freeImpl(im, 1);
        if (prev >= 0) cudaSetDevice(prev);
        return r;
    }
    if (prev >= 0) cudaSetDevice(prev);
    comm->ops = &cudaOps;
    comm->impl = im;
    return arnormSuccess;
}

arnormResult_t arnormCudaInitRank(struct arnormComm *comm, const arnormIdPayload *id) {
    ncclUniqueId uid;
    memcpy(&uid, id->ncclId, sizeof uid);
    ncclComm_t nccl;
    NC(comm, ncclCommInitRank(&nccl, comm->nranks, uid, comm->rank));
    return initFromNcclComm(comm, nccl, 1);
}

arnormResult_t arnormCudaInitFromNccl(struct arnormComm *comm, void *ncclComm) {
    ncclComm_t nccl = (ncclComm_t)ncclComm;
    int nranks = 0, rank = 0;
    NC(comm, ncclCommCount(nccl, &nranks));
    NC(comm, ncclCommUserRank(nccl, &rank));
    comm->nranks = nranks;
    comm->rank = rank;
    return initFromNcclComm(comm, nccl, 0);
}

arnormResult_t arnormCudaInitAll(struct arnormComm **comms, int ndev, const int *devlist) {
    struct arnormComm *c0 = comms[0];
    int devs[64];
    if (ndev > 64) return arnormError(c0, arnormInvalidArgument, "ndev: %d > 64", ndev);
    int count = 0;
    CU(c0, cudaGetDeviceCount(&count));
    for (int i = 0; i < ndev; i++) {
        devs[i] = devlist ? devlist[i] : i;
        if (devs[i] < 0 || devs[i] >= count)
            return arnormError(c0, arnormInvalidArgument, "devlist[%d]: device %d of %d", i,
                               devs[i], count);
        for (int j = 0; j < i; j++)
            if (devs[j] == devs[i])
                return arnormError(c0, arnormInvalidArgument, "devlist: device %d twice", devs[i]);
    }
    int prev = -1;
    cudaGetDevice(&prev);
    ncclComm_t nccls[64];
    NC(c0, ncclCommInitAll(nccls, ndev, devs));
    CudaGroup *g = NULL;
    arnormResult_t r = arnormSuccess;
    const int useGroup = ndev <= MAXR;
    if (useGroup) {
        g = calloc(1, sizeof *g);
        if (!g) r = arnormError(c0, arnormOutOfMemory, "host allocation");
        else {
            g->ndev = ndev;
            g->refs = ndev;
            pthread_mutex_init(&g->lock, NULL);
            for (int i = 0; i < ndev; i++) {
                g->devs[i] = devs[i];
                g->nccls[i] = nccls[i];
            }
        }
    }
    CudaImpl *ims[64] = {0};
    for (int i = 0; i < ndev && r == arnormSuccess; i++) {
        comms[i]->rank = i;
        comms[i]->nranks = ndev;
        ims[i] = calloc(1, sizeof(CudaImpl));
        if (!ims[i]) {
            r = arnormError(c0, arnormOutOfMemory, "host allocation");
            break;
        }
        ims[i]->nccl = nccls[i];
        ims[i]->ownNccl = !useGroup;
        ims[i]->group = g;
        r = implBasics(comms[i], ims[i], devs[i]);
        if (r != arnormSuccess) arnormError(c0, r, "%s", comms[i]->lastError);
    }
    /* workspace: all or nothing */
    int allocOk = 1, peerOk = ndev >= 2 && ndev <= MAXR;
    if (r == arnormSuccess && peerOk) {
        for (int i = 0; i < ndev; i++)
            for (int j = 0; j < ndev; j++) {
                if (i == j) continue;
                int can = 0;
                if (cudaDeviceCanAccessPeer(&can, devs[i], devs[j]) != cudaSuccess || !can) peerOk = 0;
            }
        (void)cudaGetLastError();
    }
    if (r == arnormSuccess && peerOk) {
        for (int i = 0; i < ndev && allocOk; i++) {
            cudaSetDevice(devs[i]);
            cudaError_t e = allocWorkspace(ims[i], i);
            if (e != cudaSuccess) {
                allocOk = 0;
                r = arnormError(c0, arnormOutOfMemory,
                                "device %d: allocating the %zu-byte fused workspace: %s", devs[i],
                                workspaceBufBytes(ims[i]), cudaGetErrorString(e));
            }
            for (int j = 0; j < ndev && allocOk; j++) {
                if (j == i) continue;
                cudaError_t pe = cudaDeviceEnablePeerAccess(devs[j], 0);
                if (pe != cudaSuccess && pe != cudaErrorPeerAccessAlreadyEnabled) peerOk = 0;
                (void)cudaGetLastError();
            }
        }
    }
    if (r == arnormSuccess) {
        for (int i = 0; i < ndev; i++) {
            comms[i]->groupReason =
                ndev == 1 ? arnormReasonNone
                          : ndev > MAXR ? arnormReasonNoWorkspace
                                        : peerOk ? arnormReasonNone : arnormReasonNoPeerAccess;
            if (peerOk && ndev >= 2) {
                for (int j = 0; j < ndev; j++) ims[i]->peer[j] = ims[j]->buf;
                ims[i]->haveWorkspace = 1;
                comms[i]->workspaceBytes = workspaceTotalBytes(ims[i]);
            } else {
                cudaSetDevice(devs[i]);
                freeWorkspace(ims[i]);
            }
            comms[i]->ops = &cudaOps;
            comms[i]->impl = ims[i];
        }
    } else {
        for (int i = 0; i < ndev; i++) {
            if (ims[i]) {
                cudaSetDevice(devs[i]);
                ims[i]->group = NULL;
                ims[i]->ownNccl = 0;
                freeImpl(ims[i], 1);
            }
            ncclCommAbort(nccls[i]);
        }
        if (g) {
            pthread_mutex_destroy(&g->lock);
            free(g);
        }
    }
    if (prev >= 0) cudaSetDevice(prev);
    return r;
}
