/*
 * testutil.h - what every arnorm test shares: fresh random data, poisoning, the fp64
 * reference with its documented tolerance (docs/numerics.md), and a launcher that forks
 * one process per rank with a process-shared barrier and result area.
 */
#ifndef ARNORM_TESTUTIL_H
#define ARNORM_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "arnorm.h"

#define TU_CHECK(cond, ...)                                                                \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                           \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, "\n");                                                         \
            return 1;                                                                      \
        }                                                                                  \
    } while (0)

#define TU_OK(call)                                                                        \
    do {                                                                                   \
        arnormResult_t tuR_ = (call);                                                      \
        if (tuR_ != arnormSuccess) {                                                       \
            fprintf(stderr, "FAIL %s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call,       \
                    arnormGetErrorString(tuR_), arnormGetLastError(NULL));                 \
            return 1;                                                                      \
        }                                                                                  \
    } while (0)

/* Base seed: fresh from the OS each run (ARNORM_TEST_SEED replays one), printed once. */
uint64_t tuSeed(void);
uint64_t tuMix(uint64_t a, uint64_t b);

/* n elements of type t, uniform in [-scale, scale) from `seed`; never all zero. */
void tuFill(void *buf, size_t n, arnormDataType_t t, uint64_t seed, double scale);
/* Every byte 0xFF: NaN in bf16, fp16 and fp32, and a pattern no output of a finite input has. */
void tuPoison(void *buf, size_t bytes);
/* Index of the first element still holding the poison pattern, or -1. */
long long tuFirstUnwritten(const void *buf, size_t n, arnormDataType_t t);

/* One problem: nranks partials of [T x H], a residual, a weight; all drawn from `seed`. */
typedef struct {
    int nranks;
    size_t tokens, hidden;
    arnormDataType_t dtype, weightType;
    float eps, weightBias;
    void **partials; /* nranks buffers */
    void *residual;
    void *weight;
    int sumRoundings; /* roundings to D inside the sum: 1 for arnorm (fp32 sum, one
                         rounding); nranks - 1 for NCCL's ring, which rounds each hop */
} tuProblem;

int tuProblemMake(tuProblem *p, int nranks, size_t tokens, size_t hidden,
                  arnormDataType_t dtype, arnormDataType_t weightType, float weightBias,
                  uint64_t seed);
void tuProblemFree(tuProblem *p);

/* Compares outputs with the fp64 reference. Returns the number of elements outside the
 * documented tolerance (unwritten ones included); fills *maxErr with the largest error in
 * units of the tolerance. residualOut may be NULL (not checked). */
size_t tuCheck(const tuProblem *p, const void *residualOut, const void *normOut,
               double *maxErrOverTol);

/* The all-reduce every backend must match bit for bit (DESIGN.md section 1): element i of
 * out = the fp32 sum of parts[0..nranks-1][i] in rank order (-0.0 taken as +0.0), rounded
 * once to t; a result that rounds to -0.0 is stored as +0.0. */
void tuRankOrderSum(void *out, void *const *parts, int nranks, size_t n, arnormDataType_t t);

/* A CPU-backend communicator for rank `rank` of the launched ranks (timeoutMs <= 0: the
 * default bound); NULL, with the library's message printed, when init fails. */
arnormComm_t tuInitCpu(int rank, int nranks, arnormUniqueId id, long long timeoutMs,
                       int checkMode);

/* Monotonic clock in milliseconds; this process's resident memory in KiB. */
double tuNowMs(void);
long tuRssKb(void);

/* Rounds a double to the storage type once (round to nearest even, via round-to-odd). */
double tuRoundTo(double x, arnormDataType_t t);
double tuLoad(const void *buf, size_t i, arnormDataType_t t);
void tuStore(void *buf, size_t i, arnormDataType_t t, double v);
size_t tuSize(arnormDataType_t t);
const char *tuDtypeName(arnormDataType_t t);

/* Forks nranks processes running fn(rank, nranks, id, shared); the parent waits at most
 * timeoutSec (then kills them). `shared` is `sharedBytes` of MAP_SHARED memory every rank
 * sees. Returns 0 when every rank exited 0. */
typedef int (*tuRankFn)(int rank, int nranks, arnormUniqueId id, void *shared, void *arg);
int tuLaunch(int nranks, tuRankFn fn, void *arg, size_t sharedBytes, int timeoutSec);
/* A rank the test kills on purpose (SIGKILL): not counted as a failure. -1: none. */
extern int tuKilledRank;
/* A barrier across the launched ranks (process-shared, in the launcher's memory). */
void tuBarrier(void);
/* The launcher's shared area of this rank set (also passed to fn). */
void *tuShared(void);

#endif
