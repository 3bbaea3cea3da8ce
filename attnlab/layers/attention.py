"""Attention: the one entry point, masks, and multi-head attention (the "attention" mixer).

Dimensions: B batch, Tq query positions, Tk key positions, D model width, H query heads,
Hkv key/value heads (Hkv divides H: Hkv == H is multi-head, 1 < Hkv < H grouped-query,
Hkv == 1 multi-query attention), Dh head width.

Boolean masks follow torch's convention everywhere in attnlab: True means "may attend".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.config import check_choice, check_divides, check_types
from attnlab.kernels import cpu as cpu_kernels
from attnlab.layers.caches import KVCache, StaticKVCache
from attnlab.layers.contracts import writes_residual
from attnlab.layers.dropout import dropout
from attnlab.layers.hooks import HookPoint
from attnlab.layers.mixers import MixerContext, register_mixer
from attnlab.layers.positional import RelativePosition

BACKENDS = ("fused", "eager")  # torch's kernels where nothing needs the weights | the equation


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    return_weights: bool = False,
    dropout_p: float = 0.0,
    edit_weights: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q Kᵀ / √d_k + M) V  ("Attention Is All You Need", section 3.2.1).

    q: (B, H, Tq, Dh); k, v: (B, Hkv, Tk, Dh) with Hkv dividing H.
    mask: boolean (True = may attend) or additive float, broadcastable to (B, H, Tq, Tk).
    causal: query i may see key j only when j <= i + (Tk - Tq); the queries are the *last* Tq
        positions, which is what incremental decoding with a KV cache needs.
    return_weights: take the eager path, which is the equation written out, and also return
        the attention weights (B, H, Tq, Tk). Otherwise torch's fused kernel computes the same
        function (flash / memory-efficient attention where available), except in a compiled
        one-query step on a CPU, where the compiler fuses the equation faster.
    edit_weights: with return_weights, what the weights go through before dropout and the
        product with V (hooks: ablation, patching), returning others or changing them in place
        (in place only under torch.no_grad: softmax's backward reads them; capture's patches
        get a copy).
    Returns the output (B, H, Tq, Dh), and the weights when asked (as edit_weights left them).
    """
    k, v = expand_heads(k, q.size(1)), expand_heads(v, q.size(1))  # (B, H, Tk, Dh)
    q_len, k_len = q.size(-2), k.size(-2)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    if not return_weights and not _equation_is_faster(q, dropout_p):
        if causal and q_len > 1 and (mask is not None or q_len != k_len):
            mask, causal = merge_masks(mask, causal_mask(q_len, k_len, q.device)), False
        return _fused(q, k, v, mask, causal and q_len > 1, dropout_p)

    # A query may see no key where a mask was given, or where queries outnumber keys: such a
    # row's scores are all the lowest finite number (not -inf: softmax would give NaN, in the
    # gradients too), and its weights and output 0, as torch's fused kernel gives.
    blind = mask is not None or (causal and q_len > k_len)
    if causal:
        mask = merge_masks(mask, causal_mask(q_len, k_len, q.device))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, Tq, Tk)
    low = torch.finfo(scores.dtype).min
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, low)
        else:  # clamped after the sum: in fp16 a score below -16 plus `low` overflows to -inf
            scores = (scores + mask).clamp_min_(low)
    weights = torch.softmax(scores, dim=-1)
    sees = None  # (..., Tq, 1): whether the query may see any key
    if blind:
        sees = (mask if mask.dtype == torch.bool else mask > low).any(-1, keepdim=True)
    if sees is not None and return_weights:
        weights = weights * sees
    if edit_weights is not None:
        weights = edit_weights(weights)
    out = dropout(weights, dropout_p) @ v  # (B, H, Tq, Dh)
    if sees is not None:
        out = out * sees
    return (out, weights) if return_weights else out


