"""SIGHUP, a terminal or ssh session that closes under a command: it stops as Ctrl-C does
(cleaned up, a training run saved), not killed mid-work with what it was doing lost."""

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

from attnlab.signals import sigterm_as_interrupt
from attnlab.tokenizers import bpe_training

HUNG_UP_WHILE_TOKENIZING = """
import os, signal, sys
from attnlab.cli import main
from attnlab.tokenizers.char import CharTokenizer
def encode_array(self, text):
    os.kill(os.getpid(), signal.SIGHUP)  # the terminal closes while the cache is written
    return encode(self, text)
encode, CharTokenizer.encode_array = CharTokenizer.encode_array, encode_array
sys.exit(main(sys.argv[1:]))
"""


def test_a_hang_up_before_training_stops_as_ctrl_c_does(tmp_path, corpus):
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["train", "gpt", "--data", str(corpus), "--out", str(out), "--no-cpu-kernels"]
    env = {**os.environ, "ATTNLAB_CACHE": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", HUNG_UP_WHILE_TOKENIZING, *argv], capture_output=True, env=env
    )
    assert (done.returncode, done.stderr.decode().splitlines()[-1]) == (130, "attnlab: interrupted")
    assert not out.exists() and not list((cache / "tokens").iterdir())


def test_a_training_run_whose_terminal_closes_ends_saved(tmp_path, corpus):
    """The terminal's SIGHUP, then writes to it that fail (EIO): the run saves and exits 130."""
    out = tmp_path / "run"
    argv = ["train", "gpt", "--data", str(corpus), "--out", str(out), "--n-layers", "1"]
    argv += ["--d-model", "16", "--context-length", "16", "--max-iters", "100000"]
    argv += ["--eval-interval", "100000", "--no-cpu-kernels"]
    pid, terminal = pty.fork()  # the child's controlling terminal, as a shell's command has
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "attnlab", *argv])
    metrics, deadline = out / "metrics.jsonl", time.time() + 120
    try:
        while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
            if select.select([terminal], [], [], 0.2)[0]:
                os.read(terminal, 65536)  # the progress bar: read, or its writes would block
    finally:
        os.close(terminal)  # the window closes: SIGHUP, and its writes fail from now on
    deadline = time.time() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.time() < deadline:
        time.sleep(0.1)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 130
    assert json.loads((out / "trainer_state.json").read_text())["step"] >= 1


def test_the_counting_workers_leave_a_hang_up_to_the_parent():
    """The terminal's SIGHUP reaches the pool's workers too: the parent, which handles it as
    Ctrl-C, ends the pool; a worker that raised on it would print a traceback."""
    with bpe_training._process_pool(1) as pool:
        assert pool.apply(signal.getsignal, (signal.SIGHUP,)) == signal.SIG_IGN


def test_a_command_under_nohup_keeps_ignoring_the_hang_up():
    """`nohup attnlab train ...` is run to outlive its terminal: SIGHUP stays ignored."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
    finally:
        signal.signal(signal.SIGHUP, previous)
