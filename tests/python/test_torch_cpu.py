#!/usr/bin/env python3
"""The torch helper on CPU tensors: gloo process group, arnorm's CPU backend, no GPU.

Run:  python3 tests/python/test_torch_cpu.py [--world 2]

Prints SKIP and exits 0 without torch. Checks fused_allreduce_gemma_rms_norm with a CPU
TorchCommunicator (bitwise against the documented numerics, close to all_reduce +
a PyTorch GemmaRMSNorm), the routing to the torch fallback (no communicator, float64,
non-contiguous), can_fuse, max_token_num and the errors for impossible calls.
"""

import os
import socket
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, HERE)

try:
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as tmp
    from torch_ref import GemmaRMSNorm
except ImportError:
    torch = None


def worker(rank, world, port, q):
    res = []

    def put(name, ok, detail=""):
        res.append((name, bool(ok), str(detail)))

    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        body(rank, world, put)
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        put("rank %d crashed" % rank, False, traceback.format_exc())
    q.put((rank, res))


def body(rank, world, put):
    torch.set_grad_enabled(False)
    import arnorm
    import arnorm_ref as ref
    from arnorm import torch_helper as ath

    tc = ath.TorchCommunicator(device="cpu", timeout_ms=60000)
    put("TorchCommunicator on the CPU backend", tc.world_size == world and tc.rank == rank
        and tc.backend == arnorm.Backend.Cpu, repr(tc))
    codes = {torch.bfloat16: ref.BF16, torch.float16: ref.FP16, torch.float32: ref.FP32}

    def inputs(T, H, dtype, wdtype, seed):
        g = torch.Generator().manual_seed(seed)
        parts = [torch.randn(T, H, generator=g).to(dtype) for _ in range(world)]
        r = (torch.randn(T, H, generator=g) * 2).to(dtype)
        w = (torch.randn(H, generator=g) * 0.1).to(wdtype)
        return parts, r, w

    seed = 0
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for (T, H, wdtype, wb) in ((3, 1000, torch.float32, 1.0), (5, 256, dtype, 0.0)):
            seed += 1
            name = "comm=cpu %s T=%d H=%d w=%s wb=%g" % (str(dtype)[6:], T, H, str(wdtype)[6:], wb)
            parts, r, w = inputs(T, H, dtype, wdtype, seed)
            x = parts[rank].clone()
            norm = GemmaRMSNorm(H, 1e-6, wdtype, weight_bias=wb)
            with torch.no_grad():
                norm.weight.copy_(w)
            out, res = ath.fused_allreduce_gemma_rms_norm(x, r, norm, weight_bias=wb, comm=tc)
            h, o = ref.fused([p.float().flatten().tolist() for p in parts], r.float().flatten().tolist(),
                             w.float().tolist(), 1e-6, wb, T, H, codes[dtype])
            want_h = torch.tensor(h).to(dtype).view(T, H)
            want_o = torch.tensor(o).to(dtype).view(T, H)
            put(name + " bitwise", torch.equal(res, want_h) and torch.equal(out, want_o))
            put(name + " input untouched", torch.equal(x, parts[rank]))
            y = x.clone()
            dist.all_reduce(y)
            ro, rr = norm(y, r)
            put(name + " close to all_reduce + GemmaRMSNorm",
                float((ro.float() - out.float()).abs().max()) < 0.1 and
                float((rr.float() - res.float()).abs().max()) < 0.1)
            # no communicator: CPU tensors take the torch fallback
            fo, fr = ath.fused_allreduce_gemma_rms_norm(x, r, norm, weight_bias=wb)
            put(name + " fallback (no comm) == all_reduce + norm", torch.equal(fo, ro) and torch.equal(fr, rr))

    # 3-D input, fused through the CPU comm
    parts, r, w = inputs(6, 64, torch.bfloat16, torch.float32, 99)
    norm = GemmaRMSNorm(64)
    with torch.no_grad():
        norm.weight.copy_(w)
    out3, res3 = ath.fused_allreduce_gemma_rms_norm(parts[rank].view(2, 3, 64), r.view(2, 3, 64), norm, comm=tc)
    out2, res2 = ath.fused_allreduce_gemma_rms_norm(parts[rank], r, norm, comm=tc)
    put("3-D input == 2-D", out3.shape == (2, 3, 64) and torch.equal(out3.view(6, 64), out2)
        and torch.equal(res3.view(6, 64), res2))
    # residual None: the new residual is the reduced input
    o, h = ath.fused_allreduce_gemma_rms_norm(parts[rank], None, norm, comm=tc)
    y = parts[rank].clone()
    dist.all_reduce(y)
    put("residual=None", torch.equal(h, sum(p.float() for p in parts).to(torch.bfloat16)) or
        float((h.float() - y.float()).abs().max()) < 0.05)

    # fallbacks with a comm: float64, non-contiguous
    x64 = torch.randn(4, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(5 + rank))
    r64 = torch.randn(4, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(50))
    n64 = GemmaRMSNorm(64, dtype=torch.float64)
    o, h = ath.fused_allreduce_gemma_rms_norm(x64, r64, n64, comm=tc)
    y = x64.clone()
    dist.all_reduce(y)
    ro, rr = n64(y, r64)
    cf = ath.can_fuse(x64, comm=tc)
    put("float64 -> torch fallback", torch.allclose(o, ro) and torch.allclose(h, rr) and
        cf.reason == arnorm.Reason.UnsupportedDtype, repr(cf))
    big = torch.randn(4, 128, generator=torch.Generator().manual_seed(6 + rank)).to(torch.bfloat16)
    xs = big[:, :64]
    o, h = ath.fused_allreduce_gemma_rms_norm(xs, r.new_zeros(4, 64), norm, comm=tc)
    y = xs.contiguous()
    dist.all_reduce(y)
    ro, rr = norm(y, r.new_zeros(4, 64))
    cf = ath.can_fuse(xs, comm=tc)
    put("non-contiguous -> torch fallback", torch.equal(o, ro) and cf.reason == arnorm.Reason.NotContiguous,
        repr(cf))

    # can_fuse / max_token_num
    cf = ath.can_fuse(parts[rank], comm=tc)
    put("can_fuse (ok, max_token_num) + reason", len(cf) == 2 and isinstance(cf[1], int) and
        (cf[0] == (cf.reason == arnorm.Reason.None_)), repr(cf))
    ok, mt = cf
    put("can_fuse without comm on CPU tensor -> NotDevicePointer",
        ath.can_fuse(parts[rank]).reason == arnorm.Reason.NotDevicePointer)
    m = ath.max_token_num(world, 4096, torch.bfloat16)
    put("max_token_num(%d, 4096, bf16)" % world, isinstance(m, int) and m >= 0, str(m))

    # impossible calls
    for nm, fn in (("residual shape mismatch", lambda: ath.fused_allreduce_gemma_rms_norm(parts[rank], r[:2], norm, comm=tc)),
                   ("weight size mismatch", lambda: ath.fused_allreduce_gemma_rms_norm(parts[rank], r, GemmaRMSNorm(63), comm=tc)),
                   ("residual dtype mismatch", lambda: ath.fused_allreduce_gemma_rms_norm(parts[rank], r.float(), norm, comm=tc))):
        try:
            fn()
            put("error: " + nm, False, "no exception")
        except ValueError as e:
            put("error: " + nm, True, str(e))
    tc.destroy()


