"""Position-wise feed-forward networks (section 3.3), plain and gated.

FeedForward: down(act(up(x))), the paper's FFN(x) = max(0, xW1 + b1)W2 + b2 with ReLU, or GELU
as in GPT/BERT. GatedFeedForward: down(act(gate(x)) * up(x)), the GLU variants of Shazeer 2020
(SwiGLU with SiLU, GEGLU with GELU), used by Llama-style models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.kernels import cpu as cpu_kernels
from attnlab.layers.contracts import writes_residual
from attnlab.layers.dropout import dropout


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, x Φ(x); in training on a CPU through attnlab's kernel (see cpu_kernels)."""
    return cpu_kernels.gelu(x) if cpu_kernels.training_on_cpu(x) else F.gelu(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU (a function, not a lambda: a model pickles)."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "relu": F.relu,
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
    "silu": F.silu,
}
GATED = {"swiglu": "silu", "geglu": "gelu"}
FEEDFORWARDS = (*ACTIVATIONS, *GATED)


class FeedForward(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "gelu",
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        self.up_projection = nn.Linear(d_model, d_ff, bias=bias)
        self.down_projection = nn.Linear(d_ff, d_model, bias=bias)
        writes_residual(self.down_projection.weight)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.up_projection(x))
        return self.down_projection(dropout(hidden, self.dropout, self.training))


class GatedFeedForward(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "silu",
        bias: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        self.gate_projection = nn.Linear(d_model, d_ff, bias=bias)
        self.up_projection = nn.Linear(d_model, d_ff, bias=bias)
        self.down_projection = nn.Linear(d_ff, d_model, bias=bias)
        writes_residual(self.down_projection.weight)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.gate_projection(x)) * self.up_projection(x)
        return self.down_projection(dropout(hidden, self.dropout, self.training))


def make_feedforward(
    kind: str, d_model: int, d_ff: int, *, bias: bool = True, dropout: float = 0.0
) -> nn.Module:
    """A feed-forward network by activation name: relu, gelu, gelu_tanh, silu, swiglu, geglu."""
    if kind in GATED:
        return GatedFeedForward(d_model, d_ff, GATED[kind], bias=bias, dropout=dropout)
    if kind in ACTIVATIONS:
        return FeedForward(d_model, d_ff, kind, bias=bias, dropout=dropout)
    raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(FEEDFORWARDS)}")
