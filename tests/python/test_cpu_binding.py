#!/usr/bin/env python3
"""The Python binding on arnorm's CPU backend, several processes (no GPU, no torch).

Run:  python3 tests/python/test_cpu_binding.py [--worlds 2,3,4] [--quick] [--allow-missing-lib]

Checks, per case, bitwise equality with the exact reference of the documented numerics
(tests/python/arnorm_ref.py, pure Python), closeness to an fp64 reference, identical bits
on every rank and for every algo (auto, one-shot, two-shot, fallback), in-place aliasing,
the numpy / array.array / bytearray interfaces, errors raised as ArnormError subclasses
carrying the library's messages, can_fuse / budget, timeout of a diverging rank.
numpy is optional (its cases print SKIP without it).

Library: $ARNORM_LIBRARY, else python/arnorm/libarnorm.so, else build/libarnorm.so.
Prints one PASS/FAIL/SKIP line per check and a closing 'N passed, N failed, N skipped'
line; exits non-zero on any failure.
"""

import array
import ctypes
import hashlib
import multiprocessing as mp
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, HERE)

import arnorm  # noqa: E402
from arnorm import _lib  # noqa: E402
import arnorm_ref as ref  # noqa: E402

try:
    if os.environ.get("ARNORM_TEST_NO_NUMPY"):
        raise ImportError("ARNORM_TEST_NO_NUMPY set")
    import numpy as np  # noqa: E402
except ImportError:  # numpy is optional
    np = None

BF16, FP16, FP32 = ref.BF16, ref.FP16, ref.FP32
ALGOS = ("auto", "oneshot", "twoshot", "fallback")
CHILD_TIMEOUT_S = 600


# ---------------------------------------------------------------- reporting


class Report:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def ok(self, name, detail=""):
        self.passed += 1
        print("PASS %s%s" % (name, (": " + detail) if detail else ""), flush=True)

    def fail(self, name, detail=""):
        self.failed += 1
        print("FAIL %s%s" % (name, (": " + detail) if detail else ""), flush=True)

    def skip(self, name, why):
        self.skipped += 1
        print("SKIP %s: %s" % (name, why), flush=True)

    def check(self, name, cond, detail=""):
        (self.ok if cond else self.fail)(name, detail)
        return cond


# ---------------------------------------------------------------- data


