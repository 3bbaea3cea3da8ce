"""What every `attnlab train MODEL` command does around the Trainer: guard the run directory,
draw progress, stop at a time limit, plot the losses and say where everything is."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from attnlab.cli import INTERRUPTED
from attnlab.cli.options import LOSS_PLOT
from attnlab.cli.reports import note, plot_losses, progress_printer, stderr_closed
from attnlab.cli.run_file import read_run
from attnlab.errors import UserError
from attnlab.files import BEST_DIR, RUN_FILE, RUN_LOCK, naming
from attnlab.training.checkpoints import JOURNAL_FILE
from attnlab.training.trainer import METRICS_FILE, Trainer


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Own the run directory for the duration: one writer per run. The lock is the kernel's
    (flock), so it ends with its process, however that ends (kill -9 included), and a second
    process gets one line naming the holder. A directory created here and left empty (a run
    that stopped on bad input) is removed."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path, lock = out / RUN_LOCK, None
    try:
        lock = _take_lock(path, out)
        yield
    finally:
        if lock is not None:  # else another's, or none: a full disk stopped its writing
            path.unlink(missing_ok=True)  # while still held: a process waiting starts over
            lock.close()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _take_lock(path: Path, out: Path) -> IO[str]:
    """The open lock file, locked and holding "PID HOST", or a UserError naming its holder."""
    while True:
        lock = open(path, "a+")  # noqa: SIM115 - held open for the run
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            fields = lock.read().split()[:2]  # none yet if its holder is just starting
            lock.close()
            holder = f" (PID {' on '.join(fields)})" if fields else ""
            raise UserError(
                f"{out} is in use by another attnlab process{holder}: wait for it to end, "
                "or give another --out"
            ) from None
        try:
            if os.path.samestat(os.fstat(lock.fileno()), os.stat(path)):  # not removed since
                with naming(path):  # a full disk's error, which names no file, names the lock
                    lock.truncate(0)
                    lock.write(f"{os.getpid()} {socket.gethostname()}\n")
                    lock.flush()
                return lock
        except FileNotFoundError:
            pass
        except OSError:  # held: removed, and closed (its unwritten line fails again)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                lock.close()
            raise
        lock.close()  # its holder removed it as we opened it: take the next one


def run_description(checkpoint: str | os.PathLike) -> tuple[dict[str, Any], Path] | None:
    """run.json of the run a checkpoint belongs to (itself, or the run of its best/ copy) and
    that run's folder; None for a checkpoint outside a run."""
    path = Path(checkpoint)
    for folder in (path, path.parent) if path.name == BEST_DIR else (path,):
        if (folder / RUN_FILE).is_file():
            run = read_run(folder)  # an older run's in today's shape
            data = run.get("data") if isinstance(run, dict) else None
            # its data, a path or a name (None: a translation's embedded pairs)
            if not isinstance(data, dict) or not isinstance(data.get("data"), str | None):
                raise UserError(f"{folder / RUN_FILE} is not a run description")
            return run, folder
    return None


