"""Commands run one after another in one process (a notebook, a script): what one call, or the
caller, leaves set must not change what a later call does."""

import json
import threading

import pytest
import torch
from helpers import MUST_COMPILE

from attnlab.cli import main, reports
from attnlab.training import trainer

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


@pytest.fixture
def cheap_compiles(monkeypatch):
    """Dynamo without a compiler behind it (its "eager" backend: graphs run as traced), and a
    recompile limit of 1 in place of 8: what a sweep of 8 compiled runs met, in a few seconds.
    Yields dynamo's counters."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    monkeypatch.setattr(trainer, "training_compile_options", lambda device: {"backend": "eager"})
    with torch._dynamo.config.patch(recompile_limit=1):
        yield counters


@MUST_COMPILE
def test_compiled_runs_of_different_models_in_one_process_are_all_compiled(
    corpus, tmp_path, capsys, cheap_compiles
):
    """Each compiled run added a version of GPT.forward and of a block's forward to what dynamo
    keeps on their code, shared by every run of the process; once a code had as many as
    torch._dynamo.config.recompile_limit allows, dynamo ran it eagerly in every later run, which
    went on saying it was compiled. There dynamo now starts afresh, as a new process would; a
    run of a model alike (a notebook's cell run again) still finds its code compiled."""

    def frames_compiled(run: str, width: str) -> int:
        before = cheap_compiles["frames"]["ok"]
        argv = ["train", "gpt", "--data", str(corpus), "--out", str(tmp_path / run), *TINY]
        assert main([*argv, "--d-model", width, "--max-iters", "2", "--compile"]) == 0
        assert "compiled" in capsys.readouterr().err
        return cheap_compiles["frames"]["ok"] - before

    for width in ("16", "24", "32"):
        assert frames_compiled(width, width) > 0, f"width {width} ran eagerly"
    assert frames_compiled("again", "32") == 0, "a model alike compiled again"
