/*
 * arnorm-bench - fused all-reduce + residual + RMSNorm against the unfused path, in the
 * style of nccl-tests. Launches its own ranks (one process each), checks every output
 * against the fp64 reference (#wrong), times the fused path and the baseline (all-reduce,
 * then the norm kernel: NCCL on CUDA, the staged all-reduce on the CPU) in the same run.
 *
 *   arnorm-bench [-g 2[,4..]] [-b 1] [-e 8192] [-f 2] [-t 1,8,32] [-H 4096] [-d bf16|fp16|fp32|all]
 *                [-n iters] [-w warmup] [-r repeats] [-G 0|1|2] [-B auto|cpu|cuda] [-c 0|1]
 *                [-C 0|1] [-a auto|oneshot|twoshot] [-o results.csv]
 *
 * Columns as nccl-tests' (time, algbw, busbw), then #wrong, the baseline's time and the
 * speedup over it; in a GPU stream loop (eager) also host(us), the host's time to issue one
 * call, and host/empty, that over an empty kernel launch's issue time measured right before
 * it (median over repeats of the ratio).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_device.h"
#include "testutil.h"

#define MAX_TOKENS_LIST 64

typedef struct {
    int worlds[8], nworlds;
    size_t tokens[MAX_TOKENS_LIST];
    int ntokens;
    size_t hidden;
    int dtypes[3], ndtypes;
    int iters, warmup, repeats, graphMode, check, checkMode;
    arnormAlgo_t algo; /* the fused side: auto, or forced one-shot / two-shot */
    arnormBackend_t backend;
    const char *csv;
    uint64_t seed;
} benchOpts;

typedef struct {
    const benchDevice *dev;
    arnormComm_t comm;
    const void *partial, *residual, *weight;
    void *residualOut, *normOut;
    arnormDataType_t dtype, weightType;
    size_t tokens, hidden;
} callCtx;

static int fusedCall(void *p) {
    callCtx *c = p;
    return arnormAllReduceResidualRMSNorm(c->partial, c->residual, c->residualOut, c->normOut,
                                          c->weight, c->weightType, 1e-6f, 1.0f, c->tokens,
                                          c->hidden, c->dtype, c->comm, c->dev->stream()) !=
           arnormSuccess;
}

static int cmpDouble(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof v[0], cmpDouble);
    return v[n / 2];
}

/* The fused side (o->algo) and, with several ranks, the baseline (the fallback: all-reduce,
 * then the norm kernel), timed in alternation repeat by repeat so drift of the machine hits
 * both alike. Medians over repeats of the us per call, and of the host's us to issue one.
 * In a GPU stream loop each repeat also times an empty kernel's launches right before the
 * fused calls: the host's cost per call over that launch's, repeat by repeat (the issue
 * time of either moves by ~30% between runs on the lent machines; their ratio less). */
typedef struct {
    double fused, fusedHost, base, baseHost, hostRatio;
} timing;

static int measure(callCtx *c, const benchOpts *o, int graph, int withBase, timing *out) {
    double t[64], h[64], bt[64], bh[64], ratio[64], dummy;
    const int reps = o->repeats < 64 ? o->repeats : 64;
    const int withRatio = !graph && c->dev != &benchHost;
    for (int i = 0; i < reps; i++) {
        arnormCommSetAlgo(c->comm, o->algo);
        if (i == 0 && c->dev->time(fusedCall, c, o->warmup, graph, tuBarrier, &dummy) < 0)
            return -1;
        double emptyHost = 0;
        if (withRatio && c->dev->emptyKernel(o->iters, 0, &emptyHost) < 0) return -1;
        if ((t[i] = c->dev->time(fusedCall, c, o->iters, graph, tuBarrier, &h[i])) < 0) return -1;
        ratio[i] = withRatio && emptyHost > 0 ? h[i] / emptyHost : -1;
        if (!withBase) continue;
        arnormCommSetAlgo(c->comm, arnormAlgoFallback);
        if (i == 0 && c->dev->time(fusedCall, c, o->warmup, graph, tuBarrier, &dummy) < 0)
            return -1;
        if ((bt[i] = c->dev->time(fusedCall, c, o->iters, graph, tuBarrier, &bh[i])) < 0)
            return -1;
    }
    arnormCommSetAlgo(c->comm, o->algo);
    out->fused = median(t, reps);
    out->fusedHost = median(h, reps);
    out->base = withBase ? median(bt, reps) : -1;
    out->baseHost = withBase ? median(bh, reps) : -1;
    out->hostRatio = withRatio ? median(ratio, reps) : -1;
    return 0;
}

