"""What a person watches and looks at: the live progress bar and the loss-curve plot."""

from __future__ import annotations

import errno
import functools
import os
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from attnlab.progress import stderr_is_live

# what every step's record holds; the rest of an evaluation step's are its scores (val_loss, ...)
STEP_FIELDS = ("step", "train_loss", "lr", "elapsed_s", "mfu")
MARKED_EVALUATIONS = 50  # the most evaluations the loss plot draws as points


stderr_closed = threading.Event()  # set once the reader of stderr has gone

# tqdm's own layout, with the run's time left for its {remaining}
RUN_BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def note(message: str) -> None:
    """Progress and results for the person watching: stderr, so stdout stays clean. A "note: "
    or "warning: " (from the data readers, say) reads "attnlab: note: ..." as warnings and
    errors do. Once its reader has gone (`attnlab train ... 2>&1 | head`), the rest goes
    nowhere and stderr_closed is set: a training run then ends with a checkpoint rather than
    mid-step, all of it lost. So too once its terminal has closed (a write's EIO)."""
    if message.startswith(("note: ", "warning: ")):
        message = f"attnlab: {message}"
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError as error:
        if not (isinstance(error, BrokenPipeError) or error.errno == errno.EIO):
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        stderr_closed.set()


def as_text(name: str) -> str:
    """A user's name (a run directory, a class) as plain text in a plot: matplotlib would read
    $...$ as mathematics (and fail on a bad formula), so dollar signs are escaped."""
    return name.replace("$", r"\$")


