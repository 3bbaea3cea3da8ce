"""What resuming reads beside the weights: trainer_state.json (step, elapsed time, training config,
RNG and data-sampler states) and optimizer.safetensors (the optimizer's tensors, its param groups
as JSON in the file's metadata). Each is checked as it is read, so a hand-edited or damaged file
is one line, not a failure halfway through resuming."""

from __future__ import annotations

import base64
import json
import os
import random
import warnings
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch.optim import Optimizer

from attnlab.errors import UserError
from attnlab.files import read_json
from attnlab.training.distributed import ALONE, Group, like, whole

OPTIMIZER_FILE, STATE_FILE = "optimizer.safetensors", "trainer_state.json"
SAVE_ID = "save_id"  # one random id per save, in the files that change between saves

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
            wrong = isinstance(field, bool) or not isinstance(field, kind)
            if wrong or (isinstance(field, (int, float)) and field < 0):  # a step, a time
                raise UserError(f"trainer state {file} is damaged: {where}{name} is missing or bad")
    return state


def load_training_state(path: str | os.PathLike, optimizer: Optimizer) -> dict[str, Any]:
    """A checkpoint's trainer state, with the optimizer's state per parameter restored (its
    groups keep their settings, weight decay and betas: a resumed run may change them)."""
    path = Path(path)
    state = read_training_state(path)
    file = path / OPTIMIZER_FILE
    if not file.is_file():
        raise UserError(f"cannot resume: {file} is missing")
    live = optimizer.param_groups  # their settings stay; their state comes from the file
    params = [p for group in live for p in group["params"]]
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    try:
        with safetensors.safe_open(file, framework="pt") as f:
            groups = json.loads(f.metadata()["param_groups"])
            _check_groups(groups, live, path)
            groups = [{**g, "params": s["params"]} for g, s in zip(live, groups, strict=True)]
            for name in f.keys():  # noqa: SIM118
                # "INDEX.KEY", a number or of its parameter's shape: checked before it is read
                index, _, key = name.partition(".")
                shape = list(f.get_slice(name).get_shape())
                param = params[int(index)] if index.isdigit() and int(index) < len(params) else None
                if param is None or shape not in ([], list(param.shape)):
                    raise UserError(f"optimizer state {file} does not fit the model")
                per_param.setdefault(int(index), {})[key] = like(f.get_tensor(name), param)
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except UserError:
        raise
    except Exception as error:  # safetensors raises several types for a damaged file
        raise UserError(f"optimizer state {file} is corrupt: {error}") from None
    return state


def _check_groups(saved: list[dict], live: list[dict], path: Path) -> None:
    """An optimizer's state is saved by the parameters' places in its groups (decayed, not
    decayed, ...): one saved with other groups would give their moments to other parameters."""
    was, now = ([len(g["params"]) for g in groups] for groups in (saved, live))
    if was != now:
        raise UserError(
            f"optimizer state {path / OPTIMIZER_FILE} was saved by another attnlab, which "
            f"grouped the parameters otherwise for weight decay (groups of {was}, now {now}): "
            f"resume it with that version, or start a new run from its weights with --init {path}"
        )


def resumed_dtype(saved: Any, precision: str, here: torch.dtype) -> torch.dtype:
    """The dtype a resumed run trains in: for precision "auto", the one it started in (`saved`,
    trainer_state.json's "precision"), whatever this machine would pick (`here`): another
    processor measures otherwise. Where the two differ, a warning says so."""
    kept = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(saved)
    if precision != "auto" or kept is None:
        return here
    if kept != here:
        warnings.warn(
            f"the run goes on in {saved}, the precision it started in (auto picks "
            f"{str(here).removeprefix('torch.')} on this machine; --precision fp32 or bf16 "
            "chooses)",
            RuntimeWarning,
            stacklevel=3,
        )
    return kept


