/*
 * kernels.cu - arnorm's CUDA kernels: residual + RMSNorm, Lamport one-shot and two-shot
 * fused all-reduce + residual + RMSNorm, and the plain all-reduce on the same machinery.
 *
 * Numerics (DESIGN.md section 1, src/numerics.h), bit for bit with the CPU backend:
 *   a = D(sum over ranks in rank order of float(partial)), -0.0 partials taken as +0.0
 *   h = D(a + residual)    (never -0.0: a is not, see docs/numerics.md)
 *   row tree: one block per row (or a cluster of two, see RowSplit), S = arnormRowSlots(H)
 *   slots, slot t sums the squares of chunks t, t+S, ... (8 elements each, in order), xor
 *   butterfly in warps, then over the warp sums; var = total / H; s = 1 / sqrt(var + eps),
 *   correctly rounded
 *   out = D((h * s) * (weightBias + w))
 * Built with --fmad=false and written with __fadd_rn/__fmul_rn so no FMA is contracted.
 *
 * Lamport protocol: a slot is "unwritten" while any 32-bit word of a 16-byte vector holds
 * 0x80000000 (-0.0f, or a 16-bit pair whose upper element is -0.0). Writers map -0.0 to
 * +0.0, so a written word never holds the sentinel, whatever the dtype. A call writes slot
 * count % 3 and clears (to the sentinel) slot (count + 2) % 3, which the previous call read.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <map>
#include <mutex>
#include <tuple>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include <cooperative_groups.h>
#endif

#include "../numerics.h"
#include "kernels.h"

#ifdef ARNORM_KERNEL_STAMPS
#include <algorithm>
#include <cstdio>
#include <vector>
#endif

namespace {

constexpr uint32_t kSentinel = ARNORM_SENTINEL_WORD;

/* ------------------------------------------------------------------ element types */

struct Bf16 {
    static constexpr int kSize = 2;
};
struct Fp16 {
    static constexpr int kSize = 2;
};
struct Fp32 {
    static constexpr int kSize = 4;
};

/* 8 elements of a type, as 32-bit words (4 for 16-bit types, 8 for fp32). */
template <typename T>
struct Chunk {
    static constexpr int kWords = 2 * T::kSize;
    static constexpr int kVecs = kWords / 4;
    uint32_t w[kWords];
};

__device__ __forceinline__ float bitsToFloat(Bf16, uint32_t b) { return __uint_as_float(b << 16); }
__device__ __forceinline__ float bitsToFloat(Fp16, uint32_t b) {
    return __half2float(__ushort_as_half((unsigned short)b));
}
__device__ __forceinline__ uint32_t floatToBits(Bf16, float f) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(f));
}
__device__ __forceinline__ uint32_t floatToBits(Fp16, float f) {
    return (uint32_t)__half_as_ushort(__float2half_rn(f));
}

template <typename T>
__device__ __forceinline__ float getf(const Chunk<T> &c, int i) {
    if constexpr (T::kSize == 4) {
        return __uint_as_float(c.w[i]);
    } else {
        return bitsToFloat(T(), (c.w[i >> 1] >> ((i & 1) * 16)) & 0xffffu);
    }
}

template <typename T>
__device__ __forceinline__ void setf(Chunk<T> &c, int i, float f) {
    if constexpr (T::kSize == 4) {
        c.w[i] = __float_as_uint(f);
    } else {
        uint32_t b = floatToBits(T(), f);
        if (i & 1)
            c.w[i >> 1] = (c.w[i >> 1] & 0x0000ffffu) | (b << 16);
        else
            c.w[i >> 1] = (c.w[i >> 1] & 0xffff0000u) | b;
    }
}

/* float rounded to T and back. */
template <typename T>
__device__ __forceinline__ float roundTo(float f) {
    if constexpr (T::kSize == 4) {
        return f;
    } else {
        return bitsToFloat(T(), floatToBits(T(), f));
    }
}

/* -0.0 -> +0.0 on every element. */
template <typename T>
__device__ __forceinline__ void mapNegZero(Chunk<T> &c) {
#pragma unroll
    for (int k = 0; k < Chunk<T>::kWords; k++) {
        uint32_t v = c.w[k];
        if constexpr (T::kSize == 4) {
            if (v == 0x80000000u) v = 0u;
        } else {
            if ((v & 0xffffu) == 0x8000u) v &= 0xffff0000u;
            if ((v >> 16) == 0x8000u) v &= 0x0000ffffu;
        }
        c.w[k] = v;
    }
}

template <typename T>
__device__ __forceinline__ bool hasSentinel(const Chunk<T> &c) {
    bool any = false;
#pragma unroll
    for (int k = 0; k < Chunk<T>::kWords; k++) any |= (c.w[k] == kSentinel);
    return any;
}

__device__ __forceinline__ uint4 ldVolatile(const void *p) {
    uint4 v;
    asm volatile("ld.volatile.global.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p)
                 : "memory");
    return v;
}

__device__ __forceinline__ unsigned long long globalTimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

#ifdef ARNORM_KERNEL_STAMPS
/* Development builds only (kernels.h): the one-shot's block 0, thread 0 notes when it
 * reaches each phase (STAMP into gStampNow) and files the call's row under its index at the
 * end (STAMP_COMMIT). Phases: */
enum { kStStart, kStCtrlLoaded, kStArrived, kStCtrlShared, kStPushed, kStCleared, kStFirstIn,
       kStWarpSums, kStTree, kStRowDone, kStEnd, kStPhases };
#define STAMP_CALLS 1024
__device__ unsigned long long gStamps[STAMP_CALLS][kStPhases];
__device__ unsigned long long gStampNow[kStPhases];
/* the clobber keeps the compiler from moving memory operations across a stamp, and the
 * in-order issue makes the timer wait for the instructions before it (e.g. a store of a
 * loaded value waits for the load) */
__device__ __forceinline__ unsigned long long stampTimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
    return t;
}
#define STAMP(phase)                                                                        \
    do {                                                                                    \
        if (blockIdx.x == 0 && threadIdx.x == 0) gStampNow[phase] = stampTimer();           \
    } while (0)
#define STAMP_COMMIT(count)                                                                 \
    do {                                                                                    \
        if (blockIdx.x == 0 && threadIdx.x == 0)                                            \
            for (int p_ = 0; p_ < kStPhases; p_++)                                          \
                gStamps[(count) % STAMP_CALLS][p_] = gStampNow[p_];                         \
    } while (0)
/* The two-shot's phases, over all blocks: for each of the first TS_CALLS calls, the
 * earliest and the latest block's thread 0 to reach each phase (the earliest kept as the
 * largest ~t, so that zeroed memory needs no initialization). */
enum { kTsStart, kTsPushed, kTsCleared, kTsOwned, kTsEnd, kTsPhases };
#define TS_CALLS 4096
__device__ unsigned long long gTsStamps[TS_CALLS][kTsPhases][2];
__device__ __forceinline__ void tsStamp(unsigned long long count, int phase, unsigned long long t) {
    if (threadIdx.x == 0 && count < TS_CALLS) {
        atomicMax(&gTsStamps[count][phase][0], t);
        atomicMax(&gTsStamps[count][phase][1], ~t);
    }
}
#define TS_STAMP(count, phase) tsStamp(count, phase, stampTimer())
#define TS_STAMP_AT(count, phase, t) tsStamp(count, phase, t)
#define TS_NOW() stampTimer()
#else
#define STAMP(phase) \
    do {             \
    } while (0)
#define STAMP_COMMIT(count) \
    do {                    \
    } while (0)
#define TS_STAMP(count, phase) \
    do {                       \
    } while (0)
#define TS_STAMP_AT(count, phase, t) \
    do {                             \
    } while (0)
#define TS_NOW() 0ull
#endif

template <typename T>
__device__ __forceinline__ void storeChunk(void *p, const Chunk<T> &c) {
#pragma unroll
    for (int v = 0; v < Chunk<T>::kVecs; v++)
        reinterpret_cast<uint4 *>(p)[v] =
            make_uint4(c.w[4 * v], c.w[4 * v + 1], c.w[4 * v + 2], c.w[4 * v + 3]);
}

template <typename T>
__device__ __forceinline__ void loadChunkPlain(Chunk<T> &c, const void *p) {
#pragma unroll
    for (int v = 0; v < Chunk<T>::kVecs; v++) {
        uint4 x = reinterpret_cast<const uint4 *>(p)[v];
        c.w[4 * v] = x.x;
        c.w[4 * v + 1] = x.y;
        c.w[4 * v + 2] = x.z;
        c.w[4 * v + 3] = x.w;
    }
}

