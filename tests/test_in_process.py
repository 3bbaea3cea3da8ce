"""Commands run in a notebook's process (attnlab.cli.run, main) and the Python API leave the
process's global state as they found it: random numbers, signal handlers, the environment, the
modules loaded, loggers."""

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from helpers import loaded_modules, one_line_error

from attnlab import cli
from attnlab.evaluation.scaling import REFERENCE, measure
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.tokenizers import CharTokenizer
from attnlab.training.checkpoints import load_checkpoint, save_checkpoint

TINY = ["--context-length", "8", "--n-layers", "1", "--d-model", "16", "--n-heads", "2"]
TINY += ["--no-compile", "--no-cpu-kernels", "--eval-iters", "1", "--eval-interval", "1"]


def draws():
    """The next numbers of Python's, NumPy's and PyTorch's generators."""
    return random.random(), np.random.rand(), torch.rand(1).item()


def seeded_draws(call):
    """draws() after seeding every generator and running call(), and without call()."""
    results = []
    for calling in (True, False):
        random.seed(5), np.random.seed(5), torch.manual_seed(5)
        if calling:
            call()
        results.append(draws())
    return results


@pytest.fixture
def checkpoint(tmp_path):
    tokenizer = CharTokenizer.from_text("hello world")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=8, n_layers=1, n_heads=2)
    save_checkpoint(tmp_path / "run", GPT(config), {"tokenizer": tokenizer})
    return tmp_path / "run"


def test_commands_leave_the_callers_random_numbers_as_they_were(tmp_path, corpus, checkpoint):
    """`train` seeds every generator, and loading a checkpoint built a model from torch's: a
    notebook's own draws after a command were not those it would have made."""
    out = str(tmp_path / "trained")
    train = ["train", "gpt", "--data", str(corpus), "--out", out, "--max-iters", "1", *TINY]
    sample = ["sample", str(checkpoint), "--prompt", "he", "--max-new-tokens", "2"]
    for argv in (train, sample):
        after, without = seeded_draws(lambda argv=argv: cli.main(argv))
        assert after == without, argv


def test_the_python_api_draws_none_of_the_callers_random_numbers(checkpoint):
    after, without = seeded_draws(lambda: load_checkpoint(checkpoint))
    assert after == without
    after, without = seeded_draws(lambda: measure(REFERENCE, 16, 8, 1))  # the arena's scaling
    assert after == without


@pytest.mark.parametrize(
    "argv, unloaded",
    [(["--help"], {"random", "unicodedata"}), (["train", "gpt", "--help"], {"numpy.random"})],
)
def test_keeping_the_random_numbers_loads_no_module(argv, unloaded):
    """main keeps the numbers of the random modules loaded, loading none: `attnlab --help`
    started 5% slower with random and unicodedata, `train --help` (torch loads NumPy, not its
    random module) 7-25 ms slower with numpy.random."""
    code = "import sys\nfrom attnlab.cli import main\ntry:\n    main(sys.argv[1:])\n"
    code += "except SystemExit:\n    pass"
    assert not unloaded & loaded_modules(code, *argv)


def test_a_random_module_the_command_loads_is_seeded_afresh():
    """As on its import: the command's seed does not carry into the caller's draws."""
    code = """import sys
from attnlab import cli
assert not {"random", "numpy.random"} & set(sys.modules)

def command(argv):  # loads both, seeded
    import numpy.random, random
    numpy.random.seed(0), random.seed(0)
    return 0

cli._main = command
cli.main([])
import numpy.random, random
drawn = random.random(), numpy.random.rand()
numpy.random.seed(0), random.seed(0)
assert drawn[0] != random.random() and drawn[1] != numpy.random.rand()
"""
    loaded_modules(code)


def test_ctrl_c_in_run_raises_keyboard_interrupt(monkeypatch, capsys):
    """A notebook's cell or a script stops as on Ctrl-C: a RuntimeError would be caught by an
    `except Exception` around the call, and a loop of runs would go on."""

    def interrupted(spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_plugins", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.run("data list")
    assert capsys.readouterr().err == "attnlab: interrupted\n"
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="exit code 2"):
        cli.run("sample")
    with pytest.raises(RuntimeError, match="cannot split it: No closing quotation"):
        cli.run("sample 'runs/mine")  # not shlex's ValueError


