"""`attnlab train KIND`: one command for every registered model kind (models/registry.py).

Settings come, lowest priority first, from the kind's preset (--preset), a TOML file (--config:
top-level kind (checked), out, preset and the kind's data settings; [model] and [training]
tables), then flags, one per field of the data settings, the model config and TrainConfig. A run
directory keeps run.json (kind, preset, data settings), so --resume needs no repeated flags.
--init starts a new run from another checkpoint's weights, model and preprocessing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import re
import shlex
from pathlib import Path
from typing import Any

from attnlab.cli.init_from import (
    check_init_preset,
    check_init_tokenizer,
    init_checkpoint,
    init_shape,
    load_init,
    note_init_data,
)
from attnlab.cli.options import add_config_flags, as_flags, flag_values, read_toml
from attnlab.cli.run_settings import (
    check_toml,
    data_path,
    new_run_settings,
    refuse_data_fields,
    resumed_settings,
)
from attnlab.cli.runs import (
    RUN_FILE,
    check_fits_data,
    claim_run_directory,
    fit_and_report,
    note,
    run_lock,
    stderr_closed,
)
from attnlab.config import config_from_dict, config_to_dict
from attnlab.data import catalog
from attnlab.devices import memory_bytes, pick_device, seed_everything
from attnlab.errors import UserError, os_error_line
from attnlab.files import BEST_DIR, atomic_write_json
from attnlab.models import KINDS
from attnlab.models.registry import (
    CLASSIFY,
    CLASSIFY_IMAGE,
    FILL_MASK,
    GENERATE,
    GENERATE_IMAGE,
    TRANSLATE,
    ModelKind,
    a_kind,
    check_trainable,
    check_trainable_before_data,
    get_kind,
)
from attnlab.training.checkpoints import (
    finish_checkpoint,
    load_artifacts,
)
from attnlab.training.distributed import MODES, Group, launch
from attnlab.training.sources import DataRequest
from attnlab.training.trainer import TrainConfig, Trainer, prepare

NEXT_STEPS = {
    GENERATE: "sample it:  attnlab sample {out}",
    TRANSLATE: 'translate:  attnlab translate {out} "..."',
    FILL_MASK: 'fill in:    attnlab fill-mask {out} "the movie was [MASK] good ."',
    CLASSIFY: 'classify:   attnlab classify {out} "..."',
    CLASSIFY_IMAGE: "score it:   attnlab evaluate {out}\n"
    "classify:   attnlab classify-image {out} IMAGE.png",
    GENERATE_IMAGE: "score it:   attnlab evaluate {out}\ndraw:       attnlab sample-images {out}",
}


def register(subparsers) -> None:
    from attnlab.cli import COMMANDS, HelpFormatter

    train = subparsers.add_parser(
        "train",
        help=COMMANDS["train"][1],
        description="Train a model. `attnlab train KIND --help` lists a kind's settings.",
        formatter_class=HelpFormatter,
    )
    kinds = train.add_subparsers(dest="kind", metavar="KIND", required=True, title="model kinds")
    for kind in KINDS.values():
        _add_kind(kinds, kind)


def _add_kind(kinds, kind: ModelKind) -> None:
    from attnlab.cli import HelpFormatter

    parser = kinds.add_parser(
        kind.name,
        help=kind.description,
        formatter_class=HelpFormatter,
        description=f"Train {kind.description}. Settings come from the preset, then "
        "--config, then flags.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file: out, preset, data settings; [model] and [training] (default: none)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(kind.presets),
        help=f"model shape to start from (default: {kind.default_preset})",
    )
    parser.add_argument("--out", metavar="DIR", help=f"run directory (default: runs/{kind.name})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    starts = " or ".join(map(a_kind, (kind.name, *kind.init_from)))
    tokens = any(f.name == "tokenizer" for f in dataclasses.fields(kind.data_config))
    flagged = {f.name for f in dataclasses.fields(kind.config)} - kind.data_fields  # igpt's: data
    context = " (a shorter --context-length crops its positions; a longer one needs none)"
    context = context if "context_length" in flagged else ""
    parser.add_argument(
        "--init",
        metavar="CKPT",
        help=f"start from the weights of {starts} checkpoint: its model shape"
        f"{' and tokenizer' if tokens else ''}"
        f"{context}; layers it "
        "lacks start new (default: none, random weights)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="end once training steps have taken this long (a resumed run: this long more): one "
        "more step, evaluated and saved (default: none)",
    )
    parser.add_argument(
        "--distributed",
        choices=MODES,
        help="train as one of torchrun's processes, the batch split among them: ddp (a whole "
        "model per process) or fsdp (each holds a shard); see the README (default: one process)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="with --distributed: start N processes on this machine, as torchrun "
        "--standalone --nproc-per-node N would (default: as started)",
    )
    add_config_flags(parser, kind.data_config, f"data ({kind.data_config.__name__})")
    defaults = config_to_dict(kind.presets[kind.default_preset])
    title = f"model ({kind.config.__name__})"  # less the fields a user does not set
    add_config_flags(parser, kind.config, title, defaults, kind.data_fields | kind.unused_fields)
    add_config_flags(parser, TrainConfig, "training (TrainConfig)", skip=kind.unused_fields)
    parser.set_defaults(handler=functools.partial(train, kind.name))


def train(kind_name: str, args: argparse.Namespace) -> int:
    kind = get_kind(kind_name)
    stderr_closed.clear()  # a reader gone in an earlier command of this process: not this one's
    try:
        return _command(kind, args)
    except UserError as error:
        # a config's field named as the user set it: "GPTConfig.n_heads must ..." reads
        # "--n-heads must ...", or "n_heads must ... (in FILE or a flag)" given a config file
        message = str(error)
        for cls in (kind.config, kind.data_config, TrainConfig):
            if args.config:
                message = re.sub(rf"\b{cls.__name__}\.", "", message)
            else:
                message = as_flags(message, cls)
        if args.config and message != str(error):
            message += f" (in {args.config} or a flag)"
        error.args = (message,)
        raise


def _command(kind: ModelKind, args: argparse.Namespace) -> int:
    if args.time_limit is not None and not args.time_limit > 0:
        raise UserError(f"--time-limit must be a positive number of minutes, got {args.time_limit}")
    if args.init and args.resume:
        raise UserError("--init starts a new run; a resumed run continues from its own weights")
    if args.processes is not None:
        return _launch(args)
    toml = read_toml(args.config)
    source = args.config or "flags"
    data_keys = check_toml(toml, kind, source)
    if args.init:  # the weights read the ids of the tokenizer they were trained with
        check_init_tokenizer(args.init, {**toml, **flag_values(args, kind.data_config)})
        check_init_preset(kind, args, toml)
    out = args.out if args.out is not None else toml.get("out", f"runs/{kind.name}")
    if not out:  # not read as the current folder
        where = "--out" if args.out is not None else f"{source}: out"
        raise UserError(f"{where} is empty: give a run directory")
    out = Path(out)
    group = Group.for_run(args.distributed)  # alone, or one of torchrun's processes
    # a new run's settings before its directory exists: a folder named like a dataset ("sst2")
    # is not taken for it, and a bad setting is one line before anything slow
    chosen = None if args.resume else new_run_settings(kind, args, toml, data_keys, source)
    if chosen and "batch_size" not in kind.unused_fields:  # on every rank, before rank 0 makes
        group.check_batch(chosen[2].batch_size)  # the folder (and removes it as another reads)
    claim_run_directory(out, args.resume)
    with group.running(), _locked(out, group):
        with group.writer_first():
            for checkpoint in (out, out / BEST_DIR):  # a save a crash interrupted
                finish_checkpoint(checkpoint)
        claim_run_directory(out, args.resume)  # again: the finished save may be a checkpoint
        if chosen is None:  # the settings are the run's own, with what the file and flags change
            chosen, source = resumed_settings(kind, args, toml, data_keys, out), str(out / RUN_FILE)
        return _train(kind, args, chosen, source, out, group)


def _train(kind: ModelKind, args, settings, source: str, out: Path, group: Group) -> int:
    init = init_checkpoint(kind, args.init)
    run, (model_base, given), train_config = settings
    if init is not None:  # the checkpoint's model, with only its regularisation changeable
        model_base = init_shape(args, init, model_base, given)
        run["init"] = args.init
    if "batch_size" not in kind.unused_fields:  # before anything is written or built
        group.check_batch(train_config.batch_size)
    prepare(train_config)  # the CPU kernels build while the data and model are prepared
    kept = data_path(run["data"], catalog.in_root)  # a path in the data root: read there
    settings = config_from_dict(kind.data_config, kept, source=f"{source} data settings")
    kept_from = out if args.resume else args.init  # the tokenizer (and others) to reuse
    artifacts = load_artifacts(kept_from) if kept_from else None
    # a new run's classes are its data's; a head for other classes starts new
    init_classes = artifacts.pop("classes", None) if init is not None else None
    log = note if group.is_writer else lambda message: None
    if init is not None:
        note_init_data(kind, args.init, init, run["data"], log)
    memory = _model_memory(pick_device(train_config.device), group)
    check_trainable_before_data(kind, model_base, memory, f"{source} [model]")
    with group.writer_first():  # rank 0 fetches and caches; the others then read
        data = kind.build_data(DataRequest(settings, model_base, train_config, artifacts, log))
    refuse_data_fields({k for k, v in data.model_fields.items() if k in given and given[k] != v})
    if init is not None:  # a new head for other classes; all else must be what it read
        check_fits_data(args.init, init["config"], data.model_fields, free={"n_classes"})
    model_config = config_from_dict(
        kind.config, {**model_base, **data.model_fields}, source=f"{source} [model]"
    )
    check_trainable(kind, model_config, memory)  # on no device: its size first
    seed_everything(train_config.seed)  # the initial weights too, so a run can be repeated
    model = kind.model(model_config)
    if init is not None:
        load_init(kind, model, args.init, (init_classes, data.artifacts.get("classes")), log)
    trainer = Trainer(  # before the run's file: a probe that cannot score the model refuses
        model,
        train_config,
        data.train,
        data.eval,
        artifacts=data.artifacts,
        out_dir=out,
        metrics=data.metrics,
        keep_best=data.best,
        group=group,
    )
    if group.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / RUN_FILE, run)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return fit_and_report(
        trainer,
        out,
        command=f"train {kind.name}",
        resume=args.resume,
        summary=f"{data.summary}; model {params:.2f}M parameters",
        next_step=_next_steps(kind, run, out),
        time_limit=args.time_limit,
    )


def _next_steps(kind: ModelKind, run: dict[str, Any], out: Path) -> str:
    """What to do with the trained model: the commands its kind's capabilities offer."""
    shown = shlex.quote(str(out))  # a command to paste: a name with spaces stays one
    steps = [NEXT_STEPS[c].format(out=shown) for c in sorted(kind.capabilities) if c in NEXT_STEPS]
    if str(run["data"].get("data", "")).startswith("task:"):  # token puzzles, not text to sample
        steps = [f"score it:   attnlab evaluate {shown}"]
    return "\n".join(steps) or f"the checkpoint is in {out}"