template <typename T>
__device__ __forceinline__ void loadChunkVolatile(Chunk<T> &c, const void *p) {
#pragma unroll
    for (int v = 0; v < Chunk<T>::kVecs; v++) {
        uint4 x = ldVolatile(reinterpret_cast<const uint4 *>(p) + v);
        c.w[4 * v] = x.x;
        c.w[4 * v + 1] = x.y;
        c.w[4 * v + 2] = x.z;
        c.w[4 * v + 3] = x.w;
    }
}

/* A user tensor's chunk (row, c): 16-byte loads when the chunk is whole and the tensors
 * are aligned, element loads otherwise; elements outside the tensor read as +0.0. */
template <typename T>
__device__ __forceinline__ void loadUser(Chunk<T> &c, const void *base, long long row,
                                         long long chunk, long long hidden, long long count,
                                         bool vec) {
    const long long col = chunk * 8;
    const long long g = row * hidden + col;
    if (vec && col + 8 <= hidden && g + 8 <= count) {
        loadChunkPlain(c, (const char *)base + g * T::kSize);
        return;
    }
#pragma unroll
    for (int k = 0; k < Chunk<T>::kWords; k++) c.w[k] = 0u;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        if (col + i < hidden && g + i < count) {
            if constexpr (T::kSize == 4) {
                c.w[i] = ((const uint32_t *)base)[g + i];
            } else {
                uint32_t b = ((const uint16_t *)base)[g + i];
                c.w[i >> 1] |= b << ((i & 1) * 16);
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void storeUser(void *base, const Chunk<T> &c, long long row,
                                          long long chunk, long long hidden, long long count,
                                          bool vec) {
    const long long col = chunk * 8;
    const long long g = row * hidden + col;
    if (vec && col + 8 <= hidden && g + 8 <= count) {
        storeChunk(reinterpret_cast<char *>(base) + g * T::kSize, c);
        return;
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        if (col + i < hidden && g + i < count) {
            if constexpr (T::kSize == 4) {
                ((uint32_t *)base)[g + i] = c.w[i];
            } else {
                ((uint16_t *)base)[g + i] = (uint16_t)((c.w[i >> 1] >> ((i & 1) * 16)) & 0xffffu);
            }
        }
    }
}

/* Weight chunk as floats, weight of type T or fp32. */
template <typename T>
__device__ __forceinline__ void loadWeight(float w[8], const void *weight, int weightIsF32,
                                           long long chunk, long long hidden, bool vec) {
    if (weightIsF32) {
        Chunk<Fp32> c;
        loadUser(c, weight, 0, chunk, hidden, hidden, vec);
#pragma unroll
        for (int i = 0; i < 8; i++) w[i] = getf(c, i);
    } else {
        Chunk<T> c;
        loadUser(c, weight, 0, chunk, hidden, hidden, vec);
#pragma unroll
        for (int i = 0; i < 8; i++) w[i] = getf(c, i);
    }
}

/* ------------------------------------------------------------------ waits */

struct Waiter {
    unsigned long long deadline;
    int *errWord;
    int failed;
    unsigned int iter;
};

/* Gives up on a wait: marks the communicator failed (later calls don't wait) and names
 * `peer` in the host-mapped error word, first failure wins. */
__device__ __forceinline__ void waitFail(Waiter &w, arnormKCtrl *ctrl, int peer) {
    w.failed = 1;
    *(volatile int *)&ctrl->failed = 1;
    atomicCAS_system(w.errWord, 0, peer + 1);
    __threadfence_system();
}

/*
 * Spins until the Lamport chunks v[p] at base + p * stride, for every p in `mask`, are
 * written (or the wait fails). All pending chunks are loaded together each round, so
 * peers that arrive at once cost one memory round trip, not one per peer. v[p] comes
 * from peer firstPeer + p (the name a timeout reports).
 */
template <typename T, int N>
__device__ __forceinline__ void spinChunks(Chunk<T> (&v)[N], const char *base, long long stride,
                                           unsigned mask, Waiter &w, arnormKCtrl *ctrl,
                                           int firstPeer = 0) {
    unsigned pending = mask;
    for (;;) {
#pragma unroll
        for (int p = 0; p < N; p++)
            if (pending & (1u << p)) loadChunkVolatile(v[p], base + p * stride);
#pragma unroll
        for (int p = 0; p < N; p++)
            if ((pending & (1u << p)) && !hasSentinel(v[p])) pending &= ~(1u << p);
        if (!pending || w.failed) return;
        if ((++w.iter & 63u) == 0) {
            if (*(volatile const int *)&ctrl->failed) {
                w.failed = 1;
                return;
            }
            if (globalTimer() > w.deadline) {
                waitFail(w, ctrl, firstPeer + __ffs(pending) - 1);
                return;
            }
        }
    }
}

/* ------------------------------------------------------------------ the row tail */

/*
 * Which slots of a row's tree (numerics.h) this thread holds. Rows are one block each
 * (CS = 1), or, for rows of more than 512 slots on sm_90, split over a cluster of CS blocks
 * (block r of the cluster holds slots r * blockDim.x ...), so they run in the 512-thread
 * build. Slots past S hold no chunk: their warps add +0.0, as the tree's zero lanes do.
 */
struct RowSplit {
    int S;    /* slots of the tree: arnormRowSlots(hidden) */
    int slot; /* this thread's slot */
};
__device__ __forceinline__ RowSplit wholeRow() { return RowSplit{(int)blockDim.x, (int)threadIdx.x}; }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/* barrier.cluster arrive (release) + wait (acquire): every thread of the cluster */
__device__ __forceinline__ void clusterSync() { cooperative_groups::this_cluster().sync(); }
#else
__device__ __forceinline__ void clusterSync() {}
#endif

/*
 * Sum of one float per slot by the tree of numerics.h; every thread of the block (of the
 * cluster when CS > 1) calls it and gets the total. One barrier: every warp then sums the
 * warp sums itself, the same values in the same lanes, so every thread gets the same bits
 * (an xor butterfly leaves the same sum in every lane) without a second barrier to hand
 * warp 0's total out. red: 2 x 32 floats of shared memory, `parity` alternating from one
 * call to the next: a warp may write the next row's warp sum while a slower one still reads
 * this row's, and the barrier of the row after that comes only once every warp has read
 * them (a cluster peer likewise).
 */
constexpr int kTreeFloats = 2 * 32; /* rowTree's shared memory */
template <int CS>
__device__ __forceinline__ float rowTree(float v, float *red, int parity) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nw = blockDim.x >> 5;
    float *r = red + 32 * parity;
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) r[warp] = v;
    if constexpr (CS == 1) {
        __syncthreads();
    } else {
        clusterSync();
    }
    STAMP(kStWarpSums);
    float u = 0.0f;
    if constexpr (CS == 1) {
        if (lane < nw) u = r[lane];
    } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        /* lane l holds the warp sum of the cluster's warp l: block l / nw, warp l % nw */
        const int owner = lane / nw;
        if (owner < CS) u = cooperative_groups::this_cluster().map_shared_rank(r, owner)[lane % nw];
#endif
    }
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) u = __fadd_rn(u, __shfl_xor_sync(0xffffffffu, u, o));
    STAMP(kStTree);
    return u;
}

/*
 * The arithmetic of a chunk and of a row's scale, one copy for every kernel: all paths give
 * the same bits (numerics.h defines them; the CPU backend computes the same).
 * residualStep: h = D(x + residual) in x when addResidual; returns h as a chunk of T (what
 * residual_out stores). addSquares: h's squares added to sumsq in element order (after the
 * stores, so that they go out first).
 */
template <typename T>
__device__ __forceinline__ Chunk<T> residualStep(float x[8], bool addResidual, const Chunk<T> &r) {
    if (addResidual) {
#pragma unroll
        for (int i = 0; i < 8; i++) x[i] = roundTo<T>(__fadd_rn(x[i], getf(r, i)));
    }
    Chunk<T> o;
#pragma unroll
    for (int i = 0; i < 8; i++) setf(o, i, x[i]);
    return o;
}

__device__ __forceinline__ void addSquares(const float x[8], float &sumsq) {
    /* elements past the row end are +0.0: adding 0 * 0 leaves sumsq unchanged */
#pragma unroll
    for (int i = 0; i < 8; i++) sumsq = __fadd_rn(sumsq, __fmul_rn(x[i], x[i]));
}

/* 1 / sqrt(mean of squares + eps), each operation rounded once. */
__device__ __forceinline__ float rowScale(float total, long long hidden, float eps) {
    const float var = __fdiv_rn(total, (float)hidden);
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
}

/*
 * Finishes one row whose pre-residual values come from `get(c, x)` (x already -0-mapped
 * floats of D values): h = D(x + residual) when addResidual, else h = x; stores h to
 * residualOut and hands each chunk of it to `put(c, h)` (the two-shot's all-gather);
 * when doNorm, reduces and stores normOut. All threads of the block call it.
 */