def main():
    if torch is None:
        print("SKIP test_torch_cpu: torch not installed")
        print("0 passed, 0 failed, 1 skipped")
        return 77  # ctest: skipped
    import arnorm

    try:
        arnorm.load()
    except arnorm.ArnormLibraryNotFound as e:
        print("FAIL library loads: %s" % e)
        print("0 passed, 1 failed, 0 skipped")
        return 1
    world = 2
    if "--world" in sys.argv:
        world = int(sys.argv[sys.argv.index("--world") + 1])
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ctx = tmp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, world, port, q)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    for _ in range(world):
        try:
            rank, res = q.get(timeout=300)
            results[rank] = res
        except Exception:  # noqa: BLE001
            break
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.terminate()
    passed = failed = 0
    names = []
    by = {}
    for rank in sorted(results):
        for name, ok, d in results[rank]:
            if name not in by:
                by[name] = []
                names.append(name)
            by[name].append((rank, ok, d))
    if len(results) < world:
        failed += 1
        print("FAIL all ranks reported: got %s" % sorted(results))
    for name in names:
        bad = [(r, d) for r, ok, d in by[name] if not ok]
        if bad:
            failed += 1
            print("FAIL %s: rank %d: %s" % (name, bad[0][0], bad[0][1]))
        else:
            passed += 1
            print("PASS %s" % name)
    print("%d passed, %d failed, 0 skipped" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
