/*
 * cpu_rows.c - residual add + RMSNorm of rows on the CPU, by the tree of numerics.h.
 *
 * One copy of the row loop per storage type, with branch-free conversions, so the compiler
 * vectorizes it; target_clones adds AVX-512 (x86-64-v4) and AVX2 builds, picked at load time
 * by what the CPU has (AVX-512: 16-bit rows 1.35x faster on the CI machine class). The
 * arithmetic is exactly the scalar definition (IEEE fp32, no contraction) in every build.
 */
#include "cpu/cpu_rows.h"

#include <string.h>

#include "dtype.h"
#include "numerics.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define ARNORM_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define ARNORM_CLONES
#endif

/* float bits rounded to bf16 (nearest even, NaN kept quiet), low half zero. */
static inline uint32_t bf16Bits(uint32_t u) {
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    uint32_t q = (u | 0x00400000u) & 0xffff0000u;
    return (u & 0x7fffffffu) > 0x7f800000u ? q : r;
}

#define BF16_LOAD(p, i) arnormBitsFloat((uint32_t)((const uint16_t *)(p))[i] << 16)
#define BF16_ROUND(f) arnormBitsFloat(bf16Bits(arnormFloatBits(f)))
#define BF16_STORE(p, i, f) (((uint16_t *)(p))[i] = (uint16_t)(bf16Bits(arnormFloatBits(f)) >> 16))
#define F16_LOAD(p, i) arnormHalfToFloat(((const uint16_t *)(p))[i])
#define F16_ROUND(f) arnormHalfToFloat(arnormFloatToHalf(f))
#define F16_STORE(p, i, f) (((uint16_t *)(p))[i] = arnormFloatToHalf(f))
#define F32_LOAD(p, i) (((const float *)(p))[i])
#define F32_ROUND(f) (f)
#define F32_STORE(p, i, f) (((float *)(p))[i] = (f))
/* Stores of values already rounded to the storage type: bf16 keeps the upper half as is. */
#define BF16_STORE_EXACT(p, i, f) (((uint16_t *)(p))[i] = (uint16_t)(arnormFloatBits(f) >> 16))
#define F16_STORE_EXACT F16_STORE
#define F32_STORE_EXACT F32_STORE

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
typedef float v8fu __attribute__((vector_size(32), aligned(4), may_alias)); /* unaligned */
#if defined(__clang__)
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (v8i){__VA_ARGS__})
#endif

/* 8 chunks (one per slot, 8 elements each) -> their squares, transposed: c[e][j] is element
 * e of slot j's chunk, squared. Three rounds of shuffles, the classic 8x8 transpose. */
static inline __attribute__((always_inline)) void squaresTransposed(const float *x, v8f c[8]) {
    v8f r[8], t[8], u[8];
    for (int j = 0; j < 8; j++) {
        r[j] = *(const v8fu *)(x + 8 * j);
        r[j] = r[j] * r[j];
    }
#define LO 0, 8, 1, 9, 4, 12, 5, 13
#define HI 2, 10, 3, 11, 6, 14, 7, 15
#define LO2 0, 1, 8, 9, 4, 5, 12, 13
#define HI2 2, 3, 10, 11, 6, 7, 14, 15
#define LO4 0, 1, 2, 3, 8, 9, 10, 11
#define HI4 4, 5, 6, 7, 12, 13, 14, 15
    for (int j = 0; j < 8; j += 2) {
        t[j] = SHUFFLE(r[j], r[j + 1], LO);
        t[j + 1] = SHUFFLE(r[j], r[j + 1], HI);
    }
    for (int j = 0; j < 8; j += 4) {
        u[j] = SHUFFLE(t[j], t[j + 2], LO2);
        u[j + 1] = SHUFFLE(t[j], t[j + 2], HI2);
        u[j + 2] = SHUFFLE(t[j + 1], t[j + 3], LO2);
        u[j + 3] = SHUFFLE(t[j + 1], t[j + 3], HI2);
    }
    for (int j = 0; j < 4; j++) {
        c[j] = SHUFFLE(u[j], u[j + 4], LO4);
        c[j + 4] = SHUFFLE(u[j], u[j + 4], HI4);
    }
}