def _model_memory(device, group: Group) -> int:
    """The memory the model trains in: under FSDP each rank holds a shard, on a GPU of its own
    or in the one machine's memory; otherwise each a whole copy, in its own GPU's memory or a
    share of the machine's."""
    memory = memory_bytes(device)
    if group.mode == "fsdp":
        return memory * group.world if device.type == "cuda" else memory
    return memory if device.type == "cuda" else memory // group.world


@contextlib.contextmanager
def _locked(out: Path, group: Group):
    """The run directory, owned by rank 0 for the run (run_lock); when another process holds
    it, or it cannot be made, every rank stops with rank 0's one line (the others would wait
    on rank 0 forever)."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if group.is_writer:
            try:
                stack.enter_context(run_lock(out))
            except UserError as error:
                refusal = str(error)
            except OSError as error:  # a folder it cannot make: under a file, read-only
                refusal = os_error_line(error)
        if refusal := group.from_writer(refusal):
            raise UserError(refusal)  # rank 0's is printed; the others are silent
        yield


def _launch(args: argparse.Namespace) -> int:
    """--processes N: this command again as N ranks (less the flag), by torchrun's launcher."""
    if args.processes < 1 or args.distributed is None or "RANK" in os.environ:
        raise UserError(
            "--processes N starts N ranks of a --distributed run (N >= 1), and not from within "
            "torchrun"
        )
    argv, skip = [], False
    for word in args.argv:
        if skip or word == "--processes":
            skip = not skip
            continue
        if not word.startswith("--processes="):
            argv.append(word)
    return launch(args.processes, argv)
