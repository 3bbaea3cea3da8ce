"""Checkpoints: a directory of safetensors and JSON, written atomically, never unpickled.

    model.safetensors      weights of the unwrapped, uncompiled model (tied tensors stored once)
    config.json            {"kind": "gpt", "config": {...}}: enough to rebuild the model
    NAME.json              preprocessing artefacts, each optional: tokenizer.json (a tokenizer),
                           or any other kind registered with register_artifact (an image palette)
    optimizer.safetensors  optimizer tensors; the param groups as JSON in the file's metadata
    trainer_state.json     step, training config, RNG and data-sampler states

Every file is written to a temporary name first; the renames happen together at the end, the
trainer state last, so an interrupted save leaves the previous checkpoint usable.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from attnlab.errors import UserError
from attnlab.files import atomic_write_files, read_json
from attnlab.models.registry import ModelKind, build_model, describe, get_kind
from attnlab.tokenizers import Tokenizer
from attnlab.training.artifacts import ARTIFACTS, register_artifact  # noqa: F401 - re-exported

MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
OPTIMIZER_FILE, STATE_FILE = "optimizer.safetensors", "trainer_state.json"


@dataclass
class Checkpoint:
    model: nn.Module  # in eval mode
    kind: ModelKind
    artifacts: dict[str, Any]  # name -> object, for those the checkpoint holds
    path: Path

    @property
    def tokenizer(self) -> Tokenizer:
        if "tokenizer" not in self.artifacts:
            raise UserError(f"{self.path} holds no tokenizer ({self.kind.name!r} model)")
        return self.artifacts["tokenizer"]


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    artifacts: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint directory (see the module docstring). `model` must be unwrapped;
    artifacts: name -> object with to_dict(), for names registered with register_artifact."""
    path = Path(path)
    files = {
        MODEL_FILE: safetensors.torch.save(_unique_tensors(model.state_dict())),
        CONFIG_FILE: _json_bytes(describe(model)),
    }
    for name, artifact in (artifacts or {}).items():
        if name not in ARTIFACTS:
            raise ValueError(f"unknown artefact {name!r}: register it with register_artifact")
        files[f"{name}.json"] = _json_bytes(artifact.to_dict())
    if optimizer is not None:
        files[OPTIMIZER_FILE] = _optimizer_bytes(optimizer)
    if trainer_state is not None:
        files[STATE_FILE] = _json_bytes(trainer_state)
    atomic_write_files(path, files)  # renamed in this order: the trainer state last


def checkpoint_description(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of a checkpoint directory, checked: {"kind": ..., "config": {...}}. Reading
    it builds nothing, so a command can check the kind before loading any weights."""
    path = Path(path)
    if not (path / MODEL_FILE).is_file():
        raise UserError(f"no checkpoint at {path} (expected {path / MODEL_FILE})")
    description = read_json(path / CONFIG_FILE, "checkpoint config")
    if (
        not isinstance(description, dict)
        or not isinstance(description.get("kind"), str)
        or not isinstance(description.get("config"), dict)
    ):
        raise UserError(f"checkpoint config {path / CONFIG_FILE} lacks 'kind' and 'config'")
    return description


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """The model (in eval mode, on `device`), its kind and artefacts saved in a directory."""
    path = Path(path)
    description = checkpoint_description(path)
    kind = get_kind(description["kind"])
    model = build_model(kind.name, description["config"])
    load_weights(model, path / MODEL_FILE)
    return Checkpoint(model.to(device).eval(), kind, load_artifacts(path), path)


def load_artifacts(path: str | os.PathLike) -> dict[str, Any]:
    """The registered artefacts a checkpoint directory holds, by name."""
    found = {}
    for name, from_dict in ARTIFACTS.items():
        file = Path(path) / f"{name}.json"
        if file.is_file():
            data = read_json(file, name)
            try:
                found[name] = from_dict(data)
            except (ValueError, KeyError, TypeError) as error:
                raise UserError(f"{file} is not a valid {name}: {error}") from None
    return found


def load_weights(model: nn.Module, file: Path) -> None:
    """Load safetensors weights into `model`, requiring every parameter to be present."""
    try:
        tensors = safetensors.torch.load(file.read_bytes())
    except Exception as error:  # safetensors raises several types for a damaged file
        raise UserError(f"checkpoint weights {file} are corrupt: {error}") from None
    expected = _unique_tensors(model.state_dict())
    missing, unexpected = expected.keys() - tensors.keys(), tensors.keys() - expected.keys()
    if missing or unexpected:
        raise UserError(
            f"checkpoint weights {file} do not fit the model: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    for name, value in tensors.items():
        if value.shape != expected[name].shape:
            raise UserError(
                f"checkpoint weight {name} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors, strict=False)


# trainer_state.json: the fields resuming reads, and their JSON types
STATE_FIELDS = {"step": int, "elapsed_s": (int, float), "train_config": dict, "rng": dict}
RNG_FIELDS = {"torch": str, "cuda": list, "python": list, "data": dict}


def read_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """trainer_state.json of a checkpoint directory, checked field by field (a hand-edited file
    of the wrong shape is one clear error, not a failure halfway through resuming)."""
    file = Path(path) / STATE_FILE
    state = read_json(file, "trainer state")
    rng = state.get("rng") if isinstance(state, dict) else None
    for where, value, fields in (("", state, STATE_FIELDS), ("rng.", rng, RNG_FIELDS)):
        for name, kind in fields.items():
            field = value.get(name) if isinstance(value, dict) else None
            if isinstance(field, bool) or not isinstance(field, kind):
                raise UserError(
                    f"trainer state {file} is damaged: {where}{name} is missing or wrong"
                )
    return state


def load_training_state(
    path: str | os.PathLike, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore the optimizer from a checkpoint and return its trainer state."""
    path = Path(path)
    state = read_training_state(path)
    try:
        with safetensors.safe_open(path / OPTIMIZER_FILE, framework="pt") as f:
            groups = json.loads(f.metadata()["param_groups"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise UserError(f"cannot resume: {path / OPTIMIZER_FILE} is missing") from None
    except Exception as error:
        raise UserError(f"optimizer state {path / OPTIMIZER_FILE} is corrupt: {error}") from None
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    return state


def encode_tensor(tensor: torch.Tensor) -> str:
    """A uint8 tensor (an RNG state) as base64 text for trainer_state.json."""
    return base64.b64encode(tensor.numpy().tobytes()).decode()


def decode_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _optimizer_bytes(optimizer: torch.optim.Optimizer) -> bytes:
    state = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": value
        for index, param_state in state["state"].items()
        for key, value in param_state.items()
    }
    return safetensors.torch.save(
        tensors, metadata={"param_groups": json.dumps(state["param_groups"])}
    )


def _unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors (same storage) kept once, under their first name."""
    seen, unique = set(), {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            unique[name] = tensor.detach().contiguous()
    return unique


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()