def test_a_plugin_file_named_as_a_module_does_not_replace_that_module(tmp_path, monkeypatch):
    plugin = tmp_path / "socket.py"  # a user's file, named as Python's socket module
    plugin.write_text("LOADED = True\n")
    monkeypatch.setenv("ATTNLAB_PLUGINS", str(plugin))
    assert cli.main(["data", "list"]) == 0
    assert sys.modules["socket"] is socket


def test_null_streams_are_closed(monkeypatch):
    """A stream the caller set to None is the null device for the command, closed after (an
    unclosed file, a ResourceWarning, at each call)."""
    monkeypatch.setattr(sys, "stdout", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["data", "list"]) == 0
    assert sys.stdout is None
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_processes_leave_the_handlers_environment_and_logs_of_the_caller(tmp_path, corpus, capfd):
    """torchrun's launcher replaced the handlers of SIGINT (Ctrl-C then raised its own
    exception, not KeyboardInterrupt), SIGHUP and SIGQUIT, set OMP_NUM_THREADS and a variable
    of its own, and silenced its loggers for good."""
    signums = signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM
    handlers = [signal.getsignal(s) for s in signums]
    environment = dict(os.environ)
    elastic = logging.getLogger("torch.distributed.elastic")
    level = elastic.level
    argv = ["train", "gpt", "--data", str(corpus), "--out", str(tmp_path / "run"), *TINY]
    argv += ["--distributed", "ddp", "--processes", "2", "--batch-size", "3"]  # the ranks refuse
    line = one_line_error(cli.main(argv), capfd.readouterr().err)  # rank 0's, on descriptor 2
    assert "does not split among 2 processes" in line
    assert [signal.getsignal(s) for s in signums] == handlers
    assert dict(os.environ) == environment and elastic.level == level


def test_the_launch_shares_the_cores_and_gives_back_the_variables_it_changed(monkeypatch):
    """Each rank's threads a share of the cores (OMP_NUM_THREADS, unless set), and after the
    launch the variables as they were: those it set gone, those it changed back."""
    from torch.distributed.launcher import api

    from attnlab.training import distributed

    seen = {}

    def launcher(config, entrypoint):
        def run(*args):
            seen["threads"] = os.environ.get("OMP_NUM_THREADS")
            os.environ["ATTNLAB_TEST_MINE"] = "changed"
            os.environ["ATTNLAB_TEST_NEW"] = "set"

        return run

    monkeypatch.setattr(api, "elastic_launch", launcher)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("ATTNLAB_TEST_MINE", "mine")
    environment = dict(os.environ)
    assert distributed.launch(2, ["data", "list"]) == 0
    assert seen["threads"] == "4" and dict(os.environ) == environment


def test_libraries_a_command_loaded_are_seeded_afresh_after_it(tmp_path, corpus):
    """NumPy and torch loaded by the command (a notebook's first, say) and seeded by `train`:
    seeded afresh after it, as on their import, not at its --seed in every session."""
    argv = ["train", "gpt", "--data", str(corpus), "--out", str(tmp_path / "run"), *TINY]
    code = f"""import sys
from attnlab.cli import main
assert "numpy" not in sys.modules and "torch" not in sys.modules
assert main({[*argv, "--seed", "5", "--max-iters", "1", "--device", "cpu"]!r}) == 0
import numpy, torch
after = numpy.random.get_state()[1]
numpy.random.seed(5)
print(torch.initial_seed() == 5, (after == numpy.random.get_state()[1]).all())"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["False", "False"]  # torch's seed; NumPy's state


def test_a_handler_set_outside_python_is_given_back_as_the_default(monkeypatch):
    """signal.getsignal's None (a handler not set from Python) cannot be set again."""
    from attnlab.signals import handlers_kept

    found = signal.getsignal
    monkeypatch.setattr(signal, "getsignal", lambda s: None if s == signal.SIGUSR1 else found(s))
    with handlers_kept([signal.SIGUSR1]):
        signal.signal(signal.SIGUSR1, lambda number, frame: None)
    assert found(signal.SIGUSR1) == signal.SIG_DFL