static int rankMain(int rank, int nranks, arnormUniqueId id, void *shared, void *arg) {
    (void)shared;
    const benchOpts *o = arg;
    const benchDevice *dev = &benchHost;
#if defined(ARNORM_BENCH_WITH_CUDA)
    if (o->backend == arnormBackendCuda) dev = &benchCuda;
#endif
    if (dev->setup(rank, nranks)) return 1;
    if (dev == &benchHost) { /* one core per rank where there are enough: stable timings */
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        if (ncpu >= nranks) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(rank % ncpu, &set);
            sched_setaffinity(0, sizeof set, &set);
        }
    }
    arnormConfig_t cfg = ARNORM_CONFIG_INITIALIZER;
    cfg.backend = o->backend;
    cfg.checkMode = o->checkMode;
    arnormComm_t comm;
    arnormResult_t r = arnormCommInitRank(&comm, nranks, id, rank, &cfg);
    if (r != arnormSuccess) {
        fprintf(stderr, "rank %d: init: %s: %s\n", rank, arnormGetErrorString(r),
                arnormGetLastError(NULL));
        return 1;
    }
    size_t ws = 0;
    arnormCommWorkspaceBytes(comm, &ws);
    FILE *csv = NULL;
    if (rank == 0) {
        printf("# world %d, backend %s, workspace %zu bytes per rank, hidden %zu, %d iters x "
               "%d repeats (median), warm-up %d%s\n", nranks, dev->name, ws, o->hidden, o->iters,
               o->repeats, o->warmup, o->checkMode ? ", check mode on" : "");
        if (dev != &benchHost) {
            double hg, he;
            double g = dev->emptyKernel(o->iters, 1, &hg), e = dev->emptyKernel(o->iters, 0, &he);
            printf("# empty kernel: %.2f us per CUDA-graph node, %.2f us per stream launch "
                   "(host %.2f us to issue one)\n", g, e, he);
            printf("# #wrong of fallback rows: against NCCL's own bound (its ring rounds each "
                   "of the %d hops to the storage type)\n", nranks - 1);
        }
        printf("#%7s %7s %5s %5s %9s %6s %10s %9s %9s %7s %10s %8s %8s %10s\n", "tokens",
               "hidden", "dtype", "world", "path", "mode", "time(us)", "algbw", "busbw",
               "#wrong", "base(us)", "speedup", "host(us)", "host/empty");
        fflush(stdout);
        if (o->csv) {
            csv = fopen(o->csv, "a");
            if (!csv) perror(o->csv);
        }
    }
    int failed = 0;
    for (int di = 0; di < o->ndtypes; di++)
        for (int ti = 0; ti < o->ntokens; ti++) {
            const arnormDataType_t dt = (arnormDataType_t)o->dtypes[di];
            const size_t T = o->tokens[ti], H = o->hidden, bytes = T * H * tuSize(dt);
            tuProblem p;
            if (tuProblemMake(&p, nranks, T, H, dt, dt, 1.0f, tuMix(o->seed, T * 8 + (size_t)dt)))
                return 1;
            callCtx c = {dev, comm, NULL, NULL, NULL, NULL, NULL, dt, dt, T, H};
            void *dPartial = dev->alloc(bytes), *dResidual = dev->alloc(bytes);
            void *dWeight = dev->alloc(H * tuSize(dt));
            c.residualOut = dev->alloc(bytes);
            c.normOut = dev->alloc(bytes);
            void *hostRes = malloc(bytes), *hostNorm = malloc(bytes);
            if (!dPartial || !dResidual || !dWeight || !c.residualOut || !c.normOut ||
                !hostRes || !hostNorm) {
                fprintf(stderr, "rank %d: out of memory for T=%zu\n", rank, T);
                return 1;
            }
            dev->upload(dPartial, p.partials[rank], bytes);
            dev->upload(dResidual, p.residual, bytes);
            dev->upload(dWeight, p.weight, H * tuSize(dt));
            c.partial = dPartial;
            c.residual = dResidual;
            c.weight = dWeight;
            arnormFuseInfo_t info;
            arnormCommSetAlgo(comm, o->algo);
            arnormCanFuse(comm, dPartial, T, H, H, dt, &info);
            if (info.algo == arnormAlgoFallback && dev != &benchHost)
                p.sumRoundings = nranks - 1; /* NCCL's ring: judged by NCCL's bound */
            /* correctness: poisoned outputs, one call, fp64 reference on rank 0 */
            long long wrong = -1;
            if (o->check) {
                tuPoison(hostRes, bytes);
                tuPoison(hostNorm, bytes);
                dev->upload(c.residualOut, hostRes, bytes);
                dev->upload(c.normOut, hostNorm, bytes);
                if (fusedCall(&c) || dev->sync()) {
                    fprintf(stderr, "rank %d: fused call failed: %s\n", rank,
                            arnormGetLastError(comm));
                    return 1;
                }
                if (rank == 0) {
                    dev->download(hostRes, c.residualOut, bytes);
                    dev->download(hostNorm, c.normOut, bytes);
                    wrong = (long long)tuCheck(&p, hostRes, hostNorm, NULL);
                    if (wrong) failed = 1;
                }
            }
            for (int g = 0; g < 2; g++) {
                if ((o->graphMode == 0 && g == 1) || (o->graphMode == 1 && g == 0)) continue;
                timing tm;
                if (measure(&c, o, g, nranks > 1, &tm)) {
                    fprintf(stderr, "rank %d: timing failed: %s\n", rank, arnormGetLastError(comm));
                    return 1;
                }
                const double t = tm.fused, base = tm.base, hostUs = tm.fusedHost;
                if (rank == 0) {
                    double algbw = bytes / t / 1e3, busbw = algbw * 2.0 * (nranks - 1) / nranks;
                    const char *mode = dev == &benchHost ? "host" : g ? "graph" : "eager";
                    char wrongStr[24], baseStr[24], speedStr[24], hostStr[24], ratioStr[24];
                    snprintf(wrongStr, sizeof wrongStr, wrong < 0 ? "-" : "%lld", wrong);
                    snprintf(baseStr, sizeof baseStr, base < 0 ? "-" : "%.2f", base);
                    snprintf(speedStr, sizeof speedStr, base < 0 ? "-" : "%.2fx", base / t);
                    snprintf(hostStr, sizeof hostStr, g ? "-" : "%.2f", hostUs);
                    snprintf(ratioStr, sizeof ratioStr, tm.hostRatio < 0 ? "-" : "%.2fx",
                             tm.hostRatio);
                    printf(" %7zu %7zu %5s %5d %9s %6s %10.2f %9.2f %9.2f %7s %10s %8s %8s %10s\n",
                           T, H, tuDtypeName(dt), nranks, arnormGetAlgoString(info.algo), mode, t,
                           algbw, busbw, wrongStr, baseStr, speedStr, hostStr, ratioStr);
                    fflush(stdout);
                    if (csv)
                        fprintf(csv, "%s,%s,%d,%zu,%zu,%s,%s,%.3f,%.3f,%.3f,%lld,%.3f,%zu,%.3f,%.3f\n",
                                dev->name, mode, nranks, T, H, tuDtypeName(dt),
                                arnormGetAlgoString(info.algo), t, algbw, busbw, wrong, base,
                                ws, hostUs, tm.hostRatio);
                }
            }
            dev->release(dPartial); dev->release(dResidual); dev->release(dWeight);
            dev->release(c.residualOut); dev->release(c.normOut);
            free(hostRes); free(hostNorm);
            tuProblemFree(&p);
        }
    if (csv) fclose(csv);
    arnormCommDestroy(comm);
    dev->teardown();
    return failed;
}

