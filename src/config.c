/*
 * config.c - settings of a communicator: the config struct, else the environment (parsed
 * once per process, logged once), else the defaults of the backend and world size.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "arnorm_internal.h"

#define UNSET_LL (-1LL)

typedef struct {
    arnormResult_t status; /* a malformed variable fails every init with its message */
    char message[256];
    arnormSettings s;      /* fields not set by the environment hold -1 */
} envSettings;

static envSettings env;
static pthread_once_t envOnce = PTHREAD_ONCE_INIT;

static int parseEnum(const char *name, const char *v, const char *const *names, int count,
                     int *out) {
    for (int i = 0; i < count; i++)
        if (!strcasecmp(v, names[i])) {
            *out = i;
            return 1;
        }
    int len = snprintf(env.message, sizeof env.message, "%s: unknown value '%s' (one of", name, v);
    for (int i = 0; i < count && len > 0 && (size_t)len < sizeof env.message; i++)
        len += snprintf(env.message + len, sizeof env.message - (size_t)len, " %s", names[i]);
    if (len > 0 && (size_t)len < sizeof env.message)
        snprintf(env.message + len, sizeof env.message - (size_t)len, ")");
    env.status = arnormInvalidArgument;
    return 0;
}

/* Byte sizes and counts: decimal with an optional K, M or G (binary) suffix. */
static int parseSize(const char *name, const char *v, long long *out) {
    errno = 0;
    char *end;
    long long x = strtoll(v, &end, 10);
    long long mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1LL << 10, end++;
    else if (*end == 'M' || *end == 'm') mul = 1LL << 20, end++;
    else if (*end == 'G' || *end == 'g') mul = 1LL << 30, end++;
    if (errno || end == v || *end || x < 0 || x > (1LL << 50) / mul) {
        snprintf(env.message, sizeof env.message, "%s: not a size: '%s'", name, v);
        env.status = arnormInvalidArgument;
        return 0;
    }
    *out = x * mul;
    return 1;
}

static void readEnvironment(void) {
    static const char *const backends[] = {"auto", "cpu", "cuda"};
    static const char *const algos[] = {"auto", "norm", "oneshot", "twoshot", "fallback"};
    static const char *const flags[] = {"0", "1"};
    arnormSettings *s = &env.s;
    s->backend = -1;
    s->algo = -1;
    s->fuseMaxBytes = s->oneShotMaxBytes = s->oneShotMaxBytesF32 = s->oneShotMaxBytesWide =
        s->workspaceBytes = s->timeoutMs = UNSET_LL;
    s->usePdl = s->checkMode = -1;
    env.status = arnormSuccess;
    const char *v;
    int e = 0;
    long long x;
    if ((v = getenv("ARNORM_BACKEND")) && parseEnum("ARNORM_BACKEND", v, backends, 3, &e))
        s->backend = (arnormBackend_t)e;
    if ((v = getenv("ARNORM_ALGO")) && parseEnum("ARNORM_ALGO", v, algos, 5, &e))
        s->algo = (arnormAlgo_t)e;
    if ((v = getenv("ARNORM_FUSE_MAX_BYTES")) && parseSize("ARNORM_FUSE_MAX_BYTES", v, &x))
        s->fuseMaxBytes = x;
    if ((v = getenv("ARNORM_ONESHOT_MAX_BYTES")) && parseSize("ARNORM_ONESHOT_MAX_BYTES", v, &x))
        s->oneShotMaxBytes = x;
    if ((v = getenv("ARNORM_WORKSPACE_BYTES")) && parseSize("ARNORM_WORKSPACE_BYTES", v, &x))
        s->workspaceBytes = x;
    if ((v = getenv("ARNORM_TIMEOUT_MS")) && parseSize("ARNORM_TIMEOUT_MS", v, &x))
        s->timeoutMs = x;
    /* switches take 0 or 1 only: a typo fails init instead of silently meaning "on" */
    if ((v = getenv("ARNORM_PDL")) && parseEnum("ARNORM_PDL", v, flags, 2, &e)) s->usePdl = e;
    if ((v = getenv("ARNORM_CHECK")) && parseEnum("ARNORM_CHECK", v, flags, 2, &e))
        s->checkMode = e;
    if (env.status != arnormSuccess)
        arnormLog(ARNORM_LOG_WARN, "environment: %s", env.message);
    else
        arnormLog(ARNORM_LOG_INFO,
                  "environment: backend=%d algo=%d fuseMaxBytes=%lld oneShotMaxBytes=%lld "
                  "workspaceBytes=%lld timeoutMs=%lld pdl=%d check=%d (-1: unset)",
                  s->backend, s->algo, s->fuseMaxBytes, s->oneShotMaxBytes, s->workspaceBytes,
                  s->timeoutMs, s->usePdl, s->checkMode);
}

#define CFG_SET_INT(f) (config && config->f != ARNORM_CONFIG_UNDEF_INT)
#define CFG_SET_LL(f) (config && config->f != ARNORM_CONFIG_UNDEF_LL)