def count_ticks(axis) -> None:
    """Tick labels of an axis of counts (steps, tokens) that read at once: 500, 20k, 2.5M, 10B,
    not 0.2 ... 1.0 and a factor "1e6" at the axis's end."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda x, _: short_count(x)))


def short_count(n: float) -> str:
    """A count for a tick label: 500, 20k, 2.5M, 10B."""
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:g}{suffix}"
    return f"{n:g}"


class progress_printer:  # noqa: N801 - used like a function
    """A tqdm bar on stderr: step, loss, last val loss, throughput (tokens/s, images/s), and the
    time left (time_left)."""

    def __init__(self, total: int, unit: str = "token", limit_s: float | None = None):
        self.bar = _bar_class()(
            total=total,
            file=sys.stderr,
            unit="step",
            dynamic_ncols=True,
            disable=not stderr_is_live(),
            smoothing=0.05,
        )
        self.val_loss: float | None = None
        self.unit, self.limit_s, self.begun_s = unit, limit_s, 0.0
        self.first: tuple[float, int, float] | None = None  # (clock, step, elapsed_s) at step 1

    def start_at(self, step: int, elapsed_s: float) -> None:
        """A resumed run's bar: its rate, time left and time limit count the steps (and the
        training time, elapsed_s so far) from here only."""
        self.bar.n = self.bar.last_print_n = self.bar.initial = step
        self.begun_s = elapsed_s
        self.bar.refresh()

    def time_up(self, elapsed_s: float) -> bool:
        """Whether limit_s of training seconds have passed since the run began (start_at)."""
        return self.limit_s is not None and elapsed_s - self.begun_s >= self.limit_s

    def update(self, record: dict[str, Any]) -> None:
        self.val_loss = record.get("val_loss", self.val_loss)
        rate = record[f"{self.unit}s_per_s"]
        postfix = {"loss": f"{record['train_loss']:.4f}", f"{self.unit}s/s": f"{rate:,.0f}"}
        if self.val_loss is not None:
            postfix["val"] = f"{self.val_loss:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.left_s = self.time_left(record, time.perf_counter())
        self.bar.update(1)
        if "val_loss" in record and self.bar.disable:  # no live bar (not a terminal): log evals
            scores = "".join(
                f", {name.replace('_', ' ')} {value:.4f}"
                for name, value in record.items()
                if name not in STEP_FIELDS and not name.endswith("_per_s")
            )
            note(f"step {record['step']}: train loss {record['train_loss']:.4f}{scores}")

    def time_left(self, record: dict[str, Any], now: float) -> float | None:
        """Wall seconds until the run ends: its steps left at the pace of those since its first
        here (which compiles, so is left out), evaluations and saves included; or, where
        limit_s (of training steps) ends it first, its training seconds left at that pace.
        None at the first step."""
        if self.first is None:
            self.first = (now, record["step"], record["elapsed_s"])
            return None
        since, step, trained_s = self.first
        wall_s, train_s = now - since, record["elapsed_s"] - trained_s
        left = (self.bar.total - record["step"]) * wall_s / (record["step"] - step)
        if self.limit_s is not None and train_s > 0:
            limit_left = self.limit_s - (record["elapsed_s"] - self.begun_s)
            left = min(left, max(limit_left, 0.0) * wall_s / train_s)
        return left

    def close(self) -> None:
        self.bar.close()


@functools.cache
def _bar_class() -> type:
    """tqdm's bar with tqdm's time left, or once known the run's (evaluations, time limit). One
    class for the process: tqdm starts a monitor thread for each class, which a bar that never
    drew (stderr not live) never stops, so a class made for each run left a thread behind."""
    from tqdm import tqdm

    class Bar(tqdm):
        left_s: float | None = None

        @property
        def format_dict(self):
            shown = super().format_dict
            if self.left_s is None:
                return shown
            left = self.format_interval(self.left_s)
            return {**shown, "bar_format": RUN_BAR.replace("{remaining}", left)}

    return Bar


def plot_losses(metrics_file: Path, png: Path) -> Path | None:
    """Plot train and val loss against step from metrics.jsonl; None if there is nothing to plot."""
    if not metrics_file.is_file():
        return None
    from attnlab.training.metrics_log import read_metrics

    if not (records := read_metrics(metrics_file)):
        return None
    from matplotlib.figure import Figure  # not pyplot: the caller's plots are left alone
    from matplotlib.ticker import MaxNLocator

    from attnlab.figures import save_figure

    evals = [r for r in records if "val_loss" in r]
    scores = sorted({k for r in evals for k in r if _is_score(k)})
    # an evaluation a point while they are few; many (every step, a long run) merge into a
    # band of markers that hides the curves: a line then
    style = "o-" if len(evals) <= MARKED_EVALUATIONS else "-"
    rows = 2 if scores else 1
    fig = Figure(figsize=(7, 4 * rows), dpi=120, layout="tight")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    ax = axes[0][0]
    ax.plot(
        [r["step"] for r in records],
        [r["train_loss"] for r in records],
        lw=0.8,
        alpha=0.6,
        marker="o" if len(records) == 1 else "",  # a line of one point draws nothing
        label="train (per step)",
    )
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], style, label="val")
    # the loss is per unit of the throughput the records log: tokens_per_s, sequences_per_s, ...
    unit = next((k.removesuffix("s_per_s") for k in records[0] if k.endswith("s_per_s")), "token")
    ax.set(xlabel="step", ylabel=f"loss (nats/{unit})", title=as_text(metrics_file.parent.name))
    ax.grid(alpha=0.3)
    ax.legend()
    # whole steps (no 0.98, 1.02 about a lone step), in the round numbers of the default locator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))
    count_ticks(ax.xaxis)  # shared by the scores' axis below
    if scores:  # scores beyond the loss (accuracy, probes such as induction_score)
        below = axes[1][0]
        for name in scores:
            points = [(r["step"], r[name]) for r in evals if name in r]
            below.plot(*zip(*points, strict=True), style, label=name.replace("_", " "))
        below.set(xlabel="step", ylabel="score")
        below.grid(alpha=0.3)
        below.legend()
        ax.label_outer()  # the step axis is labelled once, below
    return save_figure(fig, png)


def _is_score(name: str) -> bool:
    """Not a loss, nor a loss or a rate in other units (nats_per_image, tokens_per_s): the
    curve of a loss is drawn above, and a figure 100 times larger would flatten the scores."""
    return name not in STEP_FIELDS and not name.endswith("_loss") and "_per_" not in name


def plot_confusion(confusion, class_names, png: Path, title: str) -> Path:
    """A confusion matrix (K, K), rows the true classes and columns the predicted ones, as a
    heatmap with the counts written in its cells (shares of each row set the colour)."""
    from matplotlib.figure import Figure

    from attnlab.figures import save_figure

    counts = confusion.tolist()
    k = len(counts)
    shares = [[c / max(sum(row), 1) for c in row] for row in counts]
    side = min(max(4.0, 0.5 * k + 2), 14.0)
    fig = Figure(figsize=(side, side * 0.9), dpi=120, layout="tight")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:  # names and counts stay legible up to about this many classes
        ticks = range(k)
        names = [as_text(name) for name in class_names]
        # level names while they fit side by side (about 8 characters an inch), else upright
        upright = sum(len(name) + 2 for name in names) > 8 * side
        ax.set_xticks(ticks, names, rotation=90 if upright else 0)
        ax.set_yticks(ticks, names)
        for i in ticks:
            for j in ticks:
                if counts[i][j]:
                    colour = "white" if shares[i][j] > 0.5 else "black"
                    ax.text(
                        j, i, str(counts[i][j]), ha="center", va="center", fontsize=7, color=colour
                    )
    # a title wider than the axes it is centred over would run off the figure: a few classes
    # make a small figure: wrapped at about 8 characters an inch, as the names are
    title = textwrap.fill(as_text(title), width=int(8 * side))
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return save_figure(fig, png)
