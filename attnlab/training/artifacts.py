"""Preprocessing artefacts a checkpoint can hold beside its weights, by name: a tokenizer, a
classifier's class names, an image normalisation. Each is saved as NAME.json from its to_dict()
and rebuilt by the function registered here. A module of its own, importing no model, so that
data modules can register what they produce."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnlab.errors import UserError
from attnlab.tokenizers import tokenizer_from_dict

# artefact name -> how to rebuild it from its JSON dict (saved as NAME.json, from obj.to_dict())
ARTIFACTS: dict[str, Callable[[dict], Any]] = {"tokenizer": tokenizer_from_dict}


def register_artifact(name: str, from_dict: Callable[[dict], Any]) -> None:
    """Let checkpoints hold a preprocessing artefact `name` (an object with to_dict())."""
    ARTIFACTS[name] = from_dict


@dataclass(frozen=True)
class ClassNames:
    """What each output of a classifier means: names[k] is class k (classes.json)."""

    names: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict) -> ClassNames:
        names = data["names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("'names' must be a list of strings")
        return cls(tuple(names))

    def misfit(self, config: dict[str, Any]) -> str | None:
        classes = config.get("n_classes")
        if classes is not None and classes != len(self.names):
            return f"names {len(self.names)} classes, but the model has {classes} outputs"
        return None


register_artifact("classes", ClassNames.from_dict)


def check_artifacts_fit(config: dict[str, Any], artifacts: dict[str, Any], folder: Path) -> None:
    """Each artefact against the model config saved beside it (by its misfit(config), a reason
    or None): a file written or copied by hand for other weights is one line, not a class name
    or colour out of range mid-way."""
    for name, artifact in artifacts.items():
        misfit = getattr(artifact, "misfit", None)
        if misfit is not None and (problem := misfit(config)):
            file = folder / f"{name}.json"
            raise UserError(f"{file} {problem}: it does not belong to these weights")


def check_classes(artifacts: dict[str, Any] | None, classes: ClassNames, data: str) -> None:
    """The data's classes against those of the checkpoint the artefacts come from (resumed or
    evaluated): others are one line, not scores under the wrong names or a label out of range."""
    saved = (artifacts or {}).get("classes")
    if saved is not None and saved != classes:
        raise UserError(
            f"the classes of {data} ({', '.join(classes.names)}) are not those the checkpoint "
            f"was trained on ({', '.join(saved.names)})"
        )
