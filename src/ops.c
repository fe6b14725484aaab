/*
 * ops.c - the public operations: validate every argument (nothing is touched when one is
 * wrong), refuse a communicator in error state, dispatch, call the backend.
 */
#include <math.h>
#include <stdint.h>

#include "arnorm_internal.h"
#include "dtype.h"

static arnormResult_t checkUsable(arnormComm_t comm) {
    ARNORM_TRY(arnormCheckComm(comm));
    if (comm->asyncError != arnormSuccess)
        return arnormError(comm, (arnormResult_t)comm->asyncError,
                           "communicator is in error state, abort it; cause: %.400s",
                           comm->failMessage);
    return arnormSuccess;
}

static arnormResult_t checkDtype(arnormComm_t comm, const char *name, int dtype) {
    if (dtype < 0 || dtype >= arnormNumDataTypes)
        return arnormError(comm, arnormInvalidArgument,
                           "%s: %d is not an arnormDataType_t (bf16 0, fp16 1, fp32 2)", name,
                           dtype);
    return arnormSuccess;
}

/* [a, a + n) and [b, b + n) must be the same buffer or not overlap at all. */
static int partialOverlap(const void *a, size_t an, const void *b, size_t bn) {
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    if (!a || !b || x == y) return 0;
    return x < y + bn && y < x + an;
}

static arnormResult_t checkNormArgs(arnormComm_t comm, const arnormNormArgs *a,
                                    const char *inputName, int fused) {
    if (!a->input) return arnormError(comm, arnormInvalidArgument, "%s: NULL pointer", inputName);
    if (fused && !a->residual)
        return arnormError(comm, arnormInvalidArgument, "residual: NULL pointer");
    if (a->residual && !a->residualOut)
        return arnormError(comm, arnormInvalidArgument,
                           "residualOut: NULL pointer while residual is given");
    if (!a->normOut) return arnormError(comm, arnormInvalidArgument, "normOut: NULL pointer");
    if (!a->weight) return arnormError(comm, arnormInvalidArgument, "weight: NULL pointer");
    ARNORM_TRY(checkDtype(comm, "dtype", a->dtype));
    ARNORM_TRY(checkDtype(comm, "weightType", a->weightType));
    if (a->weightType != a->dtype && a->weightType != arnormFloat32)
        return arnormError(comm, arnormInvalidArgument,
                           "weightType: %s with dtype %s; must be the dtype or fp32",
                           arnormDtypeName((arnormDataType_t)a->weightType),
                           arnormDtypeName((arnormDataType_t)a->dtype));
    if (a->tokens == 0) return arnormError(comm, arnormInvalidArgument, "tokens: 0");
    if (a->hidden == 0 || a->hidden > 65536)
        return arnormError(comm, arnormInvalidArgument, "hidden: %zu is outside [1, 65536]",
                           a->hidden);
    const size_t es = arnormDtypeSize((arnormDataType_t)a->dtype);
    if (a->tokens > ((size_t)1 << 46) / (a->hidden * es)) /* 64 TiB: an overflow, not data */
        return arnormError(comm, arnormInvalidArgument,
                           "tokens * hidden * %zu overflows (tokens %zu, hidden %zu)", es,
                           a->tokens, a->hidden);
    if (!isfinite(a->eps) || a->eps < 0.0f)
        return arnormError(comm, arnormInvalidArgument, "eps: %g is not finite and >= 0",
                           (double)a->eps);
    if (!isfinite(a->weightBias))
        return arnormError(comm, arnormInvalidArgument, "weightBias: %g is not finite",
                           (double)a->weightBias);
    const size_t n = a->tokens * a->hidden * es;
    const size_t ws = arnormDtypeSize((arnormDataType_t)a->weightType);
    const struct { const void *p; const char *name; size_t align; } ptrs[] = {
        {a->input, inputName, es}, {a->residual, "residual", es},
        {a->residualOut, "residualOut", es}, {a->normOut, "normOut", es},
        {a->weight, "weight", ws}};
    for (int i = 0; i < 5; i++)
        if ((uintptr_t)ptrs[i].p % ptrs[i].align)
            return arnormError(comm, arnormInvalidArgument,
                               "%s: %p is not aligned to its %zu-byte elements", ptrs[i].name,
                               ptrs[i].p, ptrs[i].align);
    if (a->residualOut && a->residualOut == a->normOut)
        return arnormError(comm, arnormInvalidArgument, "residualOut and normOut alias");
    if (a->normOut == a->residual || a->normOut == a->weight)
        return arnormError(comm, arnormInvalidArgument,
                           "normOut aliases %s; only %s may be overwritten by normOut",
                           a->normOut == a->residual ? "residual" : "weight", inputName);
    const struct { const void *p; const char *name; size_t n; } bufs[] = {
        {a->input, inputName, n}, {a->residual, "residual", n}, {a->residualOut, "residualOut", n},
        {a->normOut, "normOut", n}, {a->weight, "weight", a->hidden *
         arnormDtypeSize((arnormDataType_t)a->weightType)}};
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            if (partialOverlap(bufs[i].p, bufs[i].n, bufs[j].p, bufs[j].n))
                return arnormError(comm, arnormInvalidArgument,
                                   "%s and %s partially overlap", bufs[i].name, bufs[j].name);
    if (a->residualOut && (a->residualOut == a->weight))
        return arnormError(comm, arnormInvalidArgument, "residualOut aliases weight");
    return arnormSuccess;
}

