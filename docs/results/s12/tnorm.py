# torch.compile'd GemmaRMSNorm + residual (the same function as torch_baseline.py), T x HIDDEN bf16,
# for ncu and for reading inductor's kernel (TORCH_LOGS=output_code).
import os, torch
T = int(os.environ.get("T", "8192")); H = int(os.environ.get("HIDDEN", "4096"))
EPS = 1e-6
def gemma_norm(x, residual, w):
    orig = x.dtype
    x = x.float() + residual.float()
    residual = x.to(orig)
    var = x.pow(2).mean(dim=-1, keepdim=True)
    x = x * torch.rsqrt(var + EPS)
    x = x * (1.0 + w.float())
    return x.to(orig), residual
f = torch.compile(gemma_norm, dynamic=False)
x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
r = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
w = torch.randn(H, device="cuda", dtype=torch.bfloat16)
for _ in range(12): f(x, r, w)
torch.cuda.synchronize()
print("done", T, H)
