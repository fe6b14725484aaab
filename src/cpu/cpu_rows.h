/* cpu_rows.h - the per-row arithmetic of the CPU backend (numerics.h, row by row). */
#ifndef ARNORM_CPU_ROWS_H
#define ARNORM_CPU_ROWS_H

#include "arnorm_internal.h"

/* Scratch of a call: h and the scale (weightBias + w) of one row, and the tree's slots. */
typedef struct {
    float *h;     /* hidden floats */
    float *w;     /* hidden floats, filled by arnormCpuPrepareWeight */
    float *slots; /* ARNORM_ROW_MAX_SLOTS floats */
} arnormRowScratch;

/* Computes weightBias + weight once per call, before arnormCpuFinishRows. */
void arnormCpuPrepareWeight(const arnormNormArgs *args, arnormRowScratch *scratch);

/*
 * Finishes rows [row0, row0 + nrows) of a call. Sender q's data for those rows is
 * senders[q] (row-major [nrows x hidden] of the call's dtype); a = D(sum over q in order),
 * residualOut = D(a + residual), normOut = D((h * s) * (weightBias + w)). With one sender
 * it is the norm of an already reduced input. Reads every input of a row before writing
 * it, so the aliasing the header allows is safe. Specialized for 1, 2 and 4 senders.
 */
void arnormCpuFinishRows(const void *const *senders, int nsenders, const arnormNormArgs *args,
                         size_t row0, size_t nrows, arnormRowScratch *scratch);

/* sums[i] = (first ? 0 : sums[i]) + float(src[i]), -0.0 taken as +0.0. */
void arnormCpuAccumulate(const void *src, size_t n, int dtype, float *sums, int first);
/* dst[first + i] = src[i] rounded to dtype. */
void arnormCpuStoreRounded(void *dst, size_t first, size_t n, int dtype, const float *src);
/* Copies n elements of `width` bytes, -0.0 sent as +0.0 (the Lamport writers' rule). */
void arnormCpuCopyNoNegZero(void *dst, const void *src, size_t n, int width);

#endif
