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


class LearnedPositionalEmbedding(nn.Embedding):
    """A trained (max_length, D) table: row p is the embedding of position p (an embedding
    layer, so models initialise and decay it as they do their token embeddings)."""

    def __init__(self, max_length: int, d_model: int):
        super().__init__(max_length, d_model)
        self.max_length = max_length

    def forward(self, length: int, offset: int | torch.Tensor = 0) -> torch.Tensor:
        """Embeddings of positions offset..offset+length-1, (T, D)."""
        return _table_rows(self.weight, length, offset)


class SinusoidalPositionalEncoding(nn.Module):
    """The fixed encodings of section 3.5:

    PE(pos, 2i)   = sin(pos / 10000^(2i / D))
    PE(pos, 2i+1) = cos(pos / 10000^(2i / D))

    gain: scale the table by one learned number that starts at this value, the "scaled
    sinusoidal" encoding (Hua et al. 2022). Unit sinusoids added to token embeddings that start
    at GPT-2's N(0, 0.02) drown the tokens: a baby GPT on tiny Shakespeare stayed at the loss of
    single-character frequencies (val 3.36 after 400 steps, learned positions 2.34). Started at
    the embeddings' scale and learned, it reached val 1.891 at 2,000 steps, learned positions
    1.890 (benchmarks/RESULTS.md). None: the fixed table, for models that scale their
    embeddings up by √D instead, as the paper does.
    """

    def __init__(
        self, max_length: int, d_model: int, base: float = 10000.0, gain: float | None = None
    ):
        super().__init__()
        self.max_length = max_length
        table = torch.empty(max_length, d_model, dtype=torch.float64)
        if not table.is_meta:  # shapes only there, where its arithmetic imports torch._dynamo
            _fill_sinusoids(table, base)
        # in the default dtype: a model built in float64 (torch.set_default_dtype) keeps it exact
        self.register_buffer("table", table.to(torch.get_default_dtype()), persistent=False)
        self.initial_gain = gain
        self.gain = None if gain is None else nn.Parameter(torch.full((1,), float(gain)))

    def reset_parameters(self) -> None:
        if self.gain is not None:
            nn.init.constant_(self.gain, self.initial_gain)

    def forward(self, length: int, offset: int | torch.Tensor = 0) -> torch.Tensor:
        rows = _table_rows(self.table, length, offset)
        return rows if self.gain is None else rows * self.gain


def _fill_sinusoids(table: torch.Tensor, base: float) -> None:
    """PE(pos, 2i) = sin(pos / base^(2i / D)), PE(pos, 2i+1) = cos(...) into a (T, D) table."""
    length, d_model = table.shape
    position = torch.arange(length, dtype=torch.float64)[:, None]  # (T, 1)
    inverse_frequency = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    angles = position * inverse_frequency  # (T, D/2)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])


def _table_rows(table: torch.Tensor, length: int, offset: int | torch.Tensor) -> torch.Tensor:
    """Rows offset..offset+length-1 of a (max_length, D) table. A tensor offset (a static
    cache's position) is gathered without reading its value, so compiled decoding need not
    synchronise; the caller keeps it in range."""
    if isinstance(offset, torch.Tensor):
        return table.index_select(0, offset + torch.arange(length, device=table.device))
    if offset + length > len(table):
        raise ValueError(
            f"sequence of {offset + length} positions exceeds the context length {len(table)}"
        )
    return table[offset : offset + length]


