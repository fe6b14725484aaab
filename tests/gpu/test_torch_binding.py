#!/usr/bin/env python3
"""The PyTorch helper of the Python binding on GPUs.

    torchrun --nproc-per-node=2 tests/gpu/test_torch_binding.py
    torchrun --nproc-per-node=4 tests/gpu/test_torch_binding.py [--quick] [--no-timing]

Library: $ARNORM_LIBRARY, else python/arnorm/libarnorm.so, else build/libarnorm.so (a
build with the CUDA backend). Without torch, CUDA or enough GPUs it prints a SKIP line and
exits 0. Started without torchrun it runs as one rank (the one-rank checks only).

Checks (every rank; rank 0 prints one PASS/FAIL/SKIP line per check, with the ranks that
failed, and 'N passed, N failed, N skipped'; exit status 1 on any failure):
  * fused_allreduce_gemma_rms_norm == torch.distributed.all_reduce + a PyTorch
    GemmaRMSNorm, random bf16/fp16/fp32, weight in D or fp32, weight_bias 1 and 0, several
    token counts (fused, two-shot, over-budget fallback); error vs fp64 no worse than the
    unfused path's; bitwise equal to the documented numerics (pure-Python reference) on
    small shapes; identical bits on every rank, run to run and whatever the token count
  * CUDA graph capture and replay (several layers per graph, fresh data per replay)
  * fallback cases: CPU tensors, float64, non-contiguous, over budget; 3-D input
  * clear errors: tensor on another GPU, mismatched shapes or devices
  * one rank (a group of one): norm only
  * a communicator from the group's NCCL communicator (arnormCommInitFromNccl)
  * can_fuse / max_token_num; timing per call (info lines, not checks)
"""

import os
import threading
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

WATCHDOG_S = int(os.environ.get("ARNORM_TEST_WATCHDOG_S", "540"))


def skip_all(why):
    print("SKIP test_torch_binding: %s" % why, flush=True)
    print("0 passed, 0 failed, 1 skipped", flush=True)
    sys.exit(0)


try:
    import torch
    import torch.distributed as dist
except ImportError:
    skip_all("torch not installed")
if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
    skip_all("no CUDA device")

import arnorm  # noqa: E402
from arnorm import torch_helper as ath  # noqa: E402

try:
    arnorm.load()
except arnorm.ArnormLibraryNotFound as e:
    print("FAIL library loads: %s" % e, flush=True)
    print("0 passed, 1 failed, 0 skipped", flush=True)
    sys.exit(1)

QUICK = "--quick" in sys.argv
TIMING = "--no-timing" not in sys.argv


from torch_ref import GemmaRMSNorm  # noqa: E402  (tests/python, on sys.path above)


