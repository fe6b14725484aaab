/*
 * cpu_backend.c - ranks are processes on one host, buffers are one POSIX shared segment.
 *
 * Segment: a header (attach count, pids, failure flag, barrier counters, call descriptors,
 * gather epochs) then one area per rank: 3 Lamport slots x nranks senders x W bytes, a
 * W-byte stage, and a 2W-byte gather area.
 *
 * Fused one-shot (Lamport, the GPU protocol): a call k pushes its partial into slot k % 3
 * of every peer's area (-0.0 sent as +0.0; a rank's own data is read in place), then, a few
 * KiB at a time, waits until no element of the peers' data holds the sentinel -0.0, sums
 * the rows in rank order straight from the slots into the residual add and the norm, and
 * clears what it read back to the sentinel while it is in cache. No barrier: a peer writes
 * the slot again only at call k + 3. (The GPU defers the clear to call k + 1, since its
 * blocks cannot see each other finish; one CPU thread reads the whole slot.)
 * Fused two-shot (tokens >= nranks): the rows are shared out as on the GPU (rank p owns
 * rows [T*p/N, T*(p+1)/N)). Each rank pushes every peer only the rows that peer owns (the
 * same Lamport slots, compact), finishes its own rows exactly as the one-shot does, copies
 * their residual_out and norm_out into its gather area and publishes them with a release
 * store of its gather epoch; the others copy them out. The arithmetic is split between the
 * ranks instead of repeated on each; the bits are the one-shot's. The gather area is
 * rewritten only at a later call, after this rank has received that call's rows from every
 * peer, which each peer pushes only once it has finished (and copied out) this call.
 * Fallback: stage, barrier, sum, barrier (all-reduce), then norm.
 * Every wait is bounded (settings.timeoutMs), watches the failure flag and peers' pids.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <sys/statvfs.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "arnorm_internal.h"
#include "cpu/cpu_rows.h"
#include "cpu/shm.h"
#include "dtype.h"
#include "numerics.h"

#define CPU_MAX_RANKS 64
#define SEG_MAGIC 0x6172736567000001ull
#define SENTINEL16 0x8000800080008000ull
#define SENTINEL32 0x8000000080000000ull

typedef struct {
    _Alignas(64) _Atomic uint64_t v;
} paddedCounter;

typedef struct {
    uint64_t tokens, hidden;
    uint32_t dtype, op;
} callDesc;

typedef struct {
    _Atomic uint64_t magic; /* written last by rank 0 */
    uint32_t nranks;
    uint32_t reserved;
    uint64_t slotBytes;
    _Atomic uint32_t attached;
    _Atomic int32_t failedRank; /* 0, or 1 + the first rank that failed or aborted (0 is
                                   what a fresh segment holds: no sentinel to set first) */
    _Atomic int32_t failCode;   /* its arnormResult_t */
    _Atomic int32_t pid[CPU_MAX_RANKS];
    _Atomic int32_t initState[CPU_MAX_RANKS]; /* 0 pending, 1 ready, 2 failed */
    paddedCounter arrive[CPU_MAX_RANKS];      /* barrier epochs, monotonic (no ABA) */
    callDesc desc[CPU_MAX_RANKS];             /* check mode */
    paddedCounter gathered[CPU_MAX_RANKS];    /* two-shot: 1 + the Lamport call whose rows
                                                 the rank's gather area holds */
} segHeader;

enum { CLASS16 = 0, CLASS32 = 1 };

typedef struct {
    arnormShm shm;
    char name[64];
    segHeader *hdr;
    char *areas;
    size_t areaBytes, W;
    int N, rank;
    uint64_t calls;        /* Lamport calls so far: slot = calls % 3 */
    int regionClass;       /* sentinel width the whole Lamport region is cleared for */
    uint64_t barrierEpoch;
    float *sums;           /* W / 2 floats: an all-reduce chunk's fp32 sums */
    arnormRowScratch rows;
} cpuComm;

static inline cpuComm *impl(struct arnormComm *comm) { return (cpuComm *)comm->impl; }

static inline uint64_t *lamportSlot(cpuComm *c, int owner, int slot, int sender) {
    return (uint64_t *)(c->areas + (size_t)owner * c->areaBytes +
                        ((size_t)slot * (size_t)c->N + (size_t)sender) * c->W);
}

static inline char *stage(cpuComm *c, int owner) {
    return c->areas + (size_t)owner * c->areaBytes + (size_t)3 * c->N * c->W;
}

