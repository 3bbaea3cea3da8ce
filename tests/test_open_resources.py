"""What a command leaves open in a process that goes on (a notebook, a script calling main many
times): nothing of its run once it returns, whether it finished, failed or was interrupted.
Counted with the garbage collector off, so that only what the run lets go by itself counts: a
reference cycle that holds the run is freed only when the collector next runs, and until then
keeps the model, the optimizer and the token cache's memory map (on Windows, a file that
cannot be deleted)."""

import contextlib
import gc
import os
from pathlib import Path

import pytest

from attnlab.cli import main
from attnlab.errors import UserError
from attnlab.files import cache_dir
from attnlab.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/self")

TINY = ["--context-length", "16", "--n-layers", "1", "--n-heads", "2", "--d-model", "16"]
TINY += ["--batch-size", "4", "--eval-iters", "2", "--eval-interval", "100", "--device", "cpu"]
TINY += ["--no-cpu-kernels"]


def token_files_held() -> list[str]:
    """The cached token files this process maps or holds a descriptor of."""
    tokens = str(cache_dir() / "tokens")
    held = [line.split(None, 5)[-1] for line in Path("/proc/self/maps").read_text().splitlines()]
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [path for path in held if path.startswith(tokens)]


def train(corpus: Path, out: Path) -> int:
    return main(["train", "gpt", "--data", str(corpus), "--out", str(out), *TINY,
                 "--max-iters", "3"])  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small text, trained on once first: the libraries a run imports on first use (the loss
    plot's, the optimizer's) leave garbage of their own behind, holding that run's frames."""
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("All the world's a stage, and all the men and women merely players. " * 30)
    assert train(path, tmp_path_factory.mktemp("first") / "run") == 0
    gc.collect()
    return path


@pytest.fixture
def no_collector():
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("stop, code", [(None, 0), (UserError, 2), (KeyboardInterrupt, 130)])
def test_a_training_run_leaves_its_token_file_closed(
    corpus, tmp_path, monkeypatch, no_collector, stop, code
):
    """The progress callback the CLI gives the trainer refers to the trainer: the two made a
    cycle, and each run's token memory map and descriptor stayed open after main returned."""
    if stop is not None:
        step = Trainer.train_step

        def train_step(self):  # the second step fails, as a full disk or Ctrl-C would
            if self.step == 1:
                raise stop("stopped")  # a new one: a kept one would keep its traceback
            return step(self)

        monkeypatch.setattr(Trainer, "train_step", train_step)
    before = token_files_held()  # none, unless a test before left garbage
    for run in ("a", "b"):
        assert train(corpus, tmp_path / run) == code
        assert token_files_held() == before
