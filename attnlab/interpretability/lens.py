"""The logit lens (nostalgebraist 2020): every layer's residual stream read out as if it were
the last, through the model's final norm and head (its ``readout``), to see when the model's
prediction forms.

Dimensions: R streams read, T positions, V vocabulary size.

The streams read are the embeddings (the first block's input), then each block's stream after
each sub-layer (hooks.py): after the token mixer, after cross attention where there is one, and
the block's output. A block's input is the previous block's output, so it is read once; so is the
output of a block without a feed-forward (Mamba's), the stream after its last sub-layer. The last
row is the model's own prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.errors import UserError
from attnlab.interpretability.capture import WEIGHTS, capture
from attnlab.layers.contracts import eval_mode
from attnlab.layers.hooks import hook_points

SUB_LAYERS = {"stream_after_mixer": "mixer", "stream_after_cross": "cross", "stream_out": "out"}


@dataclass
class LensReport:
    """The streams read, kept as they are (R, T, D): their logits, (R, T, V), are R times a
    forward pass's (10 GB for GPT-2 small's 25 streams at its context of 1024), made on demand
    (`logits`), or one row at a time (`top`)."""

    rows: list[str]  # a name per stream: "embeddings", "0 mixer", "0 out", ...
    points: list[str]  # the hook paths read
    streams: torch.Tensor  # (R, T, D)
    readout: Callable[[torch.Tensor], torch.Tensor]  # the model's: (..., D) -> (..., V)

    @property
    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        """(R, T, V): every stream read through the readout."""
        return self.readout(self.streams)

    @torch.no_grad()
    def top(self, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, T, k) probabilities and ids of the k likeliest tokens at each row and position."""
        tops = [self.readout(row).float().softmax(-1).topk(k, dim=-1) for row in self.streams]
        return tuple(torch.stack(part) for part in zip(*tops, strict=True))


def lens_points(model: nn.Module) -> list[tuple[str, str]]:
    """(hook path, row name) of the streams the lens reads, in order."""
    points = [p for p in hook_points(model) if not p.endswith(WEIGHTS)]
    chosen = []
    for path in points:
        block, _, leaf = path.rpartition(".")
        index = block.rpartition(".")[2]
        if leaf == "stream_in" and not chosen:
            chosen.append((path, "embeddings"))
        elif leaf in SUB_LAYERS and not (leaf == "stream_out" and _no_feedforward(model, block)):
            chosen.append((path, f"{index} {SUB_LAYERS[leaf]}"))
    return chosen


def _no_feedforward(model: nn.Module, block: str) -> bool:
    """Whether the block at path `block` is a residual block without a feed-forward: its output
    is then the stream after its last sub-layer, read already."""
    module = model.get_submodule(block)
    return hasattr(module, "feedforward") and module.feedforward is None


@torch.no_grad()
def logit_lens(model: nn.Module, args: tuple[torch.Tensor, ...]) -> LensReport:
    """The lens over one forward pass model(*args) (batch of one)."""
    if len(args[0]) != 1:  # the report has no batch dimension: the other rows would go unread
        raise ValueError(f"the logit lens reads a batch of one, got {len(args[0])} rows")
    readout = getattr(model, "readout", None)
    chosen = lens_points(model)
    if readout is None or not chosen:
        raise UserError(
            f"the logit lens needs a model of residual blocks with a readout (final norm and "
            f"head); {type(model).__name__} has none"
        )
    with eval_mode(model), capture(model, attention=False, only=[p for p, _ in chosen]) as seen:
        model(*args)
    streams = torch.stack([seen.streams[path][0] for path, _ in chosen])  # (R, T, D)
    return LensReport([name for _, name in chosen], [path for path, _ in chosen], streams, readout)
