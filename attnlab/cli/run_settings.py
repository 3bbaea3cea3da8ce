"""A run's settings: a new run's from its kind's preset, then the config file, then the flags;
a resumed run's from its run folder, where the file and the flags may change only training
settings. Each bad setting is one line before anything slow."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attnlab.cli.options import as_given, build_config, flag_values, merge_layers
from attnlab.cli.run_file import read_run
from attnlab.cli.runs import RUN_FILE, check_own_data, note
from attnlab.config import check_fields, check_read, config_to_dict, field_names
from attnlab.data import catalog
from attnlab.devices import pick_device
from attnlab.errors import UserError
from attnlab.models.registry import ModelKind, a_kind, get_kind
from attnlab.training.checkpoints import MODEL_FILE, checked_description
from attnlab.training.config import TrainConfig
from attnlab.training.state import OPTIMIZER_FILE, read_training_state


def refuse_data_fields(names: set[str]) -> None:
    """Model fields the data sets (the vocabulary's size, the classes) are no settings: those
    a kind declares are refused before the data is read, any other once it is."""
    if names:
        many = len(names) > 1
        raise UserError(
            f"{', '.join(sorted(names))} {'come' if many else 'comes'} from the data: "
            f"leave {'them' if many else 'it'} unset"
        )


def check_toml(toml: dict[str, Any], kind: ModelKind, path: str) -> set[str]:
    """Reject unknown keys, misplaced tables and fields the kind does not use; returns the
    data-setting keys present."""
    if "kind" in toml and get_kind(str(toml["kind"])) is not kind:  # first: its keys are theirs
        raise UserError(f"{path} is for `attnlab train {toml['kind']}`, not {kind.name}")
    data_fields = set(field_names(kind.data_config))
    tables = {"model": kind.config, "training": TrainConfig}  # a config file's tables
    allowed = {"kind", "out", "preset", *data_fields, *tables}
    places = {"": allowed - tables.keys(), **{k: set(field_names(c)) for k, c in tables.items()}}
    refuse_misplaced(toml, places, path)
    unknown = sorted(set(toml) - allowed)
    if unknown:
        raise UserError(
            f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    for key in ("out", "preset"):
        if key in toml and not isinstance(toml[key], str):
            raise UserError(f"{path}: '{key}' must be a string")
    for key, cls in tables.items():
        if key in toml and not isinstance(toml[key], dict):
            raise UserError(f"{path}: '{key}' must be a table ([{key}])")
        # the fields the kind ignores have no flags, but a file may name them
        if unused := sorted(kind.unused_fields & toml.get(key, {}).keys()):
            raise UserError(f"{path} [{key}]: {kind.name} does not use {', '.join(unused)}")
        # keys and types, named by the file (resuming too: a typo is an unknown key, no change)
        check_fields(cls, toml.get(key, {}), source=f"{path} [{key}]")
    return data_fields & set(toml)


def refuse_misplaced(toml: dict[str, Any], places: dict[str, set[str]], path: str) -> None:
    """A key in the wrong table ([model] max_iters, a top-level n_layers) is named with the
    one table it belongs in; places: table ("" for the top level) -> the keys it takes."""
    where = {"": "at the top level (before any table)"} | {t: f"in [{t}]" for t in places if t}
    for here, keys in places.items():
        table = toml.get(here, {}) if here else toml
        for key in sorted(table if isinstance(table, dict) else ()):
            homes = [t for t, theirs in places.items() if key in theirs]
            if key not in keys and key not in places and len(homes) == 1:
                raise UserError(f"{path}: {key} belongs {where[homes[0]]}, not {where[here]}")


def new_run_settings(kind: ModelKind, args, toml, data_keys, source: str):
    """A new run's settings: preset, data settings and configs from the file and the flags."""
    preset = args.preset or toml.get("preset") or kind.default_preset
    if preset not in kind.presets:
        raise UserError(  # a file's: a flag's is checked as it is parsed
            f"{source}: unknown preset {preset!r}; choose one of {', '.join(kind.presets)}"
        )
    data = build_config(
        kind.data_config,
        {k: toml[k] for k in data_keys},
        flag_values(args, kind.data_config),
        source=f"{source} data settings",
    )
    run = {
        "kind": kind.name,
        "preset": preset,
        "data": data_path(config_to_dict(data), catalog.here),
    }
    base = config_to_dict(kind.presets[preset])
    given = given_settings(kind.config, base, toml.get("model", {}), args)
    model = ({**base, **given}, given)
    check_fields(kind.config, model[0], source=f"{source} [model]")  # values: once data is read
    refuse_data_fields(kind.data_fields & given.keys())
    train, _ = training_settings({}, toml, args, source)
    return run, model, train


def resumed_settings(kind: ModelKind, args, toml, data_keys, out: Path):
    """A resumed run's settings, from its directory; the file and the flags may change only
    training settings (a data or model setting equal to the run's is no change)."""
    if (out / RUN_FILE).is_file() and not (out / MODEL_FILE).is_file():
        raise UserError(
            f"{out} has no checkpoint to resume: the run stopped before its first save; "
            "start it again without --resume"
        )
    run = read_run(out, "run description (nothing to resume?)")  # an older run's: upgraded
    if not isinstance(run, dict) or not isinstance(run.get("data"), dict):
        raise UserError(f"{out / RUN_FILE} is not a run description")
    if get_kind(run.get("kind", kind.name)) is not kind:
        raise UserError(f"{out} holds {a_kind(run['kind'])} run: resume it with that kind")
    saved = checked_description(out)["config"]  # a config of 10**30 layers: not built
    if not (out / OPTIMIZER_FILE).is_file():  # a copy without it: before the data is read
        raise UserError(
            f"cannot resume: {out / OPTIMIZER_FILE} is missing (--init {out} starts a new run "
            "from its weights)"
        )
    data = {**{k: toml[k] for k in data_keys}, **flag_values(args, kind.data_config)}
    given = {**data_path(data), **toml.get("model", {}), **flag_values(args, kind.config)}
    # a path kept relative: in the data root, else (older runs) read here
    before = data_path({**saved, **data_path(run["data"], catalog.in_root)})
    changed = [as_given(args, k, v) for k, v in given.items() if before.get(k) != v]
    if changed or (args.preset or toml.get("preset")) not in (None, run.get("preset")):
        raise UserError(
            f"cannot change the data or the model ({', '.join(changed) or 'preset'}) when "
            "resuming: leave them out, a resumed run keeps its own"
        )
    refuse_unread(kind.config, saved, given)  # an LSTM run's own n_heads given back changes nothing
    remedy = "put it there to resume (a run resumes on its own data; --init starts a new run)"
    check_own_data(before.get("data"), out, remedy)
    state = read_training_state(out)
    train, given = training_settings(state["train_config"], toml, args, "--resume")
    check_device_is_here(train.device, given, out)
    if train.seed != state["train_config"].get("seed", train.seed):
        raise UserError(
            f"--seed {train.seed}: a resumed run carries on its own random state (seed "
            f"{state['train_config']['seed']}); a new seed starts a new run"
        )
    if train.max_iters <= state["step"]:
        note(f"note: {out} is at step {state['step']} already (max_iters {train.max_iters}): "
             "nothing to train; a larger --max-iters trains on")  # fmt: skip
    return run, (saved, saved), train


def training_settings(saved: dict[str, Any], toml, args, source: str):
    """The TrainConfig of a run's saved settings (none for a new run) < the file < the flags,
    and the settings given (file and flags, as given_settings leaves them)."""
    given = given_settings(TrainConfig, {}, toml.get("training", {}), args, saved)
    return build_config(TrainConfig, saved, given, source=source), given


def given_settings(cls: type, base: dict[str, Any], file: dict[str, Any], args, saved=None):
    """The settings of `cls` a config file's table and the flags give (a flag winning), checked
    against what base < a resumed run's saved settings < file < flags would read: a setting
    the file reads on its own (over base, a preset) that the flags or the run leave unread (the
    file's n_heads under --mixer lstm, its min_learning_rate under --lr-schedule constant) is
    left out with a note; any other given and unread is refused."""
    flags = flag_values(args, cls)
    given = merge_layers(file, flags)
    if not (unread := getattr(cls, "unread", None)):
        return given
    reasons = unread(merge_layers(base, saved or {}, given))
    moot = (reasons.keys() - unread(merge_layers(base, file)).keys()) & file.keys()
    for name in sorted(moot - flags.keys()):
        note(f"note: {name} in {args.config} left out: a setting {reasons[name]}")
        del given[name]
    check_read(reasons, given, cls.__name__)
    return given


def refuse_unread(cls: type, values: dict[str, Any], given: Iterable[str]) -> None:
    """Refuse settings given that a config of these values would not read (n_heads for an
    LSTM, min_learning_rate for a constant schedule)."""
    if unread := getattr(cls, "unread", None):
        check_read(unread(values), given, cls.__name__)


def check_device_is_here(device: str, given: dict[str, Any], out: Path) -> None:
    """A run resumes on the device it was trained on, unless given another: one this machine
    lacks (a GPU's run on a laptop) is one line saying how to resume it here."""
    if "device" in given:  # the user's choice: pick_device refuses it as asked for
        return
    try:
        pick_device(device)
    except UserError:
        raise UserError(
            f"{out} was trained with --device {device}, which is not available here: give "
            "--device auto (or cpu) to resume it here"
        ) from None


def data_path(settings: dict[str, Any], find=catalog.where) -> dict[str, Any]:
    """Data settings with the `data` path found: by catalog.where, the real file it reads (a
    dataset named by another path is the same data), by catalog.here, as a run keeps it, or by
    catalog.in_root, as a run's kept path is read."""
    if not isinstance(settings.get("data"), str):
        return settings
    return {**settings, "data": find(settings["data"]) or settings["data"]}
