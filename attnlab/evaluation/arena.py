"""The arena: the same language model with each token mixer, trained on the same data, batches
and budget, at matched size.

Size is matched on the blocks' parameters (embeddings excluded, as in Kaplan et al. 2020: the
vocabulary is the data's, not the mixer's): each mixer gets the width whose blocks come closest
to the target. Each run is its own `attnlab train gpt` process, so that its peak memory (the
process's maximum resident set) is its own, and the run directories are ordinary checkpoints
that `sample` and `evaluate` read. A time budget counts training steps only (`--time-limit`),
on a constant learning rate after warmup, since no schedule knows where a time budget ends; a
token budget keeps it until the last fifth of the steps, then lowers it to a tenth (wsd).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnlab.devices import meta_device
from attnlab.errors import UserError
from attnlab.files import atomic_write_bytes
from attnlab.layers.mixers import MIXERS, unread_fields
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.training.metrics_log import read_metrics

WIDTH_STEP = 8  # widths tried: multiples of this (4 heads of an even width for attention)
MAX_WIDTH = 4096  # the widest tried
SIZE_TOLERANCE = 1.2  # block parameters further apart than this are flagged in the report


def block_parameters(config: GPTConfig) -> int:
    """Parameters of the blocks and the final norm: the model less its embeddings and head."""
    with meta_device():
        model = GPT(config)
    vocabulary = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    vocabulary.append(model.output_head)  # tied or not
    excluded = {id(p) for m in vocabulary for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


def matched_config(
    mixer: str, params: int, n_layers: int, context_length: int, weight_init: str = "gpt2"
) -> GPTConfig:
    """The config of `mixer` whose block parameters come closest to `params`; a UserError
    where even the narrowest is too large, or the widest too small, by more than
    SIZE_TOLERANCE. With weight_init="fan_in" the head is untied, as GPTConfig requires."""
    positional = "rope" if MIXERS[mixer].relative_positions else "none"

    def config(width: int) -> GPTConfig:
        return GPTConfig(
            vocab_size=256,  # any: embeddings are not counted
            context_length=context_length,
            n_layers=n_layers,
            n_heads=4,
            d_model=width,
            mixer=mixer,
            positional=positional,
            bias=False,
            weight_init=weight_init,
            tie_weights=weight_init == "gpt2",
        )

    low, high = 1, MAX_WIDTH // WIDTH_STEP  # block parameters grow with the width: bisect
    while low < high:
        mid = (low + high) // 2
        if block_parameters(config(mid * WIDTH_STEP)) < params:
            low = mid + 1
        else:
            high = mid
    width = WIDTH_STEP * min(
        {max(low - 1, 1), low},
        key=lambda k: abs(block_parameters(config(k * WIDTH_STEP)) - params),
    )
    found = block_parameters(config(width))  # off by a width step's coarseness: reported
    too_large = width == WIDTH_STEP and found > SIZE_TOLERANCE * params
    if too_large or (width == MAX_WIDTH and found * SIZE_TOLERANCE < params):
        shown = f"{params:,}" if params < 10**15 else f"{params:.3g}"  # not a float's digits
        raise UserError(
            f"--params {shown}: out of {mixer}'s reach, whose "
            f"{'narrowest' if too_large else 'widest'} blocks (d_model {width}) have "
            f"{found:,} parameters"
        )
    return config(width)


@dataclass
class Entry:
    """One mixer's run: its config, its evaluations and what the process used."""

    mixer: str
    config: GPTConfig
    out: Path
    evaluations: list[dict] = field(default_factory=list)  # {step, elapsed_s, tokens, val_*}
    tokens_per_s: float = 0.0
    peak_rss_mib: float = 0.0

    @property
    def params(self) -> int:
        return block_parameters(self.config)


# `python -m attnlab` that writes its own peak memory (VmHWM, kB) to the file named first as it
# exits. wait4's ru_maxrss cannot say: through fork and exec a process keeps the high-water mark
# of its parent (the arena, or a notebook's kernel), so every run would report at least that.
MEASURED = """\
import atexit, sys
from attnlab.cli import main
PEAK_FILE = sys.argv.pop(1)
def write_peak():
    try:
        with open("/proc/self/status") as status, open(PEAK_FILE, "w") as out:
            out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
    except (OSError, StopIteration):  # no /proc: wait4's figure stands
        pass
atexit.register(write_peak)
sys.exit(main())
"""


class TrainingFailed(UserError):
    """A mixer's training process failed: the message names it, its log and why."""

    def __init__(self, mixer: str, log: str, why: str):
        super().__init__(f"arena: training {mixer} failed ({log}): {why}")
        self.mixer, self.why = mixer, why

    def without_log(self) -> str:
        """The message for when the log is gone (removed with an arena that finished none)."""
        return f"arena: training {self.mixer} failed: {self.why}"


