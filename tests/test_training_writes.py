"""A write of a training run that fails (a full disk: the checkpoint, best/, the log, the loss
plot) is one line naming what failed and the step that is kept; what the loss plot shows."""

import errno
import io
import json
from pathlib import Path

import pytest
from helpers import one_line_error, run
from test_run_directory import FAST
from test_training import make_trainer

from attnlab.cli import reports, runs
from attnlab.errors import UserError
from attnlab.training import trainer as trainer_module


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
    monkeypatch.setattr("attnlab.files.save_figure", lambda fig, path: drawn.append(fig) or path)
    records = [{"step": s, "train_loss": 1.0, "tokens_per_s": 1.0, "val_loss": 1.0, "accuracy": 1}
               for s in (1, 500_000, 1_000_000)]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    reports.plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert "1M" in [t.get_text() for t in drawn[0].axes[1].get_xticklabels()]  # the scores'
