"""The PyTorch reference norm both torch tests compare arnorm against (SGLang/vLLM style
GemmaRMSNorm): x + residual in the model dtype, the norm in fp32, scale weight_bias + w
(1 + w for Gemma, w for Llama with weight_bias=0). Imports torch: import it only where
torch is present."""

import torch


class GemmaRMSNorm(torch.nn.Module):
    def __init__(self, hidden, eps=1e-6, dtype=torch.float32, device=None, weight_bias=1.0):
        super().__init__()
        self.weight = torch.nn.Parameter(
            torch.zeros(hidden, dtype=dtype or torch.float32, device=device))
        self.variance_epsilon = eps
        self.weight_bias = weight_bias

    def forward(self, x, residual=None):
        if residual is not None:
            x = x + residual
            residual = x
        orig = x.dtype
        xf = x.float()
        var = xf.pow(2).mean(dim=-1, keepdim=True)
        xf = xf * torch.rsqrt(var + self.variance_epsilon)
        xf = xf * (self.weight_bias + self.weight.float())
        return xf.to(orig), residual