def expand_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Keys or values (B, Hkv, Tk, Dh) for H query heads: in grouped-query attention each
    key/value head serves H / Hkv query heads."""
    if n_heads % x.size(1):  # else H // Hkv heads of each, too few (none, for Hkv > H)
        raise ValueError(f"{x.size(1)} key/value heads must divide the {n_heads} query heads")
    groups = n_heads // x.size(1)
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)  # (B, H, Tk, Dh)


def _equation_is_faster(q: torch.Tensor, dropout_p: float) -> bool:
    """Where the written-out equation beats torch's fused kernel:
    - in training on a CPU with dropout on the weights: torch's CPU flash kernel takes none, so
      torch computes the same equation, masks drawn by its slow generator included, while here
      the mask is attnlab's kernel (see layers/dropout.py);
    - one query per row on a CPU under torch.compile (a compiled decoding step): Inductor fuses
      the equation into its own loops, while torch's CPU flash kernel is an opaque call with
      fixed set-up costs. The baby GPT's compiled one-token step took 0.43-0.46 ms this way
      against 0.61-0.63 ms through the kernel (2 Zen 3 cores)."""
    if dropout_p and cpu_kernels.dropout_applies(q, dropout_p):
        return True
    return q.size(-2) == 1 and q.device.type == "cpu" and torch.compiler.is_compiling()


def _fused(q, k, v, mask, is_causal: bool, dropout_p: float) -> torch.Tensor:
    if cpu_kernels.attention_applies(q, k, mask, dropout_p):  # training on a CPU
        return cpu_kernels.attention(q, k, v, is_causal)
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        # torch's CPU flash-attention kernel is slow in bf16: measured on a Zen 4 core, its
        # backward took 4.5x the fp32 time for a 4-layer, T=64 model. Attention is a small part
        # of the FLOPs at these lengths, so it runs in fp32 while the projections stay in bf16.
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.float()
        with torch.autocast("cpu", enabled=False):
            return _fused(q.float(), k.float(), v.float(), mask, is_causal, dropout_p).to(q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
    )


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> torch.Tensor:
    """(Tq, Tk) boolean mask, True on and below the diagonal aligned to the last key."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, 1, 1, T) boolean mask that lets every query attend to the non-pad keys of `tokens`."""
    return (tokens != pad_id)[:, None, None, :]