struct NoPut {
    template <typename C>
    __device__ void operator()(long long, const C &) const {}
};
template <typename T, int CS = 1, typename Get, typename Put>
__device__ __forceinline__ void finishRow(const arnormKArgs &a, long long row, bool addResidual,
                                          bool vec, float *red, int parity, RowSplit sp, Get get,
                                          Put put) {
    const long long hidden = a.hidden;
    const long long nchunks = (hidden + 7) / 8;
    const int S = sp.S;
    float sumsq = 0.0f;
    float h0[8];
#pragma unroll
    for (int i = 0; i < 8; i++) h0[i] = 0.0f;
    float w0[8];
    int k = 0;
    for (long long c = sp.slot; c < nchunks; c += S, k++) {
        /* residual and weight loads go out before the wait for the sum */
        Chunk<T> r;
        if (addResidual) loadUser(r, a.residual, row, c, hidden, a.count, vec);
        if (k == 0 && a.doNorm) loadWeight<T>(w0, a.weight, a.weightType == 2, c, hidden, vec);
        float x[8];
        get(c, x);
        const Chunk<T> o = residualStep<T>(x, addResidual, r);
        if (a.residualOut) storeUser(a.residualOut, o, row, c, hidden, a.count, vec);
        put(c, o);
        if (a.doNorm) addSquares(x, sumsq);
        if (k == 0) {
#pragma unroll
            for (int i = 0; i < 8; i++) h0[i] = x[i];
        }
    }
    if (!a.doNorm) return;
    const float s = rowScale(rowTree<CS>(sumsq, red, parity), hidden, a.eps);
    k = 0;
    for (long long c = sp.slot; c < nchunks; c += S, k++) {
        float h[8];
        if (k == 0) {
#pragma unroll
            for (int i = 0; i < 8; i++) h[i] = h0[i];
        } else if (a.residualOut) { /* our own store of h, same thread */
            Chunk<T> r;
            loadUser(r, a.residualOut, row, c, hidden, a.count, vec);
#pragma unroll
            for (int i = 0; i < 8; i++) h[i] = getf(r, i);
        } else { /* norm only without residual: h is the (mapped) input */
            Chunk<T> r;
            loadUser(r, a.input, row, c, hidden, a.count, vec);
            mapNegZero(r);
#pragma unroll
            for (int i = 0; i < 8; i++) h[i] = getf(r, i);
        }
        float w[8];
        if (k == 0) {
#pragma unroll
            for (int i = 0; i < 8; i++) w[i] = w0[i];
        } else {
            loadWeight<T>(w, a.weight, a.weightType == 2, c, hidden, vec);
        }
        Chunk<T> o;
#pragma unroll
        for (int i = 0; i < 8; i++)
            setf(o, i, __fmul_rn(__fmul_rn(h[i], s), __fadd_rn(a.weightBias, w[i])));
        storeUser(a.normOut, o, row, c, hidden, a.count, vec);
    }
}

__device__ __forceinline__ void pdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdlTrigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Every tensor 16-byte aligned and rows of whole chunks: 16-byte loads and stores (the
 * kernels' test, and the host's for normRowKernel). */
__host__ __device__ __forceinline__ bool isVec(const arnormKArgs &a) {
    uintptr_t m = (uintptr_t)a.input | (uintptr_t)a.residual | (uintptr_t)a.residualOut |
                  (uintptr_t)a.normOut | (uintptr_t)a.weight;
    return (m & 15u) == 0 && (a.hidden & 7) == 0;
}

/* ------------------------------------------------------------------ kernels */

template <typename T>
__global__ void __launch_bounds__(1024) normKernel(const arnormKArgs a) {
    __shared__ float red[kTreeFloats];
    pdlWait();
    const bool vec = isVec(a);
    const bool addRes = a.residual != nullptr;
    int parity = 0; /* rowTree's halves, alternating: no barrier between rows */
    for (long long row = blockIdx.x; row < a.rows; row += gridDim.x, parity ^= 1) {
        finishRow<T>(a, row, addRes, vec, red, parity, wholeRow(), [&](long long c, float x[8]) {
            Chunk<T> in;
            loadUser(in, a.input, row, c, a.hidden, a.count, vec);
            mapNegZero(in);
#pragma unroll
            for (int i = 0; i < 8; i++) x[i] = getf(in, i);
        }, NoPut());
    }
    __syncthreads();
    pdlTrigger();
}

/*
 * Residual + RMSNorm of 16-bit rows of at most MaxT slots (one chunk per thread), since
 * session 12 only for rows normRowKernel does not take (unaligned tensors, H not a multiple
 * of 8). Each block
 * loads the next row's input and residual before it finishes the current row, so two rows
 * of loads are in flight per block instead of one, and keeps weightBias + w in registers
 * for all its rows. Same operations in the same order as finishRow: the same bits (the GPU
 * test compares them with the CPU backend's). normKernel was load-bound (ncu: 51.7% of DRAM
 * peak); this one is 1.40x faster at 8192 x 4096 bf16 on H200. fp32 rows (twice the
 * registers per chunk) measured 1.08x slower this way, so they keep normKernel.
 */
template <typename T, int MaxT, int MinBlocks>
__global__ void __launch_bounds__(MaxT, MinBlocks) normKernelPipelined(const arnormKArgs a) {
    __shared__ float red[kTreeFloats];
    pdlWait();
    const bool vec = isVec(a);
    const long long hidden = a.hidden, nchunks = (hidden + 7) / 8;
    const long long c = threadIdx.x;
    const bool mine = c < nchunks, addRes = a.residual != nullptr;
    /* the first row's loads and the weight's all go out before anything waits on one
     * (weight first, with its bias added at once, made T = 1 0.12 us slower) */
    Chunk<T> in, res, inNext, resNext;
    long long row = blockIdx.x;
    if (row < a.rows && mine) {
        loadUser(in, a.input, row, c, hidden, a.count, vec);
        if (addRes) loadUser(res, a.residual, row, c, hidden, a.count, vec);
    }
    float wsum[8];
#pragma unroll
    for (int i = 0; i < 8; i++) wsum[i] = 0.0f;
    if (mine) loadWeight<T>(wsum, a.weight, a.weightType == 2, c, hidden, vec);
#pragma unroll
    for (int i = 0; i < 8; i++) wsum[i] = __fadd_rn(a.weightBias, wsum[i]);
    int parity = 0; /* rowTree's halves, alternating: no barrier between rows */
    for (; row < a.rows; row += gridDim.x, parity ^= 1) {
        const long long next = row + gridDim.x;
        if (next < a.rows && mine) {
            loadUser(inNext, a.input, next, c, hidden, a.count, vec);
            if (addRes) loadUser(resNext, a.residual, next, c, hidden, a.count, vec);
        }
        float x[8];
        float sumsq = 0.0f;
        if (mine) {
            mapNegZero(in);
#pragma unroll
            for (int i = 0; i < 8; i++) x[i] = getf(in, i);
            const Chunk<T> o = residualStep<T>(x, addRes, res);
            if (a.residualOut) storeUser(a.residualOut, o, row, c, hidden, a.count, vec);
            addSquares(x, sumsq);
        }
        if (a.doNorm) {
            const float s = rowScale(rowTree<1>(sumsq, red, parity), hidden, a.eps);
            if (mine) {
                Chunk<T> o;
#pragma unroll
                for (int i = 0; i < 8; i++) setf(o, i, __fmul_rn(__fmul_rn(x[i], s), wsum[i]));
                storeUser(a.normOut, o, row, c, hidden, a.count, vec);
            }
        }
        in = inNext;
        res = resNext;
    }
    __syncthreads();
    pdlTrigger();
}

/*
 * Residual + RMSNorm, one row per block, for 16-bit rows of whole aligned 16-byte chunks
 * (isVec), at most K x MaxT chunks, K per thread (K = 1 up to H = 8192, 2 up to 16384):
 * what the norm path runs for those rows. No
 * state is carried from row to row, so few registers (ptxas is asked for MinBlocks blocks
 * per SM: 4 x 512 threads, 32 registers, all 2048 threads of an SM resident) and every
 * resident block's loads go out at once: more loads in flight than normKernelPipelined's
 * two rows in two blocks an SM (61 registers), and fewer instructions a row (no loop
 * state, no element checks: the host picks this kernel only for whole chunks,
 * normRowsFit). Session 12 on H200: 8192 x 4096 bf16 71.2 -> 66.1 us, T = 1 1.96 -> 1.67;
 * K = 2 (one block of 1024 an SM, 64 registers) 8192 x 16384 369 -> 306 us, still 1.21x
 * torch.compile's norm there: the second chunk's loads wait for the first chunk's store
 * (the compiler may not move a load above a store that might alias), and with one block
 * an SM nothing loads while it waits at the row's barrier (branch wip/norm-row2-two-blocks
 * has both fixes, not yet measured).
 * Same operations in the same order as finishRow: the same bits. h is kept as its 16-bit
 * chunk and widened again for the norm (exact: h was rounded to T).
 */