/* Sum of squares by the tree of numerics.h. Eight slots at a time: their chunks are
 * transposed so each slot's 8 squares are added in element order, one vector lane a slot. */
static inline __attribute__((always_inline)) float rowSumSquares(const float *h, size_t H,
                                                                 float *slots) {
    const size_t S = (size_t)arnormRowSlots(H);
    const size_t nchunks = (H + ARNORM_ROW_CHUNK - 1) / ARNORM_ROW_CHUNK;
    for (size_t t = 0; t < S; t++) slots[t] = 0.0f;
    for (size_t c0 = 0; c0 < nchunks; c0 += S) {
        size_t full = (H / ARNORM_ROW_CHUNK > c0) ? H / ARNORM_ROW_CHUNK - c0 : 0;
        if (full > S) full = S; /* slots whose chunk in this round is complete */
        const float *x = h + c0 * ARNORM_ROW_CHUNK;
        size_t t = 0;
        for (; t + 8 <= full; t += 8) {
            v8f c[8], acc;
            squaresTransposed(x + t * ARNORM_ROW_CHUNK, c);
            acc = *(v8fu *)(slots + t);
            for (int e = 0; e < 8; e++) acc = acc + c[e];
            *(v8fu *)(slots + t) = acc;
        }
        for (; t < full; t++)
            for (int e = 0; e < ARNORM_ROW_CHUNK; e++) {
                float v = x[t * ARNORM_ROW_CHUNK + (size_t)e];
                slots[t] = slots[t] + v * v;
            }
        if (full < S && c0 + full < nchunks) /* the short last chunk */
            for (size_t i = (c0 + full) * ARNORM_ROW_CHUNK; i < H; i++)
                slots[full] = slots[full] + h[i] * h[i];
    }
    float warps[32];
    const int nw = (int)S / 32;
    for (int w = 0; w < 32; w++) warps[w] = w < nw ? arnormButterfly32(slots + 32 * w) : 0.0f;
    return arnormButterfly32(warps);
}

#define NZ(v) ((v) == 0.0f ? 0.0f : (v)) /* -0.0 is the protocol's sentinel: +0.0 */

/* Step 1 of a row, for one world size: a = D(sum of the senders in rank order), h =
 * D(a + residual), stored to residualOut and kept in sc->h. SUM is the fp32 sum of element
 * i, written out for the world size so the loop vectorizes. */
#define ROW_STEP1(SUM, LOAD, ROUND, STORE)                                                   \
    if (a->residual) {                                                                       \
        for (size_t i = 0; i < H; i++) {                                                     \
            float v = ROUND(ROUND(SUM) + LOAD(a->residual, base + i));                      \
            h[i] = v;                                                                        \
            STORE##_EXACT(a->residualOut, base + i, v);                                     \
        }                                                                                    \
    } else {                                                                                 \
        for (size_t i = 0; i < H; i++) h[i] = ROUND(SUM);                                    \
        if (a->residualOut)                                                                  \
            for (size_t i = 0; i < H; i++) STORE##_EXACT(a->residualOut, base + i, h[i]);   \
    }

