"""`attnlab train KIND --init CHECKPOINT`: a new run that starts from another checkpoint's
weights, model shape and preprocessing; what may change (regularisation, the data, a class head
for other classes) and what may not."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from attnlab.cli.options import as_given, flag_values
from attnlab.cli.runs import trained_data
from attnlab.config import config_to_dict
from attnlab.devices import meta_device
from attnlab.errors import UserError
from attnlab.models.registry import ModelKind, a_kind, get_kind
from attnlab.training.checkpoints import (
    MODEL_FILE,
    checked_description,
    load_matching_weights,
    saved_shapes,
)

# model fields a run started from another's weights (--init) may change: its regularisation
# and how a classifier reads a text; and its context (position tables cropped to a shorter one;
# a longer one only where there are none: RoPE, ALiBi, no positions, a recurrent mixer)
TUNABLE = {"dropout", "pooling", "long_text"}
CONTEXT = "context_length"


def init_shape(args, init, model_base: dict, given: dict) -> dict[str, Any]:
    """The model settings of a run --init starts: the checkpoint's shape, where a setting given
    may change only its regularisation (TUNABLE) or its context (CONTEXT: load_init checks it
    against the weights)."""
    shape = {k: v for k, v in init["config"].items() if k in model_base}
    context = CONTEXT if isinstance(given.get(CONTEXT), int) else None  # else (0): its error
    if changed := sorted(
        k for k in given.keys() & shape.keys() - TUNABLE - {context} if given[k] != shape[k]
    ):
        has = ", ".join(f"{k} {shape[k]!r}" for k in changed)
        raise UserError(
            f"--init takes the model from {args.init} ({has}): leave "
            f"{', '.join(as_given(args, k, given[k]) for k in changed)} out"
        )
    return {**model_base, **shape, **given}


def load_init(kind: ModelKind, model, init: str, classes, log) -> None:
    """The weights of checkpoint `init` into `model`, but a class head for other classes
    (`classes`: the checkpoint's and this data's), which starts new."""
    before, now = classes
    fresh = class_head(kind, model.config) if None not in classes and before != now else set()
    old = checked_description(init)["config"].get(CONTEXT)
    crop = (
        (old, model.config.context_length) if old != getattr(model.config, CONTEXT, old) else None
    )
    if crop:
        check_croppable(model, init, crop)
    new, unused = load_matching_weights(model, Path(init) / MODEL_FILE, fresh, crop)
    why = ""
    if fresh:
        why = f" (this data's classes are {', '.join(now.names)}, not {', '.join(before.names)})"
    cropped = f"; a context of {crop[1]}, not its {crop[0]}" if crop else ""
    log(
        f"started from {init}; new: {', '.join(new) or 'none'}{why}; "
        f"left out: {', '.join(unused) or 'none'}{cropped}"
    )


def check_croppable(model, init: str, crop: tuple[int, int]) -> None:
    """A UserError where a layer's function spans the whole context (Hyena's filters): read at
    another length, its weights would compute something else, not the first positions of it; and
    where a longer context would need rows a position table of the checkpoint lacks."""
    stretched = [n for n, m in model.named_modules() if getattr(m, "stretches_over_context", False)]
    if stretched:
        raise UserError(
            f"--init {init} does not crop to --context-length {crop[1]}: its {stretched[0]} is "
            f"spread over all its {crop[0]} positions (not a table of them), so another context "
            "changes what it computes; leave --context-length out"
        )
    old, new = crop
    if new > old and (tables := position_tables(model, Path(init) / MODEL_FILE, crop)):
        raise UserError(
            f"--init {init} has no positions past its {old}: its {tables[0]} is a table of {old} "
            f"rows, so --context-length {new} would read positions it never learned; give "
            f"{old} or fewer, or start from a model without one (RoPE, ALiBi, a recurrent mixer)"
        )


def position_tables(model, file: Path, crop: tuple[int, int]) -> list[str]:
    """The weights of `model` that are tables of positions: of the shape saved in `file` but for
    one dimension, crop[0] there and crop[1] here."""
    shapes, here = saved_shapes(file), model.state_dict()
    return sorted(
        name
        for name in shapes.keys() & here.keys()
        if len(shapes[name]) == here[name].dim()
        and any((a, b) == crop for a, b in zip(shapes[name], here[name].shape, strict=True))
    )


def class_head(kind: ModelKind, config) -> set[str]:
    """The weights whose shape follows the class count: a classifier's head."""
    with meta_device():
        ours = kind.model(config).state_dict()
        more = kind.model(dataclasses.replace(config, n_classes=config.n_classes + 1)).state_dict()
    return {name for name, tensor in ours.items() if tensor.shape != more[name].shape}


def check_init_tokenizer(init: str, settings: dict[str, Any]) -> None:
    """--init brings its run's tokenizer: another one given (a flag, a config file's) would be
    recorded and silently unused; the same one, as the shape's flags may be, is no change. A
    checkpoint without one (weights from elsewhere) takes the one given, if it fits them."""
    if not (Path(init) / "tokenizer.json").is_file():
        return
    own = trained_data(init).get("tokenizer")
    if settings.get("tokenizer", own) != own:
        raise UserError(
            f"--init takes the tokenizer from {init} too ({own or 'its own'}): leave "
            "--tokenizer (and a config file's tokenizer) unset"
        )


def note_init_data(kind: ModelKind, init: str, description, data: dict[str, Any], log) -> None:
    """A note where the --init run of this kind read other data than this run's default: the
    default may not be what was meant (fine-tuning on new data is --data's to say)."""
    theirs = trained_data(init).get("data")
    default = {f.name: f.default for f in dataclasses.fields(kind.data_config)}.get("data")
    ours = data.get("data")
    if get_kind(description["kind"]) is kind and theirs not in (None, ours) and ours == default:
        log(f"note: {init} was trained on {theirs}; this run reads {ours}, the default: "
            "give --data to train on other data")  # fmt: skip


def check_init_preset(kind: ModelKind, args, toml: dict[str, Any]) -> None:
    """--init brings its run's shape: a --preset of another one, where the file and flags leave
    it, would be ignored (one the checkpoint has is no change). A config file's preset is the
    shape of its runs without --init (configs/sst2_finetune.toml)."""
    if args.preset is None:
        return
    preset = config_to_dict(kind.presets[args.preset])
    shape = init_checkpoint(kind, args.init)["config"]
    given = {**toml.get("model", {}), **flag_values(args, kind.config)}
    free = TUNABLE | kind.data_fields | given.keys()
    if differ := sorted(k for k in preset.keys() & shape.keys() - free if preset[k] != shape[k]):
        has = ", ".join(f"{k} {shape[k]!r}" for k in differ)
        raise UserError(f"--init takes the model from {args.init} ({has}): leave --preset out")


def init_checkpoint(kind: ModelKind, path: str | None) -> dict[str, Any] | None:
    """The description of the --init checkpoint, checked to be one this kind starts from."""
    if path is None:
        return None
    description = checked_description(path)  # a config of 10**30 layers: not built
    starts = (kind.name, *kind.init_from)
    if get_kind(description["kind"]).name not in starts:
        raise UserError(
            f"--init {path} holds {a_kind(description['kind'])} model; `attnlab train {kind.name}` "
            f"starts from {' or '.join(a_kind(name) for name in starts)} checkpoint"
        )
    return description
