"""Preprocessing artefacts a checkpoint can hold beside its weights (a tokenizer, class names,
an image palette), by name. Each is saved as NAME.json from its to_dict() and rebuilt by the
function registered here. A module of its own, importing no model, so that data modules can
register what they produce."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attnlab.tokenizers import tokenizer_from_dict

# artefact name -> how to rebuild it from its JSON dict (saved as NAME.json, from obj.to_dict())
ARTIFACTS: dict[str, Callable[[dict], Any]] = {"tokenizer": tokenizer_from_dict}


def register_artifact(name: str, from_dict: Callable[[dict], Any]) -> None:
    """Let checkpoints hold a preprocessing artefact `name` (an object with to_dict())."""
    ARTIFACTS[name] = from_dict