arnormResult_t arnormResolveSettings(const arnormConfig_t *config, arnormSettings *out) {
    pthread_once(&envOnce, readEnvironment);
    if (config) {
        if (config->magic != ARNORM_CONFIG_MAGIC)
            return arnormError(NULL, arnormInvalidArgument,
                               "config: not initialized with ARNORM_CONFIG_INITIALIZER "
                               "(magic 0x%08x)", config->magic);
        if (config->size < offsetof(arnormConfig_t, backend) || config->size > sizeof *config)
            return arnormError(NULL, arnormInvalidArgument,
                               "config: size %zu does not match this library's %zu",
                               config->size, sizeof *config);
        if (config->version / 10000 != ARNORM_MAJOR || config->version > ARNORM_VERSION)
            return arnormError(NULL, arnormInvalidArgument,
                               "config: compiled against arnorm %u, library is %d",
                               config->version, ARNORM_VERSION);
    }
    if (env.status != arnormSuccess) return arnormError(NULL, env.status, "%s", env.message);

    arnormSettings s = env.s;
    if (CFG_SET_INT(backend)) {
        if (config->backend < 0 || config->backend >= arnormNumBackends)
            return arnormError(NULL, arnormInvalidArgument, "config.backend: %d is not an "
                               "arnormBackend_t", config->backend);
        s.backend = (arnormBackend_t)config->backend;
    }
    if (CFG_SET_INT(algo)) {
        if (config->algo < 0 || config->algo >= arnormNumAlgos)
            return arnormError(NULL, arnormInvalidArgument, "config.algo: %d is not an "
                               "arnormAlgo_t", config->algo);
        s.algo = (arnormAlgo_t)config->algo;
    }
    struct { const char *name; long long v; int set; long long *dst; long long min; } lls[] = {
        {"config.fuseMaxBytes", 0, CFG_SET_LL(fuseMaxBytes), &s.fuseMaxBytes, 0},
        {"config.oneShotMaxBytes", 0, CFG_SET_LL(oneShotMaxBytes), &s.oneShotMaxBytes, 0},
        {"config.workspaceBytes", 0, CFG_SET_LL(workspaceBytes), &s.workspaceBytes, 4096},
        {"config.timeoutMs", 0, CFG_SET_LL(timeoutMs), &s.timeoutMs, 1},
    };
    if (config) {
        lls[0].v = config->fuseMaxBytes;
        lls[1].v = config->oneShotMaxBytes;
        lls[2].v = config->workspaceBytes;
        lls[3].v = config->timeoutMs;
    }
    for (size_t i = 0; i < sizeof lls / sizeof lls[0]; i++) {
        if (!lls[i].set) continue;
        if (lls[i].v < lls[i].min || lls[i].v > (1LL << 50))
            return arnormError(NULL, arnormInvalidArgument, "%s: %lld out of range [%lld, 2^50]",
                               lls[i].name, lls[i].v, lls[i].min);
        *lls[i].dst = lls[i].v;
    }
    if (CFG_SET_INT(usePdl)) {
        if (config->usePdl != 0 && config->usePdl != 1)
            return arnormError(NULL, arnormInvalidArgument, "config.usePdl: %d is not 0 or 1",
                               config->usePdl);
        s.usePdl = config->usePdl;
    }
    if (CFG_SET_INT(checkMode)) {
        if (config->checkMode != 0 && config->checkMode != 1)
            return arnormError(NULL, arnormInvalidArgument,
                               "config.checkMode: %d is not 0 or 1", config->checkMode);
        s.checkMode = config->checkMode;
    }
    if ((int)s.backend < 0) s.backend = arnormBackendAuto;
    if ((int)s.algo < 0) s.algo = arnormAlgoAuto;
    if (s.timeoutMs < 0) s.timeoutMs = 30000;
    if (s.usePdl < 0) s.usePdl = 1;
    if (s.checkMode < 0) s.checkMode = 0;
    if (s.workspaceBytes >= 0 && s.workspaceBytes < 4096)
        return arnormError(NULL, arnormInvalidArgument,
                           "ARNORM_WORKSPACE_BYTES: %lld is below the minimum of 4096",
                           s.workspaceBytes);
    *out = s;
    return arnormSuccess;
}

/*
 * Default fused budget in bytes per rank tensor (T * H * sizeof(D)): beyond it the
 * fallback is faster. CUDA, from the crossovers measured with arnorm-bench (docs/gpu.md,
 * docs/performance.md): TP2 fused wins at every size measured (up to 128 MiB, 4x H100 SXM);
 * TP3 and TP4 up to 32 MiB (4x H200, sessions 7-8, with the two-shot's rows handed out
 * dynamically: at TP3 64 MiB wins at H = 4096 by 3% and loses at H = 8192 by 1%; at TP4 64
 * MiB wins in graph replay, 355-367 vs 390 us at 8192 x 4096, but in a stream loop, how
 * engines run prefill, it took 359-474 us in four runs, two of them slower than the
 * fallback's 390); TP5-8 unmeasured (no 8-GPU machine yet): the field's 0.5 MiB.
 * CPU: the fused one-shot beats the staged path at every size measured; 1 MiB keeps the
 * shared segment small.
 */
