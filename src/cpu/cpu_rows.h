/* cpu_rows.h - the per-row arithmetic of the CPU backend (numerics.h, row by row). */
#ifndef ARNORM_CPU_ROWS_H
#define ARNORM_CPU_ROWS_H

#include "arnorm_internal.h"

/* Scratch for one row: hidden floats for h, ARNORM_ROW_MAX_SLOTS for the tree. */
typedef struct {
    float *h;
    float *slots;
} arnormRowScratch;

/*
 * Finishes rows [row0, row0 + nrows) of a call: `sums` holds the fp32 sums a (not yet
 * rounded), row-major from row0. Writes residualOut = D(D(a) + residual) and
 * normOut = D((h * s) * (weightBias + w)). Reads every input of a row before writing it,
 * so the aliasing the header allows is safe.
 */
void arnormCpuFinishRows(const float *sums, const arnormNormArgs *args, size_t row0,
                         size_t nrows, arnormRowScratch *scratch);

/* Loads elements [first, first + n) of a buffer of type t as float, -0.0 mapped to +0.0. */
void arnormCpuLoadFloats(const void *src, size_t first, size_t n, int dtype, float *dst);

#endif
