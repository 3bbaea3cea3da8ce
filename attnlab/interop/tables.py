"""What every Hugging Face conversion shares: copying weights through a name table, token rows
put in a tokenizer's order, and the activation names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# Hugging Face activation names -> ours
ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
# ours -> the Hugging Face name an export writes: the first of its names above
TO_HF_ACTIVATIONS = {ours: theirs for theirs, ours in reversed(ACTIVATIONS.items())}


def copy_weights(
    source: dict[str, torch.Tensor], target: nn.Module, table: list[tuple[Any, Any, bool]]
) -> None:
    """Copy source[src] (transposed where marked) into target's parameter dst, checking shapes.
    A tuple of source names is concatenated along dim 0 (one fused projection from three); a
    tuple of target names receives consecutive dim-0 slices as long as each target's rows
    (three projections from one; with grouped-query heads, keys and values have fewer rows)."""
    target_state: dict[str, Any] = target.state_dict()
    with torch.no_grad():
        for src, dst, transpose in table:
            value = torch.cat([source[n] for n in src]) if isinstance(src, tuple) else source[src]
            value = value.t() if transpose else value
            pieces = dst if isinstance(dst, tuple) else (dst,)
            rows = [len(target_state[name]) for name in pieces]
            slices = value.split(rows) if sum(rows) == len(value) else [value] * len(pieces)
            for name, piece in zip(pieces, slices, strict=True):
                if piece.shape != target_state[name].shape:
                    raise ValueError(
                        f"shape mismatch {src} {tuple(piece.shape)} -> {name} "
                        f"{tuple(target_state[name].shape)}"
                    )
                target_state[name].copy_(piece)


def layer_name(name: Any, i: int) -> Any:
    return tuple(n.format(i=i) for n in name) if isinstance(name, tuple) else name.format(i=i)


def prefixed(prefix: str, name: Any) -> Any:
    return tuple(prefix + n for n in name) if isinstance(name, tuple) else prefix + name


def check_shape(src: str, value: torch.Tensor, dst: str, target: torch.Tensor, reshape: bool):
    """Equal shapes, or with reshape equal sizes."""
    same = value.numel() == target.numel() if reshape else value.shape == target.shape
    if not same:
        raise ValueError(
            f"shape mismatch {src} {tuple(value.shape)} -> {dst} {tuple(target.shape)}"
        )


def reordered_rows(
    state: dict[str, torch.Tensor], order: Sequence[int], rows: int, names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The state dict with the token rows of its weights `names` (those it has) in `order`: our
    row i is its row order[i], each of its `rows` named at most once (those unnamed dropped)."""
    order = [int(i) for i in order]
    if not order or len(set(order)) < len(order) or not all(0 <= i < rows for i in order):
        raise ValueError(f"token_order must name each of the {rows} token rows at most once")
    index = torch.as_tensor(order)
    return {**state, **{name: state[name][index] for name in names if name in state}}