long long arnormDefaultFuseMaxBytes(arnormBackend_t backend, int nranks, int smMajor) {
    (void)smMajor;
    if (nranks <= 1) return 0;
    if (backend == arnormBackendCpu) return 1LL << 20;
    if (nranks == 2) return 128LL << 20;
    if (nranks == 3 || nranks == 4) return 32LL << 20;
    return 512LL << 10;
}

void arnormSettingsFinish(arnormSettings *s, arnormBackend_t backend, int nranks, int smMajor) {
    s->backend = backend;
    if (s->fuseMaxBytes < 0) s->fuseMaxBytes = arnormDefaultFuseMaxBytes(backend, nranks, smMajor);
    if (backend == arnormBackendCpu) {
        /* CPU, 16-bit types: the two-shot wins as soon as every rank owns a row (it splits
           the row arithmetic between the cores; docs/performance.md), so the one-shot only
           serves calls of fewer rows than ranks. fp32 rows cost little arithmetic, so the
           split saves less than copying the finished rows costs: the one-shot wins up to
           4 x 4096 rows (1.35-1.38x over the unfused path against 1.12-1.29x for the
           two-shot), ties at 8, loses from 16. Chunks of 256 KiB keep the shared segment
           small ((3 x nranks + 3) x 256 KiB per rank). */
        if (s->oneShotMaxBytes < 0) {
            s->oneShotMaxBytes = 0;
            s->oneShotMaxBytesF32 = 64LL << 10;
        }
        if (s->workspaceBytes < 0) s->workspaceBytes = 256LL << 10;
    } else {
        /* One-shot up to these bytes per rank tensor, two-shot above: the crossovers
           measured on 4x H200 (session 8, both forced, graph, docs/performance.md version
           8), last size where the one-shot won. Rows of up to 4096 elements: TP2 128 x 4096
           (7.05 vs 8.96 us; 192 rows lost 10.06 vs 9.68), TP3 96 x 4096 (8.83 vs 9.42; 128
           lost), TP4 48 x 4096 (8.08 vs 8.43; 64 lost). Wider rows, where the two-shot's
           1024-thread blocks cost ~2.5 us more at few rows: TP2 128 x 8192 (11.0 vs 13.4),
           TP3 64 x 8192 (11.3 vs 12.5; 128 lost), TP4 32 x 8192 (10.2 vs 11.6; 48 lost).
           TP5-8 unmeasured: the field's 256 KiB. fp32 not measured again: the previous
           default (2 MiB at TP2, 256 KiB above). */
        if (s->oneShotMaxBytes < 0) {
            static const long long narrow[5] = {0, 0, 1LL << 20, 768LL << 10, 384LL << 10};
            static const long long wide[5] = {0, 0, 2LL << 20, 1LL << 20, 512LL << 10};
            s->oneShotMaxBytes = nranks <= 4 ? narrow[nranks] : 256LL << 10;
            s->oneShotMaxBytesWide = nranks <= 4 ? wide[nranks] : 256LL << 10;
            s->oneShotMaxBytesF32 = nranks == 2 ? 2LL << 20 : 256LL << 10;
        }
        /* Calls larger than the workspace run as one launch per chunk, and each launch
           pays the two-shot's fill and drain (~2.5-3.5 us at TP2): 64 MiB at TP2 takes
           8192 x 4096 bf16 in one launch, 266 -> 242 us on H200 (docs/performance.md), for
           384 MiB per rank. TP3+ keep 8 MiB (a two-shot launch then takes N/2 x 8 MiB of
           tensor): at TP3-4 its launches beat one launch over a 16 or 64 MiB workspace
           (session 7, call 4). */
        const long long ws = nranks == 2 ? (64LL << 20) : (8LL << 20);
        if (s->workspaceBytes < 0) s->workspaceBytes = s->fuseMaxBytes < ws ? s->fuseMaxBytes : ws;
        if (s->workspaceBytes < 4096) s->workspaceBytes = 4096;
    }
    /* a value the user set applies to every dtype and row width */
    if (s->oneShotMaxBytesF32 < 0) s->oneShotMaxBytesF32 = s->oneShotMaxBytes;
    if (s->oneShotMaxBytesWide < 0) s->oneShotMaxBytesWide = s->oneShotMaxBytes;
    arnormLog(ARNORM_LOG_INFO,
              "settings: backend=%s nranks=%d algo=%s fuseMaxBytes=%lld oneShotMaxBytes=%lld "
              "(rows > %d elements %lld, fp32 %lld) workspaceBytes=%lld timeoutMs=%lld pdl=%d "
              "check=%d",
              backend == arnormBackendCpu ? "cpu" : "cuda", nranks, arnormGetAlgoString(s->algo),
              s->fuseMaxBytes, s->oneShotMaxBytes, ARNORM_NARROW_HIDDEN, s->oneShotMaxBytesWide,
              s->oneShotMaxBytesF32, s->workspaceBytes, s->timeoutMs, s->usePdl, s->checkMode);
}