static inline char *gatherArea(cpuComm *c, int owner) { return stage(c, owner) + c->W; }

/* ------------------------------------------------------------------ bounded waits */

typedef struct {
    struct timespec start;
    unsigned iter;
    long long pidCheckMs; /* when (ms into the wait) the peer's process is next looked for */
    int peerGone;         /* its process was gone at the previous look */
} waitState;

/* How often a wait looks for the peer's process, in wall time: counting polls instead made
 * a dead peer take 16 s to notice when the cores were busy (each sched_yield then gives
 * the core away for milliseconds). */
#define PID_CHECK_MS 10

static long long elapsedMs(const struct timespec *t0) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - t0->tv_sec) * 1000LL + (now.tv_nsec - t0->tv_nsec) / 1000000;
}

static void markFailed(cpuComm *c, arnormResult_t r) {
    int32_t none = 0;
    if (atomic_compare_exchange_strong(&c->hdr->failedRank, &none, c->rank + 1))
        atomic_store(&c->hdr->failCode, (int32_t)r);
}

/* One step of a wait for `peer`: spins briefly, then yields the core (ranks may outnumber
 * cores); fails on timeout, on a peer's failure flag, or when the peer's process is gone. */
static arnormResult_t waitTick(struct arnormComm *comm, waitState *w, int peer,
                               const char *what) {
    cpuComm *c = impl(comm);
    unsigned i = w->iter++;
    if (i == 0) {
        clock_gettime(CLOCK_MONOTONIC, &w->start);
        return arnormSuccess;
    }
    if (i < 128) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        return arnormSuccess;
    }
    sched_yield();
    if (i % 64) return arnormSuccess;
    int32_t failed = atomic_load(&c->hdr->failedRank) - 1;
    if (failed >= 0 && failed != c->rank)
        return arnormFail(comm, arnormRemoteError, "rank %d failed or aborted (%s) while "
                          "rank %d waited for %s from rank %d", failed,
                          arnormGetErrorString((arnormResult_t)atomic_load(&c->hdr->failCode)),
                          c->rank, what, peer);
    long long ms = elapsedMs(&w->start);
    if (w->peerGone) { /* gone at the last look, and the caller has looked at the data again
                          since: what it wrote before it exited was not what we wait for */
        markFailed(c, arnormRemoteError);
        return arnormFail(comm, arnormRemoteError, "rank %d (pid %d) exited while rank %d "
                          "waited for %s", peer, (int)atomic_load(&c->hdr->pid[peer]), c->rank,
                          what);
    }
    if (ms >= w->pidCheckMs) {
        w->pidCheckMs = ms + PID_CHECK_MS;
        pid_t pid = atomic_load(&c->hdr->pid[peer]);
        /* not a failure yet: the peer may have written our data and then exited normally
           since the caller last looked; the caller looks once more first */
        if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) w->peerGone = 1;
    }
    if (ms > comm->settings.timeoutMs) {
        markFailed(c, arnormTimeout);
        return arnormFail(comm, arnormTimeout, "rank %d waited %lld ms for %s from rank %d "
                          "(ARNORM_TIMEOUT_MS=%lld); did every rank make the same calls?",
                          c->rank, ms, what, peer, comm->settings.timeoutMs);
    }
    return arnormSuccess;
}

static arnormResult_t barrier(struct arnormComm *comm, const char *what) {
    cpuComm *c = impl(comm);
    uint64_t e = ++c->barrierEpoch;
    atomic_store_explicit(&c->hdr->arrive[c->rank].v, e, memory_order_release);
    for (int q = 0; q < c->N; q++) {
        waitState w = {0};
        while (atomic_load_explicit(&c->hdr->arrive[q].v, memory_order_acquire) < e)
            ARNORM_TRY(waitTick(comm, &w, q, what));
    }
    return arnormSuccess;
}

/* ------------------------------------------------------------------ Lamport one-shot */

/* Plain (vectorized) stores: every fill is published by a release fence or a barrier
 * before any peer may write the words again. */
static void fillWords(uint64_t *dst, size_t words, uint64_t pattern) {
    for (size_t i = 0; i < words; i++) dst[i] = pattern;
}

/* Re-clears the whole Lamport region when the sentinel width changes (bf16/fp16 <-> fp32).
 * Every rank makes the same calls, so all switch at the same call, between two barriers. */
