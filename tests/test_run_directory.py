"""A run directory holds only attnlab's own work: --out that is a file or a folder of someone
else's files is refused before anything is written, one process writes it at a time, and a save
a kill interrupts never leaves a mix (resuming: test_resume.py)."""

import errno
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest
import test_platform  # noqa: F401 - registers the test_sum kind
import torch
from helpers import one_line_error, read_only, run, snapshot

from attnlab.files import atomic_write_bytes, atomic_writer
from attnlab.tokenizers.bpe import BPETokenizer
from attnlab.training.checkpoints import load_checkpoint
from attnlab.training.trainer import Trainer

FAST = ["--batch-size", "4", "--eval-iters", "1", "--device", "cpu", "--no-compile"]


def train(capsys, corpus, out, *flags):
    argv = ["train", "gpt", "--data", str(corpus), "--context-length", "16", "--out", str(out)]
    return run([*argv, *FAST, *flags], capsys)


def test_a_folder_of_other_files_is_refused_and_left_as_it_was(tmp_path, corpus, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "own"}')
    (out / "metrics.jsonl").write_text("my notes\n")
    (out / "loss.png").write_bytes(b"\x89PNG")
    before = snapshot(out)
    code, _, err = train(capsys, corpus, out, "--max-iters", "2")
    assert "holds files that are not an attnlab run (config.json, loss.png" in one_line_error(
        code, err
    )
    assert snapshot(out) == before


def test_out_that_is_a_file_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "a_file"
    out.write_text("keep me")
    for argv in (["--data", str(corpus)], ["--resume"]):
        code, _, err = run(["train", "gpt", "--out", str(out), *argv], capsys)
        assert "is a file, not a run directory" in one_line_error(code, err)
    assert out.read_text() == "keep me"


def test_an_empty_folder_or_an_unfinished_run_may_be_used(tmp_path, corpus, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    code, _, err = train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")
    assert code == 0, err
    (out / "model.safetensors").unlink()  # a run stopped before its first checkpoint
    code, _, err = train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")
    assert code == 0, err


def test_a_run_folder_named_like_its_data_is_not_taken_for_it(tmp_path, capsys, monkeypatch):
    root = tmp_path / "data" / "plays"  # a folder in the data root, named by --data
    root.mkdir(parents=True)
    (root / "a.txt").write_text("Now is the winter of our discontent. " * 40)
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    code, _, err = train(capsys, "plays", "plays", "--max-iters", "1")
    assert code == 0, err
    assert json.loads((tmp_path / "plays" / "run.json").read_text())["data"]["data"] == "plays"


def test_a_misspelt_model_setting_is_one_line_before_the_data_is_read(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('data = "stdlib"\ntokenizer = "bpe:900"\n[model]\nn_layer = 2\n')
    code, _, err = run(
        ["train", "gpt", "--config", str(config), "--out", str(tmp_path / "r")], capsys
    )
    assert "unknown key(s) n_layer" in one_line_error(code, err)
    assert "reading" not in err and not (tmp_path / "r").exists()


def test_a_run_s_files_get_the_permissions_of_any_new_file(tmp_path, corpus, capsys):
    old = os.umask(0o022)
    try:
        assert train(capsys, corpus, tmp_path / "r", "--max-iters", "1")[0] == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "r").iterdir() if p.is_file()}
    assert {"model.safetensors", "config.json", "run.json"} <= modes.keys()
    assert set(modes.values()) == {0o644}, modes  # not mkstemp's owner-only 0o600


def test_a_write_that_fails_names_the_file_not_its_temporary(tmp_path):
    (tmp_path / "plot.png").mkdir()  # where a file was to go, a folder
    with pytest.raises(IsADirectoryError) as failed:
        atomic_write_bytes(tmp_path / "plot.png", b"png")
    assert failed.value.filename == str(tmp_path / "plot.png")
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])  # a quota, 4 GiB
def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch, code):
    def full(fd):
        raise OSError(code, os.strerror(code))  # as fsync gives it: no name

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=os.strerror(code)) as failed:
        atomic_write_bytes(tmp_path / "tokens.bin", b"ids")
    assert failed.value.filename == str(tmp_path / "tokens.bin") and not any(tmp_path.iterdir())
    reading = pytest.raises(ConnectionResetError, match="the server closed the stream")
    with reading, atomic_writer(tmp_path / "tokens.bin"):  # an error of reading keeps its own
        raise ConnectionResetError("the server closed the stream")