template <typename T, int MaxT, int MinBlocks, int K>
__global__ void __launch_bounds__(MaxT, MinBlocks) normRowKernel(const arnormKArgs a) {
    __shared__ float red[kTreeFloats];
    pdlWait();
    const long long hidden = a.hidden;
    const bool addRes = a.residual != nullptr;
    const bool weightIsT = a.weightType != 2; /* else an fp32 weight */
    int parity = 0; /* rowTree's halves: rows past the grid (over 2^31 - 1) alternate them */
    for (long long row = blockIdx.x; row < a.rows; row += gridDim.x, parity ^= 1) {
        /* slot t sums chunks t, t + S, ... in that order (S = blockDim.x), as finishRow */
        long long off[K];
        bool mine[K];
        Chunk<T> h[K], wc[K];
        float sumsq = 0.0f;
#pragma unroll
        for (int k = 0; k < K; k++) {
            const int c = threadIdx.x + k * blockDim.x;
            mine[k] = c < hidden / 8;
            off[k] = (row * hidden + 8LL * c) * T::kSize;
        }
#pragma unroll
        for (int k = 0; k < K; k++) {
            if (!mine[k]) continue;
            const int c = threadIdx.x + k * blockDim.x;
            Chunk<T> in, res;
            loadChunkPlain(in, (const char *)a.input + off[k]);
            if (addRes) loadChunkPlain(res, (const char *)a.residual + off[k]);
            if (a.doNorm && weightIsT) loadChunkPlain(wc[k], (const char *)a.weight + 8LL * c * T::kSize);
            float x[8];
            if (addRes) {
                /* finishRow's h = D(map(x) + r), map(-0) = +0, as D((x + r) + 0): a sum is -0
                 * only for -0 + -0, which the + 0 maps like map(x) would; other sums (NaN
                 * included: the add makes it canonical either way) are left as they are. One
                 * add an element instead of mapNegZero's compares and selects. */
#pragma unroll
                for (int i = 0; i < 8; i++)
                    x[i] = roundTo<T>(__fadd_rn(__fadd_rn(getf(in, i), getf(res, i)), 0.0f));
#pragma unroll
                for (int i = 0; i < 8; i++) setf(h[k], i, x[i]);
            } else {
                mapNegZero(in);
#pragma unroll
                for (int i = 0; i < 8; i++) x[i] = getf(in, i);
                h[k] = residualStep<T>(x, false, res);
            }
            if (a.residualOut) storeChunk((char *)a.residualOut + off[k], h[k]);
            addSquares(x, sumsq);
        }
        if (!a.doNorm) continue;
        const float s = rowScale(rowTree<1>(sumsq, red, parity), hidden, a.eps);
#pragma unroll
        for (int k = 0; k < K; k++) {
            if (!mine[k]) continue;
            const int c = threadIdx.x + k * blockDim.x;
            float w[8];
            if (!weightIsT) {
                loadWeight<T>(w, a.weight, 1, c, hidden, true);
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++) w[i] = getf(wc[k], i);
            }
            Chunk<T> y;
#pragma unroll
            for (int i = 0; i < 8; i++)
                setf(y, i, __fmul_rn(__fmul_rn(getf(h[k], i), s), __fadd_rn(a.weightBias, w[i])));
            storeChunk((char *)a.normOut + off[k], y);
        }
    }
    __syncthreads();
    pdlTrigger();
}

/*
 * The rotation state a Lamport call works with, read once per block (by thread 0) from the
 * control block. Every block but the grid's last announces that it has read it; the last
 * block (the state's owner) moves the rotation on at its end, once every other block has
 * announced. The owner never announces: its thread 0 reads the state and later overwrites
 * it, in program order. The owner is the last block so that, when the launch adds blocks
 * that only clear (arnormKArgs.clearFrom), the wait for the announcements is theirs, not a
 * row's. Nothing at the end of the call waits on a fence or an atomic's reply: the next
 * kernel reads the new state only after this one completes (stream order, or
 * griddepcontrol.wait under PDL).
 *
 * Where the announcement goes was measured (session 5, ARNORM_KERNEL_STAMPS and A/B runs on
 * 2x H200, docs/performance.md): its release is a fence that waits for every earlier memory
 * operation of the thread (~0.3 us at the block's start). The one-shot announces after its
 * pushes and clear, just before it waits for the peers' data (T=1..128 TP2 0.1-0.4 us
 * faster than at the start); the two-shot at its start (later cost 0.8 us at T=512).
 */
struct LamportState {
    unsigned long long count; /* calls made before this one */
    int slot;                 /* count % 3: this call's slot */
    int clearSlot;            /* (count + 2) % 3: the previous call's slot */
    long long clearBytes;     /* bytes the previous call used there */
    unsigned long long keep[2]; /* ranges of them to leave alone (see arnormKCtrl) */
    Waiter w;
};

__device__ __forceinline__ bool ownsState() { return blockIdx.x == gridDim.x - 1; }

/* Thread 0 of a block but the owner: this block has read the state. The release orders the
 * thread's loads of it before the owner can see the announcement. */
__device__ __forceinline__ void lamportAnnounce(arnormKCtrl *ctrl) {
    if (!ownsState() && threadIdx.x == 0)
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(&ctrl->arrived) : "memory");
}

/* announce: at once (the two-shot), or later by the caller (the one-shot). */
__device__ __forceinline__ LamportState lamportBegin(const arnormKArgs &a, bool announce) {
    __shared__ unsigned long long sh[5];
    arnormKCtrl *ctrl = a.ctrl;
    if (threadIdx.x == 0) {
        /* independent loads: one round trip */
        sh[0] = *(volatile unsigned long long *)&ctrl->count;
        sh[1] = *(volatile unsigned long long *)&ctrl->prevUsed;
        sh[2] = (unsigned long long)*(volatile int *)&ctrl->failed;
        sh[3] = *(volatile unsigned long long *)&ctrl->prevKeep[0];
        sh[4] = *(volatile unsigned long long *)&ctrl->prevKeep[1];
        STAMP(kStCtrlLoaded);
        if (announce) lamportAnnounce(ctrl);
        STAMP(kStArrived);
    }
    __syncthreads();
    STAMP(kStCtrlShared);
    LamportState st;
    st.count = sh[0];
    st.slot = (int)(st.count % 3);
    st.clearSlot = (int)((st.count + 2) % 3);
    st.clearBytes = (long long)sh[1];
    st.keep[0] = sh[3];
    st.keep[1] = sh[4];
    st.w.deadline = globalTimer() + (unsigned long long)a.timeoutNs;
    st.w.errWord = a.errWord;
    st.w.failed = (int)sh[2];
    st.w.iter = 0;
    return st;
}

/* A range of a slot in the control block's packed form (16-byte units). */
__device__ __forceinline__ unsigned long long keepRange(long long offset, long long bytes) {
    return (unsigned long long)(offset / 16) << 32 | (unsigned long long)(bytes / 16);
}

/* The owner's thread 0, at the end: once every block has read the state, advance it. `used`
 * bytes of the slot may hold peers' data, except the two `keep` ranges. */
__device__ __forceinline__ void lamportEnd(const arnormKArgs &a, LamportState &st,
                                           long long used, unsigned long long keep0,
                                           unsigned long long keep1) {
    if (!ownsState() || threadIdx.x != 0) return;
    arnormKCtrl *ctrl = a.ctrl;
    /* The other blocks announce before they wait on any peer (the one-shot after its
     * pushes, the two-shot at its start) and the grid is co-resident, so this is short; the
     * bound only keeps a broken launch from spinning forever. */
    if (gridDim.x > 1) {
        for (unsigned iter = 0;; iter++) {
            unsigned arrived;
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(arrived) : "l"(&ctrl->arrived) : "memory");
            if (arrived >= gridDim.x - 1) break;
            if ((iter & 63u) == 0 && globalTimer() > st.w.deadline) {
                waitFail(st.w, ctrl, a.rank);
                break;
            }
        }
        ctrl->arrived = 0;
    }
    /* the two-shot's row counters of the previous call's slot (forEachRow): zero when the
     * slot comes round again, whichever kernel runs in between; here, where nothing waits
     * (at block 0's start the announce's release waited for these stores: +0.1 us) */
    for (int p = 0; p < 3; p++) ctrl->rowNext[st.clearSlot][p] = 0;
    ctrl->prevUsed = (unsigned long long)used;
    ctrl->prevKeep[0] = keep0;
    ctrl->prevKeep[1] = keep1;
    ctrl->count = st.count + 1;
}

