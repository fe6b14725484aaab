/* testutil.c - shared test helpers: random data, poison, fp64 reference, rank launcher. */
#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

uint64_t tuMix(uint64_t a, uint64_t b) { /* splitmix64 of a ^ b */
    uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t tuSeed(void) {
    static uint64_t seed;
    static int done;
    if (!done) {
        const char *e = getenv("ARNORM_TEST_SEED");
        if (e) seed = strtoull(e, NULL, 0);
        else if (getrandom(&seed, sizeof seed, 0) != sizeof seed) seed = (uint64_t)time(NULL);
        printf("seed 0x%016llx (replay with ARNORM_TEST_SEED=0x%016llx)\n",
               (unsigned long long)seed, (unsigned long long)seed);
        fflush(stdout);
        done = 1;
    }
    return seed;
}

size_t tuSize(arnormDataType_t t) { return t == arnormFloat32 ? 4 : 2; }

const char *tuDtypeName(arnormDataType_t t) {
    return t == arnormBfloat16 ? "bf16" : t == arnormFloat16 ? "fp16" : "fp32";
}

/* ---- conversions, written independently of the library's dtype.h ---- */

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* double -> float rounded to odd: keeps the sticky information a second rounding needs. */
static float toFloatOdd(double x) {
    float f = (float)x;
    if ((double)f != x && isfinite(f) && !(fbits(f) & 1u)) {
        uint32_t u = fbits(f);
        u += fabs(x) > fabs((double)f) ? 1 : -1; /* step toward x: the odd neighbour */
        f = bitsf(u);
    }
    return f;
}

static double bf16ToDouble(uint16_t b) { return bitsf((uint32_t)b << 16); }
static double halfToDouble(uint16_t h) {
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

static uint16_t floatToBf16(float f) {
    uint32_t u = fbits(f);
    if (isnan(f)) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* float -> half by exhaustive rounding in double: simple and independent. */
static uint16_t floatToHalf(float f) {
    if (isnan(f)) return 0x7e00;
    double a = fabs((double)f);
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    if (a >= 65520.0) return sign | 0x7c00;
    double q = ldexp(1.0, -24); /* spacing below 2^-14 */
    int e;
    if (a >= ldexp(1.0, -14)) {
        frexp(a, &e); /* a = m * 2^e, m in [0.5, 1) */
        q = ldexp(1.0, e - 11);
    }
    double k = a / q, fl = floor(k), r = k - fl;
    if (r > 0.5 || (r == 0.5 && fmod(fl, 2.0) == 1.0)) fl += 1.0;
    double v = fl * q;
    /* re-encode v */
    if (v == 0) return sign;
    if (v < ldexp(1.0, -14)) return sign | (uint16_t)(v / ldexp(1.0, -24));
    frexp(v, &e);
    int biased = e - 1 + 15;
    uint16_t man = (uint16_t)(ldexp(v, -(e - 1)) * 1024.0 - 1024.0);
    return sign | (uint16_t)(biased << 10) | man;
}

double tuRoundTo(double x, arnormDataType_t t) {
    if (t == arnormFloat32) return (double)(float)x;
    float f = toFloatOdd(x);
    return t == arnormBfloat16 ? bf16ToDouble(floatToBf16(f)) : halfToDouble(floatToHalf(f));
}

double tuLoad(const void *buf, size_t i, arnormDataType_t t) {
    if (t == arnormFloat32) return ((const float *)buf)[i];
    uint16_t v = ((const uint16_t *)buf)[i];
    return t == arnormBfloat16 ? bf16ToDouble(v) : halfToDouble(v);
}

void tuStore(void *buf, size_t i, arnormDataType_t t, double v) {
    if (t == arnormFloat32) ((float *)buf)[i] = (float)v;
    else {
        float f = toFloatOdd(v);
        ((uint16_t *)buf)[i] = t == arnormBfloat16 ? floatToBf16(f) : floatToHalf(f);
    }
}

void tuFill(void *buf, size_t n, arnormDataType_t t, uint64_t seed, double scale) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        s = tuMix(s, i);
        double u = (double)(s >> 11) / 9007199254740992.0; /* [0, 1) */
        double v = (2.0 * u - 1.0) * scale;
        if (i == 0 && v == 0.0) v = scale / 3.0; /* never an all-zero buffer */
        tuStore(buf, i, t, v);
    }
}

void tuPoison(void *buf, size_t bytes) { memset(buf, 0xff, bytes); }

long long tuFirstUnwritten(const void *buf, size_t n, arnormDataType_t t) {
    for (size_t i = 0; i < n; i++) {
        if (t == arnormFloat32 ? ((const uint32_t *)buf)[i] == 0xffffffffu
                               : ((const uint16_t *)buf)[i] == 0xffffu)
            return (long long)i;
    }
    return -1;
}

int tuProblemMake(tuProblem *p, int nranks, size_t tokens, size_t hidden,
                  arnormDataType_t dtype, arnormDataType_t weightType, float weightBias,
                  uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->nranks = nranks;
    p->tokens = tokens;
    p->hidden = hidden;
    p->dtype = dtype;
    p->weightType = weightType;
    p->eps = 1e-6f;
    p->weightBias = weightBias;
    p->sumRoundings = 1;
    size_t n = tokens * hidden, es = tuSize(dtype);
    p->partials = calloc((size_t)nranks, sizeof(void *));
    if (!p->partials) return 1;
    for (int r = 0; r < nranks; r++) {
        if (!(p->partials[r] = malloc(n * es))) return 1;
        tuFill(p->partials[r], n, dtype, tuMix(seed, 100 + (uint64_t)r), 1.0);
    }
    p->residual = malloc(n * es);
    p->weight = malloc(hidden * tuSize(weightType));
    if (!p->residual || !p->weight) return 1;
    tuFill(p->residual, n, dtype, tuMix(seed, 1), 4.0);
    tuFill(p->weight, hidden, weightType, tuMix(seed, 2), 0.5);
    /* signed zeros, which every path maps to +0.0 in the partials (the Lamport paths' empty
     * marker is -0.0) and not in the residual: -0 in every partial and the residual, in the
     * partials only, in the residual only */
    for (size_t i = 0; i < n; i++) {
        const int all = i % 61 == 7, parts = i % 67 == 3, res = i % 71 == 5;
        if (all || parts)
            for (int r = 0; r < nranks; r++) tuStore(p->partials[r], i, dtype, -0.0);
        if (all || res) tuStore(p->residual, i, dtype, -0.0);
    }
    return 0;
}

void tuProblemFree(tuProblem *p) {
    if (p->partials)
        for (int r = 0; r < p->nranks; r++) free(p->partials[r]);
    free(p->partials);
    free(p->residual);
    free(p->weight);
    memset(p, 0, sizeof *p);
}

/* Spacing of storage type t at magnitude |x|. */
static double ulpOf(double x, arnormDataType_t t) {
    int p = t == arnormBfloat16 ? 8 : t == arnormFloat16 ? 11 : 24;
    double minUlp = t == arnormBfloat16 ? ldexp(1.0, -133) : t == arnormFloat16 ? ldexp(1.0, -24)
                                                                               : ldexp(1.0, -149);
    x = fabs(x);
    if (x == 0) return minUlp;
    int e;
    frexp(x, &e);
    double u = ldexp(1.0, e - p);
    return u > minUlp ? u : minUlp;
}

size_t tuCheck(const tuProblem *p, const void *residualOut, const void *normOut,
               double *maxErrOverTol) {
    const size_t H = p->hidden;
    const arnormDataType_t dt = p->dtype;
    const double f32 = ldexp(1.0, -24);
    size_t nchunks = (H + 7) / 8, slots = (nchunks + 31) / 32 * 32;
    if (slots > 1024) slots = 1024;
    /* fp32 error of the sum of squares: sequential adds per slot, then the 10-level tree */
    const double gamma = ((double)((nchunks + slots - 1) / slots) * 8 + 12) * f32;
    double *a = malloc(H * sizeof(double)), *h = malloc(H * sizeof(double));
    double *absSum = malloc(H * sizeof(double)), *absP = malloc(H * sizeof(double));
    size_t wrong = 0;
    double worst = 0;
    for (size_t row = 0; row < p->tokens; row++) {
        double ss = 0;
        for (size_t i = 0; i < H; i++) {
            size_t k = row * H + i;
            double s = 0, as = 0;
            for (int r = 0; r < p->nranks; r++) {
                double v = tuLoad(p->partials[r], k, dt);
                s += v;
                as += fabs(v);
            }
            double res = tuLoad(p->residual, k, dt);
            a[i] = tuRoundTo(s, dt);
            h[i] = tuRoundTo(a[i] + res, dt);
            absSum[i] = as + fabs(res);
            absP[i] = as;
            ss += h[i] * h[i];
        }
        double scale = 1.0 / sqrt(ss / (double)H + (double)p->eps);
        for (size_t i = 0; i < H; i++) {
            size_t k = row * H + i;
            /* h may be off by a rounding of a, of h, and the fp32 sum's error */
            double hTol = ulpOf(h[i], dt) + ulpOf(a[i], dt) + (p->nranks + 2) * f32 * absSum[i];
            if (p->sumRoundings > 1) /* each hop of a ring rounds a partial sum to D */
                hTol += p->sumRoundings * ulpOf(absP[i], dt);
            if (residualOut) {
                double got = tuLoad(residualOut, k, dt);
                double tol = hTol;
                double err = fabs(got - h[i]);
                if (!(err <= tol)) wrong++;
                if (err / tol > worst || isnan(err)) worst = isnan(err) ? INFINITY : err / tol;
            }
            double w = p->weightBias + tuLoad(p->weight, i, p->weightType);
            double ref = tuRoundTo(h[i] * scale * w, dt);
            double got = tuLoad(normOut, k, dt);
            double tol = 2 * ulpOf(ref, dt) + hTol * scale * fabs(w) +
                         gamma * fabs(h[i] * scale * w) + ldexp(1.0, -126);
            double err = fabs(got - ref);
            if (!(err <= tol)) wrong++;
            if (err / tol > worst || isnan(err)) worst = isnan(err) ? INFINITY : err / tol;
        }
    }
    free(a);
    free(h);
    free(absSum);
    free(absP);
    if (maxErrOverTol) *maxErrOverTol = worst;
    return wrong;
}

arnormComm_t tuInitCpu(int rank, int nranks, arnormUniqueId id, long long timeoutMs,
                       int checkMode) {
    arnormConfig_t cfg = ARNORM_CONFIG_INITIALIZER;
    cfg.backend = arnormBackendCpu;
    if (timeoutMs > 0) cfg.timeoutMs = timeoutMs;
    cfg.checkMode = checkMode;
    arnormComm_t comm = NULL;
    arnormResult_t r = arnormCommInitRank(&comm, nranks, id, rank, &cfg);
    if (r != arnormSuccess)
        fprintf(stderr, "rank %d init: %s: %s\n", rank, arnormGetErrorString(r),
                arnormGetLastError(NULL));
    return comm;
}

/* ---- launcher ---- */

typedef struct {
    pthread_barrier_t barrier;
    arnormUniqueId id; /* made by rank 0 after the fork: CUDA must not start before it */
    int idStatus;
} launchHeader;

static launchHeader *launchArea;
int tuKilledRank = -1;
static size_t launchHdrBytes = 4096;

void tuBarrier(void) { pthread_barrier_wait(&launchArea->barrier); }
void *tuShared(void) { return (char *)launchArea + launchHdrBytes; }

int tuLaunch(int nranks, tuRankFn fn, void *arg, size_t sharedBytes, int timeoutSec) {
    size_t total = launchHdrBytes + sharedBytes;
    void *mem = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    launchArea = mem;
    pthread_barrierattr_t ba;
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    pthread_barrier_init(&launchArea->barrier, &ba, (unsigned)nranks);
    fflush(stdout);
    fflush(stderr);
    pid_t *pids = calloc((size_t)nranks, sizeof(pid_t));
    for (int r = 0; r < nranks; r++) {
        pids[r] = fork();
        if (pids[r] == 0) {
            if (r == 0) {
                launchArea->idStatus = arnormGetUniqueId(&launchArea->id);
                if (launchArea->idStatus != arnormSuccess)
                    fprintf(stderr, "arnormGetUniqueId: %s\n", arnormGetLastError(NULL));
            }
            tuBarrier();
            if (launchArea->idStatus != arnormSuccess) _exit(1);
            arnormUniqueId id = launchArea->id;
            int rc = fn(r, nranks, id, tuShared(), arg);
            fflush(stdout);
            fflush(stderr);
            _exit(rc);
        }
    }
    int failed = 0, left = nranks;
    time_t t0 = time(NULL);
    while (left > 0) {
        int status;
        pid_t w = waitpid(-1, &status, WNOHANG);
        if (w > 0) {
            left--;
            int r = 0;
            while (r < nranks && pids[r] != w) r++;
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && r == tuKilledRank)) {
                    fprintf(stderr, "rank %d: %s %d\n", r,
                            WIFEXITED(status) ? "exit" : "signal",
                            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                    failed = 1;
                }
            }
            continue;
        }
        if (time(NULL) - t0 > timeoutSec) {
            fprintf(stderr, "FAIL: ranks still running after %d s: killing them (a hang)\n",
                    timeoutSec);
            for (int r = 0; r < nranks; r++) kill(pids[r], SIGKILL);
            while (waitpid(-1, NULL, 0) > 0) {}
            failed = 1;
            break;
        }
        struct timespec d = {0, 2000000};
        nanosleep(&d, NULL);
    }
    free(pids);
    pthread_barrier_destroy(&launchArea->barrier);
    munmap(mem, total);
    launchArea = NULL;
    return failed;
}

double tuNowMs(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

long tuRssKb(void) {
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
        fclose(f);
    }
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

void tuRankOrderSum(void *out, void *const *parts, int nranks, size_t n, arnormDataType_t t) {
    for (size_t i = 0; i < n; i++) {
        float s = 0.0f;
        for (int r = 0; r < nranks; r++) {
            float v = (float)tuLoad(parts[r], i, t);
            s = s + (v == 0.0f ? 0.0f : v);
        }
        tuStore(out, i, t, (double)s); /* one rounding of the fp32 sum */
        if (tuLoad(out, i, t) == 0.0) tuStore(out, i, t, 0.0);
    }
}
