"""Normalization layers: LayerNorm (Ba et al. 2016), optionally without bias, and RMSNorm
(Zhang & Sennrich 2019), which drops the mean-centring and the bias."""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("layernorm", "rmsnorm")


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight, computed in fp32 for stability."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)  # at least float32; float64 stays
        x32 = x.to(wide)
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(wide)).type_as(x)


def make_norm(kind: str, d_model: int, *, bias: bool = True, eps: float = 1e-5) -> nn.Module:
    """A normalization layer by name: "layernorm" or "rmsnorm"."""
    if kind == "layernorm":
        return nn.LayerNorm(d_model, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(d_model, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
