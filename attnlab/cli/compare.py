"""`attnlab compare RUN RUN ...`: training runs side by side, from their folders alone (nothing
is loaded or run): each run's kind, size, steps, training time and speed, its best and last
validation loss and last scores; with --png, every run's loss curves (or --score's) on one
plot, against the step or the training time."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from attnlab.errors import UserError

EXAMPLE = """example:
  attnlab train gpt --data tinyshakespeare --positional rope --out runs/rope
  attnlab train gpt --data tinyshakespeare --positional learned --out runs/learned
  attnlab compare runs/rope runs/learned --png positions.png"""


def register(subparsers) -> None:
    from attnlab.cli import COMMANDS, HelpFormatter

    parser = subparsers.add_parser(
        "compare", help=COMMANDS["compare"][1],
        description=f"{__doc__}\n\n{EXAMPLE}", formatter_class=HelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "runs", nargs="+", metavar="RUN",
        help="run folders (train's --out), or folders of them (runs/, an arena's --out)",
    )  # fmt: skip
    parser.add_argument(
        "--png",
        metavar="FILE",
        help="also draw the loss curves here, or the plot type its name ends in (.svg, .pdf, "
        "...) (default: none)",
    )
    parser.add_argument(
        "--by", choices=("step", "time"), default="step", help="the plot's x axis: optimizer "
        "steps, or training time (seconds; evaluations and saves left out)"
    )  # fmt: skip
    parser.add_argument(
        "--score", default="val_loss", metavar="NAME", help="the evaluations' score --png "
        "plots: val_loss (with the training loss), or another the runs log (val_accuracy, ...)"
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=compare)


def compare(args: argparse.Namespace) -> int:
    from attnlab.cli.options import check_output, print_json
    from attnlab.cli.reports import note
    from attnlab.figures import plot_format

    args.runs = [run for given in args.runs for run in runs_in(given)]
    if len(set(map(_resolved, args.runs))) < len(args.runs):
        raise UserError("a run is named twice: name each once")
    if args.png:  # none of a run's own files (its loss.png)
        for run in args.runs:
            check_output("--png", args.png, run, inputs={"RUN": [Path(run, "metrics.jsonl")]})
        plot_format(args.png)
    if "score" in args.given and not args.png:
        raise UserError("--score picks what --png plots: give --png FILE too")
    runs = [summary(run) for run in args.runs]
    logged = sorted({name for run in runs for name in run["scores"]} | {"val_loss"})
    if args.score not in logged:
        raise UserError(f"--score {args.score}: no run logs it; they log {', '.join(logged)}")
    units = {run["unit"] for run in runs}
    tokenizers = {str(run["tokenizer"]) for run in runs if run["unit"] == "token"}
    if len(units) > 1 or len(tokenizers) > 1:
        what = f"units ({', '.join(sorted(units))})" if len(units) > 1 else "tokenizers"
        note(f"note: the runs' losses are per {what} that differ: as numbers they do not "
             "compare")  # fmt: skip
    if args.json:
        print_json({"runs": [{k: v for k, v in r.items() if k != "records"} for r in runs]})
    else:
        print(table(runs))
    if args.png:
        wrote = plot(runs, args.png, args.by, args.score)
        print(f"wrote {wrote}", file=sys.stderr if args.json else None)
    return 0


def runs_in(folder: str) -> list[str]:
    """A run folder as given; a folder of runs (runs/, an arena's --out): the runs in it."""
    if Path(folder, "metrics.jsonl").is_file() or not Path(folder).is_dir():
        return [folder]
    return sorted(str(log.parent) for log in Path(folder).glob("*/metrics.jsonl")) or [folder]


def _resolved(run: str) -> Path:
    return Path(run).resolve()


def summary(run: str) -> dict[str, Any]:
    """What compare shows of a run folder: its records and their summary."""
    from attnlab.cli.reports import STEP_FIELDS
    from attnlab.cli.run_file import read_run
    from attnlab.files import BEST_DIR, RUN_FILE
    from attnlab.training.metrics_log import read_metrics

    folder = Path(run)
    if not (folder / "metrics.jsonl").is_file():
        ours = folder.resolve().name == BEST_DIR and (folder / ".." / "metrics.jsonl").is_file()
        instead = f"its run, {folder.resolve().parent}" if ours else "a run folder (train's --out)"
        raise UserError(f"{run} has no metrics.jsonl: give {instead}")
    records = [r for r in read_metrics(folder / "metrics.jsonl") if "elapsed_s" in r]
    if not records:
        raise UserError(f"{run}/metrics.jsonl holds no record: the run has not trained a step")
    run_file = folder / RUN_FILE
    description = read_run(folder) if run_file.is_file() else {}
    description = description if isinstance(description, dict) else {}
    data = description.get("data") if isinstance(description.get("data"), dict) else {}
    evals = [r for r in records if "val_loss" in r]
    finite = (r for r in evals if math.isfinite(r["val_loss"]))  # a NaN is no best
    best = min(finite, key=lambda r: r["val_loss"], default={})
    rate = next((k for k in records[-1] if k.endswith("s_per_s")), "tokens_per_s")
    rates = [r[rate] for r in records if rate in r]  # none in a log of another shape
    scores = {k: v for k, v in (evals[-1] if evals else {}).items() if k not in STEP_FIELDS}
    return {
        "run": run,
        "kind": description.get("kind"),
        "tokenizer": data.get("tokenizer"),
        "parameters": parameters(folder),
        "steps": records[-1]["step"],
        "elapsed_s": records[-1]["elapsed_s"],
        "unit": rate.removesuffix("s_per_s"),
        rate: statistics.median(rates) if rates else None,
        "best_val_loss": best.get("val_loss"),
        "best_step": best.get("step"),
        "last": {k: v for k, v in scores.items() if not k.endswith("_per_s")},
        "scores": sorted(
            {k for r in evals for k in r if k not in STEP_FIELDS and "_per_" not in k}
        ),
        "records": records,
    }


def parameters(folder: Path) -> int | None:
    """The model's parameters (a tied weight once), counted on the meta device from its saved
    config; None where the run has no checkpoint yet."""
    from attnlab.devices import build_on_meta
    from attnlab.models.registry import get_kind, kind_config
    from attnlab.training.checkpoints import MODEL_FILE, checkpoint_description

    if not (folder / MODEL_FILE).is_file():
        return None
    description = checkpoint_description(folder)
    kind = get_kind(description["kind"])
    model = build_on_meta(lambda: kind.model(kind_config(kind, description["config"])))
    return sum(p.numel() for p in model.parameters())


def table(runs: list[dict[str, Any]]) -> str:
    """The runs as an aligned text table, one row each."""
    scores = sorted({name for run in runs for name in run["last"] if name != "val_loss"})
    header = ["run", "kind", "params", "steps", "time", "speed", "best val loss (step)",
              "last val loss", *(name.replace("_", " ") for name in scores)]  # fmt: skip
    rows = [header]
    for r in runs:
        best = (
            "-" if r["best_val_loss"] is None else f"{r['best_val_loss']:.4f} ({r['best_step']:,})"
        )
        rows.append([
            r["run"], str(r["kind"] or "?"),
            "-" if r["parameters"] is None else f"{r['parameters'] / 1e6:.2f}M",
            f"{r['steps']:,}", _duration(r["elapsed_s"]),
            "-" if (speed := r[r["unit"] + "s_per_s"]) is None else f"{speed:,.0f} {r['unit']}s/s",
            best,
            *(_number(r["last"].get(name)) for name in ["val_loss", *scores]),
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}" if minutes >= 60 else f"{minutes}:{s:02d}"


def plot(runs: list[dict[str, Any]], png: str, by: str, score: str = "val_loss") -> Path:
    """Each run's `score` at its evaluations (points), with, for val_loss, its training loss (a
    faint line of the same colour): one colour a run."""
    from matplotlib.figure import Figure  # not pyplot: the caller's plots are left alone

    from attnlab.cli.reports import MARKED_EVALUATIONS, as_text, count_ticks
    from attnlab.figures import save_figure

    x, loss = "step" if by == "step" else "elapsed_s", score == "val_loss"
    fig = Figure(figsize=(8, 4.8), dpi=120, layout="tight")
    ax, shown = fig.subplots(), []  # (line, name): a name may start with "_", which labels hide
    for r in runs:
        records, evals = r["records"], [p for p in r["records"] if score in p]
        colour = None  # the next of matplotlib's cycle
        if loss:
            train = [p[x] for p in records], [p["train_loss"] for p in records]
            (line,) = ax.plot(*train, lw=0.7, alpha=0.35 if evals else 1)
            colour = line.get_color()
            if not evals:
                shown.append((line, as_text(f"{r['run']} (train)")))
        if evals:
            marker = ".-" if len(evals) <= MARKED_EVALUATIONS else "-"
            (val,) = ax.plot([p[x] for p in evals], [p[score] for p in evals], marker,
                             color=colour)  # fmt: skip
            shown.append((val, as_text(r["run"])))
    units = {r["unit"] for r in runs}
    unit = f" (nats/{units.pop()})" if len(units) == 1 else ""
    name = score.replace("_", " ")
    ax.set(xlabel="step" if by == "step" else "training time (s)",
           ylabel=f"loss{unit}" if loss else name,
           title="validation loss (train loss faint)" if loss else name)  # fmt: skip
    if by == "step":
        count_ticks(ax.xaxis)
    ax.grid(alpha=0.3)
    ax.legend(*zip(*shown, strict=True))
    return save_figure(fig, png)
