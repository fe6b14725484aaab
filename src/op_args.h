/*
 * op_args.h - the plain argument struct of a norm-carrying call, shared by the host core,
 * the CPU backend and the CUDA kernels (C and CUDA C).
 */
#ifndef ARNORM_OP_ARGS_H
#define ARNORM_OP_ARGS_H

#include <stddef.h>

typedef struct {
    const void *input;    /* partial (fused) or the already reduced input (norm only) */
    const void *residual; /* may be NULL: no residual add */
    void *residualOut;    /* input (+ residual); may be NULL when residual is NULL */
    void *normOut;
    const void *weight;   /* hidden elements of weightType */
    int dtype;            /* arnormDataType_t of input, residual and outputs */
    int weightType;       /* arnormDataType_t: dtype or arnormFloat32 */
    float eps;
    float weightBias;     /* 1.0 Gemma (1 + w), 0.0 Llama (w) */
    size_t tokens;
    size_t hidden;
} arnormNormArgs;

#endif /* ARNORM_OP_ARGS_H */
