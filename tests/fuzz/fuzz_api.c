/*
 * fuzz_api.c - libFuzzer harness over argument validation and the CPU one-rank path.
 *
 * The input picks, for each argument of a call, a value from a menu that mixes valid and
 * invalid choices (NULL, misaligned, aliasing, overlapping pointers; zero, huge and
 * overflowing sizes; unknown dtypes; NaN/Inf/negative eps and bias; raw config structs).
 * Invariants: no crash or sanitizer report; a refused call returns InvalidArgument with a
 * message and leaves every buffer as it was; an accepted call writes all of normOut.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arnorm.h"

#define CAP (7u * 65536u * 4u + 64u)

static unsigned char *bufs[5]; /* partial, residual, residualOut, normOut, weight */
static unsigned char *shadow[5];
static arnormComm_t comm;

typedef struct {
    const uint8_t *p;
    size_t n;
} stream;

static uint32_t take(stream *s, int bytes) {
    uint32_t v = 0;
    for (int i = 0; i < bytes && s->n; i++, s->p++, s->n--) v = v << 8 | *s->p;
    return v;
}

static void *pickPtr(stream *s, int self) {
    uint32_t c = take(s, 1);
    switch (c % 8) {
    case 0: return NULL;
    case 1: return bufs[self] + 1;            /* misaligned */
    case 2: return bufs[(self + 1) % 5];      /* another argument's buffer */
    case 3: return bufs[(self + 1) % 5] + 2;  /* overlapping another */
    default: return bufs[self];
    }
}

static size_t pickSize(stream *s, size_t small, size_t max) {
    uint32_t c = take(s, 3);
    switch (c % 16) {
    case 0: return 0;
    case 1: return (size_t)1 << 47;           /* overflows every buffer: must be refused */
    case 2: return SIZE_MAX;
    case 3: return max + 1 + (c >> 8) % 3;    /* just over the limit */
    default: return 1 + (c >> 4) % small;
    }
}

static float pickFloat(stream *s) {
    uint32_t c = take(s, 1);
    switch (c % 6) {
    case 0: return NAN;
    case 1: return INFINITY;
    case 2: return -1.0f;
    case 3: return 0.0f;
    default: return 1e-6f;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    for (int i = 0; i < 5; i++) {
        bufs[i] = aligned_alloc(64, CAP);
        shadow[i] = malloc(CAP);
        for (size_t k = 0; k < CAP; k++) bufs[i][k] = (unsigned char)(k * 7 + i * 13 + 1);
    }
    arnormUniqueId id;
    arnormConfig_t cfg = ARNORM_CONFIG_INITIALIZER;
    cfg.backend = arnormBackendCpu;
    if (arnormGetUniqueId(&id) || arnormCommInitRank(&comm, 1, id, 0, &cfg)) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    stream s = {data, size};
    const int op = (int)(take(&s, 1) % 4);
    void *p[5];
    for (int i = 0; i < 5; i++) p[i] = pickPtr(&s, i);
    const size_t tokens = pickSize(&s, 7, 7), hidden = pickSize(&s, 65536, 65536);
    const arnormDataType_t dt = (arnormDataType_t)(take(&s, 1) % 4);   /* 3 is unknown */
    const arnormDataType_t wt = (arnormDataType_t)(take(&s, 1) % 4);
    const float eps = pickFloat(&s), bias = pickFloat(&s) == 1e-6f ? 1.0f : pickFloat(&s);
    /* sizes the buffers cannot hold are only passed when validation must refuse them */
    const size_t es = dt == arnormFloat32 ? 4 : 2;
    int mustRefuse = tokens == 0 || tokens >= ((size_t)1 << 47) || hidden == 0 ||
                     hidden > 65536 || (int)dt > 2;
    if (op == 3) mustRefuse = tokens == 0 || hidden == 0 || hidden > 65536; /* a query */
    if (!mustRefuse && tokens * hidden * es + 16 > CAP) return 0;
    for (int i = 0; i < 5; i++) memcpy(shadow[i], bufs[i], CAP);
    arnormResult_t r;
    switch (op) {
    case 0:
        r = arnormAllReduceResidualRMSNorm(p[0], p[1], p[2], p[3], p[4], wt, eps, bias, tokens,
                                           hidden, dt, comm, NULL);
        break;
    case 1:
        r = arnormResidualRMSNorm(p[0], (take(&s, 1) & 1) ? NULL : p[1], p[2], p[3], p[4], wt,
                                  eps, bias, tokens, hidden, dt, comm, NULL);
        break;
    case 2:
        r = arnormAllReduce(p[0], p[3], tokens * (hidden % 4096 + 1), dt, comm, NULL);
        if (!mustRefuse && tokens * (hidden % 4096 + 1) * es + 16 > CAP) r = arnormSuccess;
        break;
    default: {
        arnormFuseInfo_t info;
        const int withInfo = take(&s, 1) & 1;
        mustRefuse |= !withInfo;
        r = arnormCanFuse(comm, p[0], tokens, hidden, hidden, dt, withInfo ? &info : NULL);
        break;
    }
    }
    if (r != arnormSuccess) {
        if (r != arnormInvalidArgument || !arnormGetLastError(comm)[0]) abort();
        for (int i = 0; i < 5; i++)
            if (memcmp(shadow[i], bufs[i], CAP)) abort(); /* a refused call wrote */
    } else if (mustRefuse && op != 2) {
        abort(); /* accepted what it must refuse */
    }
    if (r == arnormSuccess && op < 2) {
        /* restore for the next input */
        for (int i = 0; i < 5; i++) memcpy(bufs[i], shadow[i], CAP);
    }
    return 0;
}