def run_train_config(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The training settings the run of `checkpoint` was saved with (its seed, batch size,
    ...); {} for a checkpoint outside a run."""
    from attnlab.training.state import read_training_state

    found = run_description(checkpoint)
    return read_training_state(found[1])["train_config"] if found else {}


def trained_data(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The data settings of the run `checkpoint` belongs to (its data, tokenizer, ...); {} for
    a checkpoint outside a run."""
    found = run_description(checkpoint)
    return found[0]["data"] if found else {}


def run_data(checkpoint: str, data: str | None, required: bool = False) -> str | None:
    """The data a command reads for `checkpoint`: `data`, else its run's (None: none, as for a
    translation's embedded pairs, a UserError if `required`). Task data is refused for a model
    trained on anything but that task: a task's ids mean nothing to it."""
    from attnlab.data import catalog

    found = run_description(checkpoint)
    own = found[0]["data"].get("data") if found else None
    if not data and found:
        check_own_data(own, found[1], "give --data")
    data = data or catalog.in_root(own)
    if data is None and required:
        raise outside_a_run(checkpoint)
    if str(data).startswith("task:") and str(data).split(":")[:2] != str(own).split(":")[:2]:
        raise UserError(
            f"{checkpoint} was trained on {own}, not on {':'.join(data.split(':')[:2])}: "
            "a task's tokens mean nothing to it"
        )
    return data


def outside_a_run(checkpoint: str) -> UserError:
    """The error of a command that needs data for a checkpoint outside a run, without --data."""
    return UserError(f"give --data: {checkpoint} is not in a run folder (no {RUN_FILE})")


def check_own_data(spec: Any, folder: Path, remedy: str) -> None:
    """The data a run of `folder` was trained on (`spec`), read again: a file or folder that is
    not there (another machine's) is one line ending in `remedy`; a dataset's name, 'stdlib' or
    a task is found again."""
    from attnlab.data import catalog

    check_relative_data(spec, folder)
    if not isinstance(spec, str) or not os.path.isabs(spec):
        return
    if not (Path(spec).exists() or Path(catalog.split_glob(spec)[0]).exists()):
        raise UserError(f"{folder} was trained on {spec}, which is not here: {remedy}")


def check_relative_data(spec: Any, folder: Path) -> None:
    """A relative path a run keeps is read from the data root (a run keeps a path inside it so),
    or here: a run of attnlab before 2026-12-05 kept its --data as given, read from the folder
    the run was started in; found in neither, it is one line. (A name without a folder, a suffix
    or a glob, "stdlib", "shapes", a dataset's, is no path; a dataset's files neither.)"""
    from attnlab.data import catalog

    if not isinstance(spec, str) or os.path.isabs(spec) or catalog.is_name(spec):
        return
    if not catalog.where(spec):
        raise UserError(
            f"{folder} was trained on {spec}, which is neither in the data folder "
            f"{catalog.data_root()} (ATTNLAB_DATA) nor here: put it there, or run this command "
            "from the folder the run was started in (a run of attnlab before 2026-12-05 reads "
            "its relative --data there)"
        )


def run_data_settings(args, kind):
    """The data settings of the run of checkpoint `args.checkpoint`, --data (`args.data`) in
    place of its data: what a command scores the checkpoint on."""
    from attnlab.cli.run_settings import data_path
    from attnlab.config import config_from_dict
    from attnlab.data import catalog

    found = run_description(args.checkpoint)
    if found is None and args.data is None:
        raise outside_a_run(args.checkpoint)
    if found and args.data is None:
        check_own_data(found[0]["data"].get("data"), found[1], "give --data")
    own = data_path(found[0]["data"], catalog.in_root) if found else {}  # read in the data root
    settings = {**own, **({"data": args.data} if args.data else {})}
    return config_from_dict(kind.data_config, settings, source="--data")


def unseen_data(args) -> bool:
    """Whether --data (`args.data`) names other data than the run of `args.checkpoint` trained
    on (any, for a checkpoint outside a run): data the model never saw, which evaluate scores
    whole."""
    from attnlab.data import catalog

    found = run_description(args.checkpoint)
    own = catalog.in_root(found[0]["data"].get("data")) if found else None
    return bool(args.data) and (own is None or catalog.where(args.data) != catalog.where(str(own)))


def check_fits_data(
    folder: str, config: dict[str, Any], fields: dict[str, Any], free: Iterable[str] = ()
) -> None:
    """The model of checkpoint `folder` reads what the data gives it (its vocabulary, image
    size, classes: `fields`) as its `config` says, but for the `free` fields: other weights
    would silently start new, or read the ids of another vocabulary."""
    differ = sorted(k for k, v in fields.items() if k not in free and config.get(k, v) != v)
    if differ:
        hint = ""
        if "vocab_size" in differ and not (Path(folder) / "tokenizer.json").is_file():
            hint = f"; {folder} holds no tokenizer: give the one its weights read (--tokenizer)"
        raise UserError(
            f"{folder} does not fit this data: "
            + ", ".join(f"its {k} is {config[k]!r}, the data's {fields[k]!r}" for k in differ)
            + hint
        )


# The files and folder of a run that training writes through or into where they are (the
# checkpoint's own are replaced by renames): a link among them would lead its writes elsewhere
RUN_OWN = (RUN_LOCK, RUN_FILE, METRICS_FILE, LOSS_PLOT, BEST_DIR)


def claim_run_directory(out: Path, resume: bool) -> None:
    """--out must be a new or empty directory, or an attnlab run (it holds run.json): a file, or
    a folder of someone else's files, is refused before anything is written, so no file that
    attnlab did not write is ever overwritten, nor, by a link in a run, any file elsewhere. A
    new run never replaces a checkpoint."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a run directory")
    if not out.is_dir():
        return
    for name in RUN_OWN:  # written in place or into: through a link, over any file elsewhere
        if (out / name).is_symlink():
            raise UserError(
                f"{out / name} is a link (to {os.readlink(out / name)}): a run writes its own "
                "files, never through links; replace it with a copy of what it leads to"
            )
    if resume:
        return
    if (out / "model.safetensors").exists():
        raise UserError(
            f"{out} already holds a checkpoint: pass --resume to continue it, or another --out"
        )
    contents = sorted(p.name for p in out.iterdir() if not _own_bookkeeping(p.name))
    if contents and RUN_FILE not in contents:
        shown = ", ".join(contents[:3]) + (", ..." if len(contents) > 3 else "")
        raise UserError(
            f"--out {out} holds files that are not an attnlab run ({shown}): give a new or "
            "empty directory"
        )


def _own_bookkeeping(name: str) -> bool:
    """The lock, a save's journal and temporary files: what a killed run leaves behind."""
    return name in (RUN_LOCK, JOURNAL_FILE) or (name.startswith(".") and name.endswith(".tmp"))


def _note_schedule(trainer: Trainer) -> None:
    """A note where the learning rate is not what a user may think: a run that is all warm-up,
    or inverse_sqrt's peak (--learning-rate is its multiplier, 1.0 in the paper)."""
    config = trainer.config
    if trainer.step >= config.max_iters:  # a finished run resumed: no steps to note
        return
    if config.warmup_iters >= config.max_iters:  # any schedule's peak (and decay) comes after
        last = trainer.learning_rate(config.max_iters - 1, config)
        note(
            f"note: warmup_iters {config.warmup_iters} >= max_iters {config.max_iters}: the "
            f"whole run is warm-up, the learning rate only rises, to {last:.3g} (lower "
            "--warmup-iters)"
        )
    elif config.lr_schedule == "inverse_sqrt":
        peak = trainer.learning_rate(max(config.warmup_iters - 1, 0), config)
        note(
            f"note: inverse_sqrt peaks at {peak:.3g} at step {max(config.warmup_iters, 1)}: "
            "--learning-rate is its multiplier (1.0 in the paper)"
        )


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
    after which the run ends after one more step, evaluated and saved as a last step is (a
    resumed run counts them from where it resumes).
    """
    if not trainer.group.is_writer:  # torchrun's other ranks train in silence
        if resume:
            trainer.resume()
        trainer.fit()
        return 0
    limit_s = time_limit * 60 if time_limit else None
    progress = progress_printer(trainer.config.max_iters, trainer.unit, limit_s)
    if resume:
        trainer.resume()
        progress.start_at(trainer.step, trainer.elapsed)
        if trainer.lr_moved:  # a larger --max-iters stretches the schedule, say
            old, new = trainer.lr_moved
            note(f"note: the new schedule moves the learning rate from {old:.3g} to {new:.3g}")

    def on_record(record):
        progress.update(record)
        # `train ... 2>&1 | head`: saved, not lost
        if progress.time_up(record["elapsed_s"]) or stderr_closed.is_set():
            trainer.request_finish()

    precision = str(trainer.dtype).removeprefix("torch.")
    compiled = ", compiled" if trainer.compiled is not None else ""
    note(f"{summary}; device {trainer.device.type}, precision {precision}{compiled}")
    _note_schedule(trainer)
    # on_record refers to the trainer: the trainer holding it too made a cycle that kept the
    # model, the optimizer and the data (a token file's memory map, open) until the garbage
    # collector ran, not until the command returned; the trainer lets it go as the fit ends
    previous, trainer.on_record = trainer.on_record, on_record
    try:
        result = trainer.fit()
    finally:
        progress.close()
        trainer.on_record = previous
    with trainer.writing(f"plotting {out / LOSS_PLOT}"):  # a full disk: the run is saved
        plot = plot_losses(out / METRICS_FILE, out / LOSS_PLOT)
    timed_out = progress.time_up(trainer.elapsed)
    if result.interrupted:
        note(
            f"interrupted at step {result.step}; checkpoint saved in {out}. "
            f"Continue with: attnlab {command} --out {shlex.quote(str(out))} --resume"
        )
        return INTERRUPTED
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
    return 141 if stderr_closed.is_set() else 0  # as a writer whose reader went away
