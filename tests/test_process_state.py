"""Commands run one after another in one process (a notebook, a script): what one call, or the
caller, leaves set must not change what a later call does."""

import json
import threading

import pytest
import torch

from attnlab.cli import main, reports

TINY = ["--context-length", "16", "--n-layers", "1", "--n-heads", "2", "--d-model", "16"]
TINY += ["--batch-size", "4", "--eval-iters", "2", "--eval-interval", "100", "--device", "cpu"]
TINY += ["--no-cpu-kernels"]


def steps_logged(out) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def train(corpus, out, iters: int) -> int:
    return main(["train", "gpt", "--data", str(corpus), "--out", str(out), *TINY,
                 "--max-iters", str(iters)])  # fmt: skip


@pytest.fixture
def grad_mode_restored():
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


def test_training_runs_where_the_caller_turned_gradients_off(
    corpus, tmp_path, capsys, grad_mode_restored
):
    """A notebook that set torch.set_grad_enabled(False) for its own inference trains all
    the same (it was a traceback: the loss had no grad_fn), and its grad mode stays off."""
    torch.set_grad_enabled(False)
    assert train(corpus, tmp_path / "run", 2) == 0, capsys.readouterr().err
    assert steps_logged(tmp_path / "run") == [1, 2]
    assert not torch.is_grad_enabled()


@pytest.fixture
def reader_gone():
    """As note() leaves it once stderr's reader has gone (`train ... 2>&1 | head`)."""
    reports.stderr_closed.set()
    yield
    reports.stderr_closed.clear()


def test_a_reader_gone_in_an_earlier_command_does_not_stop_a_later_run(
    corpus, tmp_path, capsys, reader_gone
):
    """Once an earlier command found its stderr's reader gone, a later run in the process, with
    a stderr that works, trained to its end (it stopped after one step, exit code 141)."""
    assert train(corpus, tmp_path / "run", 3) == 0, capsys.readouterr().err
    assert steps_logged(tmp_path / "run") == [1, 2, 3]


def test_runs_leave_no_progress_monitor_thread_behind():
    """Each run's progress bar made a tqdm class of its own, and with it a monitor thread that a
    bar never drawn (a log, a pipe) never stops: one more thread for each run of the process."""

    def monitors() -> int:
        return sum(t.name == "tqdm_monitor" for t in threading.enumerate())

    for _ in range(2):  # the first may start the one monitor thread of the bar's class
        reports.progress_printer(10).close()
    before = monitors()
    for _ in range(3):
        reports.progress_printer(10).close()
    assert monitors() == before
