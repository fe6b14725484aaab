/* cpu_rows.c - residual add + RMSNorm of rows on the CPU, by the tree of numerics.h. */
#include "cpu/cpu_rows.h"

#include "dtype.h"
#include "numerics.h"

void arnormCpuLoadFloats(const void *src, size_t first, size_t n, int dtype, float *dst) {
    for (size_t i = 0; i < n; i++) {
        float v = arnormLoad(src, first + i, (arnormDataType_t)dtype);
        dst[i] = v == 0.0f ? 0.0f : v; /* -0.0 is the protocol's sentinel: take it as +0.0 */
    }
}

void arnormCpuFinishRows(const float *sums, const arnormNormArgs *args, size_t row0,
                         size_t nrows, arnormRowScratch *scratch) {
    const size_t H = args->hidden;
    const arnormDataType_t dt = (arnormDataType_t)args->dtype;
    const arnormDataType_t wt = (arnormDataType_t)args->weightType;
    float *h = scratch->h;
    for (size_t r = 0; r < nrows; r++) {
        const size_t base = (row0 + r) * H;
        const float *a = sums + r * H;
        for (size_t i = 0; i < H; i++) {
            float v = arnormRound(a[i], dt);
            if (args->residual) v = arnormRound(v + arnormLoad(args->residual, base + i, dt), dt);
            h[i] = v;
        }
        if (args->residualOut)
            for (size_t i = 0; i < H; i++) arnormStore(args->residualOut, base + i, dt, h[i]);
        const float s =
            arnormRowScale(arnormRowSumSquares(h, H, scratch->slots), H, args->eps);
        for (size_t i = 0; i < H; i++) {
            float scale = args->weightBias + arnormLoad(args->weight, i, wt);
            float hs = h[i] * s;
            arnormStore(args->normOut, base + i, dt, hs * scale);
        }
    }
}
