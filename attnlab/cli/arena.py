"""`attnlab arena`: each token mixer in the same language model, on the same data, batches and
budget, at matched size (evaluation/arena.py); `--scaling`: each mixer's cost against sequence
length (evaluation/scaling.py)."""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

from attnlab.cli.options import check_seed, given_flags
from attnlab.cli.runs import note
from attnlab.errors import UserError
from attnlab.files import check_writable
from attnlab.signals import sigterm_as_interrupt

ARENA_MIXERS = "attention,lstm,hyena,mamba"


def register(subparsers) -> None:
    from attnlab.cli import COMMANDS, HelpFormatter

    parser = subparsers.add_parser(
        "arena",
        help=COMMANDS["arena"][1],
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--out", help="report folder, new or empty (default: runs/arena; --scaling: runs/scaling)"
    )
    parser.add_argument(
        "--mixers",
        help=f"comma-separated, each once (default: {ARENA_MIXERS}; --scaling measures every "
        "mixer by default, attention and mamba with each of their kernels: 'attention (eager)', "
        "'mamba (fused)', ...; a plain name there means all its kernels)",
    )
    race = parser.add_argument_group("the race (default mode)")
    race.add_argument("--data", default="tinyshakespeare", help="text, dataset or task:NAME")
    race.add_argument("--tokenizer", default="char", help="char, byte, bpe:N, gpt2 or a file")
    race.add_argument("--params", type=float, default=1e6, help="block parameters per model")
    race.add_argument("--n-layers", type=int, default=4, help="blocks per model")
    race.add_argument("--context-length", type=int, default=256, help="tokens per window")
    race.add_argument("--batch-size", type=int, default=32, help="windows per step")
    race.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate")
    race.add_argument(
        "--weight-init",
        choices=("gpt2", "fan_in"),
        default="gpt2",
        help="fan_in: embeddings N(0, 1), matrices N(0, 1/fan_in), the head untied (GPTConfig)",
    )
    race.add_argument(
        "--time", type=float, help="minutes of training per mixer (default: 5, unless --tokens)"
    )
    race.add_argument(
        "--tokens",
        type=float,
        help="training tokens per mixer, instead of --time; the learning rate falls at the end",
    )
    race.add_argument("--eval-interval", type=int, default=50, help="steps between evaluations")
    race.add_argument(
        "--seed",
        type=int,
        default=1337,
        help="every mixer's: the windows drawn (the same for all), its weights; another seed "
        "shows how far a gap between mixers is chance",
    )
    scaling = parser.add_argument_group("--scaling")
    scaling.add_argument("--scaling", action="store_true", help="measure cost against length")
    scaling.add_argument("--d-model", type=int, default=128, help="layer width")
    scaling.add_argument("--lengths", default="256:32768", help="FIRST:LAST, doubling")
    scaling.add_argument(
        "--max-seconds",
        type=float,
        default=10.0,
        help="a mixer stops growing once a pass takes longer",
    )
    parser.set_defaults(handler=arena)


RACE = ("data", "tokenizer", "params", "n_layers", "context_length", "batch_size",
        "learning_rate", "weight_init", "time", "tokens", "eval_interval", "seed")  # fmt: skip
SCALING = ("d_model", "lengths", "max_seconds")


def arena(args: argparse.Namespace) -> int:
    if args.out is None:  # each mode its own folder: the README runs one after the other
        args.out = "runs/scaling" if args.scaling else "runs/arena"
    if not args.out:
        raise UserError("--out is empty: give a folder")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder: give a new one")
    check_writable(out)  # before the slow work, not after
    if unused := given_flags(args, RACE if args.scaling else SCALING):
        mode = "--scaling" if args.scaling else "the race (without --scaling)"
        raise UserError(f"{', '.join(unused)}: not used by {mode}")
    return _scaling(args, out) if args.scaling else _race(args, out)


