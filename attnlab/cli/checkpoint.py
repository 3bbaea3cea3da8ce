"""Opening a checkpoint for a command: the command names the capability it needs, and a
checkpoint of a kind without it ends in one line naming what it is and which command serves it,
before any weights are read."""

from __future__ import annotations

import torch

from attnlab.errors import UserError
from attnlab.models.registry import (
    ABILITIES,
    CLASSIFY,
    CLASSIFY_IMAGE,
    FILL_MASK,
    GENERATE,
    GENERATE_IMAGE,
    TRANSLATE,
    a_kind,
    build_model,
    describe,
    get_kind,
)
from attnlab.training.checkpoints import Checkpoint, checkpoint_description, load_checkpoint

SERVED_BY = {
    GENERATE: "attnlab sample (and evaluate --data)",
    TRANSLATE: "attnlab translate (and evaluate --src --ref)",
    FILL_MASK: "attnlab fill-mask",
    CLASSIFY: "attnlab classify",
    CLASSIFY_IMAGE: "attnlab classify-image (and evaluate)",
    GENERATE_IMAGE: "attnlab sample-images (and evaluate)",
}


def check_serves(command: str, capability: str, path: str) -> None:
    """Refuse, in one line, a checkpoint at `path` whose kind lacks `capability`."""
    kind = get_kind(checkpoint_description(path)["kind"])
    if capability not in kind.capabilities:
        serving = [SERVED_BY[c] for c in sorted(kind.capabilities) if c in SERVED_BY]
        hint = f"; use {' or '.join(serving)}" if serving else ""
        raise UserError(
            f"{path} holds {a_kind(kind.name)} model, which `attnlab {command}` does not serve "
            f"(it needs one that can {ABILITIES.get(capability, capability)}){hint}"
        )


def load_for(command: str, capability: str, path: str, device) -> Checkpoint:
    """The checkpoint at `path` on `device`, if its kind has `capability`."""
    check_serves(command, capability, path)
    checkpoint = load_checkpoint(path, device)
    return widened(checkpoint) if command.startswith("evaluate") else checkpoint


def widened(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint with its model in at least float32, as `attnlab evaluate` scores: bf16 or
    fp16 weights (a model imported in them) widened exactly, its other tensors built anew in
    float32 (sinusoids, filters' windows), not rounded to the weights' precision."""
    weight = next(checkpoint.model.parameters())
    if weight.dtype not in (torch.bfloat16, torch.float16):
        return checkpoint
    with torch.random.fork_rng(devices=[]):  # its first weights, replaced: drawn from no one's
        model = build_model(checkpoint.kind.name, describe(checkpoint.model)["config"])
    model.load_state_dict(checkpoint.model.state_dict())  # copied into float32 tensors
    checkpoint.model = model.to(weight.device).eval()
    return checkpoint