/* Clears what the previous call's peers wrote into a slot back to the sentinel, spread
 * over the blocks from a.clearFrom (units of cs blocks) on: `bytes` from the start, less
 * the ranges in st.keep. Other blocks return at once. */
__device__ __forceinline__ void lamportClear(const arnormKArgs &a, int cs, char *slotBase,
                                             const LamportState &st) {
    const long long first = a.clearFrom * cs;
    if (blockIdx.x < first) return;
    const uint4 s = make_uint4(kSentinel, kSentinel, kSentinel, kSentinel);
    const long long n = st.clearBytes / 16;
    const unsigned long long k0 = st.keep[0] >> 32, n0 = st.keep[0] & 0xffffffffu;
    const unsigned long long k1 = st.keep[1] >> 32, n1 = st.keep[1] & 0xffffffffu;
    for (long long i = (blockIdx.x - first) * blockDim.x + threadIdx.x; i < n;
         i += (gridDim.x - first) * blockDim.x) {
        if ((unsigned long long)i - k0 < n0 || (unsigned long long)i - k1 < n1) continue;
        reinterpret_cast<uint4 *>(slotBase)[i] = s;
    }
}

/* Chunk c of `row` of this rank's partial, -0.0 sent as +0.0: `first` when it is the
 * chunk the thread loaded ahead of the control block. */
template <typename T>
__device__ __forceinline__ void loadPartial(Chunk<T> &x, const Chunk<T> &first, bool isFirst,
                                            const arnormKArgs &a, long long row, long long c,
                                            long long hidden, bool vec) {
    if (isFirst)
        x = first;
    else
        loadUser(x, a.input, row, c, hidden, a.count, vec);
    mapNegZero(x);
}

/*
 * a = D(sum in rank order) of chunk c of `row`: this rank's partial read in place from the
 * user tensor, every peer p's from base + p * stride in our slot once it has arrived; a
 * sum that rounds to -0.0 is taken as +0.0 (docs/numerics.md).
 */
template <typename T, int N>
__device__ __forceinline__ void sumRanks(float x[8], const arnormKArgs &a, long long row,
                                         long long c, long long hidden, bool vec, int rank,
                                         unsigned peers,
                                         const char *base, long long stride, Waiter &w,
                                         arnormKCtrl *ctrl) {
    Chunk<T> v[N];
    loadUser(v[rank], a.input, row, c, hidden, a.count, vec);
    mapNegZero(v[rank]);
    spinChunks(v, base, stride, peers, w, ctrl);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float s = getf(v[0], i);
#pragma unroll
        for (int p = 1; p < N; p++) s = __fadd_rn(s, getf(v[p], i));
        s = roundTo<T>(s);
        x[i] = s == 0.0f ? 0.0f : s;
    }
}

/* MaxT: the block size the kernel is built for; CS: blocks per row (a cluster on sm_90,
 * see RowSplit and pickLamport). */
template <typename T, int N, int MaxT, int CS>
__global__ void __launch_bounds__(MaxT) oneShotKernel(const arnormKArgs a) {
    __shared__ float red[kTreeFloats];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    if constexpr (CS > 1) __trap(); /* clusters: sm_90+ only (the host never asks before) */
#endif
    pdlWait();
    STAMP(kStStart);
    const bool vec = isVec(a);
    const long long hidden = a.hidden, nchunks = (hidden + 7) / 8;
    const int rank = a.rank;
    /* this block works on rows unit, unit + units, ...; with CS > 1 all blocks of a cluster
     * take the same rows (so they meet at the same cluster barriers) */
    const long long unit = blockIdx.x / CS, units = gridDim.x / CS;
    const RowSplit sp = CS == 1 ? wholeRow()
                                : RowSplit{arnormRowSlots((size_t)hidden),
                                           (int)((blockIdx.x % CS) * blockDim.x + threadIdx.x)};
    /* this thread's first chunk does not depend on the slot: load it while the control
     * block is read */
    Chunk<T> first;
    if (unit < a.rows && sp.slot < nchunks)
        loadUser(first, a.input, unit, sp.slot, hidden, a.count, vec);
    LamportState st = lamportBegin(a, false);
    /* the communicator failed: write nothing, wait for nothing. The blocks of the grid
     * (co-resident) start together and only a timeout of this kernel sets `failed` (after
     * timeoutMs), so they all read the same value here and all return, the owner included
     * (none announces, none waits for an announcement), or none does. */
    if (st.w.failed) return;
    arnormKCtrl *ctrl = a.ctrl;
    const long long pitch = arnormKPitch(hidden, a.dtype);
    const long long region = a.rows * pitch;
    const long long slotOff = (long long)st.slot * a.slotBytes;
    constexpr long long cb = 8 * T::kSize;
    char *mine = (char *)a.peerBuf[rank];

    /* 1. push this rank's rows into every peer's slot, region `rank` */
    for (long long row = unit; row < a.rows; row += units) {
        for (long long c = sp.slot; c < nchunks; c += sp.S) {
            Chunk<T> x;
            loadPartial(x, first, row == unit && c == sp.slot, a, row, c, hidden, vec);
            const long long off = slotOff + rank * region + row * pitch + c * cb;
#pragma unroll
            for (int p = 0; p < N; p++)
                if (p != rank) storeChunk((char *)a.peerBuf[p] + off, x);
        }
    }
    STAMP(kStPushed);
    /* 2. clear the slot the previous call read (or leave it to the clearing blocks), then
     * announce (see lamportBegin): the fence's wait now overlaps the wait for the peers'
     * data */
    lamportClear(a, CS, mine + (long long)st.clearSlot * a.slotBytes, st);
    lamportAnnounce(ctrl);
    STAMP(kStCleared);

    /* 3. wait, sum in rank order, residual, norm */
    const unsigned peers = ((1u << N) - 1u) & ~(1u << rank);
    int parity = 0;
    for (long long row = unit; row < a.rows; row += units, parity ^= 1) {
        finishRow<T, CS>(a, row, a.residual != nullptr, vec, red, parity, sp,
                         [&](long long c, float x[8]) {
            sumRanks<T, N>(x, a, row, c, hidden, vec, rank, peers, mine + slotOff + row * pitch + c * cb,
                           region, st.w, ctrl);
            if (row == unit && c == sp.slot) STAMP(kStFirstIn);
        }, NoPut());
    }
    STAMP(kStRowDone);
    /* a cluster peer may still read our warp sums: leave only once it is done */
    if constexpr (CS > 1) clusterSync();
    /* peers never write region `rank` of our slot */
    lamportEnd(a, st, (long long)N * region, keepRange(rank * region, region), 0);
    STAMP(kStEnd);
    STAMP_COMMIT(st.count);
    pdlTrigger();
}

/* The rank that owns `row` in the two-shot: the largest p with rows * p / n <= row. The
 * first guess divides by the runtime row count: in 32 bits when the product fits (a 64-bit
 * division is a software routine, on the path before the reduce-scatter's first store). */
__device__ __forceinline__ int ownerOf(long long row, long long rows, int n) {
    int p = rows < (1LL << 28) ? (int)((unsigned)(row * n) / (unsigned)rows)
                               : (int)((row * n) / rows);
    while (p > 0 && rows * p / n > row) p--;
    while (p < n - 1 && rows * (p + 1) / n <= row) p++;
    return p;
}

/*
 * Items [0, total) of one phase handed out to the blocks as they become free: a block takes
 * item blockIdx.x first, then gridDim.x + the next value of `counter` (this call's, zero at
 * its start); thread 0 asks for the next item before the block works on the current one, so
 * the atomic's round trip overlaps the work. With rows fixed by block index the two-shot's
 * blocks finished up to 60 us apart at 8192 tokens (session 6 stamps, docs/performance.md).
 * When the grid has a block for every item there is nothing to hand out: no tickets, no
 * barrier. Else the next item goes through shared memory, double-buffered (one barrier per
 * item, and one at the end: the next phase's first write must not land on a word still
 * being read). sh: 2 longs of shared memory.
 */
template <typename F>
__device__ __forceinline__ void forEachRow(unsigned *counter, long long total, long long *sh,
                                           F work) {
    const bool handOut = total > gridDim.x;
    int parity = 0;
    for (long long cur = blockIdx.x; cur < total;) {
        unsigned ticket = 0;
        if (handOut && threadIdx.x == 0) ticket = atomicAdd(counter, 1u);
        work(cur); /* one call site: a second copy of the row's code spilled (84 B) */
        if (!handOut) return;
        if (threadIdx.x == 0) sh[parity] = (long long)gridDim.x + ticket;
        __syncthreads();
        cur = sh[parity];
        parity ^= 1;
    }
    if (handOut) __syncthreads();
}