static arnormResult_t switchClass(struct arnormComm *comm, int cls) {
    cpuComm *c = impl(comm);
    ARNORM_TRY(barrier(comm, "the sentinel switch"));
    fillWords(lamportSlot(c, c->rank, 0, 0), (size_t)3 * c->N * c->W / 8,
              cls == CLASS16 ? SENTINEL16 : SENTINEL32);
    c->regionClass = cls;
    return barrier(comm, "the sentinel switch");
}

/* Copies n elements (-0.0 sent as +0.0) into `dst` and pads with +0.0 up to `padded` bytes.
 * Each element is data and flag at once: a reader takes it once it is not the sentinel;
 * aligned 2- and 4-byte stores are never torn. */
static void pushWords(uint64_t *dst, const void *src, size_t n, int cls, size_t padded) {
    const int width = cls == CLASS16 ? 2 : 4;
    const size_t perWord = 8 / (size_t)width, full = n / perWord * perWord;
    arnormCpuCopyNoNegZero(dst, src, full, width);
    if (full < n) { /* bytes through char buffers: no type punning of the word */
        _Alignas(8) unsigned char tail[8] = {0}, clean[8];
        memcpy(tail, (const char *)src + full * (size_t)width, (n - full) * (size_t)width);
        arnormCpuCopyNoNegZero(clean, tail, perWord, width);
        uint64_t w;
        memcpy(&w, clean, 8);
        __atomic_store_n(dst + full / perWord, w, __ATOMIC_RELAXED);
    }
    for (size_t k = (n + perWord - 1) / perWord; k < padded / 8; k++)
        __atomic_store_n(dst + k, 0, __ATOMIC_RELAXED);
}

/* 1 when none of the 64 bytes at p (8 words) holds a sentinel element. Plain loads, so the
 * check vectorizes; the compiler barrier in the wait loop forces fresh loads, and aligned
 * 2- and 4-byte elements cannot tear. */
static inline int blockReady(const uint64_t *p, int cls) {
    uint64_t any = 0;
    if (cls == CLASS16)
        for (int j = 0; j < 8; j++) {
            uint64_t x = p[j] ^ SENTINEL16; /* a zero halfword marks a sentinel lane */
            any |= (x - 0x0001000100010001ull) & ~x & 0x8000800080008000ull;
        }
    else
        for (int j = 0; j < 8; j++) {
            uint64_t x = p[j] ^ SENTINEL32; /* a zero 32-bit lane marks a sentinel */
            any |= (x - 0x0000000100000001ull) & ~x & 0x8000000080000000ull;
        }
    return any == 0;
}

/* One Lamport call (call k) on this rank: the slot, the senders' data in rank order (own
 * data is read from the caller's buffer, never copied), how far each peer's data has been
 * seen complete, and how far it has been cleared back to the sentinel. */
typedef struct {
    int slot, cls;
    size_t bytes; /* each sender's data, padded to whole 64-byte blocks with +0.0 */
    const void *senders[CPU_MAX_RANKS];
    size_t ready[CPU_MAX_RANKS];
    size_t cleared;
} lamportCall;

/* Bytes n elements take in a Lamport slot: whole 64-byte blocks (the reader waits on those,
 * the writer pads to them with +0.0). */
static size_t lamportBytes(size_t n, int dtype) {
    return (n * arnormDtypeSize((arnormDataType_t)dtype) + 63) / 64 * 64;
}

/* Sets up call k on this rank: the slot, and where the senders' data will be: own data
 * (`own`, n elements) in place, each peer's in this rank's slot. */
static arnormResult_t lamportSetup(struct arnormComm *comm, const void *own, size_t n,
                                   int dtype, lamportCall *lc) {
    cpuComm *c = impl(comm);
    lc->cls = dtype == arnormFloat32 ? CLASS32 : CLASS16;
    if (lc->cls != c->regionClass) ARNORM_TRY(switchClass(comm, lc->cls));
    lc->slot = (int)(c->calls % 3);
    lc->bytes = lamportBytes(n, dtype);
    lc->cleared = 0;
    for (int q = 0; q < c->N; q++) {
        lc->senders[q] = q == c->rank ? own : (const void *)lamportSlot(c, c->rank, lc->slot, q);
        lc->ready[q] = q == c->rank ? lc->bytes : 0;
    }
    return arnormSuccess;
}

