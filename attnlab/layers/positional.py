"""Positional information: absolute encodings added to the embeddings, and relative ones
applied inside attention.

Absolute (added to token embeddings, shape (T, D)): learned tables (GPT-2, BERT) and the
paper's fixed sinusoids. Relative (passed to MultiHeadAttention as ``relative_position``):
rotary embeddings (RoPE, Su et al. 2021), which rotate queries and keys, and ALiBi (Press et al.
2022), which adds a per-head linear distance penalty to the scores.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LearnedPositionalEmbedding(nn.Module):
    """A trained (max_length, D) table: row p is the embedding of position p."""

    def __init__(self, max_length: int, d_model: int):
        super().__init__()
        self.max_length = max_length
        self.weight = nn.Parameter(torch.zeros(max_length, d_model))

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        """Embeddings of positions offset..offset+length-1, (T, D)."""
        _check_length(offset + length, self.max_length)
        return self.weight[offset : offset + length]


class SinusoidalPositionalEncoding(nn.Module):
    """The fixed encodings of section 3.5:

    PE(pos, 2i)   = sin(pos / 10000^(2i / D))
    PE(pos, 2i+1) = cos(pos / 10000^(2i / D))
    """

    def __init__(self, max_length: int, d_model: int, base: float = 10000.0):
        super().__init__()
        self.max_length = max_length
        position = torch.arange(max_length, dtype=torch.float64)[:, None]  # (T, 1)
        inverse_frequency = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
        angles = position * inverse_frequency  # (T, D/2)
        table = torch.zeros(max_length, d_model, dtype=torch.float64)
        table[:, 0::2] = torch.sin(angles)
        table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
        self.register_buffer("table", table.float(), persistent=False)

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        _check_length(offset + length, self.max_length)
        return self.table[offset : offset + length]


def _check_length(length: int, max_length: int) -> None:
    if length > max_length:
        raise ValueError(f"sequence of {length} positions exceeds the context length {max_length}")


class RelativePosition(nn.Module):
    """What attention asks of a relative position scheme: rotate q and k, or bias the scores.

    The defaults do nothing, so a scheme overrides only the part it uses.
    """

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, offset: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: (B, H, T, Dh), k: (B, Hkv, T, Dh) at positions offset..offset+T-1."""
        return q, k

    def bias(self, q_len: int, k_len: int, offset: int) -> torch.Tensor | None:
        """An additive (H, Tq, Tk) score bias for queries at offset.. and keys at 0..Tk-1."""
        return None


class RotaryEmbedding(RelativePosition):
    """RoPE: rotate each pair of channels (i, i + Dh/2) by the angle pos·θ_i, θ_i = base^(-2i/Dh).

    Rotating q at position m and k at position n by their angles makes q·k depend on m - n only,
    so attention scores see relative positions while keys can still be cached after rotation.
    Channels are paired by halves (the GPT-NeoX / Llama layout).
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head width, got {head_dim}")
        inverse_frequency = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inverse_frequency", inverse_frequency, persistent=False)
        self._cos = self._sin = None

    def _tables(self, length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos is None or self._cos.size(0) < length or self._cos.device != like.device:
            positions = torch.arange(max(length, 256), device=like.device, dtype=torch.float32)
            angles = torch.outer(positions, self.inverse_frequency.to(like.device))  # (T, Dh/2)
            angles = torch.cat([angles, angles], dim=-1)  # (T, Dh)
            self._cos, self._sin = angles.cos(), angles.sin()
        return self._cos[:length], self._sin[:length]

    def rotate(self, q, k, offset):
        length = offset + q.size(2)
        cos, sin = self._tables(length, q)
        cos, sin = cos[offset:length].to(q.dtype), sin[offset:length].to(q.dtype)  # (T, Dh)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class ALiBi(RelativePosition):
    """Attention with linear biases: head h adds -m_h·|i - j| to the score of query i, key j.

    The slopes m_h form the geometric sequence 2^(-8/H), 2^(-16/H), ... (section 3 of the paper);
    when H is not a power of two, take the slopes of the nearest lower power of two and fill in
    with every other slope of the next one, as the paper's reference does.
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def bias(self, q_len, k_len, offset):
        query_positions = torch.arange(offset, offset + q_len, device=self.slopes.device)
        key_positions = torch.arange(k_len, device=self.slopes.device)
        distance = (query_positions[:, None] - key_positions[None, :]).abs()  # (Tq, Tk)
        return -self.slopes[:, None, None] * distance  # (H, Tq, Tk)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    def powers(n: int) -> list[float]:
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    lower = 2 ** math.floor(math.log2(n_heads))
    slopes = powers(lower) + powers(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(slopes)