def test_temporary_files_a_killed_writer_left_go_when_the_file_is_next_written(tmp_path):
    killed, live = tmp_path / ".tokens.bin.k1ll3d.tmp", tmp_path / ".tokens.bin.wr1t1ng.tmp"
    other = tmp_path / ".other.bin.k1ll3d.tmp"  # another file's: not this writer's to judge
    for path in (killed, live, other):
        path.write_bytes(b"part")
    for path in (killed, other):
        os.utime(path, (time.time() - 3600,) * 2)
    atomic_write_bytes(tmp_path / "tokens.bin", b"ids")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, "tokens.bin"]
    )


@pytest.mark.parametrize(
    "file, text, message",
    [
        ("config.json", "[1, 2]", "lacks 'kind' and 'config'"),
        ("config.json", '{"kind": "gpt", "config": 3}', "lacks 'kind' and 'config'"),
        ("trainer_state.json", '{"step": "ten"}', "is damaged: step is missing or bad"),
        ("trainer_state.json", "[]", "is damaged: step"),
        ("trainer_state.json", '{"step": -5}', "is damaged: step is missing or bad"),
        ("run.json", '{"kind": "gpt"}', "is not a run description"),
        ("run.json", "not json", "run.json"),
    ],
)
def test_hand_edited_run_files_are_one_line(tmp_path, corpus, capsys, file, text, message):
    out = tmp_path / "run"
    code, _, err = train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")
    assert code == 0, err
    (out / file).write_text(text)
    before = snapshot(out)
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "4"], capsys)
    assert message in one_line_error(code, err)
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "field, value",
    [
        ("torch", "not base64!"),
        ("torch", "AAAA"),  # base64, of 3 bytes: no generator's state
        ("python", [1, 2, 3]),
        ("python", [2**80] * 625),
        ("data", {"generator": "@@"}),
        ("data", {}),
    ],
)
def test_a_hand_edited_random_state_is_one_line(tmp_path, corpus, capsys, field, value):
    out = tmp_path / "run"
    code, _, err = train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")
    assert code == 0, err
    state = json.loads((out / "trainer_state.json").read_text())
    state["rng"][field] = value
    (out / "trainer_state.json").write_text(json.dumps(state))
    before = snapshot(out)
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "4"], capsys)
    assert "its random state cannot be restored" in one_line_error(code, err)
    assert snapshot(out) == before


@pytest.mark.parametrize("resume", [False, True])
def test_a_read_only_out_is_one_line_and_left_as_it_was(
    tmp_path, corpus, capsys, monkeypatch, resume
):
    out = tmp_path / "run"
    if resume:
        assert train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")[0] == 0
    else:
        out.mkdir()
    before = snapshot(out)
    read_only(monkeypatch, out)
    if resume:
        argv = ["train", "gpt", "--out", str(out), "--resume", "--max-iters", "4"]
        code, _, err = run(argv, capsys)
    else:
        code, _, err = train(capsys, corpus, out, "--max-iters", "2")
    line = one_line_error(code, err)
    assert "Permission denied" in line and str(out) in line
    assert snapshot(out) == before


def test_a_read_only_cache_is_one_line_before_a_tokenizer_is_learned(
    tmp_path, corpus, capsys, monkeypatch
):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    read_only(monkeypatch, tmp_path / "cache")
    monkeypatch.setattr(BPETokenizer, "train", None)  # never reached
    out = tmp_path / "run"
    code, _, err = train(capsys, corpus, out, "--tokenizer", "bpe:300", "--max-iters", "1")
    assert one_line_error(code, err) == (
        f"attnlab: error: cannot write to {tmp_path / 'cache' / 'tokenizers'} (the cache; "
        "ATTNLAB_CACHE sets it): Permission denied"
    )
    assert not out.exists() and not any((tmp_path / "cache").iterdir())


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".attnlab.lock", "w") as lock:  # held, as a running train holds it
        lock.write(f"{os.getpid()} {socket.gethostname()}\n")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = snapshot(out)
        line = one_line_error(*train(capsys, corpus, out, "--max-iters", "1")[::2])
    assert f"PID {os.getpid()} on {socket.gethostname()}" in line and "in use" in line
    assert snapshot(out) == before