/* Pushes n elements of `src` into this call's slot of peer p's area. */
static void lamportPush(cpuComm *c, const lamportCall *lc, int p, const void *src, size_t n,
                        int dtype) {
    pushWords(lamportSlot(c, p, lc->slot, c->rank), src, n, lc->cls, lamportBytes(n, dtype));
}

/* One-shot: pushes n elements of `src` into slot k % 3 of every peer's area. */
static arnormResult_t lamportBegin(struct arnormComm *comm, const void *src, size_t n,
                                   int dtype, lamportCall *lc) {
    cpuComm *c = impl(comm);
    ARNORM_TRY(lamportSetup(comm, src, n, dtype, lc));
    for (int i = 1; i < c->N; i++) /* start with the next rank: spreads the traffic */
        lamportPush(c, lc, (c->rank + i) % c->N, src, n, dtype);
    return arnormSuccess;
}

/* Waits until every peer's first `upto` bytes hold no sentinel (whole 64-byte blocks). */
static arnormResult_t lamportAwait(struct arnormComm *comm, lamportCall *lc, size_t upto) {
    upto = (upto + 63) / 64 * 64;
    if (upto > lc->bytes) upto = lc->bytes;
    for (int q = 0; q < impl(comm)->N; q++) {
        const uint64_t *p = lc->senders[q];
        waitState ws = {0};
        for (size_t b = lc->ready[q]; b < upto; b += 64) {
            while (!blockReady(p + b / 8, lc->cls)) {
                ARNORM_TRY(waitTick(comm, &ws, q, "its partial"));
                __asm__ __volatile__("" ::: "memory");
            }
        }
        if (upto > lc->ready[q]) lc->ready[q] = upto;
    }
    atomic_thread_fence(memory_order_acquire);
    return arnormSuccess;
}

/* Clears, in every peer's region of this rank's slot, the whole blocks below `upto` that
 * were read: while they are still in cache. A peer writes this slot again only at call
 * k + 3, after our push of call k + 1, which lamportEnd's release fence orders after these
 * clears (the GPU, whose blocks cannot see each other finish, defers the clear to k + 1). */
static void lamportRelease(struct arnormComm *comm, lamportCall *lc, size_t upto) {
    cpuComm *c = impl(comm);
    upto = upto / 64 * 64;
    if (upto <= lc->cleared) return;
    for (int q = 0; q < c->N; q++)
        if (q != c->rank)
            fillWords((uint64_t *)lc->senders[q] + lc->cleared / 8, (upto - lc->cleared) / 8,
                      lc->cls == CLASS16 ? SENTINEL16 : SENTINEL32);
    lc->cleared = upto;
}

static void lamportEnd(struct arnormComm *comm, lamportCall *lc) {
    lamportRelease(comm, lc, lc->bytes);
    atomic_thread_fence(memory_order_release); /* clears before our next push */
    impl(comm)->calls++;
}

/* ------------------------------------------------------------------ staged all-reduce */

static arnormResult_t stagedAllReduce(struct arnormComm *comm, const void *send, void *recv,
                                      size_t count, int dtype) {
    cpuComm *c = impl(comm);
    const size_t es = arnormDtypeSize((arnormDataType_t)dtype);
    const size_t chunk = c->W / es;
    for (size_t first = 0; first < count; first += chunk) {
        size_t n = count - first < chunk ? count - first : chunk;
        memcpy(stage(c, c->rank), (const char *)send + first * es, n * es);
        ARNORM_TRY(barrier(comm, "the all-reduce stage"));
        for (int q = 0; q < c->N; q++) arnormCpuAccumulate(stage(c, q), n, dtype, c->sums, q == 0);
        arnormCpuStoreRounded(recv, first, n, dtype, c->sums);
        ARNORM_TRY(barrier(comm, "the all-reduce stage release"));
    }
    return arnormSuccess;
}

/* ------------------------------------------------------------------ operations */

static arnormResult_t cpuNorm(struct arnormComm *comm, const arnormNormArgs *a,
                              arnormStream_t stream) {
    (void)stream;
    cpuComm *c = impl(comm);
    arnormCpuPrepareWeight(a, &c->rows);
    const void *input[1] = {a->input};
    arnormCpuFinishRows(input, 1, a, 0, a->tokens, &c->rows);
    return arnormSuccess;
}

