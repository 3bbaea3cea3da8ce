"""Preprocessing artefacts that travel with a checkpoint, by name: a tokenizer, an image
classifier's class names and pixel normalisation. Each is an object with ``to_dict()``, saved as
NAME.json beside the weights and rebuilt by the function registered for its name.

Kept apart from checkpoints.py so that a data module can register its artefacts on import
without importing the checkpoint code (which imports the model registry, and so every kind).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attnlab.tokenizers import tokenizer_from_dict

# artefact name -> how to rebuild it from its JSON dict (saved as NAME.json, from obj.to_dict())
ARTIFACTS: dict[str, Callable[[dict], Any]] = {"tokenizer": tokenizer_from_dict}


def register_artifact(name: str, from_dict: Callable[[dict], Any]) -> None:
    """Let checkpoints hold a preprocessing artefact `name` (an object with to_dict())."""
    ARTIFACTS[name] = from_dict
