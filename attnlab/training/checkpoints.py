"""Checkpoints: a directory of safetensors and JSON, written atomically, never unpickled.

    model.safetensors      weights of the unwrapped, uncompiled model (tied tensors stored once)
    config.json            {"kind": "gpt", "config": {...}}: enough to rebuild the model
    NAME.json              preprocessing artefacts, each optional: tokenizer.json (a tokenizer),
                           or any other kind registered with register_artifact (an image palette)
    optimizer.safetensors  optimizer tensors; the param groups as JSON in the file's metadata
    trainer_state.json     step, training config, RNG and data-sampler states

A checkpoint switches as a whole: every file is written to a temporary name first, then a
journal records the renames, the renames run and the journal goes (files.py). A save killed
before its journal leaves the previous checkpoint; one killed after it is completed by the
run's next writer (finish_checkpoint, which `--resume` calls). Readers refuse a directory with
a journal, and one whose weights, optimizer and trainer state carry different save ids; as a
reader sees either for the moment a save of a running training renames its files, it looks
again for up to SAVE_WAIT_S first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn
from torch.optim import Optimizer

from attnlab.config import config_to_dict
from attnlab.devices import TooLarge, build_on_meta, memory_bytes
from attnlab.errors import NotRegistered, UserError, hugging_face_hint
from attnlab.files import BEST_DIR, RUN_FILE, atomic_write_files, finish_writes, read_json
from attnlab.models.registry import ModelKind, build_model, describe, get_kind, kind_config
from attnlab.tokenizers import Tokenizer
from attnlab.training.artifacts import ARTIFACTS, check_artifacts_fit
from attnlab.training.distributed import is_writer, like, whole
from attnlab.training.state import OPTIMIZER_FILE, SAVE_ID, STATE_FILE, optimizer_bytes, save_id_of

MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
JOURNAL_FILE = "checkpoint.journal"  # the renames of a save in progress (files.py)


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
    optimizer: Optimizer | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> str:
    """Write a checkpoint directory (see the module docstring). `model` must be unwrapped;
    artifacts: name -> object with to_dict(), for names registered with register_artifact;
    each must fit the model (a tokenizer of its vocabulary): a checkpoint that load_checkpoint
    would refuse is not written. Returns the save's id (see SAVE_ID)."""
    path, description = Path(path), describe(model)
    check_tokenizer(description["config"], (artifacts or {}).get("tokenizer"), "the tokenizer")
    check_artifacts_fit(description["config"], artifacts or {}, path)
    save_id = {SAVE_ID: uuid.uuid4().hex}  # in every file that changes from save to save
    files = {
        MODEL_FILE: safetensors.torch.save(_whole_weights(model), metadata=save_id),
        CONFIG_FILE: _json_bytes(description),
    }
    for name, artifact in (artifacts or {}).items():
        if name not in ARTIFACTS:
            raise ValueError(f"unknown artefact {name!r}: register it with register_artifact")
        files[f"{name}.json"] = _json_bytes(artifact.to_dict())
    if optimizer is not None:
        files[OPTIMIZER_FILE] = optimizer_bytes(optimizer, save_id)
    if trainer_state is not None:
        files[STATE_FILE] = _json_bytes({**trainer_state, **save_id})
    if is_writer():  # of the ranks of a distributed run, which all gather the tensors
        atomic_write_files(path, files, journal=JOURNAL_FILE)  # switched in as a whole
    return save_id[SAVE_ID]


def finish_checkpoint(path: str | os.PathLike) -> None:
    """Complete a save that a crash interrupted, or remove what it left (see files.py:
    atomic_write_files): for the run's one writer, before it reads the checkpoint."""
    if Path(path).is_dir():
        finish_writes(path, JOURNAL_FILE)


SAVE_WAIT_S = 5.0  # a save's renames take milliseconds: a journal older than this is a crash's