def resumed_best(best: Any, weights: Path) -> dict[str, Any]:
    """The best evaluation a resumed run compares its own with (trainer_state.json's "best"),
    while its checkpoint (`weights`, in best/) is the one it records (its save id); a run
    copied without best/, or killed between saving a new best/ and the checkpoint that records
    it, keeps the best anew, with a warning, so that what it reports as best is on disk."""
    if not isinstance(best, dict) or not isinstance(best.get("value"), (int, float)):
        return {}
    try:  # None: a run saved before best/ had its id recorded
        recorded = weights.is_file() and best.get(SAVE_ID) in (None, save_id_of(weights))
    except UserError:  # a damaged best/: kept anew too, no reason to refuse the resume
        recorded = False
    if recorded:
        return best
    gone = "is missing" if not weights.is_file() else "is not the best its checkpoint records"
    warnings.warn(
        f"{weights.parent} {gone}: the best weights are kept again from the next "
        f"evaluation on (step {best.get('step')}'s {best.get('score')} {best['value']:.4f} "
        "is not compared)",
        RuntimeWarning,
        stacklevel=3,
    )
    return {}


def save_id_of(file: Path) -> str | None:
    """The SAVE_ID of a safetensors file of a checkpoint (None in one saved without)."""
    try:
        with safetensors.safe_open(file, framework="pt") as f:
            return (f.metadata() or {}).get(SAVE_ID)
    except Exception as error:  # safetensors raises several types for a damaged header
        raise UserError(f"checkpoint file {file} is corrupt: {error}") from None


def random_states(data: Any, group: Group = ALONE) -> dict[str, Any]:
    """The "rng" of a trainer state: torch's, CUDA's, Python's and the data sampler's (`data`,
    with state_dict) generators, as JSON; of several ranks, rank 0's and, in "ranks", every
    rank's torch and CUDA generators (their dropout differs). Every rank calls it."""
    generators = {
        "torch": encode_tensor(torch.get_rng_state()),
        "cuda": [encode_tensor(s) for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
    }
    ranks = group.gather(generators) if group.world > 1 else []
    return {
        **generators,
        "python": random.getstate()[1],
        "data": {k: encode_tensor(v) for k, v in data.state_dict().items()},
        **({"ranks": ranks} if ranks else {}),
    }


def restore_random_states(path: Path, rng: dict[str, Any], data: Any, group: Group = ALONE) -> bool:
    """Set torch's, CUDA's, Python's and the data sampler's generators (`data`, with
    load_state_dict) from the "rng" of a checkpoint's trainer state: each rank its own torch and
    CUDA ones where as many ranks saved it, else rank 0's. Returns whether they were this rank's
    own. A hand-edited state that does not decode is one line."""
    ranks = rng.get("ranks") if group.world > 1 else None
    own = isinstance(ranks, list) and len(ranks) == group.world
    generators = ranks[group.rank] if own else rng
    try:
        torch.set_rng_state(decode_tensor(generators["torch"]))
        if torch.cuda.is_available():  # as many GPUs as both machines have: saved on 8, run on 1
            for device, saved in enumerate(generators["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(decode_tensor(saved), device)
        random.setstate((3, tuple(rng["python"]), None))
        data.load_state_dict({k: decode_tensor(v) for k, v in rng["data"].items()})
    except (ValueError, TypeError, KeyError, OverflowError, RuntimeError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"trainer state {Path(path) / STATE_FILE} is damaged: its random state cannot be "
            f"restored ({reason})"
        ) from None
    return own or group.rank == 0


def encode_tensor(tensor: torch.Tensor) -> str:
    """A uint8 tensor (an RNG state) as base64 text for trainer_state.json."""
    return base64.b64encode(tensor.numpy().tobytes()).decode()


def decode_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


def optimizer_bytes(optimizer: Optimizer, metadata: dict[str, str]) -> bytes:
    state = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": whole(value)
        for index, param_state in state["state"].items()
        for key, value in param_state.items()
    }
    return safetensors.torch.save(
        tensors, metadata={"param_groups": json.dumps(state["param_groups"]), **metadata}
    )