def gen_values(seed, n, scale=1.0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        v = rng.gauss(0.0, scale)
        if v == 0.0:
            v = scale * 0.5
        out.append(v)
    return out


def make_case_inputs(case, nranks):
    """Bits arrays of every rank's partial, the residual and the weight of a case."""
    T, H, dt, wt = case["T"], case["H"], case["dt"], case["wt"]
    n = T * H
    cid = case["id"]
    partials = [ref.encode(gen_values(1000 * cid + r, n, 1.0), dt) for r in range(nranks)]
    residual = ref.encode(gen_values(1000 * cid + 999, n, 2.0), dt)
    weight = ref.encode(gen_values(1000 * cid + 998, H, 0.1), wt)
    return partials, residual, weight


def expected(case, partials, residual, weight):
    dt, wt = case["dt"], case["wt"]
    pv = [ref.decode(p, dt) for p in partials]
    rv = ref.decode(residual, dt)
    wv = ref.decode(weight, wt)
    h, out = ref.fused(pv, rv, wv, case["eps"], case["wb"], case["T"], case["H"], dt)
    return ref.encode(h, dt), ref.encode(out, dt), (pv, rv, wv)


def fp64_errors(case, values, got_h, got_out):
    """max |err| / bound of residual_out and norm_out against fp64 (<= 1 is fine)."""
    pv, rv, wv = values
    dt, T, H = case["dt"], case["T"], case["H"]
    a64, h64, out64 = ref.fused_fp64(pv, rv, wv, case["eps"], case["wb"], T, H)
    u = ref.unit_roundoff(dt)
    hv = ref.decode(got_h, dt)
    ov = ref.decode(got_out, dt)
    worst_h = 0.0
    for i in range(T * H):
        mag = sum(abs(p[i]) for p in pv) + abs(rv[i])
        bound = 4 * u * mag + 1e-30
        worst_h = max(worst_h, abs(hv[i] - h64[i]) / bound)
    worst_o = 0.0
    for t in range(T):
        row = h64[t * H:(t + 1) * H]
        rms = (sum(v * v for v in row) / H + case["eps"]) ** 0.5
        for j in range(H):
            i = t * H + j
            mag_in = sum(abs(p[i]) for p in pv) + abs(rv[i])
            sw = abs(case["wb"] + wv[j])
            # the residual's roundings carried through the norm, plus the output's rounding
            bound = sw * 4 * u * mag_in / rms + 4 * u * abs(out64[i]) + 1e-30
            worst_o = max(worst_o, abs(ov[i] - out64[i]) / bound)
    return worst_h, worst_o


def digest(*bufs):
    h = hashlib.sha256()
    for b in bufs:
        h.update(bytes(memoryview(b).cast("B")))
    return h.hexdigest()[:16]


def zeros_like_bits(dt, n):
    a = array.array("f" if dt == FP32 else "H")
    a.frombytes(bytes(n * ref.SIZE[dt]))
    return a


def build_cases(quick):
    cases = []
    cid = 0
    combos = [(dt, wt, wb) for dt in (BF16, FP16, FP32) for wt in ("d", FP32) for wb in (1.0, 0.0)]
    shapes_full = [(1, 8), (3, 1000), (17, 24), (2, 7)]
    shapes_some = [(5, 4096), (64, 256), (1, 65536), (9, 8192)]
    if quick:
        shapes_full = [(1, 8), (3, 1000)]
        shapes_some = [(5, 4096)]
    for (T, H) in shapes_full:
        for dt, wt, wb in combos:
            cid += 1
            cases.append(dict(id=cid, T=T, H=H, dt=dt, wt=dt if wt == "d" else wt, wb=wb, eps=1e-6))
    for k, (T, H) in enumerate(shapes_some):
        for j in range(3):
            dt, wt, wb = combos[(k * 5 + j * 4) % len(combos)]
            cid += 1
            cases.append(dict(id=cid, T=T, H=H, dt=dt, wt=dt if wt == "d" else wt, wb=wb, eps=1e-5))
    return cases


def case_name(c):
    return "#%d T=%d H=%d %s w=%s wb=%g" % (c["id"], c["T"], c["H"], ref.NAMES[c["dt"]],
                                           ref.NAMES[c["wt"]], c["wb"])


# ---------------------------------------------------------------- one rank's work


def to_numpy(arr, dt, shape):
    a = np.frombuffer(arr.tobytes(), dtype=np.float32 if dt == FP32 else np.uint16).copy()
    if dt == FP16:
        a = a.view(np.float16)
    return a.reshape(shape)


def rank_main(rank, nranks, ids, quick, q):
    """Runs in a spawned process; sends (kind, name, ok, detail) tuples, then ('done',)."""
    results = []

    def put(name, ok, detail=""):
        results.append(("check", name, bool(ok), detail))

    try:
        _rank_body(rank, nranks, ids, quick, put)
    except Exception:
        put("rank %d crashed" % rank, False, traceback.format_exc())
    q.put((rank, results))


def _rank_body(rank, nranks, ids, quick, put):
    comm = arnorm.Communicator(nranks, ids[0], rank, backend="cpu", timeout_ms=60000)
    put("init rank/size/backend", comm.rank == rank and comm.size == nranks and
        comm.backend == arnorm.Backend.Cpu, repr(comm))

    # ---- the fused op, every case, every algo, bitwise
    for case in build_cases(quick):
        T, H, dt, wt = case["T"], case["H"], case["dt"], case["wt"]
        partials, residual, weight = make_case_inputs(case, nranks)
        exp_h, exp_out, values = expected(case, partials, residual, weight)
        name = case_name(case)
        digests = []
        for algo in ALGOS:
            comm.set_algo(algo)
            part = array.array(partials[rank].typecode, partials[rank])
            res = array.array(residual.typecode, residual)
            norm_out = zeros_like_bits(dt, T * H)
            res_out = zeros_like_bits(dt, T * H)
            comm.allreduce_residual_rmsnorm(part, res, weight, eps=case["eps"], weight_bias=case["wb"],
                                            residual_out=res_out, norm_out=norm_out, tokens=T,
                                            hidden=H, dtype=dt, weight_dtype=wt)
            same = res_out == exp_h and norm_out == exp_out
            if not same:
                bad_h = sum(1 for a, b in zip(res_out, exp_h) if a != b)
                bad_o = sum(1 for a, b in zip(norm_out, exp_out) if a != b)
                first = next((i for i in range(T * H) if norm_out[i] != exp_out[i]), None)
                put("fused %s algo=%s bitwise" % (name, algo), False,
                    "%d residual_out and %d norm_out elements differ (first norm_out at %s: got %r want %r)"
                    % (bad_h, bad_o, first, None if first is None else norm_out[first],
                       None if first is None else exp_out[first]))
            else:
                put("fused %s algo=%s bitwise" % (name, algo), True)
            if part != partials[rank] or res != residual:
                put("fused %s algo=%s inputs untouched" % (name, algo), False)
            digests.append(digest(res_out, norm_out))
        put("fused %s algos agree" % name, len(set(digests)) == 1, " ".join(digests))
        if rank == 0 and case["id"] % 5 == 1:
            eh, eo = fp64_errors(case, values, exp_h, exp_out)
            put("reference %s vs fp64" % name, eh <= 1.0 and eo <= 1.0,
                "residual err/bound %.3f, norm err/bound %.3f" % (eh, eo))
        put("digest %s" % name, True, digests[0])
    comm.set_algo("auto")

    # ---- in place: residual_out = residual, norm_out = partial; and residual_out = partial
    case = dict(id=901, T=4, H=1000, dt=BF16, wt=FP32, wb=1.0, eps=1e-6)
    partials, residual, weight = make_case_inputs(case, nranks)
    exp_h, exp_out, _ = expected(case, partials, residual, weight)
    part = array.array("H", partials[rank])
    res = array.array("H", residual)
    comm.allreduce_residual_rmsnorm(part, res, weight, eps=1e-6, residual_out=res, norm_out=part,
                                    tokens=4, hidden=1000, dtype="bf16", weight_dtype="fp32")
    put("in place residual_out=residual, norm_out=partial", res == exp_h and part == exp_out)
    part = array.array("H", partials[rank])
    norm_out = zeros_like_bits(BF16, 4000)
    comm.allreduce_residual_rmsnorm(part, residual, weight, eps=1e-6, residual_out=part,
                                    norm_out=norm_out, tokens=4, hidden=1000, dtype="bf16",
                                    weight_dtype="fp32")
    put("in place residual_out=partial", part == exp_h and norm_out == exp_out)

    # ---- numpy arrays (2-D, dtype inferred; uint16 holds bf16 bits), outputs allocated
    if np is not None:
        for dt in (BF16, FP16, FP32):
            case = dict(id=910 + dt, T=6, H=512, dt=dt, wt=dt, wb=1.0, eps=1e-6)
            partials, residual, weight = make_case_inputs(case, nranks)
            exp_h, exp_out, _ = expected(case, partials, residual, weight)
            p = to_numpy(partials[rank], dt, (6, 512))
            r = to_numpy(residual, dt, (6, 512))
            w = to_numpy(weight, dt, (512,))
            out, res_out = comm.allreduce_residual_rmsnorm(p, r, w, eps=1e-6)
            ok = (isinstance(out, np.ndarray) and out.shape == (6, 512) and
                  out.tobytes() == exp_out.tobytes() and res_out.tobytes() == exp_h.tobytes())
            put("numpy %s 2-D, outputs allocated" % ref.NAMES[dt], ok)
    else:
        results_skip = "numpy not installed"
        put("SKIP numpy arrays", True, results_skip)

    # ---- bytearray with explicit dtype, flat buffers
    case = dict(id=920, T=2, H=64, dt=FP16, wt=FP16, wb=0.0, eps=1e-6)
    partials, residual, weight = make_case_inputs(case, nranks)
    exp_h, exp_out, _ = expected(case, partials, residual, weight)
    out_b = bytearray(2 * 64 * 2)
    res_b = bytearray(2 * 64 * 2)
    comm.allreduce_residual_rmsnorm(bytearray(partials[rank].tobytes()), residual.tobytes(),
                                    weight.tobytes(), eps=1e-6, weight_bias=0.0, residual_out=res_b,
                                    norm_out=out_b, hidden=64, dtype="fp16")
    put("bytearray/bytes buffers with dtype='fp16'", bytes(out_b) == exp_out.tobytes() and
        bytes(res_b) == exp_h.tobytes())

    # ---- raw addresses
    part = array.array("f", ref.encode(gen_values(77 + rank, 100, 1.0), FP32))
    recv = array.array("f", bytes(400))
    comm.all_reduce(part.buffer_info()[0], recv.buffer_info()[0], count=100, dtype="fp32")
    allp = [ref.decode(ref.encode(gen_values(77 + r, 100, 1.0), FP32), FP32) for r in range(nranks)]
    put("all_reduce on raw addresses", list(recv) == ref.all_reduce(allp, FP32))

    # ---- all_reduce, in place, bf16, rank-order fp32 sum with one rounding
    vals = [ref.encode(gen_values(500 + r, 1001, 3.0), BF16) for r in range(nranks)]
    buf = array.array("H", vals[rank])
    comm.all_reduce(buf, buf, dtype="bf16")
    want = ref.encode(ref.all_reduce([ref.decode(v, BF16) for v in vals], BF16), BF16)
    put("all_reduce bf16 in place", buf == want, digest(buf))

    # ---- local residual_rmsnorm, residual None (plain RMSNorm)
    case = dict(id=930, T=3, H=100, dt=BF16, wt=BF16, wb=1.0, eps=1e-6)
    partials, residual, weight = make_case_inputs(case, nranks)
    x = ref.decode(partials[rank], BF16)
    _, out_v = ref.residual_rms_norm(x, None, ref.decode(weight, BF16), 1e-6, 1.0, 3, 100, BF16)
    out, res_out = comm.residual_rmsnorm(partials[rank], None, weight, eps=1e-6, hidden=100, dtype="bf16")
    put("residual_rmsnorm without residual", res_out is None and out == ref.encode(out_v, BF16))

    # ---- can_fuse: info well formed, aligned rows fuse on the CPU backend
    buf = zeros_like_bits(BF16, 8 * 1024)
    info = comm.can_fuse(buf, tokens=8, hidden=1024, dtype="bf16")
    put("can_fuse bf16 8x1024", info.algo in (arnorm.Algo.OneShot, arnorm.Algo.TwoShot, arnorm.Algo.Fallback)
        and info.can_fuse == (info.reason == arnorm.Reason.None_) and info.max_tokens >= 0
        and isinstance(info.reason_text, str), repr(info))
    info = comm.can_fuse(buf, tokens=8, hidden=1000, row_stride=1024, dtype="bf16")
    put("can_fuse row stride != hidden -> NotContiguous", not info.can_fuse and
        info.reason == arnorm.Reason.NotContiguous, repr(info))
    dm = arnorm.default_max_tokens(nranks, 1024, arnorm.DataType.Bfloat16, backend="cpu")
    put("default_max_tokens(cpu, %d, 1024, bf16)" % nranks, dm >= 0, str(dm))

    # ---- the same invalid call on every rank: raised, comm still in step afterwards
    y = array.array("H", bytes(256))
    try:
        comm.allreduce_residual_rmsnorm(array.array("H", bytes(256)), array.array("H", bytes(256)),
                                        array.array("H", bytes(128)), residual_out=y, norm_out=y,
                                        hidden=64, dtype="bf16")
        put("fused call with aliased outputs raises ArnormInvalidArgumentError", False, "no exception")
    except arnorm.ArnormInvalidArgumentError as e:
        put("fused call with aliased outputs raises ArnormInvalidArgumentError",
            e.result == arnorm.Result.InvalidArgument and e.error_string and e.last_error
            and e.last_error in str(e), str(e))
    try:
        comm.allreduce_residual_rmsnorm(array.array("H", bytes(20)), array.array("H", bytes(20)),
                                        array.array("H", bytes(20)), hidden=0, tokens=5, dtype="bf16")
        put("hidden=0 raises ValueError", False, "no exception")
    except ValueError as e:
        put("hidden=0 raises ValueError", "hidden" in str(e), str(e))
    vals = [ref.encode(gen_values(600 + r, 64, 1.0), FP32) for r in range(nranks)]
    buf = array.array("f", vals[rank])
    comm.all_reduce(buf, buf)
    want = ref.encode(ref.all_reduce([ref.decode(v, FP32) for v in vals], FP32), FP32)
    put("comm in step after an invalid call", buf == want)
    put("async_error is Success", comm.async_error() == arnorm.Result.Success)

    ws = comm.workspace_bytes
    put("workspace_bytes", ws >= 0, str(ws))
    comm.destroy()
    try:
        comm.set_algo("auto")
        put("use after destroy raises", False)
    except arnorm.ArnormError as e:
        put("use after destroy raises", isinstance(e, arnorm.ArnormInvalidUsageError), str(e))

    # ---- a second comm with a tiny fused budget: over budget -> fallback, same bits
    with arnorm.Communicator(nranks, ids[1], rank, backend="cpu", fuse_max_bytes=4096,
                             timeout_ms=60000) as c2:
        case = dict(id=940, T=64, H=256, dt=BF16, wt=BF16, wb=1.0, eps=1e-6)
        partials, residual, weight = make_case_inputs(case, nranks)
        exp_h, exp_out, _ = expected(case, partials, residual, weight)
        info = c2.can_fuse(partials[rank], tokens=64, hidden=256, dtype="bf16")
        put("over budget: can_fuse reason OverBudget, max_tokens 8",
            not info.can_fuse and info.reason == arnorm.Reason.OverBudget and info.max_tokens == 8,
            repr(info))
        out, res_out = c2.allreduce_residual_rmsnorm(partials[rank], residual, weight, eps=1e-6,
                                                     hidden=256, dtype="bf16")
        put("over budget: fallback result bitwise", out == exp_out and res_out == exp_h)
        info = c2.can_fuse(partials[rank], tokens=8, hidden=256, dtype="bf16")
        put("within budget: can_fuse", info.can_fuse or info.reason != arnorm.Reason.OverBudget, repr(info))

    # ---- a rank that does not call: the others time out, with the library's message
    c3 = arnorm.Communicator(nranks, ids[2], rank, backend="cpu", timeout_ms=1000)
    if rank == 0:
        t0 = time.time()
        try:
            c3.all_reduce(array.array("f", [1.0] * 16))
            put("diverging peer -> ArnormTimeoutError", False, "no exception")
        except (arnorm.ArnormTimeoutError, arnorm.ArnormRemoteError) as e:
            dt_s = time.time() - t0
            put("diverging peer -> ArnormTimeoutError", isinstance(e, arnorm.ArnormTimeoutError)
                and isinstance(e, TimeoutError) and bool(e.last_error) and dt_s < 30,
                "%.1fs: %s" % (dt_s, e))
            put("async_error sticky after timeout", c3.async_error() in
                (arnorm.Result.Timeout, arnorm.Result.RemoteError), str(c3.async_error()))
        c3.abort()
    else:
        time.sleep(4.0)
        c3.abort()


# ---------------------------------------------------------------- parent-side checks


def header_path():
    return os.path.join(ROOT, "include", "arnorm.h")


def check_types(rep):
    """The ctypes mirror against include/arnorm.h (regex on the header; a C probe when a
    compiler is there)."""
    text = open(header_path()).read()
    enums = {
        "arnormResult_t": (arnorm.Result, "arnorm"),
        "arnormDataType_t": (arnorm.DataType, "arnorm"),
        "arnormBackend_t": (arnorm.Backend, "arnormBackend"),
        "arnormAlgo_t": (arnorm.Algo, "arnormAlgo"),
        "arnormReason_t": (arnorm.Reason, "arnormReason"),
    }
    for tname, (py, prefix) in enums.items():
        m = re.search(r"typedef enum \{([^}]*)\}\s*%s;" % tname, text)
        if not m:
            rep.fail("types: enum %s in header" % tname)
            continue
        body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
        pairs = re.findall(r"(\w+)\s*=\s*(\d+)", body)
        bad = []
        for cname, val in pairs:
            short = cname[len("arnorm"):]
            sub = prefix[len("arnorm"):]
            if sub and short.startswith(sub):
                short = short[len(sub):]
            if short == "None":
                short = "None_"
            if short not in py.__members__ or int(py[short]) != int(val):
                bad.append("%s=%s" % (cname, val))
        if len(pairs) != len(py.__members__):
            bad.append("%d C values, %d Python" % (len(pairs), len(py.__members__)))
        rep.check("types: enum %s mirrored" % tname, not bad, ", ".join(bad))
    for macro, val in (("ARNORM_UNIQUE_ID_BYTES", arnorm.ARNORM_UNIQUE_ID_BYTES),
                       ("ARNORM_MAJOR", _lib.ARNORM_MAJOR), ("ARNORM_MINOR", _lib.ARNORM_MINOR),
                       ("ARNORM_PATCH", _lib.ARNORM_PATCH)):
        m = re.search(r"#define %s (\d+)" % macro, text)
        rep.check("types: %s" % macro, m and int(m.group(1)) == val, m.group(1) if m else "absent")
    m = re.search(r"#define ARNORM_CONFIG_MAGIC (0x[0-9a-fA-F]+)u", text)
    rep.check("types: ARNORM_CONFIG_MAGIC", m and int(m.group(1), 16) == arnorm.ARNORM_CONFIG_MAGIC)

    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        rep.skip("types: C probe", "no C compiler")
        return
    probe = r'''
#include <stdio.h>
#include <stddef.h>
#include "arnorm.h"
#define OFF(t, f) printf(#t "." #f " %zu\n", offsetof(t, f))
int main(void) {
    static const arnormConfig_t c = ARNORM_CONFIG_INITIALIZER;
    const unsigned char *p = (const unsigned char *)&c;
    printf("config.bytes ");
    for (size_t i = 0; i < sizeof c; i++) printf("%02x", p[i]);
    printf("\n");
    printf("sizeof.config %zu\nsizeof.fuseinfo %zu\nsizeof.uniqueid %zu\n",
           sizeof(arnormConfig_t), sizeof(arnormFuseInfo_t), sizeof(arnormUniqueId));
    OFF(arnormConfig_t, size); OFF(arnormConfig_t, magic); OFF(arnormConfig_t, version);
    OFF(arnormConfig_t, backend); OFF(arnormConfig_t, algo); OFF(arnormConfig_t, fuseMaxBytes);
    OFF(arnormConfig_t, oneShotMaxBytes); OFF(arnormConfig_t, workspaceBytes);
    OFF(arnormConfig_t, timeoutMs); OFF(arnormConfig_t, usePdl); OFF(arnormConfig_t, checkMode);
    OFF(arnormFuseInfo_t, canFuse); OFF(arnormFuseInfo_t, algo); OFF(arnormFuseInfo_t, reason);
    OFF(arnormFuseInfo_t, maxTokens);
    printf("sizeof.enum %zu\n", sizeof(arnormResult_t));
    return 0;
}
'''
    d = tempfile.mkdtemp(prefix="arnorm-probe-")
    try:
        src = os.path.join(d, "probe.c")
        exe = os.path.join(d, "probe")
        with open(src, "w") as f:
            f.write(probe)
        r = subprocess.run([cc, "-std=c99", "-I", os.path.dirname(header_path()), src, "-o", exe],
                           capture_output=True, text=True)
        if r.returncode != 0:
            rep.fail("types: C probe compiles", r.stderr[-2000:])
            return
        out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    finally:
        shutil.rmtree(d, ignore_errors=True)
    got = dict(line.split(" ", 1) for line in out.strip().splitlines())
    cfg = arnorm.arnormConfig_t()
    same = got["config.bytes"] == bytes(cfg).hex()
    rep.check("types: ARNORM_CONFIG_INITIALIZER bytes", same,
              "" if same else "C %s, Python %s" % (got["config.bytes"], bytes(cfg).hex()))
    rep.check("types: sizeof", int(got["sizeof.config"]) == ctypes.sizeof(arnorm.arnormConfig_t)
              and int(got["sizeof.fuseinfo"]) == ctypes.sizeof(arnorm.arnormFuseInfo_t)
              and int(got["sizeof.uniqueid"]) == ctypes.sizeof(arnorm.arnormUniqueId)
              and int(got["sizeof.enum"]) == ctypes.sizeof(ctypes.c_int))
    bad = []
    for key, v in got.items():
        if key.startswith("arnormConfig_t.") or key.startswith("arnormFuseInfo_t."):
            tname, field = key.split(".")
            cls = arnorm.arnormConfig_t if tname == "arnormConfig_t" else arnorm.arnormFuseInfo_t
            if getattr(cls, field).offset != int(v):
                bad.append(key)
    rep.check("types: field offsets", not bad, ", ".join(bad))


def check_single_process(rep):
    """A one-rank CPU communicator in this process: norm-only path, errors, strings."""
    v = arnorm.version()
    rep.check("arnormGetVersion", v == arnorm.ARNORM_VERSION, "%d (library %s)" % (v, arnorm.library_path()))
    names = [arnorm.error_string(r) for r in range(int(arnorm.Result.NumResults))]
    rep.check("arnormGetErrorString for every result", all(names) and len(set(names)) == len(names))
    rs = [arnorm.reason_string(r) for r in range(int(arnorm.Reason.NumReasons))]
    rep.check("arnormGetReasonString for every reason", all(rs))

    uid = arnorm.get_unique_id()
    rep.check("unique id is 256 bytes", isinstance(uid, bytes) and len(uid) == 256)
    with arnorm.Communicator(1, uid, 0, backend="cpu") as comm:
        rep.check("one rank comm", comm.size == 1 and comm.rank == 0)
        case = dict(id=950, T=7, H=4096, dt=BF16, wt=FP32, wb=1.0, eps=1e-6)
        partials, residual, weight = make_case_inputs(case, 1)
        exp_h, exp_out, _ = expected(case, partials, residual, weight)
        out, res_out = comm.allreduce_residual_rmsnorm(partials[0], residual, weight, eps=1e-6,
                                                       hidden=4096, dtype="bf16", weight_dtype="fp32")
        rep.check("one rank: fused call = residual add + norm, bitwise", out == exp_out and res_out == exp_h)
        info = comm.can_fuse(partials[0], tokens=7, hidden=4096, dtype="bf16")
        rep.check("one rank: can_fuse reason SingleRank, algo NormOnly",
                  not info.can_fuse and info.reason == arnorm.Reason.SingleRank and
                  info.algo == arnorm.Algo.NormOnly, repr(info))

        def expect_error(name, cls, fn):
            try:
                fn()
                rep.fail(name, "no exception")
            except cls as e:
                rep.check(name, bool(e.error_string) and bool(e.last_error) and isinstance(e, arnorm.ArnormError),
                          str(e))
            except Exception as e:  # noqa: BLE001
                rep.fail(name, "%s: %s" % (type(e).__name__, e))

        x = array.array("H", bytes(2 * 70000))
        w = array.array("H", bytes(2 * 70000))
        expect_error("hidden > 65536 -> ArnormInvalidArgumentError", arnorm.ArnormInvalidArgumentError,
                     lambda: comm.residual_rmsnorm(x, x, w, residual_out=array.array("H", bytes(2 * 70000)),
                                                   norm_out=array.array("H", bytes(2 * 70000)),
                                                   hidden=65537, tokens=1, dtype="bf16"))
        y = array.array("H", bytes(2 * 64))
        expect_error("residual_out aliasing norm_out -> ArnormInvalidArgumentError",
                     arnorm.ArnormInvalidArgumentError,
                     lambda: comm.residual_rmsnorm(array.array("H", bytes(128)), array.array("H", bytes(128)),
                                                   array.array("H", bytes(128)), residual_out=y, norm_out=y,
                                                   hidden=64, dtype="bf16"))
        expect_error("weight type fp16 with bf16 data -> ArnormInvalidArgumentError",
                     arnorm.ArnormInvalidArgumentError,
                     lambda: comm.residual_rmsnorm(array.array("H", bytes(128)), None,
                                                   array.array("H", bytes(128)), hidden=64, dtype="bf16",
                                                   weight_dtype="fp16"))
        try:
            comm.residual_rmsnorm(array.array("H", bytes(256)), None, array.array("H", bytes(128)),
                                  hidden=64, tokens=2, dtype="bf16", norm_out=array.array("H", bytes(100)))
            rep.fail("short output buffer -> ValueError before the call")
        except ValueError as e:
            rep.check("short output buffer -> ValueError before the call", "norm_out" in str(e), str(e))

    # a config without the magic is refused (raw ctypes, bypassing make_config)
    bad = arnorm.arnormConfig_t()
    bad.magic = 0
    h = ctypes.c_void_p()
    r = _lib.load().arnormCommInitRank(ctypes.byref(h), 1, arnorm.arnormUniqueId.from_bytes(arnorm.get_unique_id()),
                                       0, ctypes.byref(bad))
    le = _lib.last_error(None)
    rep.check("config without magic -> InvalidArgument, thread last error", r == arnorm.Result.InvalidArgument and le,
              "%d: %s" % (r, le))
    try:
        _lib.raise_for(r, "arnormCommInitRank", None)
    except arnorm.ArnormInvalidArgumentError as e:
        rep.check("raise_for carries arnormGetLastError(NULL)", le in str(e) and isinstance(e, ValueError), str(e))
    rep.check("make_config(timeout_ms=5, algo='twoshot')",
              arnorm.make_config(timeout_ms=5, algo="twoshot").timeoutMs == 5 and
              arnorm.make_config(algo="twoshot").algo == int(arnorm.Algo.TwoShot) and
              arnorm.make_config(backend=None).backend == arnorm.ARNORM_CONFIG_UNDEF_INT)


def run_world(rep, nranks, quick):
    ids = [arnorm.get_unique_id() for _ in range(3)]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, nranks, ids, quick, q), daemon=True) for r in range(nranks)]
    t0 = time.time()
    for p in procs:
        p.start()
    results = {}
    while len(results) < nranks and time.time() - t0 < CHILD_TIMEOUT_S:
        try:
            rank, res = q.get(timeout=5)
            results[rank] = res
        except Exception:  # queue.Empty
            if all(not p.is_alive() for p in procs) and q.empty():
                break
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join(5)
    tag = "world=%d" % nranks
    if len(results) < nranks:
        missing = sorted(set(range(nranks)) - set(results))
        rep.fail("%s all ranks reported" % tag, "ranks %s did not (exit codes %s)"
                 % (missing, [p.exitcode for p in procs]))
    # per-check: a check passes when it passed on every rank
    by_name = {}
    order = []
    for rank in sorted(results):
        for _, name, ok, detail in results[rank]:
            if name not in by_name:
                by_name[name] = []
                order.append(name)
            by_name[name].append((rank, ok, detail))
    for name in order:
        entries = by_name[name]
        if name.startswith("SKIP "):
            rep.skip("%s %s" % (tag, name[5:]), entries[0][2])
            continue
        if name.startswith("digest "):
            ds = {d for _, _, d in entries}
            rep.check("%s rank-consistent %s" % (tag, name[7:]), len(ds) == 1 and len(entries) == nranks,
                      " ".join("r%d:%s" % (r, d) for r, _, d in entries))
            continue
        bad = [(r, d) for r, ok, d in entries if not ok]
        if bad:
            rep.fail("%s %s" % (tag, name), "; ".join("rank %d: %s" % (r, d) for r, d in bad[:2]))
        else:
            rep.ok("%s %s" % (tag, name), entries[0][2] if len(entries[0][2]) < 200 else "")
    print("# world=%d took %.1fs" % (nranks, time.time() - t0), flush=True)


def main(argv):
    worlds = [2, 4]
    quick = "--quick" in argv
    allow_missing = "--allow-missing-lib" in argv
    for i, a in enumerate(argv):
        if a == "--worlds" and i + 1 < len(argv):
            worlds = [int(x) for x in argv[i + 1].split(",")]
    rep = Report()
    print("# arnorm python binding, CPU backend; numpy %s" % (np.__version__ if np else "absent"), flush=True)
    check_types(rep)
    try:
        path = arnorm.library_path()
        print("# library %s" % path, flush=True)
    except arnorm.ArnormLibraryNotFound as e:
        if allow_missing:
            rep.skip("library tests", str(e).splitlines()[0])
        else:
            rep.fail("library loads", str(e))
        print("%d passed, %d failed, %d skipped" % (rep.passed, rep.failed, rep.skipped))
        return 1 if rep.failed else 0
    try:
        check_single_process(rep)
    except Exception:
        rep.fail("single-process checks", traceback.format_exc())
    for n in worlds:
        run_world(rep, n, quick)
    print("%d passed, %d failed, %d skipped" % (rep.passed, rep.failed, rep.skipped))
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
