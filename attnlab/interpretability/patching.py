"""Activation patching: which activations carry the difference two texts make to a prediction
(causal tracing, Meng et al. 2022; Wang et al. 2022, "Interpretability in the Wild").

Dimensions: T positions, L layers, H heads, R residual streams (L + 1).

Two texts of the same token length that differ in a few tokens, a clean one and a corrupted
one, and a metric: the logit difference logit(target) - logit(versus) (or the target's logit
alone) at one position. The corrupted text is run again with one activation replaced by its value
in the clean run, and the share of the gap between the two texts' metrics that this restores is

    restored = (patched - corrupt) / (clean - corrupt)

1 where that activation carries the whole difference, 0 where it carries none (it may be below
0, or above 1). Patched are the residual stream at each (stream, position), the embeddings (the
first block's input) and each block's output, and each attention head's output, before the
output projection mixes the heads, at all positions at once (the ``head_outputs`` hook point).

A stream at a position where the texts agree carries no difference, until attention has mixed
one in: in the embeddings it restores 0. In the last block's output only the metric's position
reaches the metric: it restores 1 there and 0 elsewhere. The patched runs are batched, a row of
the batch per position (per head), one stream (one layer) a pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.errors import UserError
from attnlab.interpretability.capture import HEADS, capture
from attnlab.layers.contracts import eval_mode
from attnlab.layers.hooks import hook_points
from attnlab.progress import progress_bar

TOKENS_PER_PASS = 16384  # most tokens a patched pass runs at once (rows of T tokens)


@dataclass
class Patching:
    """The metric of the corrupted text with each activation patched from the clean run."""

    rows: list[str]  # the streams patched: "embeddings", "0 out", "1 out", ...
    residual: torch.Tensor  # (R, T): the metric with the stream at (row, position) patched
    heads: torch.Tensor | None  # (L, H): ... a head's output; NaN: no such head; None: no attention
    clean: float  # the metric of the clean text
    corrupt: float  # ... and of the corrupted one
    position: int  # where the metric is read, from 0

    @property
    def gap(self) -> float:
        return self.clean - self.corrupt

    def restored(self, patched: torch.Tensor) -> torch.Tensor:
        """The share of the gap a patched metric restores: 1 all of it, 0 none."""
        return (patched - self.corrupt) / self.gap


@torch.no_grad()
def activation_patching(
    model: nn.Module,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    target: int,
    versus: int | None = None,
    position: int = -1,
    progress: bool = False,
) -> Patching:
    """Patch each residual stream at each position, and each head's output, of the corrupted
    ids (1, T) from the clean ids (1, T); the metric is logit(target) - logit(versus) (versus
    None: logit(target)) at `position`. progress: a bar of the passes on a watched stderr.
    A UserError when both texts give the same metric: there is no gap to restore."""
    streams, layers = _points(model)
    attention = [layer for layer in layers if layer is not None]
    if clean.dim() != 2 or len(clean) != 1 or clean.shape != corrupt.shape:
        raise ValueError(
            f"patching reads two texts as ids (1, T) of one shape, got {tuple(clean.shape)} and "
            f"{tuple(corrupt.shape)}"
        )
    length = clean.size(1)
    if not -length <= position < length:
        raise ValueError(f"position {position} is outside the {length} positions")
    position %= length

    def metric(logits: torch.Tensor) -> torch.Tensor:  # (B, T, V) -> (B,), float64
        at = logits[:, position].double().cpu()
        return at[:, target] - (0 if versus is None else at[:, versus])

    rows_per_pass = max(1, TOKENS_PER_PASS // length)
    heads = [_n_heads(model, layer) for layer in attention]
    passes = 2 + sum(-(-n // rows_per_pass) for n in [length] * len(streams) + heads)
    bar = progress_bar(progress, total=passes, desc="inspect patching", unit=" passes", leave=False)
    with eval_mode(model), bar:
        only = [*streams.values(), *(f"{layer}.{HEADS}" for layer in attention)]
        with capture(model, attention=False, heads=True, only=only) as seen:
            clean_metric = float(metric(model(clean)[0])[0])
        corrupt_metric = float(metric(model(corrupt)[0])[0])
        bar.update(2)
        _check_gap(clean_metric, corrupt_metric, position)

        def sweep(point: str, source: torch.Tensor) -> torch.Tensor:
            return _sweep(model, corrupt, point, source, rows_per_pass, metric, bar.update)

        residual = torch.stack([sweep(path, seen.streams[path]) for path in streams.values()])
        grid = None
        if attention:
            grid = torch.full((len(layers), max(heads)), torch.nan, dtype=torch.float64)
            for i, layer in enumerate(layers):  # NaN: no such head (another mixer, fewer heads)
                if layer is not None:
                    row = sweep(f"{layer}.{HEADS}", seen.heads[layer])
                    grid[i, : len(row)] = row
    return Patching(list(streams), residual, grid, clean_metric, corrupt_metric, position)


def _points(model: nn.Module) -> tuple[dict[str, str], list[str | None]]:
    """The residual streams patched (row name -> hook path), and each layer's attention (its
    module path; None in a layer of another mixer); a UserError for a model of no blocks."""
    blocks, points = getattr(model, "blocks", None), hook_points(model)
    n_layers = len(blocks) if isinstance(blocks, nn.ModuleList) else 0
    streams = {"embeddings": "blocks.0.stream_in"}
    streams.update({f"{i} out": f"blocks.{i}.stream_out" for i in range(n_layers)})
    if not (hasattr(model, "output_head") and n_layers and set(streams.values()) <= set(points)):
        raise UserError(
            "activation patching needs a language model of residual blocks between token "
            f"embeddings and an output head (a GPT); {type(model).__name__} is not one"
        )
    layers = [f"blocks.{i}.token_mixer" for i in range(n_layers)]
    return streams, [layer if f"{layer}.{HEADS}" in points else None for layer in layers]


def _n_heads(model: nn.Module, layer: str) -> int:
    return model.get_submodule(layer).n_heads


def _check_gap(clean: float, corrupt: float, position: int) -> None:
    """A UserError when the metric is the same for both texts (to float rounding): restoring
    nothing out of nothing is no measurement."""
    if abs(clean - corrupt) <= 1e-6 * max(1.0, abs(clean), abs(corrupt)):
        raise UserError(
            f"the clean and the corrupted text give the same metric at position {position} "
            f"({clean:+.4f}): there is no gap to restore: corrupt a token at or before it, or "
            "choose a target (and versus) token the corruption changes"
        )


def _sweep(
    model: nn.Module,
    corrupt: torch.Tensor,
    point: str,
    source: torch.Tensor,
    rows_per_pass: int,
    metric: Callable[[torch.Tensor], torch.Tensor],
    step: Callable[[int], object],
) -> torch.Tensor:
    """(N,): the metric of `corrupt` with the tensor at hook point `point` patched from `source`
    (1, N, ...) at one index of its first dimension after the batch's (a stream's position, an
    attention layer's head) in turn; a row of a pass's batch each."""
    metrics, n, device = [], source.size(1), source.device
    for start in range(0, n, rows_per_pass):
        index = torch.arange(start, min(start + rows_per_pass, n), device=device)
        rows = torch.arange(len(index), device=device)

        def patch(tensor: torch.Tensor, index=index, rows=rows) -> torch.Tensor:  # (B, N, ...)
            tensor = tensor.clone()
            tensor[rows, index] = source[0, index]
            return tensor

        with capture(model, attention=False, streams=False, patches={point: patch}):
            metrics.append(metric(model(corrupt.expand(len(index), -1))[0]))
        step(1)
    return torch.cat(metrics)
