"""A checkpoint whose files disagree is refused in one line before memory is spent on it."""

import json
import subprocess
import sys

from helpers import one_line_error, run, tiny_gpt

from attnlab.tokenizers import build_tokenizer
from attnlab.training.checkpoints import save_checkpoint


def saved_gpt(path):
    model = tiny_gpt()
    save_checkpoint(path, model, {"tokenizer": build_tokenizer("byte", [])})
    return path


def edit_config(path, **changes):
    description = json.loads((path / "config.json").read_text())
    description["config"].update(changes)
    (path / "config.json").write_text(json.dumps(description))


def test_a_config_claiming_100000_layers_is_refused_quickly_and_small(tmp_path):
    path = saved_gpt(tmp_path / "ckpt")
    edit_config(path, n_layers=100_000, context_length=10**12)
    # A fresh parent, so that the peak memory measured is the command's own. Its CPU time, not
    # wall time, is bounded: other work on a busy machine stretches the latter.
    probe = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run([sys.executable, '-m', 'attnlab', 'sample', sys.argv[1]],\n"
        "                      capture_output=True, text=True)\n"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(done.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss,\n"
        "      repr(done.stderr))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True)
    code, seconds, peak_kb, stderr = out.stdout.split(maxsplit=3)
    assert code == "2" and "far larger than" in stderr and "Traceback" not in stderr
    assert float(seconds) < 5, seconds
    assert int(peak_kb) < 1_000_000, peak_kb


def test_a_config_of_another_shape_is_refused_before_building(tmp_path, capsys):
    path = saved_gpt(tmp_path / "ckpt")
    edit_config(path, d_model=32)
    line = one_line_error(*run(["sample", str(path), "--max-new-tokens", "1"], capsys)[::2])
    assert "do not fit its config" in line and "shape" in line