def test_two_runs_at_once_on_one_folder_the_second_is_refused(tmp_path, corpus, capsys):
    """Two real processes: the second stops in one line naming the first, which runs on (until
    its Ctrl-C) with a metrics log of its own steps only."""
    out = tmp_path / "run"
    argv = ["train", "gpt", "--data", str(corpus), "--context-length", "16", "--out", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-m", "attnlab", *argv, *FAST, "--max-iters", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lock = out / ".attnlab.lock"
    while not (lock.exists() and lock.read_text()) and first.poll() is None:
        time.sleep(0.05)  # until the first holds the lock and has written its PID there
    line = one_line_error(*train(capsys, corpus, out, "--max-iters", "1")[::2])
    assert f"PID {first.pid}" in line and "in use" in line
    log = out / "metrics.jsonl"
    while not (log.exists() and log.read_text()) and first.poll() is None:
        time.sleep(0.05)  # until it trains
    first.send_signal(signal.SIGINT)  # stopped, saved
    assert first.wait(timeout=600) == 130, first.stderr.read()
    steps = [json.loads(r)["step"] for r in log.read_text().splitlines()]
    state = json.loads((out / "trainer_state.json").read_text())
    assert steps == sorted(set(steps)) and steps[-1] == state["step"] < 100000


def test_a_stale_lock_is_taken_over_and_released(tmp_path, corpus, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its PID now names no process
    out = tmp_path / "run"
    out.mkdir()
    (out / ".attnlab.lock").write_text(f"{gone.pid} {socket.gethostname()}\n")
    code, _, err = train(capsys, corpus, out, "--max-iters", "1")
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and not (out / ".attnlab.lock").exists()


def test_a_run_stopped_by_bad_input_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    one_line_error(*train(capsys, tmp_path / "missing.txt", out, "--max-iters", "1")[::2])
    assert not out.exists()


class Killed(BaseException):
    """A process killed in the middle of a save (no `except Exception` stops it)."""


def test_a_kill_at_any_write_or_rename_of_a_save_never_leaves_a_mix(
    tmp_path, corpus, capsys, monkeypatch
):
    """Kill the last save at each of its writes, renames and removals in turn: --resume then
    either ends with the uninterrupted run's weights exactly, or is refused in one line."""
    flags = ("--max-iters", "4", "--eval-interval", "2")
    assert train(capsys, corpus, tmp_path / "whole", *flags)[0] == 0
    final = load_checkpoint(tmp_path / "whole").model.state_dict()
    real_replace, real_fsync, real_unlink = os.replace, os.fsync, os.unlink
    real_save = Trainer.save
    budget = {"left": None, "used": 0, "armed": True}  # operations the armed save may still do

    def operation(real):
        def wrapped(*args):
            if budget["left"] is not None:
                if budget["left"] == 0:
                    raise Killed
                budget["left"] -= 1
                budget["used"] += 1
            return real(*args)

        return wrapped

    def save(self):  # armed during the last save of a run to be killed
        budget["left"] = limit if self.step == 4 and budget["armed"] else None
        try:
            real_save(self)
        finally:
            budget["left"] = None

    monkeypatch.setattr(os, "replace", operation(real_replace))
    monkeypatch.setattr(os, "fsync", operation(real_fsync))
    monkeypatch.setattr(os, "unlink", operation(real_unlink))  # the journal's removal too
    monkeypatch.setattr(Trainer, "save", save)
    limit, outcomes = 10**6, set()
    train(capsys, corpus, tmp_path / "count", *flags)
    operations = budget["used"]  # of one whole save
    assert operations >= 10
    for limit in range(operations):
        out = tmp_path / f"killed{limit}"
        budget["armed"] = True
        with pytest.raises(Killed):
            train(capsys, corpus, out, *flags)
        budget["armed"] = False
        code, _, err = run(["train", "gpt", "--out", str(out), "--resume", *FAST], capsys)
        if code != 0:
            one_line_error(code, err)
            outcomes.add("refused")
            continue
        resumed = load_checkpoint(out).model.state_dict()
        assert all(torch.equal(resumed[k], final[k]) for k in final), f"killed at {limit}"
        assert not list(out.glob(".*.tmp")) and not (out / "checkpoint.journal").exists()
        log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2, 3, 4], f"killed at {limit}"  # each once
        assert [r["step"] for r in log if "val_loss" in r] == [2, 4], f"killed at {limit}"
        outcomes.add("resumed")
    assert outcomes == {"resumed"}  # every kill point recovers here


@pytest.mark.parametrize("resume", [False, True])
def test_the_temporary_files_of_a_killed_save_are_removed_at_the_next_start(
    tmp_path, corpus, capsys, resume
):
    """A kill before a save's journal leaves its temporary files (a real kill runs no cleanup):
    the next run in the folder, new or resumed, removes them and only them."""
    out, flags = tmp_path / "run", ("--max-iters", "2", "--eval-interval", "2")
    assert train(capsys, corpus, out, *flags)[0] == 0
    if not resume:
        (out / "model.safetensors").unlink()  # killed before its first checkpoint was whole
    leftovers = [out / ".model.safetensors.k1ll3d.tmp", out / ".trainer_state.json.x.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    more = ["--resume", "--max-iters", "4"] if resume else []
    code, _, err = train(capsys, corpus, out, *flags, *more)
    assert code == 0, err
    assert not any(path.exists() for path in leftovers) and (out / "model.safetensors").is_file()


def test_a_truly_read_only_file_system_is_one_line_and_left_as_it_was(tmp_path, corpus, capsys):
    """The same under a real read-only mount (a bind mount in a private mount namespace, where
    the system lets this user make one): a resumed run, a new run, `tokenize train`, and a
    read-only cache each end in one line, and nothing there changes."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("this system does not allow a private mount namespace (unshare -m)")
    ro, logs = tmp_path / "ro", tmp_path / "logs"
    out = ro / "run"
    assert train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")[0] == 0
    (ro / "cache").mkdir()
    logs.mkdir()
    before = {p: p.read_bytes() for p in ro.rglob("*") if p.is_file()}
    attnlab = [sys.executable, "-m", "attnlab"]
    new_run = [*attnlab, "train", "gpt", "--data", str(corpus), "--context-length", "16", *FAST]
    commands = {
        "resume": [*attnlab, "train", "gpt", "--out", str(out), "--resume", "--max-iters", "4"],
        "new": [*new_run, "--out", str(ro / "new"), "--max-iters", "2"],
        "tokenizer": [
            *("env", f"ATTNLAB_CACHE={ro / 'cache'}", *new_run, "--tokenizer", "bpe:300"),
            *("--out", str(logs / "run"), "--max-iters", "2"),
        ],
        "tokenize": [
            *attnlab,
            *("tokenize", "train", "--data", str(corpus), "--vocab-size", "300"),
            *("--out", str(ro / "tok.json")),
        ],
    }
    script = [f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} || exit 1"]
    script += [
        f"{shlex.join(c)} 2> {logs}/{n}.err; echo $? > {logs}/{n}.rc" for n, c in commands.items()
    ]
    subprocess.run(["unshare", "-m", "sh", "-c", "\n".join(script)], check=True)
    for name in commands:
        line = one_line_error(
            int((logs / f"{name}.rc").read_text()), (logs / f"{name}.err").read_text()
        )
        assert "Read-only file system" in line, (name, line)
    assert {p: p.read_bytes() for p in ro.rglob("*") if p.is_file()} == before


def test_a_run_that_is_all_warm_up_says_so(tmp_path, corpus, capsys):
    constant = ["--max-iters", "2", "--lr-schedule", "constant"]  # constant too: below its rate
    code, _, err = train(capsys, corpus, tmp_path / "a", *constant)
    assert code == 0 and "whole run is warm-up, the learning rate only rises, to 2e-05" in err
    code, _, err = train(capsys, corpus, tmp_path / "b", "--max-iters", "2", "--warmup-iters", "1")
    assert code == 0 and "warm-up" not in err
