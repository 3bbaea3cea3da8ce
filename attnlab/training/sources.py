"""What a model kind's data builder gives the Trainer, and what it is given.

Every model kind registers a data builder (models/registry.py): ``build(request) -> TrainingData``.
The request carries the kind's data settings, the model config as chosen so far (a dict: a
builder reads, say, the context length from it), the training config, the preprocessing
artefacts of the checkpoint when a run resumes (its tokenizer, so nothing is learned again), and
a function for notes to the person watching. The result holds the batches, the config fields
that the data decides (the vocabulary size, special token ids), the artefacts to save beside the
weights, one line describing the data, and optionally scores to evaluate beyond the loss and the
one whose best checkpoint to keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, ...]  # the last tensor holds the targets
IGNORE_INDEX = -100  # a target with this value is not scored (torch's cross_entropy default)


def token_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0):
    """The mean cross-entropy over the scored targets (not IGNORE_INDEX), in float32 whatever
    the logits' precision, or float64 for float64 logits: logits (..., V), targets (...). With
    no target scored it is 0, not the NaN of an empty mean: a micro-batch or a rank's shard may
    score nothing (a masked LM's short rows), and its weight in the step (Trainer) is then 0."""
    check_targets(targets, logits.shape[:-1])
    total = F.cross_entropy(
        logits.flatten(0, -2).to(torch.promote_types(logits.dtype, torch.float32)),
        targets.flatten().long(),  # int32 ids too
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    return total / (targets != IGNORE_INDEX).sum().clamp_min(1)


def check_targets(targets: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Targets (or labels) must be integer ids of the shape given: a float target would be cut
    to an integer, and one of another shape with as many elements would be read in the wrong
    order, both without a word."""
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer ids (torch.long), got {targets.dtype}")
    if tuple(targets.shape) != tuple(shape):
        raise ValueError(f"targets must have shape {tuple(shape)}, got {tuple(targets.shape)}")


class Metrics(Protocol):
    """Scores beyond the loss, accumulated over one evaluation: ``update(logits, batch)`` for
    each batch, then ``compute()`` -> {"accuracy": ..., ...}."""

    def update(self, logits: torch.Tensor, batch: Batch) -> None: ...
    def compute(self) -> dict[str, float]: ...


class BatchSource(Protocol):
    """Training batches, drawn one at a time. ``unit`` names what throughput counts ("token",
    "image", "sequence"): each batch counts the elements of its last tensor, the targets, or,
    where a source has it, ``count(batch)``: those that are not padding."""

    unit: str

    def next(self) -> Batch: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


SOURCE_METHODS = ("next", "state_dict", "load_state_dict")  # a BatchSource's


class SeededSource:
    """The base of a BatchSource that draws every batch at random from its own seeded generator:
    the generator's state is all of its state, kept in a checkpoint, so that a resumed run
    draws the batches the uninterrupted run would have drawn."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def check_sources(train_data: Any, eval_data: Any) -> None:
    """A TypeError unless train_data is a BatchSource and eval_data maps splits to functions."""
    if missing := [m for m in SOURCE_METHODS if not callable(getattr(train_data, m, None))]:
        raise TypeError(
            f"train_data lacks {', '.join(missing)}: a BatchSource (training/sources.py) "
            f"has {', '.join(SOURCE_METHODS)}"
        )
    if not all(callable(batches) for batches in eval_data.values()):
        raise TypeError("eval_data maps each split's name to a function giving its batches")


def _quiet(message: str) -> None:
    """The default for notes: libraries do not print (the CLI passes its own)."""


@dataclass(frozen=True)
class DataRequest:
    settings: Any  # the kind's data config (a frozen dataclass)
    model: dict[str, Any]  # the model config so far, before the fields the data decides
    train: Any  # the TrainConfig: batch size, seed, evaluation batches
    artifacts: dict[str, Any] | None = None  # from the checkpoint, when resuming
    log: Callable[[str], None] = _quiet
    # `attnlab evaluate`: "held_out" scores every held-out example (not eval_iters batches);
    # "all", every example (data the model never saw); "" trains
    evaluate: str = ""


@dataclass
class TrainingData:
    train: BatchSource
    eval: dict[str, Callable[[], Iterable[Batch]]]  # split -> the same batches every time
    model_fields: dict[str, Any] = field(default_factory=dict)  # e.g. {"vocab_size": 65}
    artifacts: dict[str, Any] = field(default_factory=dict)  # e.g. {"tokenizer": ...}
    summary: str = ""  # one line on the data, for the person watching
    metrics: Callable[[], Metrics] | None = None  # a fresh accumulator for each evaluation
    best: str | None = None  # keep the checkpoint best in this score ("val_accuracy")
