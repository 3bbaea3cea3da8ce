"""Mamba: a selective state-space token mixer (Gu & Dao 2023, "Mamba: Linear-Time Sequence
Modeling with Selective State Spaces").

Dimensions: B batch, T positions, D model width, E = expand·D inner width, N state size per
channel, R rank of the Δ projection.

    u, z  = split(W_in x)                               (B, T, E) each
    u     = silu(causal depthwise conv(u))              kernel 4
    Δ, B, C = softplus(W_Δ W_r u + b_Δ), W_B u, W_C u   input-dependent: the "selection"
    h_t   = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t          h_t: (B, E, N), A diagonal, negative
    y_t   = C_t · h_t + D ⊙ u_t
    out   = W_out (y ⊙ silu(z))

Training runs the recurrence as a parallel scan (selective_scan), or on a CPU through attnlab's
fused scan kernel (attnlab/kernels/scan.cpp); decoding runs one step per token on a fixed-size
state (the convolution's last inputs and h): O(1) per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.config import check_positive, check_types
from attnlab.errors import ConfigError
from attnlab.kernels import cpu as cpu_kernels
from attnlab.layers.caches import RecurrentState
from attnlab.layers.contracts import keep_init, no_weight_decay, writes_residual
from attnlab.layers.convolution import CausalConv1d
from attnlab.layers.mixers import MixerContext, register_mixer

# ------------------------------------------------------------------ the scan
CHUNK_ELEMENTS = 1 << 19  # states per chunk of the parallel scan: it stays in the CPU's cache


def scan_step(h, u, dt, A, B, C):
    """One position of the recurrence. h: (B, E, N); u, dt: (B, E); A: (E, N); B, C: (B, N).
    Returns the new h and y = C·h, (B, E)."""
    h = torch.exp(dt[..., None] * A) * h + (dt * u)[..., None] * B[:, None]
    return h, (h @ C[..., None])[..., 0]


def sequential_scan(u, dt, A, B, C, h=None):
    """The recurrence one position at a time (the reference the parallel scan must equal).
    u, dt: (B, T, E); B, C: (B, T, N); h: (B, E, N) or None (zeros) -> y (B, T, E), last h."""
    if h is None:
        h = u.new_zeros(u.size(0), u.size(2), A.size(1))
    ys = []
    for t in range(u.size(1)):
        h, y = scan_step(h, u[:, t], dt[:, t], A, B[:, t], C[:, t])
        ys.append(y)
    return torch.stack(ys, 1), h


def linear_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Every h_t of h_t = a_t ⊙ h_{t-1} + b_t, h_{-1} = 0, along dimension 1, in O(T) work and
    log2(T) rounds (the odd-even form of Blelloch's scan). Pairs of steps compose into one step
    of the same form, (a_r·a_l, a_r·b_l + b_r): solve the half-length recurrence of the pairs,
    whose states are the odd positions, then one step from each gives the even ones."""
    length = a.size(1)
    if length == 1:
        return b
    if length % 2:  # one identity step at the end: a = 1, b = 0
        a = torch.cat([a, torch.ones_like(a[:, :1])], 1)
        b = torch.cat([b, torch.zeros_like(b[:, :1])], 1)
    a_even, a_odd, b_even, b_odd = a[:, 0::2], a[:, 1::2], b[:, 0::2], b[:, 1::2]
    h_odd = linear_recurrence(a_odd * a_even, torch.addcmul(b_odd, a_odd, b_even))
    h_even = torch.cat(
        [b_even[:, :1], torch.addcmul(b_even[:, 1:], a_even[:, 1:], h_odd[:, :-1])], 1
    )
    return torch.stack([h_even, h_odd], 2).flatten(1, 2)[:, :length]  # interleaved again