def merge_masks(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Combine two masks (either may be None, boolean or additive) into one."""
    if a is None or b is None:
        return b if a is None else a
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    dtype = a.dtype if a.dtype != torch.bool else b.dtype  # the additive one's: bf16 stays bf16
    return _additive(a, dtype) + _additive(b, dtype)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype != torch.bool:
        return mask
    zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return zeros.masked_fill(~mask, float("-inf"))


class MultiHeadAttention(nn.Module):
    """Multi-head attention (section 3.2.2) for self, causal and cross attention.

    One (H + 2·Hkv)·Dh-wide input projection holds the query, key and value weights. Self
    attention applies all of it to x; cross attention applies the query rows to x and the
    key/value rows to the context (the encoder output), as torch.nn.MultiheadAttention does.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        causal: bool = False,
        cross: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
        relative_position: RelativePosition | None = None,
        backend: str = "fused",
    ):
        """backend: "fused" (torch's kernels where nothing needs the weights) or "eager" (the
        equation written out, always)."""
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if min(d_model, n_heads, n_kv_heads) < 1 or d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"bad heads: d_model={d_model}, n_heads={n_heads}, n_kv_heads={n_kv_heads}"
            )
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if causal and cross:
            raise ValueError("cross attention is never causal")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.causal, self.cross, self.dropout = causal, cross, dropout
        self.qkv_projection = nn.Linear(
            d_model, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=bias
        )
        self.output_projection = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        writes_residual(self.output_projection.weight)
        self.relative_position = relative_position
        self.attention_weights = HookPoint()
        # each head's output before the output projection mixes them: its share of the layer's
        # output is that projection's columns of the head (direct logit attribution reads it)
        self.head_outputs = HookPoint()
        self.backend = backend

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x: (B, Tq, D); context: (B, Tk, D) for cross attention; mask as in the entry point.

        With a cache, x holds only the new positions; keys and values of earlier ones come from
        the cache (for cross attention, the context is projected once and then reused).
        """
        batch, q_len, _ = x.shape
        q_width = self.n_heads * self.head_dim
        if self.cross:
            q = F.linear(
                x, self.qkv_projection.weight[:q_width], _rows(self.qkv_projection.bias, 0, q_width)
            )
            if cache is not None and cache.length:
                k, v = cache.cached()
            else:
                kv = F.linear(
                    context,
                    self.qkv_projection.weight[q_width:],
                    _rows(self.qkv_projection.bias, q_width, None),
                )
                k, v = self._split_heads(kv, 2 * self.n_kv_heads).chunk(
                    2, dim=1
                )  # (B, Hkv, Tk, Dh)
                if cache is not None:
                    k, v = cache.append(k, v)
            q = self._split_heads(q, self.n_heads)  # (B, H, Tq, Dh)
        else:
            qkv = self._split_heads(self.qkv_projection(x), self.n_heads + 2 * self.n_kv_heads)
            # Heads are [queries | keys | values]; slicing is cheaper than Tensor.split when
            # decoding one token, where per-call overhead is most of the cost.
            n_qk = self.n_heads + self.n_kv_heads
            qk, v = qkv[:, :n_qk], qkv[:, n_qk:]
            if self.relative_position is not None:  # queries and keys rotate in one call
                qk = self.relative_position.rotate(qk, 0 if cache is None else cache.position)
            q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]
            if cache is not None:
                k, v = cache.append(k, v)  # (B, Hkv, S, Dh), S = positions held
                mask = merge_masks(mask, cache.key_mask(q_len))
        if self.relative_position is not None:
            distance = None if cache is None else cache.key_distance(q_len)
            mask = merge_masks(mask, self.relative_position.bias(q_len, k.size(2), distance))
        out = self.head_outputs.tap(self._attend(q, k, v, mask))  # (B, H, Tq, Dh)
        out = out.transpose(1, 2).reshape(batch, q_len, q_width)  # (B, Tq, H·Dh)
        return self.output_projection(out)

    def _attend(self, q, k, v, mask):
        dropout = self.dropout if self.training else 0.0
        if self.backend == "eager" or self.attention_weights.active:
            out, _ = scaled_dot_product_attention(  # the weights through the hooks, then used
                q, k, v, mask, self.causal, True, dropout, self.attention_weights.tap
            )
            return out
        return scaled_dot_product_attention(q, k, v, mask, self.causal, dropout_p=dropout)

    def mixing_flops_per_token(self, length: int) -> int:
        """Training FLOPs per token beyond the projections: Q·Kᵀ and weights·V over `length`
        keys, 2 · 2·T·H·Dh forward, twice that backward (PaLM, appendix B)."""
        return 12 * length * self.n_heads * self.head_dim

    def _split_heads(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, n_heads, self.head_dim).transpose(1, 2)  # (B, heads, T, Dh)

    def new_cache(
        self, max_length: int = 0, sliding: bool = False, static: bool = False
    ) -> KVCache | StaticKVCache:
        """A growing cache, or for self attention with sliding=True one holding the last
        max_length positions (see KVCache); static=True: a StaticKVCache of max_length slots,
        for compiled decoding."""
        if self.cross:
            return KVCache()
        if static:
            return StaticKVCache(max_length, self.qkv_projection.weight.device)
        return KVCache(max_length, sliding)


def _rows(bias: torch.Tensor | None, start: int, stop: int | None) -> torch.Tensor | None:
    return None if bias is None else bias[start:stop]


# ------------------------------------------------------------------- the "attention" mixer


@dataclass(frozen=True)
class AttentionOptions:
    backend: str = "fused"  # fused (torch's kernels) | eager (the equation written out)

    def __post_init__(self):
        check_types(self)
        check_choice("AttentionOptions", "backend", self.backend, BACKENDS)


def build_attention(options: AttentionOptions, context: MixerContext) -> MultiHeadAttention:
    return MultiHeadAttention(
        context.d_model,
        context.n_heads,
        context.n_kv_heads,
        causal=context.causal,
        bias=context.bias,
        dropout=context.dropout,
        relative_position=context.relative_position,
        backend=options.backend,
    )


def check_heads(config) -> None:
    """Heads that divide the width, and key/value heads that divide the heads."""
    name = type(config).__name__
    check_divides(name, "n_heads", config.n_heads, "d_model", config.d_model)
    if config.n_kv_heads is not None:
        check_divides(name, "n_kv_heads", config.n_kv_heads, "n_heads", config.n_heads)


register_mixer(
    "attention",
    AttentionOptions,
    build_attention,
    relative_positions=True,
    check=check_heads,
    reads=("n_heads", "n_kv_heads"),
)
