/*
 * dispatch.c - which path a fused call takes, and why not the fused one.
 *
 * Order of the checks: group (one rank, hosts, peers, workspace), forced algo, call shape
 * (dtype, layout, alignment, memory kind), budget. The first that fails is the reason.
 */
#include <stdint.h>

#include "arnorm_internal.h"
#include "dtype.h"

static size_t budgetTokens(long long fuseMaxBytes, size_t hidden, arnormDataType_t dtype) {
    if (fuseMaxBytes <= 0 || hidden == 0) return 0;
    return (size_t)fuseMaxBytes / (hidden * arnormDtypeSize(dtype));
}

/* The backend's verdict on a pointer, remembered for pointers it accepted: engines pass
 * the same few buffers every layer, and asking the driver (cudaPointerGetAttributes) for
 * five pointers a call costs microseconds of host time. */
static arnormReason_t pointerReasonCached(struct arnormComm *comm, const void *ptr) {
    const size_t n = sizeof comm->fusablePtrs / sizeof comm->fusablePtrs[0];
    const size_t slot = ((uintptr_t)ptr >> 8) % n;
    if (comm->fusablePtrs[slot] == ptr) return arnormReasonNone;
    arnormReason_t why = comm->ops->pointerReason(comm, ptr);
    if (why == arnormReasonNone) comm->fusablePtrs[slot] = ptr;
    return why;
}

void arnormDispatch(struct arnormComm *comm, const void *const *ptrs, int nptrs, size_t tokens,
                    size_t hidden, size_t rowStride, int dtype, arnormFuseInfo_t *info) {
    const arnormSettings *s = &comm->settings;
    info->canFuse = 0;
    info->algo = arnormAlgoFallback;
    info->maxTokens = 0;
    if (dtype < 0 || dtype >= arnormNumDataTypes) {
        info->reason = arnormReasonUnsupportedDtype;
        return;
    }
    info->maxTokens = budgetTokens(s->fuseMaxBytes, hidden, (arnormDataType_t)dtype);
    if (comm->nranks == 1) {
        info->algo = arnormAlgoNormOnly;
        info->reason = arnormReasonSingleRank;
        return;
    }
    arnormReason_t why = comm->groupReason;
    if (why == arnormReasonNone && (s->algo == arnormAlgoFallback || s->fuseMaxBytes == 0))
        why = arnormReasonDisabled;
    if (why == arnormReasonNone && rowStride != hidden) why = arnormReasonNotContiguous;
    for (int i = 0; i < nptrs && why == arnormReasonNone; i++) {
        if (!ptrs[i]) continue;
        if ((uintptr_t)ptrs[i] % 16) why = arnormReasonMisaligned;
        else why = pointerReasonCached(comm, ptrs[i]);
    }
    const size_t rowBytes = hidden * arnormDtypeSize((arnormDataType_t)dtype);
    if (why == arnormReasonNone && rowBytes > (size_t)s->workspaceBytes)
        why = arnormReasonNoWorkspace;
    const int forced = s->algo == arnormAlgoOneShot || s->algo == arnormAlgoTwoShot;
    if (why == arnormReasonNone && !forced && tokens > info->maxTokens)
        why = arnormReasonOverBudget;
    info->reason = why;
    if (why != arnormReasonNone) return;
    info->canFuse = 1;
    if (forced) {
        info->algo = (arnormAlgo_t)s->algo;
        return;
    }
    /* the CPU two-shot shares rows out: it needs one per rank */
    const int fewerRowsThanRanks =
        s->backend == arnormBackendCpu && tokens < (size_t)comm->nranks;
    const int oneShot = (long long)(tokens * rowBytes) <=
                            arnormOneShotMaxBytes(s, (arnormDataType_t)dtype, hidden) ||
                        fewerRowsThanRanks;
    info->algo = oneShot ? arnormAlgoOneShot : arnormAlgoTwoShot;
}

arnormResult_t arnormCanFuse(arnormComm_t comm, const void *ptr, size_t tokens, size_t hidden,
                             size_t rowStride, arnormDataType_t dtype, arnormFuseInfo_t *info) {
    ARNORM_TRY(arnormCheckComm(comm));
    if (!info) return arnormError(comm, arnormInvalidArgument, "info: NULL pointer");
    if (hidden == 0 || hidden > 65536)
        return arnormError(comm, arnormInvalidArgument, "hidden: %zu is outside [1, 65536]",
                           hidden);
    if (tokens == 0) return arnormError(comm, arnormInvalidArgument, "tokens: 0");
    const void *ptrs[1] = {ptr};
    arnormDispatch(comm, ptrs, ptr ? 1 : 0, tokens, hidden, rowStride, (int)dtype, info);
    return arnormSuccess;
}

arnormResult_t arnormDefaultMaxTokens(arnormBackend_t backend, int nranks, size_t hidden,
                                      arnormDataType_t dtype, size_t *maxTokens) {
    if (!maxTokens) return arnormError(NULL, arnormInvalidArgument, "maxTokens: NULL pointer");
    if ((int)backend < 0 || backend >= arnormNumBackends)
        return arnormError(NULL, arnormInvalidArgument, "backend: %d is not an arnormBackend_t",
                           (int)backend);
    if (nranks < 1) return arnormError(NULL, arnormInvalidArgument, "nranks: %d < 1", nranks);
    if (hidden == 0 || hidden > 65536)
        return arnormError(NULL, arnormInvalidArgument, "hidden: %zu is outside [1, 65536]",
                           hidden);
    if ((int)dtype < 0 || dtype >= arnormNumDataTypes)
        return arnormError(NULL, arnormInvalidArgument, "dtype: %d is not an arnormDataType_t",
                           (int)dtype);
    if (backend == arnormBackendAuto)
        backend = arnormCudaUsable() ? arnormBackendCuda : arnormBackendCpu;
    *maxTokens = budgetTokens(arnormDefaultFuseMaxBytes(backend, nranks, 9), hidden, dtype);
    return arnormSuccess;
}
