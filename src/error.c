/* error.c - result strings, per-communicator and per-thread last-error messages, logging. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arnorm_internal.h"

/* Messages of calls that had no usable communicator (init failures, bad handles). */
static _Thread_local char threadLastError[512];

/* Formats the message into the comm's buffer (or this thread's) and mirrors it to the
 * thread's, so arnormGetLastError(NULL) also tells right after a call on a comm. */
static const char *record(struct arnormComm *comm, const char *fmt, va_list ap) {
    char *dst = comm ? comm->lastError : threadLastError;
    vsnprintf(dst, comm ? sizeof comm->lastError : sizeof threadLastError, fmt, ap);
    if (comm) memcpy(threadLastError, comm->lastError, sizeof threadLastError);
    return dst;
}

arnormResult_t arnormError(struct arnormComm *comm, arnormResult_t r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const char *msg = record(comm, fmt, ap);
    va_end(ap);
    arnormLog(ARNORM_LOG_INFO, "%s: %s", arnormGetErrorString(r), msg);
    return r;
}

arnormResult_t arnormFail(struct arnormComm *comm, arnormResult_t r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const char *msg = record(comm, fmt, ap);
    va_end(ap);
    if (comm && comm->asyncError == arnormSuccess) { /* the first failure is the cause */
        comm->asyncError = r;
        memcpy(comm->failMessage, comm->lastError, sizeof comm->failMessage);
    }
    arnormLog(ARNORM_LOG_WARN, "%s: %s", arnormGetErrorString(r), msg);
    return r;
}

const char *arnormGetLastError(arnormComm_t comm) {
    if (comm && arnormCheckComm(comm) == arnormSuccess) return comm->lastError;
    return threadLastError;
}

const char *arnormGetErrorString(arnormResult_t r) {
    switch (r) {
    case arnormSuccess: return "no error";
    case arnormInvalidArgument: return "invalid argument";
    case arnormInvalidUsage: return "invalid usage";
    case arnormSystemError: return "system error";
    case arnormCudaError: return "CUDA error";
    case arnormNcclError: return "NCCL error";
    case arnormTimeout: return "timeout waiting for a peer";
    case arnormRemoteError: return "remote error (a peer failed)";
    case arnormOutOfMemory: return "out of memory";
    case arnormNotSupported: return "not supported";
    case arnormInternalError: return "internal error";
    default: return "unknown result code";
    }
}

const char *arnormGetReasonString(arnormReason_t r) {
    switch (r) {
    case arnormReasonNone: return "fused path applies";
    case arnormReasonSingleRank: return "one rank: norm only";
    case arnormReasonNotDevicePointer: return "not device memory of this rank's GPU";
    case arnormReasonNotContiguous: return "not 2-D contiguous (row stride != hidden)";
    case arnormReasonMisaligned: return "pointer or row not 16-byte aligned";
    case arnormReasonUnsupportedDtype: return "unsupported dtype";
    case arnormReasonOverBudget: return "tokens over the fused token budget";
    case arnormReasonMultiHost: return "ranks on several hosts";
    case arnormReasonNoPeerAccess: return "no peer access between some pair of GPUs";
    case arnormReasonNoWorkspace: return "fused workspace unavailable";
    case arnormReasonDisabled: return "fused path disabled by config or environment";
    default: return "unknown reason";
    }
}

const char *arnormGetAlgoString(arnormAlgo_t a) {
    switch (a) {
    case arnormAlgoAuto: return "auto";
    case arnormAlgoNormOnly: return "norm";
    case arnormAlgoOneShot: return "oneshot";
    case arnormAlgoTwoShot: return "twoshot";
    case arnormAlgoFallback: return "fallback";
    default: return "?";
    }
}

arnormResult_t arnormGetVersion(int *version) {
    if (!version) return arnormError(NULL, arnormInvalidArgument, "version: NULL pointer");
    *version = ARNORM_VERSION;
    return arnormSuccess;
}

/* ARNORM_DEBUG=WARN|INFO, read once. Default WARN: only what needs attention. */
static int logLevel = -1;

void arnormLog(int level, const char *fmt, ...) {
    if (logLevel < 0) {
        const char *e = getenv("ARNORM_DEBUG");
        int l = ARNORM_LOG_WARN;
        if (e && (!strcmp(e, "INFO") || !strcmp(e, "info"))) l = ARNORM_LOG_INFO;
        if (e && (!strcmp(e, "NONE") || !strcmp(e, "none"))) l = ARNORM_LOG_NONE;
        logLevel = l;
    }
    if (level > logLevel) return;
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "arnorm %s: %s\n", level == ARNORM_LOG_WARN ? "WARN" : "INFO", buf);
}
