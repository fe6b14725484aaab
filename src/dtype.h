/*
 * dtype.h - storage types and their exact conversions to and from fp32 (host side).
 *
 * Round-to-nearest-even everywhere; NaN stays NaN (quiet), Inf stays Inf, fp16 overflow
 * rounds to Inf and underflow to subnormals. The Lamport protocol's "not yet written"
 * sentinel is the bit pattern of -0.0; arnormNoNegZero* map it to +0.0 before sending.
 */
#ifndef ARNORM_DTYPE_H
#define ARNORM_DTYPE_H

#include <stdint.h>
#include <string.h>

#include "arnorm.h"

static inline size_t arnormDtypeSize(arnormDataType_t t) {
    return t == arnormFloat32 ? 4 : 2;
}

static inline const char *arnormDtypeName(arnormDataType_t t) {
    switch (t) {
    case arnormBfloat16: return "bf16";
    case arnormFloat16: return "fp16";
    case arnormFloat32: return "fp32";
    default: return "?";
    }
}

static inline uint32_t arnormFloatBits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float arnormBitsFloat(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float arnormBf16ToFloat(uint16_t b) { return arnormBitsFloat((uint32_t)b << 16); }

static inline uint16_t arnormFloatToBf16(float f) {
    uint32_t u = arnormFloatBits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float arnormHalfToFloat(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return arnormBitsFloat(sign | 0x7f800000u | (man << 13)); /* Inf/NaN */
    if (exp == 0) {                                    /* zero or subnormal: man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return arnormBitsFloat(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline uint16_t arnormFloatToHalf(float f) {
    uint32_t u = arnormFloatBits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to Inf */
    if (a < 0x38800000u) {                                /* below 2^-14: subnormal or 0 */
        /* value / 2^-24, rounded to nearest even by the fp32 unit (exact: a < 2^-14). */
        float v = arnormBitsFloat(a) * 16777216.0f;
        uint32_t m = (uint32_t)v;
        float frac = v - (float)m;
        if (frac > 0.5f || (frac == 0.5f && (m & 1u))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
    return (uint16_t)(sign | (r >> 13));
}

/* Element i of a buffer of type t, as float. */
static inline float arnormLoad(const void *p, size_t i, arnormDataType_t t) {
    switch (t) {
    case arnormBfloat16: return arnormBf16ToFloat(((const uint16_t *)p)[i]);
    case arnormFloat16: return arnormHalfToFloat(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

/* Round f to type t and store it as element i. */
static inline void arnormStore(void *p, size_t i, arnormDataType_t t, float f) {
    switch (t) {
    case arnormBfloat16: ((uint16_t *)p)[i] = arnormFloatToBf16(f); break;
    case arnormFloat16: ((uint16_t *)p)[i] = arnormFloatToHalf(f); break;
    default: ((float *)p)[i] = f; break;
    }
}

/* f rounded to t and back: what storing then loading gives. */
static inline float arnormRound(float f, arnormDataType_t t) {
    switch (t) {
    case arnormBfloat16: return arnormBf16ToFloat(arnormFloatToBf16(f));
    case arnormFloat16: return arnormHalfToFloat(arnormFloatToHalf(f));
    default: return f;
    }
}

#endif /* ARNORM_DTYPE_H */