static int parseList(const char *s, size_t *out, int max) {
    int n = 0;
    while (*s && n < max) {
        out[n++] = strtoull(s, (char **)&s, 10);
        if (*s == ',') s++;
        else if (*s) return -1;
    }
    return n;
}

/* GPUs visible, counted in a child so this process never starts CUDA before forking. */
static int probeGpus(void) {
#if defined(ARNORM_BENCH_WITH_CUDA)
    pid_t pid = fork();
    if (pid == 0) _exit(benchCudaDeviceCount() > 100 ? 100 : benchCudaDeviceCount());
    int st;
    if (waitpid(pid, &st, 0) == pid && WIFEXITED(st)) return WEXITSTATUS(st);
#endif
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: arnorm-bench [-g worlds e.g. 2,4] [-b minTokens] [-e maxTokens] [-f factor]\n"
            "  [-t tokens list] [-H hidden] [-d bf16|fp16|fp32|all] [-n iters] [-w warmup]\n"
            "  [-r repeats] [-G 0 eager|1 graph|2 both] [-B auto|cpu|cuda] [-c check 0|1]\n"
            "  [-C 1: check mode, shapes verified across ranks every call]\n"
            "  [-a auto|oneshot|twoshot: the fused side] [-o csv file]\n");
}

int main(int argc, char **argv) {
    benchOpts o;
    memset(&o, 0, sizeof o);
    o.worlds[0] = 2;
    o.nworlds = 1;
    o.hidden = 4096;
    o.dtypes[0] = arnormBfloat16;
    o.dtypes[1] = arnormFloat32;
    o.ndtypes = 2;
    o.iters = -1;
    o.warmup = -1;
    o.repeats = 7;
    o.graphMode = -1;
    o.check = 1;
    o.backend = arnormBackendAuto;
    size_t b = 1, e = 32, f = 2;
    int opt;
    while ((opt = getopt(argc, argv, "g:b:e:f:t:H:d:n:w:r:G:B:c:C:a:o:h")) != -1) {
        switch (opt) {
        case 'g': {
            size_t w[8];
            o.nworlds = parseList(optarg, w, 8);
            for (int i = 0; i < o.nworlds; i++) o.worlds[i] = (int)w[i];
            break;
        }
        case 'b': b = strtoull(optarg, NULL, 10); break;
        case 'e': e = strtoull(optarg, NULL, 10); break;
        case 'f': f = strtoull(optarg, NULL, 10); break;
        case 't': o.ntokens = parseList(optarg, o.tokens, MAX_TOKENS_LIST); break;
        case 'H': o.hidden = strtoull(optarg, NULL, 10); break;
        case 'd':
            o.ndtypes = 0;
            if (!strcmp(optarg, "all")) {
                for (int i = 0; i < 3; i++) o.dtypes[o.ndtypes++] = i;
            } else {
                o.ndtypes = 1;
                o.dtypes[0] = !strcmp(optarg, "bf16") ? 0 : !strcmp(optarg, "fp16") ? 1
                            : !strcmp(optarg, "fp32") ? 2 : -1;
                if (o.dtypes[0] < 0) { usage(); return 2; }
            }
            break;
        case 'n': o.iters = atoi(optarg); break;
        case 'w': o.warmup = atoi(optarg); break;
        case 'r': o.repeats = atoi(optarg); break;
        case 'G': o.graphMode = atoi(optarg); break;
        case 'B':
            o.backend = !strcmp(optarg, "cpu") ? arnormBackendCpu
                      : !strcmp(optarg, "cuda") ? arnormBackendCuda : arnormBackendAuto;
            break;
        case 'c': o.check = atoi(optarg); break;
        case 'C': o.checkMode = atoi(optarg) != 0; break;
        case 'a':
            o.algo = !strcmp(optarg, "oneshot") ? arnormAlgoOneShot
                   : !strcmp(optarg, "twoshot") ? arnormAlgoTwoShot : arnormAlgoAuto;
            break;
        case 'o': o.csv = optarg; break;
        default: usage(); return 2;
        }
    }
    if (o.nworlds <= 0 || o.ntokens < 0 || o.hidden == 0 || o.hidden > 65536 || f < 2 ||
        b == 0 || e < b || o.repeats < 1) {
        usage();
        return 2;
    }
    if (o.ntokens == 0)
        for (size_t t = b; t <= e && o.ntokens < MAX_TOKENS_LIST; t *= f) o.tokens[o.ntokens++] = t;
    int gpus = probeGpus();
    if (o.backend == arnormBackendAuto) o.backend = gpus > 0 ? arnormBackendCuda : arnormBackendCpu;
    if (o.backend == arnormBackendCuda && gpus == 0) {
        fprintf(stderr, "arnorm-bench: -B cuda but no GPU is visible (or built without CUDA)\n");
        return 2;
    }
    const int gpu = o.backend == arnormBackendCuda;
    if (o.iters < 0) o.iters = gpu ? 50 : 200;
    if (o.warmup < 0) o.warmup = gpu ? 10 : 20;
    if (o.graphMode < 0) o.graphMode = gpu ? 1 : 0;
    o.seed = tuSeed();
    printf("# arnorm-bench: backend %s%s\n", gpu ? "cuda" : "cpu",
           gpu ? "" : " (no GPU visible: CPU shared-memory backend)");
    int failed = 0;
    for (int i = 0; i < o.nworlds; i++) {
        if (gpu && o.worlds[i] > gpus) {
            printf("# world %d skipped: only %d GPUs\n", o.worlds[i], gpus);
            continue;
        }
        failed |= tuLaunch(o.worlds[i], rankMain, &o, 0, 3600);
    }
    printf("# %s\n", failed ? "FAILED: wrong results or errors above" : "all results within tolerance");
    return failed;
}