def _check_whole(path: Path) -> None:
    """Refuse a checkpoint whose save did not finish, or whose files come from different saves,
    once that has lasted SAVE_WAIT_S: until then it may be a save of a training under way,
    between its journal and its last rename, and a look again finds the new checkpoint whole.
    A journal older than that is a crash's, and a mix in a folder unchanged for longer a
    hand's: refused at once."""
    deadline = time.monotonic() + SAVE_WAIT_S
    while (problem := _unfinished_save(path)) and time.monotonic() < deadline:
        # the journal's age, or without one the folder's (a save's files and renames touch
        # it): a mix of saves in a folder untouched for longer is no save under way either
        with contextlib.suppress(FileNotFoundError):  # gone: the save just finished
            journal = path / JOURNAL_FILE
            changed = (journal if journal.exists() else path).stat().st_mtime
            if time.time() - changed > SAVE_WAIT_S:
                break
        time.sleep(0.02)
    if problem:
        raise UserError(problem)


def _unfinished_save(path: Path) -> str | None:
    """Why the checkpoint in `path` is not one save's whole, or None when it is."""
    if (path / JOURNAL_FILE).exists():
        return (
            f"the checkpoint in {path} is being saved, or its save was interrupted: "
            f"{_completing_command(path)} completes it"
        )
    ids = {n: save_id_of(path / n) for n in (MODEL_FILE, OPTIMIZER_FILE) if (path / n).is_file()}
    if (path / STATE_FILE).is_file():
        state = read_json(path / STATE_FILE, "trainer state")
        ids[STATE_FILE] = state.get(SAVE_ID) if isinstance(state, dict) else None
        if not isinstance(ids[STATE_FILE], str | None):
            raise UserError(f"trainer state {path / STATE_FILE} is corrupt: its {SAVE_ID} not text")
    known = {i for i in ids.values() if i is not None}
    if len(known) > 1:
        return (
            f"{path} mixes files of different saves ({', '.join(sorted(ids))} do not belong "
            "together): restore the directory from one save"
        )
    return None


def _completing_command(path: Path) -> str:
    """The resume that completes an interrupted save in `path`: that of its run (the run
    directory itself, or the run of its best/ copy), whose kind run.json names."""
    for run in (path, path.parent) if path.name == BEST_DIR else (path,):
        if (run / RUN_FILE).is_file():
            kind = read_json(run / RUN_FILE, "run description")
            kind = kind.get("kind") if isinstance(kind, dict) else None
            kind = kind if isinstance(kind, str) else "KIND"
            return f"`attnlab train {kind} --out {shlex.quote(str(run))} --resume`"
    return f"`attnlab train KIND --out {shlex.quote(str(path))} --resume`"