def selective_scan(u, dt, A, B, C, h=None):
    """The recurrence of scan_step over whole sequences, in parallel: chunks of positions small
    enough that their states stay in cache, each solved by linear_recurrence from the state the
    chunk before left. Arguments and result as sequential_scan."""
    batch, length, inner = u.shape
    if h is None:
        h = u.new_zeros(batch, inner, A.size(1))
    chunk = max(16, CHUNK_ELEMENTS // (batch * inner * A.size(1)))
    ys = []
    for start in range(0, length, chunk):
        part = slice(start, start + chunk)
        step = dt[:, part, :, None]  # (B, c, E, 1)
        a = torch.exp(step * A)  # (B, c, E, N)
        b = (step * u[:, part, :, None]) * B[:, part, None, :]  # (B, c, E, N)
        b = torch.cat([torch.addcmul(b[:, :1], a[:, :1], h[:, None]), b[:, 1:]], 1)
        states = linear_recurrence(a, b)
        ys.append((states @ C[:, part, :, None])[..., 0])  # (B, c, E)
        h = states[:, -1]
    return torch.cat(ys, 1), h


# ------------------------------------------------------------------ the layer
@dataclass(frozen=True)
class MambaOptions:
    d_state: int = 16  # N: state size per channel
    d_conv: int = 4  # width of the causal depthwise convolution
    expand: int = 2  # inner width E = expand · d_model
    dt_rank: int | str = "auto"  # rank R of Δ's projection; "auto" = ceil(d_model / 16)
    dt_min: float = 1e-3  # Δ starts log-uniform in [dt_min, dt_max] (section 3.6)
    dt_max: float = 1e-1
    dt_floor: float = 1e-4  # smallest initial Δ
    bias: bool = False  # biases in the input and output projections (the paper has none)
    conv_bias: bool = True  # a bias in the convolution

    def __post_init__(self):
        check_types(self)
        name = "MambaOptions"
        check_positive(name, d_state=self.d_state, expand=self.expand, dt_min=self.dt_min)
        if self.d_conv < 2:
            raise ConfigError(f"{name}.d_conv must be >= 2, got {self.d_conv}")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ConfigError(
                f"{name}.dt_rank must be 'auto' or a positive int, got {self.dt_rank!r}"
            )
        if not self.dt_min <= self.dt_max:
            raise ConfigError(f"{name}.dt_min must be <= dt_max, got {self.dt_min} > {self.dt_max}")

    def rank(self, d_model: int) -> int:
        return math.ceil(d_model / 16) if self.dt_rank == "auto" else self.dt_rank


class Mamba(nn.Module):
    def __init__(self, options: MambaOptions, d_model: int):
        super().__init__()
        self.options = o = options
        inner, self.rank = o.expand * d_model, o.rank(d_model)
        self.input_projection = nn.Linear(d_model, 2 * inner, bias=o.bias)  # u and the gate z
        self.convolution = CausalConv1d(inner, o.d_conv, bias=o.conv_bias)
        self.ssm_projection = nn.Linear(inner, self.rank + 2 * o.d_state, bias=False)  # Δ, B, C
        self.dt_projection = nn.Linear(self.rank, inner)
        self.A_log = nn.Parameter(torch.empty(inner, o.d_state))
        self.D = nn.Parameter(torch.empty(inner))
        self.output_projection = nn.Linear(inner, d_model, bias=o.bias)
        writes_residual(self.output_projection.weight)
        dt_bias = self.dt_projection.bias
        # The dynamics: decaying them would pull A towards -1, D and Δ towards 0.
        no_weight_decay(self.A_log, self.D, dt_bias)
        keep_init(self.A_log, self.D, dt_bias, self.dt_projection.weight)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation (section 3.6 and its reference code): S4D-real
        A = -(1, 2, ..., N) in every channel, kept as log(-A) so A stays negative; D = 1;
        Δ's bias the inverse softplus of a log-uniform draw in [dt_min, dt_max], so Δ starts
        there; Δ's projection uniform in ±R^-0.5."""
        o = self.options
        with torch.no_grad():
            # in A_log's own dtype: a float64 model holds log(n) to float64's precision
            A = torch.arange(1, o.d_state + 1, dtype=self.A_log.dtype, device=self.A_log.device)
            self.A_log.copy_(torch.log(A).expand_as(self.A_log))
            self.D.fill_(1.0)
            nn.init.uniform_(self.dt_projection.weight, -(self.rank**-0.5), self.rank**-0.5)
            draw = torch.rand_like(self.dt_projection.bias)
            dt = torch.exp(draw * (math.log(o.dt_max) - math.log(o.dt_min)) + math.log(o.dt_min))
            dt = dt.clamp(min=o.dt_floor)
            self.dt_projection.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: RecurrentState | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D). mask is ignored: the scan is causal by itself. With a
        cache, x holds the positions after those it has seen (one, or any number)."""
        u, z = self.input_projection(x).chunk(2, dim=-1)  # (B, T, E) each
        u, conv_state = self.convolution(u, None if cache is None else cache.get("conv"))
        u = F.silu(u)
        n = self.options.d_state
        dt, B, C = self.ssm_projection(u).split([self.rank, n, n], dim=-1)
        dt = F.softplus(self.dt_projection(dt))  # (B, T, E)
        wide = torch.promote_types(x.dtype, torch.float32)  # at least float32; float64 stays
        with torch.autocast(x.device.type, enabled=False):  # the recurrence in fp32 (or fp64)
            u, dt, B, C = (t.to(wide) for t in (u, dt, B, C))
            A = -torch.exp(self.A_log.to(wide))  # (E, N)
            h = None if cache is None else cache.get("ssm")
            if x.size(1) == 1 and h is not None:  # decoding: one step
                h, y = scan_step(h, u[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
                y = y[:, None]  # (B, 1, E)
            elif cache is None and cpu_kernels.scan_applies(u, A):  # attnlab's fused scan
                y = cpu_kernels.selective_scan(u, dt, A, B, C)
            else:
                y, h = selective_scan(u, dt, A, B, C, h)
        if cache is not None:
            cache.set(conv=conv_state, ssm=h)
        y = (y + u * self.D).to(x.dtype) * F.silu(z)
        return self.output_projection(y)

    def new_cache(self, max_length: int = 0, **options) -> RecurrentState:
        """The convolution's last d_conv-1 inputs (B, d_conv-1, E) and the SSM state h
        (B, E, N): fixed sizes, whatever max_length and the options."""
        return RecurrentState()


def build_mamba(options: MambaOptions, context: MixerContext) -> Mamba:
    if not context.causal:
        raise ValueError("the 'mamba' mixer scans left to right: it is causal only")
    return Mamba(options, context.d_model)  # its biases are its options', not the model's


register_mixer("mamba", MambaOptions, build_mamba)