/* Calls of at most this many bytes per rank tensor announce after their reduce-scatter pushes
 * too: session 9 (docs/performance.md, version 9) measured -0.2..-0.5 us at 16-128 rows x 4096
 * and 8-64 x 8192 (up to 1 MiB), +0.3..+0.8 us at 2 MiB and above. */
constexpr long long kTwoShotLateMaxBytes = 1 << 20;

/* The two-shot's k-th pushed row, (k + r1) % rows for k < rows, as a compare: stage 1 walks
 * the rows from the next rank's share on (see there), and a 64-bit modulo is a software
 * routine on the path before the first store. */
__device__ __forceinline__ long long pushRow(long long k, long long r1, long long rows) {
    return k + r1 < rows ? k + r1 : k + r1 - rows;
}

template <typename T, int N, int MaxT>
__global__ void __launch_bounds__(MaxT) twoShotKernel(const arnormKArgs a) {
    __shared__ float red[kTreeFloats];
    pdlWait();
    const unsigned long long tStart = TS_NOW();
    (void)tStart;
    const bool vec = isVec(a);
    const long long hidden = a.hidden, nchunks = (hidden + 7) / 8;
    const long long rows = a.rows;
    const int rank = a.rank;
    const long long r0 = rows * rank / N, r1 = rows * (rank + 1) / N;
    const long long others = rows - (r1 - r0); /* rows this rank does not own */
    /* stage 1 walks the rows starting at the next rank's share (see there) */
    Chunk<T> first; /* as in the one-shot: loaded while the control block is read */
    if (blockIdx.x < others && threadIdx.x < nchunks)
        loadUser(first, a.input, pushRow(blockIdx.x, r1, rows), threadIdx.x, hidden, a.count, vec);
    /* TP2 calls of >= 1024 rows announce after their reduce-scatter pushes and clear, where
     * the release's wait overlaps the wait for the peer (2048 x 4096 bf16: 63.6 -> 62.0 us),
     * and so do calls of up to 1 MiB, where the release's wait was on the first push's path;
     * the others at once (late: TP2 512 +0.8 us, session 5; TP4 2048 +4 us, session 6) */
    const bool lateAnnounce = (N == 2 && rows >= 1024) ||
                              rows * hidden * (long long)T::kSize <= kTwoShotLateMaxBytes;
    LamportState st = lamportBegin(a, !lateAnnounce);
    if (st.w.failed) return; /* as in the one-shot */
    arnormKCtrl *ctrl = a.ctrl;
    const long long pitch = arnormKPitch(hidden, a.dtype);
    const long long owned = (rows + N - 1) / N;
    const long long rsStride = owned * pitch;
    const long long agOff = (long long)N * rsStride;
    const long long slotOff = (long long)st.slot * a.slotBytes;
    constexpr long long cb = 8 * T::kSize;
    char *mine = (char *)a.peerBuf[rank];
    __shared__ long long shNext[2];
    unsigned *rowNext = ctrl->rowNext[st.slot];

    /* 1. reduce-scatter push: row i goes to its owner's region `rank`; this rank's own
     * rows stay where they are (read in place in 3). Rank r takes rank r+1's rows first,
     * then r+2's, ... (rows r1, r1 + 1, ... modulo rows): at any moment the ranks push to
     * different owners instead of all to rank 0 first (no incast at TP >= 3). */
    forEachRow(&rowNext[0], others, shNext, [&](long long k) {
        const long long row = pushRow(k, r1, rows);
        const int p = ownerOf(row, rows, N);
        const long long j = row - rows * p / N;
        char *dst = (char *)a.peerBuf[p] + slotOff + rank * rsStride + j * pitch;
        for (long long c = threadIdx.x; c < nchunks; c += blockDim.x) {
            Chunk<T> x;
            loadPartial(x, first, k == blockIdx.x && c == threadIdx.x, a, row, c, hidden, vec);
            storeChunk(dst + c * cb, x);
        }
    });
    /* 2. clear the slot the previous call read */
    TS_STAMP_AT(st.count, kTsStart, tStart);
    TS_STAMP(st.count, kTsPushed);
    lamportClear(a, 1, mine + (long long)st.clearSlot * a.slotBytes, st);
    if (lateAnnounce) lamportAnnounce(ctrl);
    TS_STAMP(st.count, kTsCleared);

    /* 3. owned rows: sum in rank order, residual add, push h to every peer (all-gather),
     * then finish the row here: no round trip through our own slot */
    const unsigned peers = ((1u << N) - 1u) & ~(1u << rank);
    forEachRow(&rowNext[1], r1 - r0, shNext, [&](long long j) {
        const long long row = r0 + j;
        const long long agRow = slotOff + agOff + row * pitch;
        finishRow<T>(a, row, a.residual != nullptr, vec, red, 0, wholeRow(),
            [&](long long c, float x[8]) {
                sumRanks<T, N>(x, a, row, c, hidden, vec, rank, peers, mine + slotOff + j * pitch + c * cb,
                               rsStride, st.w, ctrl);
            },
            [&](long long c, const Chunk<T> &h) {
                Chunk<T> o = h;
                mapNegZero(o); /* a no-op (h is never -0.0), kept for the protocol's sake */
#pragma unroll
                for (int p = 0; p < N; p++)
                    if (p != rank) storeChunk((char *)a.peerBuf[p] + agRow + c * cb, o);
            });
    });

    TS_STAMP(st.count, kTsOwned);

    /* 4. the other ranks' rows: wait for h, store residualOut, norm */
    forEachRow(&rowNext[2], others, shNext, [&](long long k) {
        const long long row = k < r0 ? k : k + (r1 - r0);
        const int owner = ownerOf(row, rows, N);
        /* rowTree's other half: no barrier after stage 3's last row when it hands nothing
         * out (between rows of a stage, forEachRow's barrier orders them) */
        finishRow<T>(a, row, false, vec, red, 1, wholeRow(), [&](long long c, float x[8]) {
            Chunk<T> v[1];
            spinChunks(v, mine + slotOff + agOff + row * pitch + c * cb, 0, 1u, st.w, ctrl,
                       owner);
#pragma unroll
            for (int i = 0; i < 8; i++) x[i] = getf(v[0], i);
        }, NoPut());
    });
    TS_STAMP(st.count, kTsEnd);
    /* peers never write our own reduce-scatter region nor our rows of the all-gather */
    lamportEnd(a, st, agOff + rows * pitch, keepRange(rank * rsStride, rsStride),
               keepRange(agOff + r0 * pitch, (r1 - r0) * pitch));
    pdlTrigger();
}

/* Check mode's descriptor exchange (one warp; see arnormKCheck). */
__global__ void checkKernel(const arnormKArgs a, const uint4 desc) {
    arnormKCtrl *ctrl = a.ctrl;
    const int t = threadIdx.x, rank = a.rank;
    const unsigned long long cc = *(volatile unsigned long long *)&ctrl->checkCount;
    const long long area = 3 * a.slotBytes, pitch = ARNORM_CUDA_MAX_RANKS * 16;
    char *mine = (char *)a.peerBuf[rank] + area;
    const long long slot = (long long)(cc % 3), old = (long long)((cc + 2) % 3);
    if (t < a.nranks && t != rank)
        *reinterpret_cast<uint4 *>((char *)a.peerBuf[t] + area + slot * pitch + rank * 16) = desc;
    if (t < ARNORM_CUDA_MAX_RANKS) /* the previous exchange's descriptors, all read */
        *reinterpret_cast<uint4 *>(mine + old * pitch + t * 16) =
            make_uint4(kSentinel, kSentinel, kSentinel, kSentinel);
    if (t < a.nranks && t != rank && !*(volatile int *)&ctrl->failed) {
        const unsigned long long deadline = globalTimer() + (unsigned long long)a.timeoutNs;
        uint4 v;
        for (;;) {
            v = ldVolatile(mine + slot * pitch + t * 16);
            if (v.x != kSentinel && v.y != kSentinel && v.z != kSentinel && v.w != kSentinel)
                break;
            if (globalTimer() > deadline) break;
        }
        const bool timedOut = v.x == kSentinel || v.y == kSentinel || v.z == kSentinel || v.w == kSentinel;
        if (timedOut || v.x != desc.x || v.y != desc.y || v.z != desc.z || v.w != desc.w) {
            *(volatile int *)&ctrl->failed = 1;
            const int code = timedOut ? t + 1 : ARNORM_KERR_MISMATCH + t;
            if (atomicCAS_system(a.errWord, 0, code) == 0 && !timedOut) {
                volatile int *diag = a.errWord;
                diag[1] = (int)v.x;
                diag[2] = (int)v.y;
                diag[3] = (int)v.z;
                diag[4] = (int)v.w;
            }
            __threadfence_system();
        }
    }
    __syncwarp();
    if (t == 0) ctrl->checkCount = cc + 1;
}