static arnormResult_t cpuAllReduce(struct arnormComm *comm, const void *send, void *recv,
                                   size_t count, arnormDataType_t dtype,
                                   arnormStream_t stream) {
    (void)stream;
    cpuComm *c = impl(comm);
    const size_t es = arnormDtypeSize(dtype);
    if (c->N == 1) {
        for (size_t first = 0; first < count; first += c->W / es) {
            size_t n = count - first < c->W / es ? count - first : c->W / es;
            arnormCpuAccumulate((const char *)send + first * es, n, dtype, c->sums, 1);
            arnormCpuStoreRounded(recv, first, n, dtype, c->sums);
        }
        return arnormSuccess;
    }
    if (count * es <= c->W) {
        lamportCall lc;
        ARNORM_TRY(lamportBegin(comm, send, count, dtype, &lc));
        ARNORM_TRY(lamportAwait(comm, &lc, lc.bytes));
        for (int q = 0; q < c->N; q++) arnormCpuAccumulate(lc.senders[q], count, dtype, c->sums, q == 0);
        lamportEnd(comm, &lc);
        arnormCpuStoreRounded(recv, 0, count, dtype, c->sums);
        return arnormSuccess;
    }
    return stagedAllReduce(comm, send, recv, count, dtype);
}

/* Finishes rows [row0, row0 + n) of the call from the senders' rows in lc (row 0 of each
 * sender = row row0), a few KiB at a time: wait for those rows, sum them in rank
 * order straight from the slots, add the residual, normalize, clear what was read. */
static arnormResult_t finishReceived(struct arnormComm *comm, const arnormNormArgs *a,
                                     lamportCall *lc, size_t row0, size_t n) {
    cpuComm *c = impl(comm);
    const size_t rowBytes = a->hidden * arnormDtypeSize((arnormDataType_t)a->dtype);
    const size_t step = rowBytes >= 4096 ? 1 : 4096 / rowBytes;
    for (size_t r = 0; r < n; r += step) {
        const size_t m = n - r < step ? n - r : step;
        ARNORM_TRY(lamportAwait(comm, lc, (r + m) * rowBytes));
        const void *rows[CPU_MAX_RANKS];
        for (int q = 0; q < c->N; q++) rows[q] = (const char *)lc->senders[q] + r * rowBytes;
        arnormCpuFinishRows(rows, c->N, a, row0 + r, m, &c->rows);
        lamportRelease(comm, lc, (r + m) * rowBytes);
    }
    return arnormSuccess;
}

/* One-shot over rows [r0, r0 + nr): every rank finishes every row. */
static arnormResult_t oneShotChunk(struct arnormComm *comm, const arnormNormArgs *a, size_t r0,
                                   size_t nr) {
    const size_t rowBytes = a->hidden * arnormDtypeSize((arnormDataType_t)a->dtype);
    lamportCall lc;
    ARNORM_TRY(lamportBegin(comm, (const char *)a->input + r0 * rowBytes, nr * a->hidden,
                            a->dtype, &lc));
    if (r0 == 0) arnormCpuPrepareWeight(a, &impl(comm)->rows); /* while the peers' data comes */
    ARNORM_TRY(finishReceived(comm, a, &lc, r0, nr));
    lamportEnd(comm, &lc);
    return arnormSuccess;
}

/* First row (within a two-shot chunk of nr rows) that rank p owns; p = N gives nr. */
static inline size_t ownedFrom(size_t nr, int p, int N) { return nr * (size_t)p / (size_t)N; }