class RelativePosition(nn.Module):
    """What attention asks of a relative position scheme: rotate queries and keys, or bias the
    scores. The defaults do nothing, so a scheme overrides only the part it uses. One instance
    may serve every layer of a model.
    """

    def rotate(self, x: torch.Tensor, offset: int | torch.Tensor) -> torch.Tensor:
        """x: (B, heads, T, Dh) queries or keys at positions offset..offset+T-1; the offset
        is a 0-dim tensor when a static cache decodes."""
        return x

    def bias(
        self, q_len: int, k_len: int, distance: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """An additive (H, Tq, Tk) score bias; the queries are the last Tq of the Tk keys, or
        `distance` (Tq, Tk) says how far each key lies behind each query (keys out of order,
        in a static cache)."""
        return None


class RotaryEmbedding(RelativePosition):
    """RoPE: rotate each pair of channels (i, i + Dh/2) by the angle pos·θ_i, θ_i = base^(-2i/Dh).

    Rotating q at position m and k at position n by their angles makes q·k depend on m - n only,
    so attention scores see relative positions while keys can still be cached after rotation.
    Channels are paired by halves (GPT-NeoX's and Hugging Face Llama's layout; the paper and
    Meta's Llama code pair neighbours 2i, 2i+1, the same rotation on permuted channels):
    with x = (x1, x2),
    rotate(x) = x·cos + (-x2, x1)·sin = x·cos + roll(x, Dh/2)·(-sin, sin).

    scale > 1 is position interpolation (Chen et al. 2023): position m turns by the angles of
    m / scale, so scale times the trained context spans the angles the model was trained on.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, scale: float = 1.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head width, got {head_dim}")
        if not scale > 0:
            raise ValueError(f"the position scale must be positive, got {scale}")
        self.head_dim, self.base, self.scale = head_dim, base, scale  # θ_i from these, in
        # at least float32 whatever the module is cast to (a buffer would follow
        # model.to(bfloat16)); float64 queries and keys turn by float64 angles
        self._cos = self._signed_sin = None
        self._last = None  # ((offset, T, dtype, device), (cos, signed sin)) of the latest call

    def _tables(self, length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and (-sin, sin) tables, (≥ length, Dh), grown by doubling. Built as ordinary
        tensors even under inference mode, so training can use them afterwards."""
        dtype = _angle_dtype(like)
        held = self._cos
        if (
            held is None
            or held.size(0) < length
            or (held.device, held.dtype) != (like.device, dtype)
        ):
            with torch.inference_mode(False):
                positions = torch.arange(max(2 * length, 256), device=like.device)
                self._cos, self._signed_sin = self._cos_sin(positions, dtype)
        return self._cos, self._signed_sin

    def _cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,) positions -> cos and (-sin, sin), each (T, Dh), computed in `dtype`."""
        exponents = torch.arange(0, self.head_dim, 2, device=positions.device, dtype=dtype)
        angles = torch.outer(
            positions.to(dtype) / self.scale, 1.0 / self.base ** (exponents / self.head_dim)
        )  # 1 / base^x, not base^-x: the same rounding as Hugging Face's Llama
        return torch.cat([angles.cos(), angles.cos()], dim=-1), torch.cat(
            [-angles.sin(), angles.sin()], dim=-1
        )

    def _rows(self, offset: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (T, Dh) cos and signed sin rows of x's positions, in x's dtype. When decoding
        (no autograd, not compiling) the latest rows are kept for the model's other layers."""
        key = (offset, x.size(2), x.dtype, x.device)
        keep = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        if keep and self._last is not None and self._last[0] == key:
            return self._last[1]
        cos, sin = self._tables(offset + x.size(2), x)
        rows = slice(offset, offset + x.size(2))
        value = cos[rows].to(x.dtype), sin[rows].to(x.dtype)
        if keep:
            self._last = key, value
        return value

    def rotate(self, x, offset):
        # Compiled (training, or decoding with a tensor offset): the angles are computed in the
        # graph, where the compiler fuses them, and no table kept between calls changes the
        # module, which would make the compiled code recompile on the second call.
        if isinstance(offset, torch.Tensor) or torch.compiler.is_compiling():
            positions = offset + torch.arange(x.size(2), device=x.device)
            cos, sin = (table.to(x.dtype) for table in self._cos_sin(positions, _angle_dtype(x)))
        else:
            cos, sin = self._rows(offset, x)
        return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin


def _angle_dtype(x: torch.Tensor) -> torch.dtype:
    """Rotary angles in at least float32 (bf16 would drift far positions by whole radians), and
    in float64 for float64 queries and keys."""
    return torch.promote_types(x.dtype, torch.float32)


class ALiBi(RelativePosition):
    """Attention with linear biases: head h adds -m_h·|i - j| to the score of query i, key j.

    The slopes m_h form the geometric sequence 2^(-8/H), 2^(-16/H), ... (section 3 of the paper);
    when H is not a power of two, take the slopes of the nearest lower power of two and fill in
    with every other slope of the next one, as the paper's reference does.
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def bias(self, q_len, k_len, distance=None):
        if distance is None:
            query_positions = torch.arange(k_len - q_len, k_len, device=self.slopes.device)
            key_positions = torch.arange(k_len, device=self.slopes.device)
            distance = (query_positions[:, None] - key_positions[None, :]).abs()  # (Tq, Tk)
        return -self.slopes[:, None, None] * distance  # (H, Tq, Tk)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    def powers(n: int) -> list[float]:
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    lower = 2 ** math.floor(math.log2(n_heads))
    slopes = powers(lower) + powers(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(slopes)