def train_mixer(
    entry: Entry, data: list[str], training: list[str], tokens_per_step: int, log
) -> None:
    """Train one mixer in its own process; read back its evaluations and its peak memory."""
    c = entry.config
    peak = entry.out.parent / f"{entry.mixer}.peak_kb"  # the run writes it as it ends
    command = [sys.executable, "-c", MEASURED, str(peak), "train", "gpt", "--out", str(entry.out)]
    command += data
    shape = ("context_length", "n_layers", "n_heads", "d_model", "mixer", "positional")
    for name in (*shape, "weight_init"):
        if name not in unread_fields(c.mixer):  # an LSTM takes no --n-heads
            command += [f"--{name.replace('_', '-')}", str(getattr(c, name))]
    command += ["--no-bias", "--tie-weights" if c.tie_weights else "--no-tie-weights", *training]
    log(f"{entry.mixer}: d_model {c.d_model}, {entry.params:,} block parameters")
    entry.out.mkdir(parents=True)
    with (entry.out.parent / f"{entry.mixer}.log").open("w") as log_file:
        # its own session: a Ctrl-C reaches the arena alone, which passes on one interrupt
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # interrupted: the run stops as after a Ctrl-C, saved
            _stop(process)
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    entry.peak_rss_mib = usage.ru_maxrss / 1024  # Linux reports KiB: at least the arena's peak
    if peak.is_file():
        written = peak.read_text()  # empty where its write failed (a full disk): wait4's stands
        entry.peak_rss_mib = int(written) / 1024 if written.isdigit() else entry.peak_rss_mib
        peak.unlink()
    if process.returncode != 0:  # no line: killed at once, or a full disk took it
        lines = Path(log_file.name).read_text(errors="replace").strip().splitlines()
        nothing = f"exit code {process.returncode}, and nothing in its log"
        last = (lines or [nothing])[-1].removeprefix("attnlab: error: ")
        if process.returncode < 0:  # its last line is no error: killed (out of memory, say)
            last = f"killed by {signal.Signals(-process.returncode).name}"
        raise TrainingFailed(entry.mixer, log_file.name, last)
    read_run(entry, tokens_per_step)


def _stop(process: subprocess.Popen) -> None:
    """Interrupt a training run and wait for it to save; a second interrupt of ours is passed
    on too (the run then stops at once, as a second Ctrl-C stops it)."""
    process.send_signal(signal.SIGINT)
    while process.poll() is None:
        try:
            process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)


def read_run(entry: Entry, tokens_per_step: int) -> None:
    """The evaluations and the training speed of a finished run, from its metrics.jsonl."""
    records = read_metrics(entry.out / "metrics.jsonl")
    entry.evaluations = [
        {**r, "tokens": r["step"] * tokens_per_step} for r in records if "val_loss" in r
    ]
    last = records[-1]
    entry.tokens_per_s = last["step"] * tokens_per_step / max(last["elapsed_s"], 1e-9)


def report(entries: list[Entry], out: Path, title: str) -> str:
    """arena.md (a table) and arena.png (val loss against training time and against tokens)."""
    accuracy = any("val_accuracy" in e.evaluations[-1] for e in entries if e.evaluations)
    header = "| mixer | d_model | block params | tokens/s | peak memory (MiB) | final val loss |"
    lines = [f"# {title}", "", header + (" val accuracy | best val accuracy |" if accuracy else "")]
    lines.append("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if accuracy else ""))
    for e in entries:
        final = e.evaluations[-1] if e.evaluations else {}
        row = (
            f"| {e.mixer} | {e.config.d_model} | {e.params:,} | {e.tokens_per_s:,.0f} | "
            f"{e.peak_rss_mib:,.0f} | {final.get('val_loss', math.nan):.4f} |"
        )
        if accuracy:
            best = max((p.get("val_accuracy", math.nan) for p in e.evaluations), default=math.nan)
            row += f" {final.get('val_accuracy', math.nan):.2%} | {best:.2%} |"
        lines.append(row)
    sizes = [e.params for e in entries]
    if sizes and max(sizes) > SIZE_TOLERANCE * min(sizes):
        lines += ["", f"Sizes differ by up to {max(sizes) / min(sizes) - 1:.0%}: widths come in "
                  f"steps of {WIDTH_STEP}, coarse for models this small; a larger --params "
                  "matches them closer."]  # fmt: skip
    table = "\n".join(lines) + "\n"
    atomic_write_bytes(out / "arena.md", table.encode())
    _plot(entries, out / "arena.png", title)
    return table


def _plot(entries: list[Entry], png: Path, title: str) -> None:
    from matplotlib.figure import Figure  # not pyplot: the caller's plots are left alone

    from attnlab.cli.reports import as_text, count_ticks
    from attnlab.figures import save_figure

    fig = Figure(figsize=(11, 4.2), layout="tight")
    axes = fig.subplots(1, 2, sharey=True)
    for e in entries:
        points = e.evaluations
        label = f"{e.mixer} ({e.params / 1e6:.2f}M)"
        losses = [p["val_loss"] for p in points]
        (line,) = axes[0].plot([p["elapsed_s"] for p in points], losses, ".-", label=label)
        axes[1].plot([p["tokens"] for p in points], losses, ".-", color=line.get_color())
    axes[0].set(xlabel="training time (s)", ylabel="val loss")
    axes[1].set(xlabel="training tokens")
    count_ticks(axes[1].xaxis)
    axes[0].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(as_text(title))
    save_figure(fig, png, dpi=110)