/* Two-shot over rows [r0, r0 + nr), nr >= N: rank p owns rows r0 + [nr*p/N, nr*(p+1)/N). */
static arnormResult_t twoShotChunk(struct arnormComm *comm, const arnormNormArgs *a, size_t r0,
                                   size_t nr) {
    cpuComm *c = impl(comm);
    const int N = c->N, me = c->rank;
    const size_t es = arnormDtypeSize((arnormDataType_t)a->dtype), rowBytes = a->hidden * es;
    const char *in = (const char *)a->input;
    const size_t lo = ownedFrom(nr, me, N), n = ownedFrom(nr, me + 1, N) - lo;
    lamportCall lc;
    ARNORM_TRY(lamportSetup(comm, in + (r0 + lo) * rowBytes, n * a->hidden, a->dtype, &lc));
    const uint64_t call = c->calls; /* this call's index: the gather epoch is call + 1 */
    for (int i = 1; i < N; i++) { /* each peer gets the rows it owns, next rank first */
        const int p = (me + i) % N;
        const size_t plo = ownedFrom(nr, p, N);
        lamportPush(c, &lc, p, in + (r0 + plo) * rowBytes,
                    (ownedFrom(nr, p + 1, N) - plo) * a->hidden, a->dtype);
    }
    if (r0 == 0) arnormCpuPrepareWeight(a, &c->rows); /* while the peers' rows come */
    ARNORM_TRY(finishReceived(comm, a, &lc, r0 + lo, n));
    /* publish our rows: residual_out then norm_out, n rows each */
    char *g = gatherArea(c, me);
    if (a->residualOut) memcpy(g, (const char *)a->residualOut + (r0 + lo) * rowBytes, n * rowBytes);
    memcpy(g + n * rowBytes, (const char *)a->normOut + (r0 + lo) * rowBytes, n * rowBytes);
    atomic_store_explicit(&c->hdr->gathered[me].v, call + 1, memory_order_release);
    lamportEnd(comm, &lc);
    /* copy out the others' rows, next rank first */
    for (int i = 1; i < N; i++) {
        const int p = (me + i) % N;
        const size_t plo = ownedFrom(nr, p, N), pn = ownedFrom(nr, p + 1, N) - plo;
        waitState w = {0};
        while (atomic_load_explicit(&c->hdr->gathered[p].v, memory_order_acquire) < call + 1)
            ARNORM_TRY(waitTick(comm, &w, p, "its finished rows"));
        const char *pg = gatherArea(c, p);
        if (a->residualOut)
            memcpy((char *)a->residualOut + (r0 + plo) * rowBytes, pg, pn * rowBytes);
        memcpy((char *)a->normOut + (r0 + plo) * rowBytes, pg + pn * rowBytes, pn * rowBytes);
    }
    return arnormSuccess;
}

static arnormResult_t cpuFused(struct arnormComm *comm, const arnormNormArgs *a,
                               arnormAlgo_t algo, arnormStream_t stream) {
    cpuComm *c = impl(comm);
    if (algo == arnormAlgoFallback) { /* unfused: all-reduce into normOut, then the norm */
        ARNORM_TRY(stagedAllReduce(comm, a->input, a->normOut, a->tokens * a->hidden,
                                   a->dtype));
        arnormNormArgs n = *a;
        n.input = a->normOut;
        return cpuNorm(comm, &n, stream);
    }
    const size_t es = arnormDtypeSize((arnormDataType_t)a->dtype);
    const size_t rowBytes = a->hidden * es;
    if (rowBytes > c->W)
        return arnormError(comm, arnormInternalError, "row of %zu bytes exceeds the %zu-byte "
                           "workspace slot", rowBytes, c->W);
    /* Chunks: a one-shot one fits a slot (W bytes); a two-shot one needs a row per rank,
     * and each rank's share fits a slot and half the gather area. A two-shot call's last
     * rows, fewer than the ranks, go through the one-shot. */
    const size_t oneShotRows = c->W / rowBytes, twoShotRows = (size_t)c->N * oneShotRows;
    for (size_t r0 = 0; r0 < a->tokens;) {
        const size_t left = a->tokens - r0;
        size_t nr;
        if (algo == arnormAlgoTwoShot && left >= (size_t)c->N) {
            nr = left < twoShotRows ? left : twoShotRows;
            ARNORM_TRY(twoShotChunk(comm, a, r0, nr));
        } else {
            nr = left < oneShotRows ? left : oneShotRows;
            ARNORM_TRY(oneShotChunk(comm, a, r0, nr));
        }
        r0 += nr;
    }
    return arnormSuccess;
}

static arnormReason_t cpuPointerReason(struct arnormComm *comm, const void *ptr) {
    (void)comm;
    (void)ptr;
    return arnormReasonNone; /* host memory of this process */
}

static void cpuFree(cpuComm *c) {
    arnormShmUnmap(&c->shm);
    free(c->sums);
    free(c->rows.h);
    free(c->rows.w);
    free(c->rows.slots);
    free(c);
}

static arnormResult_t cpuDestroy(struct arnormComm *comm, int abort) {
    cpuComm *c = impl(comm);
    if (!c) return arnormSuccess;
    if (abort && c->hdr) markFailed(c, arnormRemoteError); /* peers' waits end now */
    cpuFree(c);
    comm->impl = NULL;
    return arnormSuccess;
}

static arnormResult_t cpuCheckCall(struct arnormComm *comm, int op, size_t tokens,
                                   size_t hidden, int dtype, arnormStream_t stream);