arnormResult_t arnormAllReduceResidualRMSNorm(const void *partial, const void *residual,
                                              void *residualOut, void *normOut,
                                              const void *weight, arnormDataType_t weightType,
                                              float eps, float weightBias, size_t tokens,
                                              size_t hidden, arnormDataType_t dtype,
                                              arnormComm_t comm, arnormStream_t stream) {
    ARNORM_TRY(checkUsable(comm));
    arnormNormArgs a = {partial, residual, residualOut, normOut, weight, (int)dtype,
                        (int)weightType, eps, weightBias, tokens, hidden};
    ARNORM_TRY(checkNormArgs(comm, &a, "partial", 1));
    if (comm->settings.checkMode && comm->ops->checkCall)
        ARNORM_TRY(comm->ops->checkCall(comm, OP_FUSED, tokens, hidden, (int)dtype, stream));
    const void *ptrs[5] = {partial, residual, residualOut, normOut, weight};
    arnormFuseInfo_t info;
    arnormDispatch(comm, ptrs, 5, tokens, hidden, hidden, (int)dtype, &info);
    if (info.algo == arnormAlgoNormOnly) return comm->ops->norm(comm, &a, stream);
    return comm->ops->fused(comm, &a, info.algo, stream);
}

arnormResult_t arnormResidualRMSNorm(const void *input, const void *residual,
                                     void *residualOut, void *normOut, const void *weight,
                                     arnormDataType_t weightType, float eps, float weightBias,
                                     size_t tokens, size_t hidden, arnormDataType_t dtype,
                                     arnormComm_t comm, arnormStream_t stream) {
    ARNORM_TRY(checkUsable(comm));
    arnormNormArgs a = {input, residual, residualOut, normOut, weight, (int)dtype,
                        (int)weightType, eps, weightBias, tokens, hidden};
    ARNORM_TRY(checkNormArgs(comm, &a, "input", 0));
    return comm->ops->norm(comm, &a, stream);
}

arnormResult_t arnormAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                               arnormDataType_t dtype, arnormComm_t comm,
                               arnormStream_t stream) {
    ARNORM_TRY(checkUsable(comm));
    if (!sendbuff) return arnormError(comm, arnormInvalidArgument, "sendbuff: NULL pointer");
    if (!recvbuff) return arnormError(comm, arnormInvalidArgument, "recvbuff: NULL pointer");
    ARNORM_TRY(checkDtype(comm, "dtype", (int)dtype));
    if (count == 0) return arnormError(comm, arnormInvalidArgument, "count: 0");
    const size_t es = arnormDtypeSize(dtype);
    if (count > ((size_t)1 << 46) / es)
        return arnormError(comm, arnormInvalidArgument, "count: %zu elements overflows", count);
    if ((uintptr_t)sendbuff % es || (uintptr_t)recvbuff % es)
        return arnormError(comm, arnormInvalidArgument,
                           "%s: not aligned to its %zu-byte elements",
                           (uintptr_t)sendbuff % es ? "sendbuff" : "recvbuff", es);
    if (partialOverlap(sendbuff, count * es, recvbuff, count * es))
        return arnormError(comm, arnormInvalidArgument,
                           "sendbuff and recvbuff partially overlap (in place needs equal "
                           "pointers)");
    if (comm->settings.checkMode && comm->ops->checkCall)
        ARNORM_TRY(comm->ops->checkCall(comm, OP_ALLREDUCE, count, 1, (int)dtype, stream));
    return comm->ops->allReduce(comm, sendbuff, recvbuff, count, dtype, stream);
}
