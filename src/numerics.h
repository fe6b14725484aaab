/*
 * numerics.h - the per-row arithmetic every backend and the tests share.
 *
 * Compiled as C (host) and CUDA (device). The variance of a row is reduced by a tree that
 * depends on the hidden size alone, so a row gives the same bits whatever the token count,
 * the path or the launch configuration, on the CPU and on the GPU alike:
 *
 *   chunks   8 consecutive elements each (the last may be short): nchunks = ceil(H / 8)
 *   slots    S = min(1024, nchunks rounded up to 32)        (GPU: one thread per slot)
 *   slot t   acc = 0; for c = t, t + S, ...: for each element x of chunk c in order:
 *            acc = acc + x * x                              (fp32, no FMA)
 *   warps    32 consecutive slots; xor butterfly o = 16, 8, 4, 2, 1: v[l] = v[l] + v[l ^ o]
 *   block    warp sums in lanes 0..S/32-1 (zeros above), same butterfly
 *   var      total / H;   s = 1 / sqrt(var + eps)           (fp32, correctly rounded)
 *   out      D((h * s) * (weight_bias + w))                 (fp32, no FMA, one rounding)
 *
 * GPU code must use __fmul_rn/__fadd_rn (or --fmad=false) so no multiply-add is fused.
 */
#ifndef ARNORM_NUMERICS_H
#define ARNORM_NUMERICS_H

#include <stddef.h>

#define ARNORM_ROW_CHUNK 8
#define ARNORM_ROW_MAX_SLOTS 1024
#define ARNORM_MAX_HIDDEN 65536

#if defined(__CUDACC__)
#define ARNORM_HD __host__ __device__ __forceinline__
#else
#define ARNORM_HD static inline
#endif

/* Number of slots (GPU threads) that reduce one row of `hidden` elements. */
ARNORM_HD int arnormRowSlots(size_t hidden) {
    size_t nchunks = (hidden + ARNORM_ROW_CHUNK - 1) / ARNORM_ROW_CHUNK;
    size_t s = (nchunks + 31) / 32 * 32;
    return (int)(s < ARNORM_ROW_MAX_SLOTS ? s : ARNORM_ROW_MAX_SLOTS);
}

#if !defined(__CUDACC__)
#include <math.h>

/* One 32-lane xor butterfly, the value every lane ends with. After the step with offset o,
 * lanes l and l ^ o hold the same sum (fp32 addition is commutative), so lane 0's value is
 * the fold by halves: v[l] += v[l + o] for l < o. Overwrites v. */
static inline float arnormButterfly32(float v[32]) {
    for (int o = 16; o >= 1; o >>= 1)
        for (int l = 0; l < o; l++) v[l] = v[l] + v[l + o];
    return v[0];
}

/* Sum of squares of a row `h` (already rounded to the storage type, held as float), by the
 * tree above. `slots` is scratch of ARNORM_ROW_MAX_SLOTS floats. */
static inline float arnormRowSumSquares(const float *h, size_t hidden, float *slots) {
    const int S = arnormRowSlots(hidden);
    const size_t nchunks = (hidden + ARNORM_ROW_CHUNK - 1) / ARNORM_ROW_CHUNK;
    for (int t = 0; t < S; t++) slots[t] = 0.0f;
    for (size_t c = 0; c < nchunks; c++) {
        float acc = slots[c % (size_t)S];
        size_t end = (c + 1) * ARNORM_ROW_CHUNK < hidden ? (c + 1) * ARNORM_ROW_CHUNK : hidden;
        for (size_t i = c * ARNORM_ROW_CHUNK; i < end; i++) {
            float sq = h[i] * h[i];
            acc = acc + sq;
        }
        slots[c % (size_t)S] = acc;
    }
    float warps[32];
    const int nw = S / 32;
    for (int w = 0; w < 32; w++) warps[w] = 0.0f;
    for (int w = 0; w < nw; w++) warps[w] = arnormButterfly32(slots + 32 * w);
    return arnormButterfly32(warps);
}

/* s = 1 / sqrt(mean(h^2) + eps), the scale of a row. */
static inline float arnormRowScale(float sumSquares, size_t hidden, float eps) {
    float var = sumSquares / (float)hidden;
    return 1.0f / sqrtf(var + eps);
}
#endif /* !__CUDACC__ */

#endif /* ARNORM_NUMERICS_H */