const arnormBackendOps arnormCpuOps = {
    .name = "cpu",
    .fused = cpuFused,
    .allReduce = cpuAllReduce,
    .norm = cpuNorm,
    .pointerReason = cpuPointerReason,
    .checkCall = cpuCheckCall,
    .destroy = cpuDestroy,
};

/* Check mode: every rank publishes the call's shape; all compare, between two barriers. */
static arnormResult_t cpuCheckCall(struct arnormComm *comm, int op, size_t tokens,
                                   size_t hidden, int dtype, arnormStream_t stream) {
    (void)stream; /* CPU calls are synchronous */
    cpuComm *c = impl(comm);
    if (c->N == 1) return arnormSuccess;
    callDesc mine = {tokens, hidden, (uint32_t)dtype, (uint32_t)op};
    c->hdr->desc[c->rank] = mine;
    ARNORM_TRY(barrier(comm, "the check-mode shape exchange"));
    int bad = -1;
    callDesc theirs = mine;
    for (int q = 0; q < c->N && bad < 0; q++) {
        theirs = c->hdr->desc[q];
        if (memcmp(&theirs, &mine, sizeof mine)) bad = q;
    }
    ARNORM_TRY(barrier(comm, "the check-mode shape exchange"));
    if (bad >= 0)
        return arnormError(comm, arnormInvalidUsage,
                           "check mode: rank %d called op %u with tokens=%llu hidden=%llu "
                           "dtype=%u, rank %d with op %u tokens=%llu hidden=%llu dtype=%u",
                           bad, theirs.op, (unsigned long long)theirs.tokens,
                           (unsigned long long)theirs.hidden, theirs.dtype, c->rank, mine.op,
                           (unsigned long long)mine.tokens, (unsigned long long)mine.hidden,
                           mine.dtype);
    return arnormSuccess;
}

/* ------------------------------------------------------------------ bootstrap */

static arnormResult_t waitInit(struct arnormComm *comm) {
    cpuComm *c = impl(comm);
    for (int q = 0; q < c->N; q++) {
        waitState w = {0};
        int32_t st;
        while ((st = atomic_load(&c->hdr->initState[q])) == 0)
            ARNORM_TRY(waitTick(comm, &w, q, "initialization"));
        if (st != 1)
            return arnormFail(comm, arnormRemoteError, "rank %d failed to initialize "
                              "(see its log); no rank proceeds", q);
    }
    return arnormSuccess;
}

/* The segment must fit in /dev/shm: refuse clearly before creating anything (every rank
 * sees the same file system, so every rank refuses at once). */
static arnormResult_t checkShmSpace(struct arnormComm *comm, size_t total) {
    struct statvfs st;
    if (statvfs("/dev/shm", &st) != 0) return arnormSuccess; /* fallocate will tell */
    unsigned long long avail = (unsigned long long)st.f_bavail * st.f_frsize;
    if (total > avail)
        return arnormError(comm, arnormOutOfMemory,
                           "shared memory: the segment needs %zu bytes, /dev/shm has %llu free "
                           "(lower ARNORM_WORKSPACE_BYTES / config.workspaceBytes, now %lld, or "
                           "enlarge /dev/shm)", total, avail, comm->settings.workspaceBytes);
    return arnormSuccess;
}

