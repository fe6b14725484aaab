/*
 * kernels.h - the CUDA kernels' launchers, callable from C (cuda_backend.c).
 *
 * One kernel family does every GPU path:
 *   algo Norm     residual add + RMSNorm of one rank's rows (one GPU, and the second half
 *                 of the NCCL fallback)
 *   algo OneShot  Lamport one-shot: push the partial into every peer's slot, spin on the
 *                 local slot, sum in rank order, residual add, RMSNorm
 *   algo TwoShot  Lamport two-shot: push each row to its owner (reduce-scatter), the owner
 *                 sums in rank order and adds the residual, pushes h to every rank
 *                 (all-gather), every rank normalizes every row
 * With doNorm = 0 the same kernels are the plain all-reduce (output = the rounded sum).
 *
 * Workspace of a rank: 3 Lamport slots of slotBytes each, filled at init with the 32-bit
 * word 0x80000000 (the -0.0f sentinel; for 16-bit types it is a pair whose upper element
 * is -0.0, which no writer ever sends). A control block in device memory holds the
 * rotation state so a replayed CUDA graph keeps rotating.
 */
#ifndef ARNORM_CUDA_KERNELS_H
#define ARNORM_CUDA_KERNELS_H

#include <stddef.h>

#if defined(__CUDACC__)
#define ARNORM_KHD __host__ __device__ static inline
#else
#define ARNORM_KHD static inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define ARNORM_CUDA_MAX_RANKS 8
#define ARNORM_LAMPORT_SLOTS 3
#define ARNORM_SENTINEL_WORD 0x80000000u
/* Rows of the plain all-reduce: the vector is viewed as rows of this many elements. */
#define ARNORM_AR_ROW 4096

enum { arnormKNorm = 0, arnormKOneShot = 1, arnormKTwoShot = 2 };

/* Per-rank control block (device memory, zeroed at init). */
typedef struct {
    unsigned long long count;    /* Lamport calls made: slot = count % 3 */
    unsigned long long prevUsed; /* bytes of its slot the last call used (the next clears them) */
    unsigned long long prevKeep[2]; /* within them, ranges peers never wrote (this rank's own
                                       regions, never written either): offset << 32 | bytes
                                       in 16-byte units; the clear skips them */
    unsigned int arrived;        /* blocks of the running call, the last aside, that have read
                                    the above (kernels.cu, lamportBegin) */
    int failed;                  /* a wait timed out or shapes differed: later kernels write
                                    nothing and wait for nothing */
    unsigned long long checkCount; /* check-mode exchanges made: check slot = checkCount % 3 */
    unsigned int rowNext[ARNORM_LAMPORT_SLOTS][3]; /* two-shot: per slot, the rows of each
                                    phase handed out so far (kernels.cu, forEachRow); every
                                    Lamport call's state owner zeroes the previous call's slot's
                                    at its end (lamportEnd) */
    unsigned long long pad[9];
} arnormKCtrl;

/*
 * Check mode: after the 3 Lamport slots, each rank's workspace holds ARNORM_KCHECK_BYTES of
 * call descriptors, [3 check slots][ARNORM_CUDA_MAX_RANKS ranks] x 16 bytes, sentinel-filled
 * and rotated like the data slots. The error word (host-mapped, 16 ints) holds
 *   [0] 0, 1 + the peer a wait timed out on, or ARNORM_KERR_MISMATCH + the peer whose
 *       descriptor differed; [1..4] that peer's descriptor.
 */
#define ARNORM_KCHECK_BYTES 4096
#define ARNORM_KERR_MISMATCH 100

typedef struct {
    /* tensors (already offset to the chunk) */
    const void *input;    /* partial (fused) or input (norm) */
    const void *residual; /* may be NULL (norm only / all-reduce) */
    void *residualOut;    /* h, or the sum for the all-reduce; may be NULL in Norm when
                             residual is NULL */
    void *normOut;        /* NULL when doNorm == 0 */
    const void *weight;   /* hidden elements of weightType */
    int dtype;            /* arnormDataType_t */
    int weightType;
    float eps;
    float weightBias;
    long long rows;
    long long hidden;
    long long count; /* valid elements from input (rows * hidden, less for the all-reduce's
                        last row) */
    int doNorm;
    int algo; /* arnormKNorm / arnormKOneShot / arnormKTwoShot */
    /* Lamport state */
    void *peerBuf[ARNORM_CUDA_MAX_RANKS]; /* every rank's workspace base, in this address space */
    arnormKCtrl *ctrl;
    int *errWord;           /* host-mapped: 0, or 1 + the peer a wait timed out on */
    long long slotBytes;
    long long timeoutNs;
    int rank;
    int nranks;
    /* launch */
    int smCount;
    int pdl; /* programmatic dependent launch (sm_90+) */
    int clusters; /* thread-block clusters (sm_90+): one-shot rows of more than 512 slots
                     split over two blocks */
    long long clearHint; /* bytes the call will likely clear (host's mirror of the rotation;
                            only sizes the grid: a call of few rows still clears fast) */
    int maxUnits; /* tests only (ARNORM_TEST_MAX_UNITS, read at init): at most this many
                     units (blocks, or clusters) in a Lamport grid, 0 = no cap; a small
                     call then takes a large one's paths, e.g. the two-shot's row hand-out
                     under compute-sanitizer's racecheck with the tiny test matrix */
    long long clearFrom; /* set by arnormKLaunch: the first unit (block, or cluster) that
                            clears the previous slot; 0 (all, after their rows' pushes) or
                            rows (units past the rows that only clear) */
} arnormKArgs;

/* Bytes of a row in the Lamport buffer (padded to whole 8-element chunks). */
ARNORM_KHD long long arnormKPitch(long long hidden, int dtype) {
    long long hp = (hidden + 7) / 8 * 8;
    return hp * (dtype == 2 ? 4 : 2);
}

/* Slot bytes a call of `rows` rows uses (what the next calls must clear). */
ARNORM_KHD long long arnormKUsedBytes(int algo, long long rows, long long hidden, int dtype,
                                         int nranks) {
    long long pitch = arnormKPitch(hidden, dtype);
    if (algo == arnormKOneShot) return (long long)nranks * rows * pitch;
    long long owned = (rows + nranks - 1) / nranks;
    return (long long)nranks * owned * pitch + rows * pitch;
}

/* Launches one call; returns a cudaError_t (0 = success). */
int arnormKLaunch(const arnormKArgs *args, void *stream);

/* Check mode: pushes `desc` (4 words, none with bit 31 set) to every peer, waits (bounded)
 * for theirs and compares; a mismatch or timeout fails the communicator on the device
 * (ctrl->failed, the error word). Uses peerBuf, ctrl, errWord, slotBytes, timeoutNs, rank,
 * nranks of `args`. Returns a cudaError_t. */
int arnormKCheck(const arnormKArgs *args, const unsigned int desc[4], void *stream);

/* Fills `words` 32-bit words at p with `value` (stream-ordered). */
int arnormKFill32(void *p, unsigned int value, size_t words, void *stream);

#ifdef ARNORM_KERNEL_STAMPS
/* Development builds only (-DARNORM_KERNEL_STAMPS): block 0 of each one-shot call records
 * %globaltimer at its phases, and the two-shot the first and the last block to reach each
 * of its phases; prints, for the current device, the medians over the calls recorded.
 * Called at communicator destroy. */
void arnormKStampsPrint(int rank);
#endif

#ifdef __cplusplus
}
#endif

#endif /* ARNORM_CUDA_KERNELS_H */
