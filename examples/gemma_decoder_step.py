#!/usr/bin/env python3
"""A Gemma-style decoder step, tensor-parallel, with arnorm's fused all-reduce + norm.

    torchrun --nproc-per-node=4 examples/gemma_decoder_step.py
    torchrun --nproc-per-node=2 examples/gemma_decoder_step.py --tokens 1,32,512 --layers 4
    torchrun --nproc-per-node=2 examples/gemma_decoder_step.py --device cpu   # CPU backend, gloo

Each layer is the residual-fused layout of vLLM/SGLang:

    hidden, residual = input_layernorm(hidden, residual)      # all-reduce of the previous
    hidden = self_attn(hidden)                                 #   down_proj fused in here
    hidden, residual = post_attention_layernorm(hidden, residual)
    hidden = mlp(hidden)

q/k/v and gate/up are column-parallel (heads and intermediate split over ranks), o_proj and
down_proj row-parallel: each rank holds a *partial* sum, and every norm above is preceded
by an all-reduce. The unfused layer does

    hidden = all_reduce(hidden); hidden, residual = norm(hidden, residual)

and the arnorm layer replaces those two lines with one call:

    hidden, residual = fused_allreduce_gemma_rms_norm(hidden, residual, norm)

The script checks the split model against the same model unsplit (full weights, one
device, computed on every rank) and prints the time per layer with and without arnorm
(CUDA-graph replay on GPUs, --eager for stream launches).
"""

import argparse
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from arnorm import torch_helper as ath  # noqa: E402


class GemmaRMSNorm(torch.nn.Module):
    """Gemma's RMSNorm (scale 1 + w), with the fused residual add of vLLM/SGLang."""

    def __init__(self, hidden, eps=1e-6, device=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(hidden, dtype=torch.float32, device=device))
        self.variance_epsilon = eps

    def forward(self, x, residual=None):
        if residual is not None:
            x = x + residual
            residual = x
        orig = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (xf * (1.0 + self.weight.float())).to(orig), residual


class Layer(torch.nn.Module):
    """One Gemma decoder layer holding shard `rank` of `world` (world=1: unsplit)."""

    def __init__(self, full, rank, world, args, device, dtype):
        super().__init__()
        nh, nkv, hd = args.heads // world, args.kv_heads // world, args.head_dim
        inter = args.intermediate // world
        self.nh, self.nkv, self.hd = nh, nkv, hd

        def shard_rows(w, n):  # column-parallel: split the output features
            return w.view(world, n, -1)[rank].contiguous().to(device, dtype)

        def shard_cols(w, n):  # row-parallel: split the input features
            return w.view(w.shape[0], world, n)[:, rank].contiguous().to(device, dtype)

        self.wq = shard_rows(full["wq"], nh * hd)
        self.wk = shard_rows(full["wk"], nkv * hd)
        self.wv = shard_rows(full["wv"], nkv * hd)
        self.wo = shard_cols(full["wo"], nh * hd)
        self.wg = shard_rows(full["wg"], inter)
        self.wu = shard_rows(full["wu"], inter)
        self.wd = shard_cols(full["wd"], inter)
        self.input_layernorm = GemmaRMSNorm(args.hidden, device=device)
        self.post_attention_layernorm = GemmaRMSNorm(args.hidden, device=device)
        with torch.no_grad():
            self.input_layernorm.weight.copy_(full["n1"])
            self.post_attention_layernorm.weight.copy_(full["n2"])

    def attn(self, x):
        T = x.shape[0]
        q = (x @ self.wq.t()).view(T, self.nh, self.hd).transpose(0, 1)
        k = (x @ self.wk.t()).view(T, self.nkv, self.hd).transpose(0, 1)
        v = (x @ self.wv.t()).view(T, self.nkv, self.hd).transpose(0, 1)
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, 0)
        v = v.repeat_interleave(rep, 0)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return o.transpose(0, 1).reshape(T, self.nh * self.hd) @ self.wo.t()  # partial sum

    def mlp(self, x):
        return (F.gelu(x @ self.wg.t(), approximate="tanh") * (x @ self.wu.t())) @ self.wd.t()  # partial