class Checks:
    def __init__(self, rank):
        self.rank = rank
        self.items = []  # (name, status, detail) with status PASS/FAIL/SKIP/INFO

    def add(self, name, ok, detail=""):
        self.items.append((name, "PASS" if ok else "FAIL", str(detail)))
        return ok

    def skip(self, name, why):
        self.items.append((name, "SKIP", why))

    def info(self, name, detail):
        self.items.append((name, "INFO", detail))

    def run(self, name, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            self.add(name, False, "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc()[-1500:]))


def eps_of(dtype):
    return {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}[dtype]


def make_inputs(T, H, dtype, wdtype, seed, rank, device, shape=None):
    g = torch.Generator(device="cpu").manual_seed(seed)
    parts = [torch.randn(T, H, generator=g) for _ in range(WORLD)]
    residual = torch.randn(T, H, generator=g) * 2.0
    weight = torch.randn(H, generator=g) * 0.1
    x = parts[rank].to(dtype).to(device)
    r = residual.to(dtype).to(device)
    w = weight.to(wdtype).to(device)
    if shape is not None:
        x, r = x.view(shape), r.view(shape)
    all_parts = [p.to(dtype) for p in parts]  # what every rank holds, on the CPU
    return x, r, w, all_parts


def fp64_truth(all_parts, residual, weight, eps, wb):
    a = sum(p.double() for p in all_parts)
    h = a + residual.double().cpu()
    var = h.pow(2).mean(-1, keepdim=True)
    return h, h * torch.rsqrt(var + eps) * (wb + weight.double().cpu())


def gather_equal(t, group=None):
    """True when t is bitwise identical on every rank of group."""
    b = t.contiguous().view(torch.uint8).flatten() if t.dtype != torch.float64 else t.view(torch.uint8).flatten()
    outs = [torch.empty_like(b) for _ in range(dist.get_world_size(group))]
    dist.all_gather(outs, b, group=group)
    return all(torch.equal(outs[0], o) for o in outs)


def ref_path(x, residual, norm, group=None):
    """torch.distributed.all_reduce + GemmaRMSNorm (the unfused model path)."""
    y = x.clone()
    if WORLD > 1:
        dist.all_reduce(y, group=group)
    return norm(y, residual)


# ---------------------------------------------------------------- the checks


def check_numerics(C, device):
    dtypes = [torch.bfloat16, torch.float16, torch.float32]
    shapes = [(1, 4096), (16, 2304), (128, 4096), (512, 3584)] if not QUICK else [(1, 4096), (128, 4096)]
    seed = 100
    for dtype in dtypes:
        for (T, H) in shapes:
            for wdtype, wb in ((dtype, 1.0), (torch.float32, 1.0), (dtype, 0.0)):
                seed += 1
                name = "vs all_reduce+GemmaRMSNorm %s T=%d H=%d w=%s wb=%g" % (
                    str(dtype)[6:], T, H, str(wdtype)[6:], wb)

                def one():
                    x, r, w, parts = make_inputs(T, H, dtype, wdtype, seed, RANK, device)
                    norm = GemmaRMSNorm(H, 1e-6, wdtype, device, weight_bias=wb)
                    with torch.no_grad():
                        norm.weight.copy_(w)
                    x0, r0 = x.clone(), r.clone()
                    out, res = ath.fused_allreduce_gemma_rms_norm(x, r, norm, weight_bias=wb)
                    ref_out, ref_res = ref_path(x, r, norm)
                    h64, o64 = fp64_truth(parts, r, w, 1e-6, wb)
                    u = eps_of(dtype)
                    # error vs fp64, arnorm against the unfused path (+ slack of 2 units)
                    mag = max(1.0, float(h64.abs().max()))
                    e_res = float((res.double().cpu() - h64).abs().max())
                    e_res_ref = float((ref_res.double().cpu() - h64).abs().max())
                    e_out = float((out.double().cpu() - o64).abs().max())
                    e_out_ref = float((ref_out.double().cpu() - o64).abs().max())
                    close = (e_res <= e_res_ref + 2 * u * mag * WORLD) and \
                            (e_out <= e_out_ref + 4 * u * max(1.0, float(o64.abs().max())))
                    inputs_kept = torch.equal(x, x0) and torch.equal(r, r0)
                    consistent = gather_equal(out) and gather_equal(res)
                    out2, res2 = ath.fused_allreduce_gemma_rms_norm(x, r, norm, weight_bias=wb)
                    deterministic = torch.equal(out, out2) and torch.equal(res, res2)
                    # batch invariance: row 0 alone gives the same bits
                    o1, r1 = ath.fused_allreduce_gemma_rms_norm(x[:1].contiguous(), r[:1].contiguous(), norm,
                                                                 weight_bias=wb)
                    invariant = torch.equal(o1[0], out[0]) and torch.equal(r1[0], res[0])
                    C.add(name, close and inputs_kept and consistent and deterministic and invariant,
                          "err res %.3g (nccl path %.3g), out %.3g (nccl path %.3g); inputs kept %s, "
                          "rank-consistent %s, deterministic %s, batch-invariant %s; %s"
                          % (e_res, e_res_ref, e_out, e_out_ref, inputs_kept, consistent, deterministic,
                             invariant, ath.can_fuse(x)))

                C.run(name, one)


def check_bitwise_spec(C, device):
    """CUDA results bitwise equal to the documented numerics (pure-Python reference)."""
    try:
        import arnorm_ref as ref
    except ImportError:
        C.skip("bitwise vs documented numerics", "tests/python/arnorm_ref.py not found")
        return
    codes = {torch.bfloat16: ref.BF16, torch.float16: ref.FP16, torch.float32: ref.FP32}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for (T, H, wdtype, wb) in ((2, 1000, torch.float32, 1.0), (3, 4096, dtype, 0.0)):
            name = "bitwise vs documented numerics %s T=%d H=%d w=%s wb=%g" % (str(dtype)[6:], T, H,
                                                                                str(wdtype)[6:], wb)

            def one():
                x, r, w, parts = make_inputs(T, H, dtype, wdtype, 7 + T, RANK, device)
                norm = GemmaRMSNorm(H, 1e-5, wdtype, device, weight_bias=wb)
                with torch.no_grad():
                    norm.weight.copy_(w)
                out, res = ath.fused_allreduce_gemma_rms_norm(x, r, norm, weight_bias=wb)
                dt = codes[dtype]
                pv = [p.float().flatten().tolist() for p in parts]
                rv = r.float().cpu().flatten().tolist()
                wv = w.float().cpu().tolist()
                h, o = ref.fused(pv, rv, wv, 1e-5, wb, T, H, dt)
                want_h = torch.tensor(h, dtype=torch.float32).to(dtype).view(T, H)
                want_o = torch.tensor(o, dtype=torch.float32).to(dtype).view(T, H)
                bad_h = int((res.cpu().view(torch.uint8) != want_h.view(torch.uint8)).sum())
                bad_o = int((out.cpu().view(torch.uint8) != want_o.view(torch.uint8)).sum())
                C.add(name, bad_h == 0 and bad_o == 0, "%d residual bytes, %d norm bytes differ" % (bad_h, bad_o))

            C.run(name, one)


def check_graphs(C, device):
    H = 4096
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for T in ((1, 64) if QUICK else (1, 64, 1024)):
            name = "CUDA graph capture+replay %s T=%d H=%d, 3 layers" % (str(dtype)[6:], T, H)

            def one():
                norm = GemmaRMSNorm(H, 1e-6, torch.float32, device)
                with torch.no_grad():
                    norm.weight.normal_(0, 0.1, generator=torch.Generator(device=device).manual_seed(5))
                sx = torch.zeros(3, T, H, dtype=dtype, device=device)
                sr = torch.zeros(T, H, dtype=dtype, device=device)

                def layers():
                    res = sr
                    outs = []
                    for i in range(3):
                        o, res = ath.fused_allreduce_gemma_rms_norm(sx[i], res, norm)
                        outs.append(o)
                    return outs, res

                s = torch.cuda.Stream(device)
                s.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(s):
                    layers()  # warm-up outside the graph
                torch.cuda.current_stream(device).wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    g_outs, g_res = layers()
                ok, worst = True, 0.0
                for it in range(5):
                    gen = torch.Generator(device="cpu").manual_seed(1000 + it * 10 + RANK)
                    sx.copy_(torch.randn(3, T, H, generator=gen).to(dtype))
                    gen_r = torch.Generator(device="cpu").manual_seed(2000 + it)
                    sr.copy_((torch.randn(T, H, generator=gen_r) * 2).to(dtype))
                    g.replay()
                    e_outs, e_res = layers()  # eager arnorm: graph must give the same bits
                    for go, eo in zip(g_outs, e_outs):
                        ok = ok and torch.equal(go, eo)
                    ok = ok and torch.equal(g_res, e_res)
                    # and agree with the unfused torch path
                    res = sr
                    for i in range(3):
                        ro, res = ref_path(sx[i], res, norm)
                        d = float((ro.float() - g_outs[i].float()).abs().max())
                        worst = max(worst, d)
                torch.cuda.synchronize(device)
                tol = 16 * eps_of(dtype) * 8
                C.add(name, ok and worst <= tol,
                      "replay == eager bitwise %s, max |graph - torch path| %.3g (tol %.3g)" % (ok, worst, tol))

            C.run(name, one)


def check_fallbacks(C, device):
    H = 1024

    def norm_for():
        n = GemmaRMSNorm(H, 1e-6, torch.float32, device)
        with torch.no_grad():
            n.weight.copy_(torch.randn(H, generator=torch.Generator().manual_seed(3)) * 0.1)
        return n

    def close(a, b, dtype):
        return float((a.float() - b.float()).abs().max()) <= 16 * eps_of(dtype) * 8

    def cpu_tensors():
        x, r, w, _ = make_inputs(8, H, torch.bfloat16, torch.float32, 31, RANK, "cpu")
        n = GemmaRMSNorm(H, 1e-6, torch.float32, "cpu")
        with torch.no_grad():
            n.weight.copy_(w)
        out, res = ath.fused_allreduce_gemma_rms_norm(x, r, n)
        y = x.to(device)
        if WORLD > 1:
            dist.all_reduce(y)
        n2 = GemmaRMSNorm(H, 1e-6, torch.float32, device)
        with torch.no_grad():
            n2.weight.copy_(w.to(device))
        ro, rr = n2(y, r.to(device))
        cf = ath.can_fuse(x)
        C.add("fallback: CPU tensors", out.device.type == "cpu" and close(out.to(device), ro, torch.bfloat16)
              and close(res.to(device), rr, torch.bfloat16) and not cf[0]
              and cf.reason == arnorm.Reason.NotDevicePointer, repr(cf))

    def float64():
        x, r, w, _ = make_inputs(8, H, torch.float64, torch.float64, 32, RANK, device)
        n = GemmaRMSNorm(H, 1e-6, torch.float64, device)
        with torch.no_grad():
            n.weight.copy_(w)
        out, res = ath.fused_allreduce_gemma_rms_norm(x, r, n)
        ro, rr = ref_path(x, r, n)
        cf = ath.can_fuse(x)
        C.add("fallback: float64", out.dtype == torch.float64 and
              float((out - ro).abs().max()) < 1e-5 and float((res - rr).abs().max()) < 1e-9
              and cf.reason == arnorm.Reason.UnsupportedDtype, repr(cf))

    def noncontig():
        x, r, w, _ = make_inputs(8, 2 * H, torch.bfloat16, torch.float32, 33, RANK, device)
        xs, rs = x[:, :H], r[:, :H]
        n = norm_for()
        out, res = ath.fused_allreduce_gemma_rms_norm(xs, rs, n)
        ro, rr = ref_path(xs.contiguous(), rs, n)
        cf = ath.can_fuse(xs)
        C.add("fallback: non-contiguous", close(out, ro, torch.bfloat16) and close(res, rr, torch.bfloat16)
              and cf.reason == arnorm.Reason.NotContiguous, repr(cf))

    def over_budget():
        H2 = 4096
        mt = ath.max_token_num(WORLD, H2, torch.bfloat16)
        cfx = ath.can_fuse(torch.empty(1, H2, dtype=torch.bfloat16, device=device))
        budget = cfx.max_token_num
        T = min(max(budget + 1, 2), 32768)
        x, r, w, _ = make_inputs(T, H2, torch.bfloat16, torch.float32, 34, RANK, device)
        n = GemmaRMSNorm(H2, 1e-6, torch.float32, device)
        with torch.no_grad():
            n.weight.copy_(w)
        cf = ath.can_fuse(x)
        out, res = ath.fused_allreduce_gemma_rms_norm(x, r, n)
        ro, rr = ref_path(x, r, n)
        over = WORLD == 1 or T > budget
        C.add("fallback: over budget T=%d (budget %d, default %d)" % (T, budget, mt),
              close(out, ro, torch.bfloat16) and close(res, rr, torch.bfloat16) and
              (not over or (not cf[0] and cf.reason in (arnorm.Reason.OverBudget, arnorm.Reason.SingleRank))),
              "%r; T=1: %r" % (cf, cfx))

    def three_d():
        x, r, w, _ = make_inputs(12, H, torch.bfloat16, torch.float32, 35, RANK, device, shape=(3, 4, H))
        n = norm_for()
        out, res = ath.fused_allreduce_gemma_rms_norm(x, r, n)
        ro, rr = ref_path(x, r, n)
        C.add("3-D contiguous [3,4,H] input", out.shape == x.shape and close(out, ro, torch.bfloat16)
              and close(res, rr, torch.bfloat16))

    def no_residual():
        x, r, w, _ = make_inputs(4, H, torch.float16, torch.float32, 36, RANK, device)
        n = norm_for()
        out, res = ath.fused_allreduce_gemma_rms_norm(x, None, n)
        y = x.clone()
        if WORLD > 1:
            dist.all_reduce(y)
        ro, _ = n(y, None)
        C.add("residual=None: plain norm, new residual = reduced input",
              close(out, ro, torch.float16) and close(res, y, torch.float16))

    C.run("fallback: CPU tensors", cpu_tensors)
    C.run("fallback: float64", float64)
    C.run("fallback: non-contiguous", noncontig)
    C.run("fallback: over budget", over_budget)
    C.run("3-D contiguous input", three_d)
    C.run("residual=None", no_residual)


def check_errors(C, device):
    H = 512
    n = GemmaRMSNorm(H, 1e-6, torch.float32, device)

    def expect(name, fn):
        try:
            fn()
            C.add(name, False, "no exception")
        except (ValueError, TypeError) as e:
            C.add(name, True, "%s: %s" % (type(e).__name__, e))

    x = torch.randn(4, H, device=device, dtype=torch.bfloat16)
    expect("error: residual shape mismatch", lambda: ath.fused_allreduce_gemma_rms_norm(x, x[:2], n))
    expect("error: residual on CPU", lambda: ath.fused_allreduce_gemma_rms_norm(x, x.cpu(), n))
    n_bad = GemmaRMSNorm(H + 1, 1e-6, torch.float32, device)
    expect("error: weight size != hidden", lambda: ath.fused_allreduce_gemma_rms_norm(x, x, n_bad))
    if torch.cuda.device_count() > 1:
        other = torch.device("cuda", (device.index + 1) % torch.cuda.device_count())
        xo = torch.randn(4, H, device=other, dtype=torch.bfloat16)
        no = GemmaRMSNorm(H, 1e-6, torch.float32, other)
        tc = ath.get_communicator(None, device)
        expect("error: tensor on another GPU than the communicator's",
               lambda: ath.fused_allreduce_gemma_rms_norm(xo, xo, no, comm=tc))
    else:
        C.skip("error: tensor on another GPU", "one visible GPU")


def check_one_rank(C, device):
    if WORLD > 1:
        groups = [dist.new_group([r]) for r in range(WORLD)]  # collective: every rank makes all
        g = groups[RANK]
    else:
        g = None
    try:
        tc = ath.TorchCommunicator(group=g, device=device) if g is not None else ath.TorchCommunicator(device=device)
    except Exception as e:  # noqa: BLE001
        C.add("one rank: communicator of a group of one", False, "%s: %s" % (type(e).__name__, e))
        return
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        name = "one rank: norm only %s" % str(dtype)[6:]

        def one():
            H = 2304
            g_ = torch.Generator().manual_seed(77)
            x = torch.randn(5, H, generator=g_).to(dtype).to(device)
            r = torch.randn(5, H, generator=g_).to(dtype).to(device)
            n = GemmaRMSNorm(H, 1e-6, torch.float32, device)
            with torch.no_grad():
                n.weight.copy_(torch.randn(H, generator=g_) * 0.1)
            out, res = ath.fused_allreduce_gemma_rms_norm(x, r, n, comm=tc)
            ro, rr = n(x, r)
            cf = tc.can_fuse(x)
            C.add(name, torch.equal(res, rr) and
                  float((out.float() - ro.float()).abs().max()) <= 4 * eps_of(dtype) * 8
                  and cf.reason == arnorm.Reason.SingleRank, repr(cf))

        C.run(name, one)
    tc.destroy()


def check_from_nccl(C, device):
    if WORLD == 1:
        C.skip("communicator from an NCCL comm", "one rank")
        return
    try:
        handle = ath.nccl_comm_handle(None, device)
    except RuntimeError as e:
        C.skip("communicator from an NCCL comm", str(e))
        return
    name = "communicator from the group's NCCL comm (arnormCommInitFromNccl)"

    def one():
        tc = ath.TorchCommunicator.from_nccl(handle, device=device)
        H = 4096
        x, r, w, _ = make_inputs(16, H, torch.bfloat16, torch.bfloat16, 41, RANK, device)
        n = GemmaRMSNorm(H, 1e-6, torch.bfloat16, device)
        with torch.no_grad():
            n.weight.copy_(w)
        out, res = ath.fused_allreduce_gemma_rms_norm(x, r, n, comm=tc)
        out_d, res_d = ath.fused_allreduce_gemma_rms_norm(x, r, n)  # the cached default comm
        C.add(name, tc.world_size == WORLD and tc.rank == RANK and torch.equal(out, out_d)
              and torch.equal(res, res_d), repr(tc))
        tc.destroy()

    C.run(name, one)


def timing(C, device):
    if not TIMING:
        return
    H = 4096
    for T in (1, 32, 128, 512, 2048):
        dtype = torch.bfloat16
        x, r, w, _ = make_inputs(T, H, dtype, dtype, 50, RANK, device)
        n = GemmaRMSNorm(H, 1e-6, dtype, device)
        with torch.no_grad():
            n.weight.copy_(w)
        res = {}
        for label, fn in (("arnorm", lambda: ath.fused_allreduce_gemma_rms_norm(x, r, n)),
                          ("nccl+torch norm", lambda: ref_path(x, r, n))):
            s = torch.cuda.Stream(device)
            s.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(s):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream(device).wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(20):
                    fn()
            for _ in range(3):
                g.replay()
            torch.cuda.synchronize(device)
            dist.barrier() if WORLD > 1 else None
            t0 = time.perf_counter()
            reps = 10
            for _ in range(reps):
                g.replay()
            torch.cuda.synchronize(device)
            res[label] = (time.perf_counter() - t0) / (reps * 20) * 1e6
        C.info("timing bf16 H=%d T=%d TP%d (graph replay)" % (H, T, WORLD),
               "arnorm %.1f us, nccl+torch norm %.1f us, speedup %.2fx; %r"
               % (res["arnorm"], res["nccl+torch norm"], res["nccl+torch norm"] / res["arnorm"],
                  ath.can_fuse(x)))


def main():
    global RANK, WORLD
    torch.set_grad_enabled(False)
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if torchrun:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            skip_all("LOCAL_RANK %d but %d GPUs" % (local, torch.cuda.device_count()))
        torch.cuda.set_device(local)
        try:  # device_id makes the NCCL communicator eagerly (torch >= 2.3)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        except TypeError:
            dist.init_process_group("nccl")
        RANK, WORLD = dist.get_rank(), dist.get_world_size()
    else:
        RANK, WORLD = 0, 1
        torch.cuda.set_device(0)
    device = torch.device("cuda", torch.cuda.current_device())

    def watchdog():
        print("FAIL rank %d: watchdog: not done after %d s (a hang?)" % (RANK, WATCHDOG_S), flush=True)
        print("0 passed, 1 failed, 0 skipped", flush=True)
        os._exit(2)

    # a thread, so that it fires even while the main thread waits inside C code
    dog = threading.Timer(WATCHDOG_S, watchdog)
    dog.daemon = True
    dog.start()

    C = Checks(RANK)
    if RANK == 0:
        print("# arnorm %s, torch %s, %d rank(s), %s, library %s" % (
            arnorm.__version__, torch.__version__, WORLD, torch.cuda.get_device_name(device),
            arnorm.library_path()), flush=True)
    if WORLD > 1:
        C.run("init communicator", lambda: C.add("init communicator", bool(ath.init_communicator(None, device)),
                                                  repr(ath.get_communicator(None, device))))
        C.run("max_token_num", lambda: C.add(
            "max_token_num(%d, 4096, bf16) > 0" % WORLD, ath.max_token_num(WORLD, 4096, torch.bfloat16) > 0,
            str(ath.max_token_num(WORLD, 4096, torch.bfloat16))))
        C.run("can_fuse", lambda: C.info("can_fuse T=1 H=4096 bf16", repr(
            ath.can_fuse(torch.empty(1, 4096, dtype=torch.bfloat16, device=device)))))
        for fn in (check_numerics, check_bitwise_spec, check_graphs, check_fallbacks, check_errors,
                   check_from_nccl):
            C.run(fn.__name__, lambda: fn(C, device))
    C.run("check_one_rank", lambda: check_one_rank(C, device))
    if WORLD > 1:
        C.run("timing", lambda: timing(C, device))
    torch.cuda.synchronize(device)

    # gather every rank's results on rank 0
    if WORLD > 1:
        allres = [None] * WORLD
        dist.all_gather_object(allres, C.items)
    else:
        allres = [C.items]
    failed = 0
    if RANK == 0:
        passed = skipped = 0
        names = []
        by = {}
        for r, items in enumerate(allres):
            for name, st, detail in items:
                if name not in by:
                    by[name] = []
                    names.append(name)
                by[name].append((r, st, detail))
        for name in names:
            ent = by[name]
            sts = {st for _, st, _ in ent}
            if "FAIL" in sts:
                failed += 1
                bad = [(r, d) for r, st, d in ent if st == "FAIL"]
                print("FAIL %s: ranks %s: %s" % (name, [r for r, _ in bad], bad[0][1]), flush=True)
            elif sts == {"INFO"}:
                print("INFO %s: %s" % (name, ent[0][2]), flush=True)
            elif "PASS" in sts:
                passed += 1
                print("PASS %s%s" % (name, (": " + ent[0][2]) if ent[0][2] and len(ent[0][2]) < 400 else ""),
                      flush=True)
            else:
                skipped += 1
                print("SKIP %s: %s" % (name, ent[0][2]), flush=True)
        print("%d passed, %d failed, %d skipped" % (passed, failed, skipped), flush=True)
    if WORLD > 1:
        flag = torch.tensor([failed], device=device)
        dist.broadcast(flag, 0)
        failed = int(flag.item())
        ath.destroy_communicators()
        dist.destroy_process_group()
    else:
        ath.destroy_communicators()
    dog.cancel()
    return 1 if failed else 0


RANK, WORLD = 0, 1

if __name__ == "__main__":
    sys.exit(main())
