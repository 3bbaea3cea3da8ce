"""What every `attnlab train MODEL` command does around the Trainer: guard the run directory,
draw progress, stop at a time limit, plot the losses and say where everything is."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from attnlab.cli.reports import plot_losses, progress_printer
from attnlab.errors import UserError
from attnlab.training.checkpoints import JOURNAL_FILE
from attnlab.training.trainer import METRICS_FILE, Trainer


def note(message: str) -> None:
    """Progress and results for the person watching: stderr, so stdout stays clean."""
    print(message, file=sys.stderr, flush=True)


LOCK_FILE = ".attnlab.lock"  # "PID HOST" of the process writing the run


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Own the run directory for the duration: one writer per run. A second process gets one
    line naming the holder; a lock left by a process that is gone (kill -9) is taken over. A
    directory created here and left empty (a run that stopped on bad input) is removed."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        holder = _lock_holder(path)
        if holder is not None:
            raise UserError(
                f"{out} is in use by another attnlab process ({holder}): wait for it to end, "
                f"or give another --out (if no such process runs, delete {path})"
            ) from None
        path.unlink(missing_ok=True)  # stale: its process is gone
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(descriptor, "w") as lock:
        lock.write(f"{os.getpid()} {socket.gethostname()}\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _lock_holder(path: Path) -> str | None:
    """The holder ("PID N on HOST") of a lock whose process may still run; None when gone."""
    try:
        pid, host = path.read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return None  # unreadable or half-written: its writer died before finishing it
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
    return f"PID {pid} on {host}"


def claim_run_directory(out: Path, resume: bool) -> None:
    """--out must be a new or empty directory, or an attnlab run (it holds run.json): a file, or
    a folder of someone else's files, is refused before anything is written, so no file that
    attnlab did not write is ever overwritten. A new run never replaces a checkpoint."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a run directory")
    if resume or not out.is_dir():
        return
    if (out / "model.safetensors").exists():
        raise UserError(
            f"{out} already holds a checkpoint: pass --resume to continue it, or another --out"
        )
    contents = sorted(p.name for p in out.iterdir() if not _own_bookkeeping(p.name))
    if contents and "run.json" not in contents:
        shown = ", ".join(contents[:3]) + (", ..." if len(contents) > 3 else "")
        raise UserError(
            f"--out {out} holds files that are not an attnlab run ({shown}): give a new or "
            "empty directory"
        )


def _own_bookkeeping(name: str) -> bool:
    """The lock, a save's journal and temporary files: what a killed run leaves behind."""
    return name in (LOCK_FILE, JOURNAL_FILE) or (name.startswith(".") and name.endswith(".tmp"))


def fit_and_report(
    trainer: Trainer,
    out: Path,
    *,
    command: str,
    resume: bool,
    summary: str,
    next_step: str,
    time_limit: float | None = None,
) -> int:
    """Resume if asked, train with a progress bar, plot, and report; returns the exit code.

    command: the `attnlab train ...` words, for the resume hint. summary: one line on the data
    and model. next_step: what to do with the result. time_limit: minutes of training steps
    after which the run stops and saves, as Ctrl-C does.
    """
    if not trainer.group.is_writer:  # torchrun's other ranks train in silence
        if resume:
            trainer.resume()
        trainer.fit()
        return 0
    progress = progress_printer(trainer.config.max_iters, trainer.unit)
    limit_s = time_limit * 60 if time_limit else None

    def on_record(record):
        progress.update(record)
        if limit_s is not None and record["elapsed_s"] >= limit_s:
            trainer.request_stop()

    trainer.on_record = on_record
    if resume:
        trainer.resume()
        progress.start_at(trainer.step)
    precision = str(trainer.dtype).removeprefix("torch.")
    compiled = ", compiled" if trainer.compiled is not None else ""
    note(f"{summary}; device {trainer.device.type}, precision {precision}{compiled}")
    try:
        result = trainer.fit()
    finally:
        progress.close()
    plot = plot_losses(out / METRICS_FILE, out / "loss.png")
    timed_out = limit_s is not None and trainer.elapsed >= limit_s
    if result.interrupted and not timed_out:
        note(
            f"interrupted at step {result.step}; checkpoint saved in {out}. "
            f"Continue with: attnlab {command} --out {out} --resume"
        )
        return 130
    reason = f" (time limit of {time_limit:g} min)" if timed_out else ""
    scores = "".join(
        f", {name.replace('_', ' ')} {value:.4f}" for name, value in result.last_eval.items()
    )
    note(f"done: step {result.step}{reason}{scores}")
    if trainer.best:
        best = trainer.best
        note(f"best:       {best['score']} {best['value']:.4f} at step {best['step']}: {out}/best")
    extras = "".join(f", {name}.json" for name in trainer.artifacts)
    note(f"checkpoint: {out}/model.safetensors (+ config.json{extras})")
    note(f"metrics:    {out}/{METRICS_FILE}" + (f"\nloss plot:  {plot}" if plot else ""))
    note(next_step)
    return 0