def make_full_weights(args, n_layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, hd = args.hidden, args.head_dim

    def w(o, i):
        return torch.randn(o, i, generator=g) / math.sqrt(i)

    layers = []
    for _ in range(n_layers):
        layers.append(dict(
            wq=w(args.heads * hd, H), wk=w(args.kv_heads * hd, H), wv=w(args.kv_heads * hd, H),
            wo=w(H, args.heads * hd), wg=w(args.intermediate, H), wu=w(args.intermediate, H),
            wd=w(H, args.intermediate), n1=torch.randn(H, generator=g) * 0.1,
            n2=torch.randn(H, generator=g) * 0.1))
    final = torch.randn(H, generator=g) * 0.1
    return layers, final


class Model(torch.nn.Module):
    def __init__(self, full, final, rank, world, args, device, dtype, mode, comm=None):
        super().__init__()
        self.layers = torch.nn.ModuleList(Layer(f, rank, world, args, device, dtype) for f in full)
        self.norm = GemmaRMSNorm(args.hidden, device=device)
        with torch.no_grad():
            self.norm.weight.copy_(final)
        self.world, self.mode, self.comm = world, mode, comm

    def allreduce_norm(self, partial, residual, norm):
        if self.mode == "arnorm":
            return ath.fused_allreduce_gemma_rms_norm(partial, residual, norm, comm=self.comm)
        if self.world > 1:  # the two lines arnorm replaces
            dist.all_reduce(partial)
        return norm(partial, residual)

    def forward(self, emb):
        hidden, residual = self.layers[0].input_layernorm(emb)[0], emb
        for i, layer in enumerate(self.layers):
            if i > 0:
                hidden, residual = self.allreduce_norm(hidden, residual, layer.input_layernorm)
            hidden = layer.attn(hidden)
            hidden, residual = self.allreduce_norm(hidden, residual, layer.post_attention_layernorm)
            hidden = layer.mlp(hidden)
        hidden, _ = self.allreduce_norm(hidden, residual, self.norm)
        return hidden


def time_per_layer(model, emb, n_layers, iters, use_graph, device):
    """Seconds per layer of model(emb)."""
    cuda = device.type == "cuda"
    if cuda and use_graph:
        s = torch.cuda.Stream(device)
        s.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(s):
            for _ in range(3):
                model(emb)
        torch.cuda.current_stream(device).wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            model(emb)
        run = g.replay
    else:
        def run():
            model(emb)
    for _ in range(3):
        run()
    if cuda:
        torch.cuda.synchronize(device)
    if dist.is_initialized():
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        run()
    if cuda:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / iters / n_layers


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=2304)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=9216)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", default="1,32,256")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--eager", action="store_true", help="time stream launches, not graph replay")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    use_cuda = args.device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        print("SKIP gemma_decoder_step: no CUDA device (try --device cpu)")
        return 0
    if "RANK" in os.environ:
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    for name in ("heads", "kv_heads", "intermediate"):
        if getattr(args, name) % world:
            raise SystemExit("--%s must be divisible by the world size %d" % (name.replace("_", "-"), world))

    # every rank builds the same full weights; the communicator is made before any graph
    full, final = make_full_weights(args, args.layers)
    comm = ath.init_communicator(None, device) if use_cuda else ath.TorchCommunicator(device=device)
    split_ref = Model(full, final, rank, world, args, device, dtype, "torch")
    split_arn = Model(full, final, rank, world, args, device, dtype, "arnorm", comm)
    unsplit = Model(full, final, 0, 1, args, device, dtype, "torch")

    if rank == 0:
        print("# Gemma-style decoder, hidden %d, %d/%d heads x %d, intermediate %d, %d layers, %s, "
              "TP%d on %s" % (args.hidden, args.heads, args.kv_heads, args.head_dim, args.intermediate,
                              args.layers, args.dtype, world,
                              torch.cuda.get_device_name(device) if use_cuda else "CPU"))
        print("%6s  %-28s %-28s %10s %10s %8s  %s" % ("tokens", "max|arnorm-unsplit|/max|.|",
                                                      "max|torchTP-unsplit|/max|.|", "us/layer",
                                                      "us/layer", "speedup", "arnorm path"))
        print("%6s  %-28s %-28s %10s %10s" % ("", "", "", "torch TP", "arnorm"))
    worst = 0.0
    with torch.no_grad():
        for T in [int(t) for t in args.tokens.split(",")]:
            emb = torch.randn(T, args.hidden, generator=torch.Generator().manual_seed(T)).to(device, dtype)
            ref = unsplit(emb).float()
            out_arn = split_arn(emb).float()
            out_tp = split_ref(emb).float()
            scale = float(ref.abs().max())
            e_arn = float((out_arn - ref).abs().max()) / scale
            e_tp = float((out_tp - ref).abs().max()) / scale
            worst = max(worst, e_arn)
            t_tp = time_per_layer(split_ref, emb, args.layers, args.iters, not args.eager, device)
            t_arn = time_per_layer(split_arn, emb, args.layers, args.iters, not args.eager, device)
            cf = ath.can_fuse(torch.empty(T, args.hidden, dtype=dtype, device=device), comm=comm)
            path = ("fused, %s" % cf.algo.name) if cf.ok else ("not fused: %s" % cf.reason_text)
            if rank == 0:
                print("%6d  %-28.3g %-28.3g %10.1f %10.1f %7.2fx  %s"
                      % (T, e_arn, e_tp, t_tp * 1e6, t_arn * 1e6, t_tp / t_arn, path), flush=True)
    tol = {torch.bfloat16: 0.1, torch.float16: 0.02, torch.float32: 1e-3}[dtype]
    ok = worst <= tol
    if rank == 0:
        print("%s: split model with arnorm vs unsplit, worst relative error %.3g (tolerance %.3g)"
              % ("PASS" if ok else "FAIL", worst, tol))
    ath.destroy_communicators()
    if use_cuda is False:
        comm.destroy()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