#define DEFINE_FINISH(NAME, LOAD, ROUND, STORE)                                              \
    ARNORM_CLONES static void NAME(const void *const *s, int n, const arnormNormArgs *a,     \
                                   size_t row0, size_t nrows, arnormRowScratch *sc) {        \
        const size_t H = a->hidden;                                                          \
        float *h = sc->h, *w = sc->w;                                                        \
        for (size_t r = 0; r < nrows; r++) {                                                 \
            const size_t base = (row0 + r) * H, o = r * H;                                   \
            switch (n) {                                                                     \
            case 1: ROW_STEP1(NZ(LOAD(s[0], o + i)), LOAD, ROUND, STORE) break;              \
            case 2:                                                                          \
                ROW_STEP1(NZ(LOAD(s[0], o + i)) + LOAD(s[1], o + i), LOAD, ROUND, STORE)     \
                break;                                                                       \
            case 4:                                                                          \
                ROW_STEP1(NZ(LOAD(s[0], o + i)) + LOAD(s[1], o + i) + LOAD(s[2], o + i) +    \
                              LOAD(s[3], o + i), LOAD, ROUND, STORE)                         \
                break;                                                                       \
            default: /* any world size: accumulate sender by sender, in rank order */        \
                for (size_t i = 0; i < H; i++) h[i] = NZ(LOAD(s[0], o + i));                 \
                for (int q = 1; q < n; q++)                                                  \
                    for (size_t i = 0; i < H; i++) h[i] = h[i] + LOAD(s[q], o + i);          \
                ROW_STEP1(h[i], LOAD, ROUND, STORE)                                          \
                break;                                                                       \
            }                                                                                \
            const float sc_ = arnormRowScale(rowSumSquares(h, H, sc->slots), H, a->eps);     \
            for (size_t i = 0; i < H; i++) {                                                 \
                float hs = h[i] * sc_;                                                       \
                STORE(a->normOut, base + i, hs * w[i]);                                      \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_FINISH(finishBf16, BF16_LOAD, BF16_ROUND, BF16_STORE)
DEFINE_FINISH(finishF16, F16_LOAD, F16_ROUND, F16_STORE)
DEFINE_FINISH(finishF32, F32_LOAD, F32_ROUND, F32_STORE)

ARNORM_CLONES void arnormCpuPrepareWeight(const arnormNormArgs *a, arnormRowScratch *sc) {
    const float bias = a->weightBias;
    float *w = sc->w;
    if (a->weightType == arnormBfloat16)
        for (size_t i = 0; i < a->hidden; i++) w[i] = bias + BF16_LOAD(a->weight, i);
    else if (a->weightType == arnormFloat32)
        for (size_t i = 0; i < a->hidden; i++) w[i] = bias + F32_LOAD(a->weight, i);
    else
        for (size_t i = 0; i < a->hidden; i++) w[i] = bias + F16_LOAD(a->weight, i);
}

void arnormCpuFinishRows(const void *const *senders, int nsenders, const arnormNormArgs *a,
                         size_t row0, size_t nrows, arnormRowScratch *sc) {
    switch (a->dtype) {
    case arnormBfloat16: finishBf16(senders, nsenders, a, row0, nrows, sc); break;
    case arnormFloat16: finishF16(senders, nsenders, a, row0, nrows, sc); break;
    default: finishF32(senders, nsenders, a, row0, nrows, sc); break;
    }
}

/* sums[i] (=|+=) float(src[i]), -0.0 taken as +0.0: one sender's share of a rank-order sum. */
ARNORM_CLONES void arnormCpuAccumulate(const void *src, size_t n, int dtype, float *sums,
                                       int first) {
#define ACCUMULATE(LOAD)                                                                   \
    for (size_t i = 0; i < n; i++) {                                                       \
        float v = LOAD(src, i);                                                            \
        v = v == 0.0f ? 0.0f : v;                                                          \
        sums[i] = first ? v : sums[i] + v;                                                 \
    }
    if (dtype == arnormBfloat16) { ACCUMULATE(BF16_LOAD) }
    else if (dtype == arnormFloat32) { ACCUMULATE(F32_LOAD) }
    else { ACCUMULATE(F16_LOAD) }
#undef ACCUMULATE
}

/* dst[first + i] = D(src[i]). */
ARNORM_CLONES void arnormCpuStoreRounded(void *dst, size_t first, size_t n, int dtype,
                                         const float *src) {
    if (dtype == arnormBfloat16)
        for (size_t i = 0; i < n; i++) BF16_STORE(dst, first + i, src[i]);
    else if (dtype == arnormFloat32)
        for (size_t i = 0; i < n; i++) F32_STORE(dst, first + i, src[i]);
    else
        for (size_t i = 0; i < n; i++) F16_STORE(dst, first + i, src[i]);
}

/* dst[i] = src[i] with -0.0 replaced by +0.0 (bit patterns, `width` 2 or 4 bytes). */
ARNORM_CLONES void arnormCpuCopyNoNegZero(void *dst, const void *src, size_t n, int width) {
    if (width == 2) {
        const uint16_t *s = src;
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = s[i] == 0x8000u ? 0 : s[i];
    } else {
        const uint32_t *s = src;
        uint32_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = s[i] == 0x80000000u ? 0 : s[i];
    }
}