arnormResult_t arnormCpuInit(struct arnormComm *comm, const arnormIdPayload *id) {
    if (comm->nranks > CPU_MAX_RANKS)
        return arnormError(comm, arnormNotSupported, "nranks: %d exceeds the CPU backend's "
                           "maximum of %d", comm->nranks, CPU_MAX_RANKS);
    arnormSettingsFinish(&comm->settings, arnormBackendCpu, comm->nranks, 0);
    const size_t W = ((size_t)comm->settings.workspaceBytes + 63) / 64 * 64;
    const size_t hdrBytes = (sizeof(segHeader) + 4095) / 4096 * 4096;
    const size_t areaBytes = (size_t)(3 * comm->nranks + 3) * W;
    const size_t total = hdrBytes + (size_t)comm->nranks * areaBytes;
    ARNORM_TRY(checkShmSpace(comm, total));
    cpuComm *c = calloc(1, sizeof *c);
    if (!c) return arnormError(comm, arnormOutOfMemory, "allocating the CPU communicator");
    comm->impl = c;
    c->N = comm->nranks;
    c->rank = comm->rank;
    c->W = W;
    c->areaBytes = areaBytes;
    snprintf(c->name, sizeof c->name, "%s", id->shmName);
    arnormResult_t r = arnormSuccess;
    const char *inject = getenv("ARNORM_INJECT_INIT_FAILURE"); /* tests: "rank" that fails */
    const int injected = inject && atoi(inject) == c->rank;

    if (c->rank == 0) {
        r = arnormShmCreate(comm, c->name, total, &c->shm);
        if (r != arnormSuccess) goto fail; /* peers time out waiting for the segment */
        c->hdr = (segHeader *)c->shm.base;
        c->hdr->nranks = (uint32_t)c->N;
        c->hdr->slotBytes = c->W;
        atomic_store(&c->hdr->magic, SEG_MAGIC);
    } else {
        r = arnormShmOpen(comm, c->name, total, comm->settings.timeoutMs, &c->shm);
        if (r != arnormSuccess) goto fail;
        c->hdr = (segHeader *)c->shm.base;
        waitState w = {0};
        while (atomic_load(&c->hdr->magic) != SEG_MAGIC)
            if ((r = waitTick(comm, &w, 0, "the segment header")) != arnormSuccess) goto fail;
        if (c->hdr->nranks != (uint32_t)c->N || c->hdr->slotBytes != c->W) {
            r = arnormError(comm, arnormInvalidUsage, "rank %d: nranks %d / workspace %zu "
                            "differ from rank 0's %u / %llu", c->rank, c->N, c->W,
                            c->hdr->nranks, (unsigned long long)c->hdr->slotBytes);
            goto fail_attached;
        }
    }
    c->areas = (char *)c->shm.base + hdrBytes;
    atomic_store(&c->hdr->pid[c->rank], (int32_t)getpid());
    if (atomic_fetch_add(&c->hdr->attached, 1) + 1 == (uint32_t)c->N)
        arnormShmUnlink(c->name); /* the last to attach: nothing stays in /dev/shm */
    c->sums = malloc(c->W / 2 * sizeof(float)); /* an all-reduce chunk: W / 2 elements at most */
    c->rows.h = malloc(ARNORM_MAX_HIDDEN * sizeof(float));
    c->rows.w = malloc(ARNORM_MAX_HIDDEN * sizeof(float));
    c->rows.slots = malloc(ARNORM_ROW_MAX_SLOTS * sizeof(float));
    if (!c->sums || !c->rows.h || !c->rows.w || !c->rows.slots) {
        r = arnormError(comm, arnormOutOfMemory, "allocating CPU scratch buffers");
        goto fail_attached;
    }
    if (injected) {
        r = arnormError(comm, arnormOutOfMemory, "injected allocation failure on rank %d "
                        "(ARNORM_INJECT_INIT_FAILURE)", c->rank);
        goto fail_attached;
    }
    fillWords(lamportSlot(c, c->rank, 0, 0), (size_t)3 * c->N * c->W / 8, SENTINEL16);
    c->regionClass = CLASS16;
    atomic_store(&c->hdr->initState[c->rank], 1);
    if ((r = waitInit(comm)) != arnormSuccess) goto fail_attached;
    comm->ops = &arnormCpuOps;
    comm->groupReason = arnormReasonNone;
    comm->workspaceBytes = c->areaBytes;
    return arnormSuccess;

fail_attached:
    /* Tell the group (ranks waiting, and ranks still attaching, fail at once), then leave
     * the unlink to the last rank to attach; rank 0 unlinks if some rank never comes. */
    if (atomic_load(&c->hdr->initState[c->rank]) != 1)
        atomic_store(&c->hdr->initState[c->rank], 2);
    markFailed(c, r);
    if (c->rank == 0) {
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        while (atomic_load(&c->hdr->attached) < (uint32_t)c->N &&
               elapsedMs(&t0) < comm->settings.timeoutMs) {
            struct timespec d = {0, 1000000};
            nanosleep(&d, NULL);
        }
        arnormShmUnlink(c->name);
    }
    cpuFree(c);
    comm->impl = NULL;
    return r;
fail:
    if (c->hdr) { /* mapped but not attached: still tell the group, and count as attached
                     so that rank 0 does not wait out the timeout for us before unlinking */
        markFailed(c, r);
        if (c->rank != 0 && atomic_fetch_add(&c->hdr->attached, 1) + 1 == (uint32_t)c->N)
            arnormShmUnlink(c->name);
    }
    if (c->rank == 0) arnormShmUnlink(c->name); /* harmless when never created */
    cpuFree(c);
    comm->impl = NULL;
    return r;
}
