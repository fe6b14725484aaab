/*
 * test_numerics.c - conversions and the per-row arithmetic, bit for bit:
 *  - the library's bf16/fp16 conversions against independent ones (round to nearest even,
 *    NaN, Inf, overflow, subnormals), exhaustively over every 16-bit pattern and on
 *    random floats;
 *  - the CPU backend's vectorized rows against the scalar definition of numerics.h, for
 *    every hidden size class (1 .. 65536, multiples of 8 and not).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "numerics.h"
#include "testutil.h"

static int testConversions(uint64_t seed) {
    /* every 16-bit pattern: load is exact, store(load(x)) == x (NaN stays NaN) */
    for (uint32_t b = 0; b < 65536; b++) {
        uint16_t u = (uint16_t)b;
        float fb = arnormBf16ToFloat(u), fh = arnormHalfToFloat(u);
        TU_CHECK(fb == (float)tuLoad(&u, 0, arnormBfloat16) || (isnan(fb) && isnan(tuLoad(&u, 0, arnormBfloat16))),
                 "bf16 load 0x%04x", u);
        TU_CHECK(fh == (float)tuLoad(&u, 0, arnormFloat16) || (isnan(fh) && isnan(tuLoad(&u, 0, arnormFloat16))),
                 "fp16 load 0x%04x", u);
        if (!isnan(fb)) TU_CHECK(arnormFloatToBf16(fb) == u, "bf16 round trip 0x%04x", u);
        else TU_CHECK(isnan(arnormBf16ToFloat(arnormFloatToBf16(fb))), "bf16 NaN 0x%04x", u);
        if (!isnan(fh)) TU_CHECK(arnormFloatToHalf(fh) == u, "fp16 round trip 0x%04x", u);
        else TU_CHECK(isnan(arnormHalfToFloat(arnormFloatToHalf(fh))), "fp16 NaN 0x%04x", u);
    }
    /* random floats over the whole exponent range, and the halfway cases */
    uint64_t s = seed;
    for (int i = 0; i < 2000000; i++) {
        s = tuMix(s, (uint64_t)i);
        uint32_t bits = (uint32_t)s;
        if (i % 4 == 1) bits = (bits & 0xffff0000u) | 0x8000u;         /* bf16 tie */
        if (i % 4 == 2) bits = (bits & 0x8fffffffu) | 0x30000000u;     /* near fp16 range */
        if (i % 4 == 3) bits = (bits & 0xffffe000u) | 0x1000u;         /* fp16 tie */
        float f;
        memcpy(&f, &bits, 4);
        uint16_t want, got;
        tuStore(&want, 0, arnormBfloat16, f);
        got = arnormFloatToBf16(f);
        TU_CHECK(got == want || (isnan(f) && (got & 0x7f80) == 0x7f80 && (got & 0x7f)),
                 "bf16 of %a (0x%08x): got 0x%04x want 0x%04x", f, bits, got, want);
        tuStore(&want, 0, arnormFloat16, f);
        got = arnormFloatToHalf(f);
        TU_CHECK(got == want || (isnan(f) && (got & 0x7c00) == 0x7c00 && (got & 0x3ff)),
                 "fp16 of %a (0x%08x): got 0x%04x want 0x%04x", f, bits, got, want);
    }
    printf("conversions: every 16-bit pattern and 2e6 random floats: ok\n");
    return 0;
}

/* The scalar definition of a row (numerics.h), fed to the library through the one-rank
 * path: the outputs must match bit for bit. */
static int testRows(uint64_t seed) {
    arnormUniqueId id;
    TU_OK(arnormGetUniqueId(&id));
    arnormConfig_t cfg = ARNORM_CONFIG_INITIALIZER;
    cfg.backend = arnormBackendCpu;
    arnormComm_t comm;
    TU_OK(arnormCommInitRank(&comm, 1, id, 0, &cfg));
    static const size_t hiddens[] = {1, 2, 7, 8, 9, 31, 255, 256, 257, 640, 1000, 2304, 4095,
                                     4096, 5376, 8191, 8192, 8200, 16384, 65535, 65536};
    float *h = malloc(65536 * sizeof(float)), slots[ARNORM_ROW_MAX_SLOTS];
    int checked = 0;
    for (size_t hi = 0; hi < sizeof hiddens / sizeof hiddens[0]; hi++)
        for (int d = 0; d < arnormNumDataTypes; d++) {
            const arnormDataType_t dt = (arnormDataType_t)d;
            const size_t H = hiddens[hi], T = 2, n = T * H, es = tuSize(dt);
            void *x = malloc(n * es), *res = malloc(n * es), *ro = malloc(n * es),
                 *no = malloc(n * es), *w = malloc(H * 4);
            const arnormDataType_t wt = (H & 1) ? arnormFloat32 : dt;
            uint64_t k = tuMix(seed, H * 4 + (size_t)d);
            tuFill(x, n, dt, tuMix(k, 1), 3.0);
            tuFill(res, n, dt, tuMix(k, 2), 2.0);
            tuFill(w, H, wt, tuMix(k, 3), 0.5);
            const float eps = 1e-5f, bias = d == 1 ? 0.0f : 1.0f;
            TU_OK(arnormResidualRMSNorm(x, res, ro, no, w, wt, eps, bias, T, H, dt, comm, NULL));
            for (size_t r = 0; r < T; r++) {
                for (size_t i = 0; i < H; i++) {
                    float a = arnormLoad(x, r * H + i, dt);
                    a = a == 0.0f ? 0.0f : a;
                    h[i] = arnormRound(arnormRound(a, dt) + arnormLoad(res, r * H + i, dt), dt);
                }
                const float s = arnormRowScale(arnormRowSumSquares(h, H, slots), H, eps);
                for (size_t i = 0; i < H; i++) {
                    const float scale = bias + arnormLoad(w, i, wt);
                    const float hs = h[i] * s;
                    uint32_t want = 0, got = 0, wantR = 0, gotR = 0;
                    _Alignas(4) unsigned char buf[4]; /* element storage, copied out by bytes */
                    arnormStore(buf, 0, dt, hs * scale);
                    memcpy(&want, buf, es);
                    memcpy(&got, (char *)no + (r * H + i) * es, es);
                    arnormStore(buf, 0, dt, h[i]);
                    memcpy(&wantR, buf, es);
                    memcpy(&gotR, (char *)ro + (r * H + i) * es, es);
                    TU_CHECK(want == got && wantR == gotR,
                             "%s H=%zu row %zu [%zu]: norm 0x%x want 0x%x, residual 0x%x want 0x%x",
                             tuDtypeName(dt), H, r, i, got, want, gotR, wantR);
                }
            }
            checked++;
            free(x); free(res); free(ro); free(no); free(w);
        }
    free(h);
    TU_OK(arnormCommDestroy(comm));
    printf("rows: %d (hidden, dtype) cases equal the scalar definition bit for bit: ok\n",
           checked);
    return 0;
}

int main(void) {
    uint64_t seed = tuSeed();
    int failed = testConversions(seed) || testRows(seed);
    printf("%s\n", failed ? "FAILED" : "PASSED");
    return failed;
}
