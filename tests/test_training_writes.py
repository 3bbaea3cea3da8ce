"""A write of a training run that fails (a full disk: the checkpoint, best/, the log, the loss
plot) is one line naming what failed and the step that is kept; what the loss plot and the
progress bar show."""

import errno
import io
import json
import os
from pathlib import Path

import pytest
from helpers import one_line_error, run
from test_run_directory import FAST
from test_training import make_trainer

from attnlab.cli import reports, runs
from attnlab.errors import UserError
from attnlab.training import trainer as trainer_module
from attnlab.training.metrics_log import append_record


@pytest.mark.parametrize("fails", ["", "best", "metrics.jsonl"])  # the checkpoint, best/, the log
def test_a_failed_write_says_where_and_what_is_kept(tmp_path, monkeypatch, fails):
    trainer = make_trainer(tmp_path, max_iters=4, eval_interval=2, cpu_kernels=False)
    trainer.keep_best = "val_loss"  # lower at step 4 than at step 2: best/ is written again
    save, opened = trainer_module.save_checkpoint, Path.open
    full = OSError(errno.ENOSPC, "No space left on device")  # as a write gives it: no file named

    def save_full_at_step_4(path, *args):
        if trainer.step == 4 and path == tmp_path / fails:
            raise full
        save(path, *args)

    class LogFullAtStep4(io.FileIO):  # unbuffered, as the log is written
        def write(self, data):
            if trainer.step == 4 and fails == "metrics.jsonl":
                raise full
            return super().write(data)

    def open_log(path, mode="r", *args, **kwargs):
        return LogFullAtStep4(path, mode) if mode == "ab" else opened(path, mode, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_full_at_step_4)
    monkeypatch.setattr(Path, "open", open_log)
    with pytest.raises(UserError) as failed:
        trainer.fit()
    what = "logging" if fails == "metrics.jsonl" else "saving"
    assert str(failed.value) == (
        f"{what} step 4 in {tmp_path / fails} failed: No space left on device; step 2 is saved "
        f"in {tmp_path}"
    )


def test_a_log_write_cut_short_by_a_full_disk_leaves_no_half_record(tmp_path, monkeypatch):
    """A write to a file filling up may take part of a line and return: the rest went unwritten
    and training went on, leaving half a record that the next resume cut the log at."""
    trainer = make_trainer(tmp_path, max_iters=4, eval_interval=2, cpu_kernels=False)
    opened = Path.open

    class FillsUpAtStep4(io.FileIO):
        space = 10  # bytes left on the disk once step 4 is logged

        def write(self, data):
            if trainer.step < 4:
                return super().write(data)
            if not self.space:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            taken, self.space = data[: self.space], 0
            return super().write(taken)

    def open_log(path, mode="r", *args, **kwargs):
        return FillsUpAtStep4(path, mode) if mode == "ab" else opened(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_log)
    with pytest.raises(UserError, match="logging step 4 in .* failed: No space left on device"):
        trainer.fit()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in text.splitlines()] == [1, 2, 3]
    assert text.endswith("\n")


def test_a_record_the_disk_takes_in_parts_is_written_whole(tmp_path):
    class TakesSevenBytes(io.FileIO):
        def write(self, data):
            return super().write(data[:7])

    with TakesSevenBytes(tmp_path / "metrics.jsonl", "ab") as log:
        append_record(log, {"step": 1, "train_loss": 2.5})
        append_record(log, {"step": 2})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 1, "train_loss": 2.5}, {"step": 2}]


@pytest.mark.parametrize("new", [True, False])
def test_a_full_disk_at_the_run_lock_names_it_and_leaves_nothing(
    tmp_path, corpus, capsys, monkeypatch, new
):
    """The lock's "PID HOST" line, a run's first write, failed on a full disk as "No space left
    on device", naming nothing, and left the lock (and a new run's folder) behind."""
    out = tmp_path / "run"
    if not new:
        out.mkdir()  # empty: kept, as it was

    opened = []

    def open_full(path, mode):
        lock = open(path, mode)  # noqa: SIM115 - the run's to close
        lock.flush = lambda: throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return opened.append(lock) or lock

    monkeypatch.setattr(runs, "open", open_full, raising=False)
    argv = ["train", "gpt", "--data", str(corpus), "--out", str(out), "--max-iters", "1"]
    code, _, err = run([*argv, *FAST], capsys)
    lock = out / ".attnlab.lock"
    assert one_line_error(code, err) == f"attnlab: error: No space left on device: {lock}"
    assert not out.exists() if new else not any(out.iterdir())
    assert len(opened) == 1 and opened[0].closed