__global__ void fillKernel(uint32_t *p, uint32_t v, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = v;
}

/* ------------------------------------------------------------------ launch */

typedef void (*KernelFn)(const arnormKArgs);

/* How one call launches: the kernel, its block size and blocks per row. */
struct LaunchShape {
    KernelFn fn;
    int threads; /* block size */
    int cs;      /* blocks per row (a cluster when > 1) */
    bool rowPerBlock = false; /* grid = rows (normRowKernel), not the resident blocks */
};

/* Rows up to which a wide one-shot row is split over a cluster: measured on H200 at TP2,
 * H=8192 (docs/performance.md), the split wins at 1-12 rows (T=1 6.60 -> 5.62 us, T=12
 * 6.41 -> 5.92), ties at 16 and loses from 24 (6.48 -> 7.02). */
#ifndef ARNORM_SPLIT_MAX_ROWS /* a build flag only for A/B runs (scripts/gpu_check.sh AB_LIBS) */
#define ARNORM_SPLIT_MAX_ROWS 16
#endif
constexpr long long kSplitMaxRows = ARNORM_SPLIT_MAX_ROWS;

/* TP2 two-shot calls of rows up to 4096 elements and at most this many rows use the
 * 512-thread build (97 registers, no spills, one block per SM): measured on H200 (session 9,
 * docs/performance.md version 9), 256 / 512 rows 11.3 / 17.9 -> 10.7 / 17.5 us, 1024 +3.7
 * us (half the blocks); at TP3-4 a tie up to 64 rows and a loss above. */
#ifndef ARNORM_TWOSHOT_512_MAX_ROWS /* a build flag only for A/B runs */
#define ARNORM_TWOSHOT_512_MAX_ROWS 512
#endif
constexpr long long kTwoShot512MaxRows = ARNORM_TWOSHOT_512_MAX_ROWS;

/* One-shot kernels of rows up to 4096 elements (S <= 512) use the 512-thread build: no
 * register spills, the lowest latency; wider rows of calls of few rows too on sm_90, split
 * over a cluster of two blocks (RowSplit). Two-shot kernels use the 1024-thread build
 * (64 registers: two 512-thread blocks per SM, which wins at large sizes) except TP2 calls
 * of few rows (kTwoShot512MaxRows). */
template <typename T>
LaunchShape pickLamport(int algo, int n, int slots, long long rows, int clusters) {
    const int half = (slots / 2 + 31) / 32 * 32; /* block size of a 2-block split */
    const bool split = algo == arnormKOneShot && slots > 512 && clusters && rows <= kSplitMaxRows;
#define ARNORM_K(NN)                                                                           \
    case NN:                                                                                   \
        if constexpr (NN == 2)                                                                 \
            if (algo == arnormKTwoShot && slots <= 512 && rows <= kTwoShot512MaxRows)         \
                return {(KernelFn)twoShotKernel<T, NN, 512>, slots, 1};                        \
        if (algo == arnormKTwoShot) return {(KernelFn)twoShotKernel<T, NN, 1024>, slots, 1};  \
        if (split) return {(KernelFn)oneShotKernel<T, NN, 512, 2>, half, 2};                   \
        return slots <= 512 ? LaunchShape{(KernelFn)oneShotKernel<T, NN, 512, 1>, slots, 1}    \
                            : LaunchShape{(KernelFn)oneShotKernel<T, NN, 1024, 1>, slots, 1};
    switch (n) {
        ARNORM_K(2)
        ARNORM_K(3)
        ARNORM_K(4)
        ARNORM_K(5)
        ARNORM_K(6)
        ARNORM_K(7)
        ARNORM_K(8)
    default: return {nullptr, 0, 1};
    }
#undef ARNORM_K
}

/* The norm path's kernel. 16-bit rows of whole aligned chunks (rowFit), at most 2048 of
 * them: one row per block (normRowKernel), 32 registers (4 blocks of 512 an SM), or 42
 * (3 blocks) when the grid fits in 3 blocks an SM (faster at few rows); rows of more than
 * 1024 chunks two chunks a thread in blocks of 1024. Other 16-bit rows of one chunk per
 * slot (H <= 8192): pipelined, two 512-thread blocks per SM or one of 1024 threads. Other
 * wider rows (several chunks per slot) and fp32 rows: the plain kernel (fp32 one row per
 * block spilled and was 1.3x slower at 8192 x 4096, docs/performance.md version 12). */
template <typename T>
LaunchShape pickNorm(int slots, long long nchunks, long long rows, int smCount, bool rowFit) {
    if constexpr (T::kSize == 4) {
        return {(KernelFn)normKernel<T>, slots, 1};
    } else {
        if (rowFit) {
            const bool few = rows <= 3LL * smCount;
            LaunchShape sh = nchunks > 1024 ? LaunchShape{(KernelFn)normRowKernel<T, 1024, 1, 2>, slots, 1}
                             : slots > 512   ? LaunchShape{(KernelFn)normRowKernel<T, 1024, 2, 1>, slots, 1}
                             : few           ? LaunchShape{(KernelFn)normRowKernel<T, 512, 3, 1>, slots, 1}
                                             : LaunchShape{(KernelFn)normRowKernel<T, 512, 4, 1>, slots, 1};
            sh.rowPerBlock = true;
            return sh;
        }
        if (nchunks > slots) return {(KernelFn)normKernel<T>, slots, 1};
        return slots <= 512 ? LaunchShape{(KernelFn)normKernelPipelined<T, 512, 2>, slots, 1}
                            : LaunchShape{(KernelFn)normKernelPipelined<T, 1024, 1>, slots, 1};
    }
}

/* normRowKernel's rows: whole aligned 16-byte chunks (isVec), at most 2048 a row, every
 * element of the rows valid. */
bool normRowsFit(const arnormKArgs *a) {
    return isVec(*a) && a->hidden / 8 <= 2 * 1024 && a->count == a->rows * a->hidden;
}

LaunchShape pickKernel(const arnormKArgs *a, int n, int slots) {
    const long long nchunks = (a->hidden + 7) / 8;
    if (a->algo == arnormKNorm) {
        const bool fit = normRowsFit(a);
        switch (a->dtype) {
        case 0: return pickNorm<Bf16>(slots, nchunks, a->rows, a->smCount, fit);
        case 1: return pickNorm<Fp16>(slots, nchunks, a->rows, a->smCount, fit);
        case 2: return pickNorm<Fp32>(slots, nchunks, a->rows, a->smCount, fit);
        default: return {nullptr, 0, 1};
        }
    }
    switch (a->dtype) {
    case 0: return pickLamport<Bf16>(a->algo, n, slots, a->rows, a->clusters);
    case 1: return pickLamport<Fp16>(a->algo, n, slots, a->rows, a->clusters);
    case 2: return pickLamport<Fp32>(a->algo, n, slots, a->rows, a->clusters);
    default: return {nullptr, 0, 1};
    }
}

void setClusterAttr(cudaLaunchAttribute &at, int cs) {
    at.id = cudaLaunchAttributeClusterDimension;
    at.val.clusterDim.x = (unsigned)cs;
    at.val.clusterDim.y = 1;
    at.val.clusterDim.z = 1;
}

/* Occupancy answers by (kernel, block size, SMs): the queries cost microseconds, a call's
 * launch must not pay them each time. */
std::mutex gResidentMutex;
std::map<std::tuple<KernelFn, int, int>, long long> gResident;

/* Rows (blocks, or clusters of sh.cs blocks) a kernel can keep resident at once, at most
 * 4 blocks per SM for the Lamport kernels. */
