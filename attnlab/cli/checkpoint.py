"""Opening a checkpoint for a command: the command names the capability it needs, and a
checkpoint of a kind without it ends in one line naming what it is and which command serves it,
before any weights are read."""

from __future__ import annotations

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


def load_for(command: str, capability: str, path: str, device) -> Checkpoint:
    """The checkpoint at `path` on `device`, if its kind has `capability`."""
    kind = get_kind(checkpoint_description(path)["kind"])
    if capability not in kind.capabilities:
        serving = [SERVED_BY[c] for c in sorted(kind.capabilities) if c in SERVED_BY]
        hint = f"; use {' or '.join(serving)}" if serving else ""
        raise UserError(
            f"{path} holds {a_kind(kind.name)} model, which `attnlab {command}` does not serve "
            f"(it needs one that can {ABILITIES.get(capability, capability)}){hint}"
        )
    return load_checkpoint(path, device)