def throw(error):
    raise error


def test_a_loss_plot_that_cannot_be_written_says_the_run_is_saved(
    tmp_path, corpus, capsys, monkeypatch
):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "plot_losses", full)
    out = tmp_path / "run"
    argv = ["train", "gpt", "--data", str(corpus), "--out", str(out), "--context-length", "16"]
    code, _, err = run([*argv, *FAST, "--max-iters", "2", "--no-cpu-kernels"], capsys)
    assert one_line_error(code, err).endswith(
        f"plotting {out / 'loss.png'} failed: No space left on device; step 2 is saved in {out}"
    )


def test_the_loss_plot_counts_steps_in_readable_ticks(tmp_path, monkeypatch):
    """A million steps read 1M, not 1.0 and a factor "1e6" at the axis's end."""
    drawn = []
    monkeypatch.setattr("attnlab.figures.save_figure", lambda fig, path: drawn.append(fig) or path)
    records = [{"step": s, "train_loss": 1.0, "tokens_per_s": 1.0, "val_loss": 1.0, "accuracy": 1}
               for s in (1, 500_000, 1_000_000)]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    reports.plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert "1M" in [t.get_text() for t in drawn[0].axes[1].get_xticklabels()]  # the scores'
    shown = [reports.short_count(n) for n in (500, 1000, 20_000, 2_500_000, 10**10, -1500)]
    assert shown == ["500", "1k", "20k", "2.5M", "10B", "-1.5k"]


@pytest.mark.parametrize("limit_s", [None, 60.0])
def test_the_progress_bars_time_left_counts_evaluations_and_the_time_limit(monkeypatch, limit_s):
    """Steps of 0.1 s and an evaluation of 1 s every 10: 0.2 s a step (tqdm's smoothed rate
    forgets an evaluation within some 50 steps: with one of 5 s every 250 steps of 0.1 s, it
    showed 2:31 left where 3:01 were, and 9:50 just after one); and a --time-limit of 60 s of
    training ends the run before its 1,000 steps: 58 s of training left, 116 s with evaluations."""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    clock = [0.0]
    monkeypatch.setattr(reports.time, "perf_counter", lambda: clock[0])
    progress = reports.progress_printer(1000, limit_s=limit_s)
    for step in range(1, 22):
        clock[0] += 0.1 + (1.0 if step % 10 == 0 else 0.0)
        progress.update({"step": step, "train_loss": 1.0, "tokens_per_s": 1.0,
                         "elapsed_s": 0.1 * step})  # fmt: skip
    expected = 979 * 0.2 if limit_s is None else (60 - 2.1) * 2
    assert progress.bar.left_s == pytest.approx(expected)
    shown = progress.bar.format_meter(**progress.bar.format_dict)
    assert f"<{progress.bar.format_interval(expected)}," in shown


def test_a_resumed_runs_time_left_counts_its_time_limit_from_where_it_resumed(monkeypatch):
    """Resumed at 100 s of training with --time-limit 1 (min): steps of 0.1 s leave 57.9 s after
    21 of them (the steps left, 10,000, would take longer); and none, not less, once past it,
    where the run ends."""
    clock = [0.0]
    monkeypatch.setattr(reports.time, "perf_counter", lambda: clock[0])
    progress = reports.progress_printer(10_000, limit_s=60.0)
    progress.start_at(500, 100.0)
    for step in range(501, 522):
        clock[0] += 0.1
        progress.update({"step": step, "train_loss": 1.0, "tokens_per_s": 1.0,
                         "elapsed_s": 100 + 0.1 * (step - 500)})  # fmt: skip
    assert progress.bar.left_s == pytest.approx(60 - 2.1)
    assert not progress.time_up(159.9) and progress.time_up(160.0)  # what ends the run, too
    progress.update({"step": 522, "train_loss": 1.0, "tokens_per_s": 1.0, "elapsed_s": 161.0})
    assert progress.bar.left_s == 0
    progress.close()


def test_a_warmup_as_long_as_the_run_is_all_warm_up(tmp_path, corpus, capsys):
    argv = ["train", "gpt", "--data", str(corpus), "--out", str(tmp_path / "run"), *FAST]
    code, _, err = run([*argv, "--max-iters", "2", "--warmup-iters", "2"], capsys)
    assert code == 0 and "warmup_iters 2 >= max_iters 2: the whole run is warm-up" in err