def checkpoint_description(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of a checkpoint directory, checked: {"kind": ..., "config": {...}}, the
    config with every field. Reading it builds no model, so a command can check the kind
    before loading any weights."""
    if not str(path):  # not the folder "." it would become
        raise UserError("an empty path: give a checkpoint's folder")
    path = Path(path)
    # the journal first: a first save that finishes between the two looks is then found
    if not (path / JOURNAL_FILE).exists() and not (path / MODEL_FILE).is_file():
        if path.is_file():  # a file of a checkpoint (its model.safetensors), say
            ours = (path.parent / MODEL_FILE).is_file()
            instead = f"give its folder, {path.parent}" if ours else "give a checkpoint's folder"
            raise UserError(f"{path} is a file, not a checkpoint: {instead}")
        raise UserError(f"no checkpoint at {path} (expected {path / MODEL_FILE})")
    _check_whole(path)  # a first save interrupted: says how to complete it
    description = read_json(path / CONFIG_FILE, "checkpoint config")
    shaped = isinstance(description, dict) and isinstance(description.get("config"), dict)
    if not shaped or not isinstance(description.get("kind"), str):
        raise UserError(
            f"checkpoint config {path / CONFIG_FILE} lacks 'kind' and 'config'"
            f"{hugging_face_hint(path, description)}"
        )
    try:  # a kind or mixer that a plugin registers, the plugin not loaded: say so, and how
        config = kind_config(get_kind(description["kind"]), description["config"])
    except NotRegistered as error:
        raise UserError(
            f"{path} needs {error.what} {error.name!r}, which nothing in this process registers: "
            "if your own code registers it, load that first (ATTNLAB_PLUGINS=FILE.py attnlab "
            f"...); {error.known}"
        ) from None
    # whole: a field an earlier attnlab did not save (a classifier's long_text) is its default
    return {**description, "config": config_to_dict(config)}


def checked_description(path: str | os.PathLike) -> dict[str, Any]:
    """checkpoint_description, its config checked to fit the weights' shapes (their file's
    header only): before a model is built from it, to resume or to --init a run, or to load."""
    description = checkpoint_description(path)
    kind = get_kind(description["kind"])
    check_config_fits_weights(kind, description["config"], Path(path) / MODEL_FILE)
    return description


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """The model (in eval mode, on `device`), its kind and artefacts saved in a directory."""
    path = Path(path)
    description = checked_description(path)
    kind = get_kind(description["kind"])
    artifacts = load_artifacts(path)
    check_tokenizer(description["config"], artifacts.get("tokenizer"), path / "tokenizer.json")
    check_artifacts_fit(description["config"], artifacts, path)
    with torch.random.fork_rng(devices=[]):  # its first weights, replaced: drawn from no one's
        model = build_model(kind.name, description["config"])
    load_weights(model.to(_saved_dtype(path / MODEL_FILE)), path / MODEL_FILE)
    return Checkpoint(model.to(device).eval(), kind, artifacts, path)


SPECIAL_ID_FIELDS = ("pad_id", "bos_id", "eos_id")  # config fields that name a special token


def check_tokenizer(config: dict[str, Any], tokenizer: Tokenizer | None, name: str) -> None:
    """The tokenizer must name exactly the model's tokens: with fewer, the model could choose
    an id no text stands for; with more, a text could encode to an id the model has no row for.
    And the ids a config gives a role (pad_id, ...) must be special tokens of the tokenizer: a
    default pad_id of 0 would otherwise make some character padding, silently never attended to
    nor scored."""
    if tokenizer is None:
        return
    model_size = config.get("vocab_size")
    if model_size is not None and tokenizer.vocab_size != model_size:
        raise UserError(
            f"{name} has {tokenizer.vocab_size} tokens but the model's vocabulary has "
            f"{model_size}: the tokenizer does not belong to these weights"
        )
    specials = tokenizer.special_tokens
    for field in SPECIAL_ID_FIELDS:
        if field in config and config[field] not in specials.values():
            known = ", ".join(f"{token} = {i}" for token, i in specials.items()) or "none"
            raise UserError(
                f"the model's {field} {config[field]} is not a special token of {name} "
                f"(its special tokens: {known}): set {field} to the tokenizer's own"
            )


def check_config_fits_weights(kind: ModelKind, config: dict[str, Any], file: Path) -> None:
    """Compare the model a config describes with the tensors a weights file holds, before any
    memory is spent on either: the model is built on the meta device (no storage), and its
    building stops once it has more parameters than the file could hold, so a config.json that
    claims 100,000 layers is one line, not gigabytes; so is one whose buffers (a sinusoidal
    table of 10**12 positions) would not fit in memory. Only the file's header is read."""
    header = saved_shapes(file)
    try:
        model = build_on_meta(lambda: build_model(kind.name, config), 2 * len(header) + 16)
    except TooLarge:
        raise UserError(
            f"{file.parent / CONFIG_FILE} describes a model far larger than the {len(header)} "
            f"tensors of {file}: the config does not belong to these weights"
        ) from None
    seen, expected = set(), {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:  # a tied tensor is stored once
            seen.add(id(tensor))
            expected[name] = tuple(tensor.shape)
    wrong = [n for n in expected.keys() & header.keys() if expected[n] != header[n]]
    missing, unexpected = expected.keys() - header.keys(), header.keys() - expected.keys()
    if wrong or missing or unexpected:
        detail = (
            f"{wrong[0]} has shape {header[wrong[0]]} there, the config gives {expected[wrong[0]]}"
            if wrong
            else f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
        raise UserError(f"checkpoint weights {file} do not fit its config: {detail}")
    size = sum(buffer.numel() * buffer.element_size() for buffer in model.buffers())
    if size > memory_bytes(torch.device("cpu")):  # a table of a context of 10**12 positions
        raise UserError(
            f"{file.parent / CONFIG_FILE} gives the model buffers of {size / 2**30:,.0f} GiB, "
            "more than this machine's memory: the config does not belong to these weights"
        )


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
    """Load safetensors weights into `model`, requiring every parameter to be present. Names
    and shapes are checked in the file's header, before any tensor is read."""
    shapes = saved_shapes(file)
    expected = _unique_tensors(model.state_dict())
    missing, unexpected = expected.keys() - shapes.keys(), shapes.keys() - expected.keys()
    if missing or unexpected:
        raise UserError(
            f"checkpoint weights {file} do not fit the model: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    _load_checked(model, file, shapes, expected)


def load_matching_weights(
    model: nn.Module, file: Path, leave=(), crop: tuple[int, int] | None = None
) -> tuple[list[str], list[str]]:
    """Load the weights of `file` that `model` has by name and shape (but those in `leave`), to
    start a model from another's (a classifier from a pre-trained encoder, or one with other
    classes); crop (old, new): its first new positions of each table of old. Returns the
    model's weights left as they were and the file's left unused."""
    shapes = saved_shapes(file)
    expected = _unique_tensors(model.state_dict())
    names = expected.keys() & shapes.keys() - set(leave)
    for name in names if crop else ():
        have, want = shapes[name], tuple(expected[name].shape)
        if len(have) == len(want) and all(map(lambda a, b: a == b or (a, b) == crop, have, want)):
            shapes[name] = want  # read up to the model's shape (_load_checked)
    shared = {n for n in names if shapes[n] == expected[n].shape}
    if not shared:
        raise UserError(f"no weight of {file} fits the model (by name and shape)")
    _load_checked(model, file, {name: shapes[name] for name in shared}, expected)
    return sorted(expected.keys() - shared), sorted(shapes.keys() - shared)


def saved_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header alone."""
    try:
        with safetensors.safe_open(file, framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise UserError(f"no checkpoint weights at {file}") from None
    except Exception as error:  # safetensors raises several types for a damaged header
        raise UserError(f"checkpoint weights {file} are corrupt: {error}") from None


SAFETENSORS_FLOATS = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16,
                      "F16": torch.float16}  # fmt: skip


def _saved_dtype(file: Path) -> torch.dtype:
    """The floating-point type a model was saved in (float64 weights load as float64), from
    the file's header; the default one where its weights mix types."""
    with safetensors.safe_open(file, framework="pt") as f:
        types = {f.get_slice(name).get_dtype() for name in f.keys()}  # noqa: SIM118
    floats = {SAFETENSORS_FLOATS[t] for t in types if t in SAFETENSORS_FLOATS}
    return floats.pop() if len(floats) == 1 else torch.get_default_dtype()


def _load_checked(model, file, shapes, expected) -> None:
    """Load the tensors named in `shapes` (name -> shape in the file's header, or the part of
    it to read), once every shape is the model's: a file cannot make us read more than the
    model holds (but the rest of a table cropped)."""
    for name, shape in shapes.items():
        if shape != tuple(expected[name].shape):
            raise UserError(
                f"checkpoint weight {name} in {file} has shape {shape}, "
                f"the model expects {tuple(expected[name].shape)}"
            )
    try:
        with safetensors.safe_open(file, framework="pt") as f:
            tensors = {n: f.get_tensor(n)[tuple(map(slice, shape))] for n, shape in shapes.items()}
    except Exception as error:  # safetensors raises several types for a damaged file
        raise UserError(f"checkpoint weights {file} are corrupt: {error}") from None
    for name, tensor in tensors.items():
        _check_values(name, tensor, expected[name].dtype, file)
    model.load_state_dict({n: like(t, expected[n]) for n, t in tensors.items()}, strict=False)


def _check_values(name: str, tensor: torch.Tensor, dtype: torch.dtype, file: Path) -> None:
    """A weight the model can take as it is: floating point where the model's is (an integer,
    bool or complex tensor would be cast without a word), and finite."""
    if dtype.is_floating_point and not tensor.dtype.is_floating_point:
        raise UserError(f"checkpoint weight {name} in {file} is {tensor.dtype}, not floating point")
    if tensor.dtype.is_floating_point and not torch.isfinite(tensor).all():
        raise UserError(f"checkpoint weight {name} in {file} holds NaN or infinite values")


def _unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors (same storage) kept once, under their first name."""
    unique = {}  # (storage, offset, shape) -> (name, tensor)
    for name, tensor in state.items():
        local = getattr(tensor, "_local_tensor", tensor)  # an FSDP shard: this rank's part
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(tensor.shape))
        unique.setdefault(key, (name, tensor))
    return dict(unique.values())


def _whole_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What model.safetensors holds: each weight once, whole (gathered from FSDP's shards)."""
    unique = _unique_tensors(model.state_dict())
    return {name: whole(tensor).detach().contiguous() for name, tensor in unique.items()}


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()