def _race(args: argparse.Namespace, out: Path) -> int:
    from attnlab.evaluation.arena import Entry, matched_config, report, train_mixer
    from attnlab.layers.mixers import MIXERS

    mixers = _names(ARENA_MIXERS if args.mixers is None else args.mixers, sorted(MIXERS))
    _check_race(args)
    budget, budget_text = _budget(args)
    training = [
        *("--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate)),
        *("--dropout", "0", "--eval-interval", str(args.eval_interval)),
        *("--eval-iters", "20", "--seed", str(args.seed), *budget),
    ]
    data = ["--data", args.data, "--tokenizer", args.tokenizer]
    shape = (int(args.params), args.n_layers, args.context_length, args.weight_init)
    configs = [matched_config(mixer, *shape) for mixer in mixers]  # each in reach, or none runs
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    title = (
        f"{args.data}: {args.params / 1e6:g}M block parameters, {args.n_layers} "
        f"layer{'s' * (args.n_layers != 1)}, "
        f"context {args.context_length}, batch {args.batch_size}, {budget_text} each"
        + (f", {args.weight_init} init" if args.weight_init != "gpt2" else "")
        + (f", seed {args.seed}" if given_flags(args, ["seed"]) else "")
    )
    entries = []
    try:
        with sigterm_as_interrupt():
            for mixer, config in zip(mixers, configs, strict=True):
                entry = Entry(mixer, config, out / mixer)
                train_mixer(entry, data, training, args.batch_size * args.context_length, note)
                entries.append(entry)
    except (KeyboardInterrupt, UserError) as error:
        _stopped(error, entries, mixers, out, made, title)
        raise
    print(report(entries, out, title))
    note(f"report: {out / 'arena.md'}, plot: {out / 'arena.png'}; runs in {out}/MIXER")
    return 0


def _check_race(args: argparse.Namespace) -> None:
    """The race's numbers, refused now rather than as the first mixer's training fails."""
    if args.time is not None and args.tokens is not None:
        raise UserError("give --time or --tokens, not both")
    for name in ("params", "n_layers", "context_length", "batch_size", "learning_rate",
                 "eval_interval", "time", "tokens"):  # fmt: skip
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive number")
    check_seed(args.seed)


def _budget(args: argparse.Namespace) -> tuple[list[str], str]:
    """Each mixer's training budget as `train` options, and in words."""
    if args.tokens:  # a known end: constant, then a fall to a tenth over the last fifth
        steps = max(1, math.ceil(args.tokens / (args.batch_size * args.context_length)))
        budget = ["--max-iters", str(steps), "--warmup-iters", str(min(100, steps // 10))]
        budget += ["--lr-schedule", "wsd", "--min-learning-rate", str(args.learning_rate / 10)]
        return budget, f"{steps * args.batch_size * args.context_length:,} tokens"  # as trained
    minutes = args.time or 5.0  # no schedule knows where a time budget ends: constant
    budget = ["--max-iters", str(10**9), "--time-limit", f"{minutes:g}"]
    budget += ["--warmup-iters", "100", "--lr-schedule", "constant"]
    return budget, f"{minutes:g} min of training"


def _stopped(error, entries, mixers, out: Path, made: bool, title: str) -> None:
    """A race cut short: the finished mixers compared, or --out left as it was given."""
    from attnlab.evaluation.arena import TrainingFailed, report

    if entries:  # the mixers that finished, compared
        failed = f"{mixers[len(entries)]} failed"
        why = "interrupted" if isinstance(error, KeyboardInterrupt) else failed
        report(entries, out, f"{title} ({why}: {len(entries)} of {len(mixers)})")
        note(f"{why}: the report of the finished mixers is in {out / 'arena.md'}")
    elif isinstance(error, UserError):  # bad data or tokenizer, say: --out is free again
        if made:
            shutil.rmtree(out)
        else:  # an empty folder given: empty again
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        if isinstance(error, TrainingFailed):  # its log went with the rest
            raise UserError(error.without_log()) from None


def _scaling(args, out: Path) -> int:
    from attnlab.evaluation.scaling import HEADS, scaling_curves, variants, write_scaling

    names = _scaling_names(args.mixers, variants())
    if args.d_model < 1 or args.d_model % HEADS:
        raise UserError(f"--d-model must be a positive multiple of {HEADS} (attention's heads)")
    if not 0 < args.max_seconds < math.inf:
        raise UserError(f"--max-seconds must be a positive number, got {args.max_seconds}")
    try:
        first, last = (int(n) for n in args.lengths.split(":"))
    except ValueError:
        raise UserError(f"--lengths {args.lengths!r}: give FIRST:LAST, e.g. 256:32768") from None
    if not 1 <= first <= last:
        raise UserError("--lengths: FIRST must be at least 1 and at most LAST")
    title = f"one layer, d_model {args.d_model}, batch 1, forward + backward, fp32"
    curves = []
    try:
        with sigterm_as_interrupt():
            scaling_curves(
                names,
                start=first,
                longest=last,
                d_model=args.d_model,
                max_seconds=args.max_seconds,
                log=note,
                curves=curves,
            )
    except KeyboardInterrupt:
        if measured := [curve for curve in curves if curve.points]:
            out.mkdir(parents=True, exist_ok=True)
            write_scaling(measured, out, f"{title} (interrupted)")
            note(f"interrupted: what was measured is in {out / 'scaling.md'}")
        raise
    out.mkdir(parents=True, exist_ok=True)
    print(write_scaling(curves, out, title))
    note(f"report: {out / 'scaling.md'}, plot: {out / 'scaling.png'}")
    return 0


def _names(spec: str, known, refusal: str = "unknown mixer(s) {}; known: {}") -> list[str]:
    """The mixers of a --mixers list, each in `known` and given once; refusal: the error for
    names not in `known`, formatted with them and the known ones."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise UserError(refusal.format(", ".join(unknown) or "(none)", ", ".join(known)))
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise UserError(f"--mixers names {', '.join(twice)} twice: give each mixer once")
    return names


def _scaling_names(spec: str | None, variants) -> list[str]:
    """--scaling's variants of --mixers: a variant by its own name, or a mixer by its plain name
    when that is no variant's (attention: both its eager and fused kernels)."""
    plain = sorted({mixer for mixer, _, _ in variants.values()} - set(variants))
    refusal = "--scaling does not measure {}; it measures {}" + f" ({' and '.join(plain)}: "
    refusal += "each of its kernels)"
    names = _names(spec or ",".join(variants), [*plain, *variants], refusal)
    chosen = [v for n in names for v in variants if n == v or (n in plain and variants[v][0] == n)]
    return list(dict.fromkeys(chosen))  # attention and attention (fused): the latter once