long long residentUnits(const LaunchShape &sh, int algo, int smCount) {
    const auto key = std::make_tuple(sh.fn, sh.threads, smCount);
    {
        std::lock_guard<std::mutex> lock(gResidentMutex);
        auto it = gResident.find(key);
        if (it != gResident.end()) return it->second;
    }
    long long v;
    int occ = 0;
    bool queryFailed = false;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, sh.fn, sh.threads, 0) != cudaSuccess) {
        queryFailed = true;
        occ = 1;
    }
    if (occ < 1) occ = 1;
    const long long perSm = algo == arnormKNorm ? occ : (occ < 4 ? occ : 4);
    v = (long long)smCount * perSm / sh.cs;
    if (sh.cs > 1) {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute at[1];
        setClusterAttr(at[0], sh.cs);
        cfg.gridDim = dim3((unsigned)(sh.cs * smCount));
        cfg.blockDim = dim3((unsigned)sh.threads);
        cfg.attrs = at;
        cfg.numAttrs = 1;
        int nc = 0;
        if (cudaOccupancyMaxActiveClusters(&nc, sh.fn, &cfg) != cudaSuccess) queryFailed = true;
        if (nc < 1) nc = 1;
        if (nc < v) v = nc;
    }
    if (queryFailed) (void)cudaGetLastError(); /* a failed query is not the launch's error */
    if (v < 1) v = 1;
    std::lock_guard<std::mutex> lock(gResidentMutex);
    gResident[key] = v;
    return v;
}

} // namespace

extern "C" int arnormKLaunch(const arnormKArgs *a, void *stream) {
    const int n = a->algo == arnormKNorm ? 1 : a->nranks;
    if (a->algo != arnormKNorm && (n < 2 || n > ARNORM_CUDA_MAX_RANKS))
        return (int)cudaErrorInvalidValue;
    if (a->dtype < 0 || a->dtype > 2 || a->rows <= 0 || a->hidden <= 0)
        return (int)cudaErrorInvalidValue;
    const int slots = arnormRowSlots((size_t)a->hidden);
    const LaunchShape sh = pickKernel(a, n, slots);
    if (!sh.fn) return (int)cudaErrorInvalidValue;
    /* rows in flight: every block of the grid resident at once (the Lamport kernels spin),
     * or a block a row (the grid's x dimension holds 2^31 - 1) */
    long long maxUnits = sh.rowPerBlock ? 0x7fffffffLL : residentUnits(sh, a->algo, a->smCount);
    if (a->maxUnits > 0 && a->maxUnits < maxUnits) maxUnits = a->maxUnits;
    long long units = a->rows < maxUnits ? a->rows : maxUnits;
    arnormKArgs k = *a;
    k.clearFrom = 0;
    if (a->algo != arnormKNorm && a->clearHint > 0) { /* enough blocks to clear the old slot */
        /* 64 bytes a thread (256 before session 6: the same or up to 1 us slower, TP4 512) */
        const long long per = (long long)sh.threads * sh.cs * 64;
        long long clearUnits = (a->clearHint + per - 1) / per;
        if (clearUnits > maxUnits) clearUnits = maxUnits;
        if (a->rows + clearUnits <= maxUnits) {
            /* room beside the rows: blocks of their own clear, the rows' blocks go straight
             * from their pushes to their wait */
            k.clearFrom = a->rows;
            units = a->rows + clearUnits;
        } else if (units < clearUnits) {
            units = clearUnits;
        }
    }
    if (units < 1) units = 1;
    const long long grid = units * sh.cs;

    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)grid);
    cfg.blockDim = dim3((unsigned)sh.threads);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = (cudaStream_t)stream;
    cudaLaunchAttribute attr[2];
    unsigned na = 0;
    if (a->pdl) {
        attr[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[na++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (sh.cs > 1) setClusterAttr(attr[na++], sh.cs);
    cfg.attrs = attr;
    cfg.numAttrs = na;
    cudaError_t e = cudaLaunchKernelEx(&cfg, sh.fn, k);
    if (e != cudaSuccess) return (int)e;
    return (int)cudaGetLastError();
}

extern "C" int arnormKCheck(const arnormKArgs *a, const unsigned int desc[4], void *stream) {
    if (a->nranks < 2 || a->nranks > ARNORM_CUDA_MAX_RANKS) return (int)cudaErrorInvalidValue;
    checkKernel<<<1, 32, 0, (cudaStream_t)stream>>>(*a, make_uint4(desc[0], desc[1], desc[2], desc[3]));
    return (int)cudaGetLastError();
}

#ifdef ARNORM_KERNEL_STAMPS
static long long med(std::vector<long long> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? -1LL : v[v.size() / 2];
}

/* The two-shot's phases: per phase, the median over calls of the first and the last
 * block's arrival, in ns after the call's first block started. */
static void printTwoShotStamps(int rank) {
    static unsigned long long h[TS_CALLS][kTsPhases][2];
    if (cudaMemcpyFromSymbol(h, gTsStamps, sizeof h) != cudaSuccess) {
        fprintf(stderr, "arnorm stamps: rank %d: cudaMemcpyFromSymbol failed\n", rank);
        return;
    }
    static const char *names[kTsPhases] = {"start", "pushed", "cleared", "owned rows done", "end"};
    std::vector<long long> first[kTsPhases], last[kTsPhases];
    for (int k = 0; k < TS_CALLS; k++) {
        if (h[k][kTsStart][0] == 0) continue;
        const unsigned long long t0 = ~h[k][kTsStart][1];
        bool ok = true;
        for (int p = 0; p < kTsPhases; p++) ok = ok && h[k][p][0] >= t0 && h[k][p][0] - t0 < 100000000ull;
        if (!ok) continue;
        for (int p = 0; p < kTsPhases; p++) {
            first[p].push_back((long long)(~h[k][p][1] - t0));
            last[p].push_back((long long)(h[k][p][0] - t0));
        }
    }
    if (first[0].empty()) return;
    char line[1024];
    int o = snprintf(line, sizeof line, "arnorm two-shot stamps: rank %d, %zu calls, ns after the "
                     "first block's start (median), first / last block:", rank, first[0].size());
    for (int p = 0; p < kTsPhases && o < (int)sizeof line; p++)
        o += snprintf(line + o, sizeof line - o, " %s %lld / %lld,", names[p], med(first[p]),
                      med(last[p]));
    if (o < (int)sizeof line) snprintf(line + o, sizeof line - o, "\n");
    fputs(line, stderr);
}

extern "C" void arnormKStampsPrint(int rank) {
    static unsigned long long h[STAMP_CALLS][kStPhases];
    if (cudaMemcpyFromSymbol(h, gStamps, sizeof h) != cudaSuccess) {
        fprintf(stderr, "arnorm stamps: rank %d: cudaMemcpyFromSymbol failed\n", rank);
        return;
    }
    static const char *names[kStPhases] = {"start", "ctrl loaded", "arrived", "ctrl shared",
                                           "pushed", "cleared", "1st chunk in", "warp sums",
                                           "tree", "row done", "end"};
    std::vector<long long> d[kStPhases], period;
    for (int k = 0; k < STAMP_CALLS; k++) {
        bool ok = h[k][0] != 0;
        for (int p = 0; p < kStPhases; p++) ok = ok && h[k][p] >= h[k][0] && h[k][p] - h[k][0] < 1000000;
        if (!ok) continue;
        for (int p = 1; p < kStPhases; p++) d[p].push_back((long long)(h[k][p] - h[k][0]));
        const int n = (k + 1) % STAMP_CALLS;
        if (h[n][0] > h[k][0] && h[n][0] - h[k][0] < 100000) period.push_back((long long)(h[n][0] - h[k][0]));
    }
    printTwoShotStamps(rank);
    if (d[1].empty()) {
        fprintf(stderr, "arnorm stamps: rank %d: no one-shot call recorded\n", rank);
        return;
    }
    char line[1024];
    int o = snprintf(line, sizeof line, "arnorm stamps: rank %d, %zu calls, ns after start (median):",
                     rank, d[1].size());
    for (int p = 1; p < kStPhases && o < (int)sizeof line; p++)
        o += snprintf(line + o, sizeof line - o, " %s %lld,", names[p], med(d[p]));
    if (o < (int)sizeof line) snprintf(line + o, sizeof line - o, " start to next start %lld\n", med(period));
    fputs(line, stderr);
    /* absolute times of a few calls, for comparing the ranks (same call index on each) */
    for (int k = 500; k < 503; k++) {
        o = snprintf(line, sizeof line, "arnorm stamps: rank %d call %d abs ns mod 1e6:", rank, k);
        for (int p = 0; p < kStPhases && o < (int)sizeof line; p++)
            o += snprintf(line + o, sizeof line - o, " %llu", h[k][p] % 1000000ull);
        if (o < (int)sizeof line) snprintf(line + o, sizeof line - o, "\n");
        fputs(line, stderr);
    }
}
#endif

extern "C" int arnormKFill32(void *p, unsigned int value, size_t words, void *stream) {
    if (words == 0) return 0;
    size_t blocks = (words + 255) / 256;
    if (blocks > 4096) blocks = 4096;
    fillKernel<<<(unsigned)blocks, 256, 0, (cudaStream_t)stream>>>((uint32_t *)p, value, words);
    return (int)cudaGetLastError();
}
