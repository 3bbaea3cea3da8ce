"""attnlab in shell pipelines and scripts: a reader that goes away, outputs named by a link or a
pipe (/dev/stdout, a shell's >(...)), and --json that any JSON reader takes."""

import contextlib
import errno
import io
import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from helpers import Terminal, read_only, run

from attnlab.cli import main
from attnlab.cli.options import check_output, print_json
from attnlab.files import atomic_write_bytes, naming
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.tokenizers.byte import ByteTokenizer
from attnlab.training.checkpoints import save_checkpoint


@pytest.mark.parametrize("argv", [["data", "list"], ["--version"]])
def test_a_reader_gone_before_the_last_output_ends_it_quietly(tmp_path, argv):
    """`attnlab data list | true`: without PYTHONUNBUFFERED the output is written at exit, where
    Python's own flush would print "Exception ignored ... BrokenPipeError", exit code 120."""
    reader, writer = os.pipe()
    os.close(reader)  # gone before anything is written
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["ATTNLAB_DATA"] = str(tmp_path)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "attnlab", *argv], stdout=writer, stderr=subprocess.PIPE, env=env
        )
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr.decode()) == (141, "")


def test_an_output_named_by_a_link_or_a_pipe_is_written_through_it(tmp_path, monkeypatch):
    """/dev/stdout is a link, a shell's >(...) a pipe: replacing either by a renamed file (as
    root, /dev/stdout itself) loses the output. A folder the user cannot write (/dev) is no
    matter where the output exists."""
    folder, mine = tmp_path / "dev", tmp_path / "mine"
    folder.mkdir(), mine.mkdir()
    target, link, fifo = mine / "hypotheses.txt", folder / "stdout", folder / "fifo"
    target.write_text("old text, longer than the new\n")
    link.symlink_to(target)
    os.mkfifo(fifo)
    read = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_bytes()))
    reader.start()
    read_only(monkeypatch, folder)
    for path in (link, fifo):
        assert check_output("--hypotheses", path, str(tmp_path / "run")) == path
        atomic_write_bytes(path, b"one\ntwo\n")
    reader.join(timeout=10)
    assert link.is_symlink() and target.read_bytes() == b"one\ntwo\n"
    assert read == [b"one\ntwo\n"] and not fifo.is_file()


def test_json_holds_no_nan_or_infinity(tmp_path, capsys):
    """A diverged model's loss is over 709 nats: its perplexity overflows a float. The text
    says inf; --json says null (Python's Infinity is no JSON), and exp() raises no traceback."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=256, context_length=8, n_layers=1, n_heads=2, d_model=16)
    model = GPT(config)
    with torch.no_grad():
        model.final_norm.weight.fill_(1e5)
    save_checkpoint(tmp_path / "run", model, {"tokenizer": ByteTokenizer()})
    (tmp_path / "text.txt").write_text("to be or not to be, that is the question. " * 4)
    argv = ["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "text.txt")]
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 0, err

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    scores = json.loads(out, parse_constant=refuse)
    assert scores["loss"] > 710 and scores["perplexity"] is None
    code, out, err = run(argv, capsys)
    assert code == 0 and "perplexity  inf" in out, err
    print_json({"a": [float("nan"), 1.5], "b": {"c": float("-inf")}})
    assert json.loads(capsys.readouterr().out, parse_constant=refuse) == {
        "a": [None, 1.5],
        "b": {"c": None},
    }


@pytest.mark.parametrize("closed", ["None", "closed"])
def test_an_evaluation_with_stderr_closed_scores(tmp_path, capsys, monkeypatch, closed):
    """`attnlab evaluate ... 2>&-` (a cron job's, a daemon's): Python's stderr is then None, and
    the progress bar, asking whether it is a terminal, failed with an AttributeError."""
    config = GPTConfig(vocab_size=256, context_length=8, n_layers=1, n_heads=2, d_model=16)
    save_checkpoint(tmp_path / "run", GPT(config), {"tokenizer": ByteTokenizer()})
    (tmp_path / "text.txt").write_text("to be or not to be, that is the question. " * 4)
    stream = None
    if closed == "closed":
        stream = Terminal()
        stream.close()
    monkeypatch.setattr(sys, "stderr", stream)
    descriptor = os.fstat(2).st_ino
    code, out, _ = run(
        ["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "text.txt")], capsys
    )
    assert code == 0 and "perplexity" in out
    # in-process: the stream is given back, and descriptor 2 (open) was left as it was
    assert sys.stderr is stream and os.fstat(2).st_ino == descriptor
    tokenizer = ["--vocab-size", "260", "--out", str(tmp_path / "tok.json")]  # its bar alike
    assert (
        run(["tokenize", "train", "--data", str(tmp_path / "text.txt"), *tokenizer], capsys)[0] == 0
    )


def test_an_output_named_by_dev_stdout_follows_what_was_printed(tmp_path, monkeypatch):
    """`evaluate ... --hypotheses /dev/stdout --json > all.txt`: the file opened again would be
    written from its start, and the JSON printed after would overwrite the hypotheses."""
    out, stdout = tmp_path / "all.txt", tmp_path / "stdout"
    stdout.symlink_to(out)  # as /dev/stdout -> /proc/self/fd/1 -> all.txt
    with open(out, "w") as file:
        monkeypatch.setattr(sys, "stdout", file)
        print("before")
        atomic_write_bytes(stdout, b"one\ntwo\n")
        print("after")
    assert out.read_text() == "before\none\ntwo\nafter\n"


class FullDisk(io.StringIO):
    """stdout on a full disk: every write and flush fails, naming no file."""

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    flush = write


@pytest.mark.parametrize(
    "argv",
    [
        ["tokenize", "encode", "--tokenizer", "byte", "hi"],
        ["tokenize", "show", "--tokenizer", "byte", "hi"],
        ["data", "list"],
        ["--help"],
        ["sample", "RUN", "--max-new-tokens", "3", "--device", "cpu"],
        ["evaluate", "RUN", "--data", "TEXT", "--json", "--device", "cpu"],
    ],
)
def test_stdout_on_a_full_disk_is_named(tmp_path, capsys, monkeypatch, argv):
    """`attnlab sample RUN > FILE` on a full disk: the line says what could not be written."""
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path))
    if "RUN" in argv:
        config = GPTConfig(vocab_size=256, context_length=8, n_layers=1, n_heads=2, d_model=16)
        save_checkpoint(tmp_path / "run", GPT(config), {"tokenizer": ByteTokenizer()})
        (tmp_path / "text.txt").write_text("to be or not to be, that is the question. " * 4)
    paths = {"RUN": str(tmp_path / "run"), "TEXT": str(tmp_path / "text.txt")}
    monkeypatch.setattr(sys, "stdout", FullDisk())
    code = main([paths.get(word, word) for word in argv])
    err = capsys.readouterr().err
    assert (code, err) == (
        2,
        "attnlab: error: cannot write standard output: No space left on device\n",
    )


def test_an_output_named_by_a_device_names_it_on_a_full_disk(tmp_path):
    """A full disk behind a link or a device (--png /dev/stdout > FILE): the error names it."""
    with pytest.raises(OSError, match="No space left on device") as raised:
        atomic_write_bytes("/dev/full", b"one\n")  # ENOSPC on every write, as a full disk
    assert raised.value.filename == "/dev/full"
    with pytest.raises(OSError) as raised, naming(tmp_path / "out.png"):
        raise OSError(errno.EPIPE, os.strerror(errno.EPIPE))  # not a full disk's: as it was
    assert raised.value.filename is None


def test_stdout_named_as_the_output_on_a_full_disk_is_named(monkeypatch):
    """`attnlab ... --png /dev/stdout > FILE` on a full disk: written after what was printed."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.suppress(OSError))  # its close: the write still buffered
        full = stack.enter_context(open("/dev/full", "w"))  # stdout is the output named
        monkeypatch.setattr(sys, "stdout", full)
        with pytest.raises(OSError, match="No space left on device") as raised:
            atomic_write_bytes("/dev/full", b"one\n")
    assert raised.value.filename == "/dev/full" and full.closed


def test_a_training_run_whose_reader_goes_away_ends_saved(tmp_path, corpus):
    """`attnlab train ... 2>&1 | head`: the run stops at its next step with a checkpoint (as on
    SIGTERM), exit code 141, rather than dying mid-step with all of it lost."""
    reader, writer = os.pipe()
    os.close(reader)  # gone before the first line
    out = tmp_path / "run"
    argv = ["train", "gpt", "--data", str(corpus), "--out", str(out), "--n-layers", "1"]
    argv += ["--d-model", "16", "--context-length", "16", "--max-iters", "50", "--eval-iters", "1"]
    try:
        done = subprocess.run([sys.executable, "-m", "attnlab", *argv], stderr=writer)
    finally:
        os.close(writer)
    state = json.loads((out / "trainer_state.json").read_text())
    assert done.returncode == 141 and (out / "model.safetensors").is_file() and state["step"] < 50


KILLED_WHILE_TOKENIZING = """
import os, signal, sys
from attnlab.cli import main
from attnlab.tokenizers.char import CharTokenizer
def encode_array(self, text):
    os.kill(os.getpid(), signal.SIGTERM)  # `timeout`, a scheduler: while the cache is written
    return encode(self, text)
encode, CharTokenizer.encode_array = CharTokenizer.encode_array, encode_array
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_before_training_stops_as_ctrl_c_does_leaving_nothing_half_written(tmp_path, corpus):
    """SIGTERM anywhere, not only within training steps, is Ctrl-C: one line, exit code 130,
    and what was being written (a corpus's token cache, a new run folder) gone, not left."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["train", "gpt", "--data", str(corpus), "--out", str(out), "--no-cpu-kernels"]
    env = {**os.environ, "ATTNLAB_CACHE": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_TOKENIZING, *argv], capture_output=True, env=env
    )
    assert (done.returncode, done.stderr.decode().splitlines()[-1]) == (130, "attnlab: interrupted")
    assert not out.exists() and not list((cache / "tokens").iterdir())


@pytest.mark.parametrize("closed", [1, 2])
def test_a_command_whose_stdout_or_stderr_is_closed_runs(tmp_path, corpus, closed):
    """`attnlab train ... 2>&-`, `... >&-`: Python's stream is then None; print() to it wrote to
    stdout, the training's progress bar and the last flush of stdout failed (exit code 1)."""
    out = tmp_path / "run"
    argv = ["train", "gpt", "--data", str(corpus), "--out", str(out), "--n-layers", "1"]
    argv += ["--d-model", "16", "--context-length", "16", "--max-iters", "2", "--eval-iters", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "attnlab", *argv],
        capture_output=True,
        pass_fds=(),
        close_fds=True,
        preexec_fn=lambda: os.close(closed),  # noqa: PLW1509 - as the shell's N>&-
    )
    assert done.returncode == 0 and (out / "model.safetensors").is_file(), done
    assert done.stdout == b"" if closed == 2 else done.stderr != b""


def test_a_command_whose_stdin_is_closed_reads_it_as_empty():
    """`attnlab tokenize encode <&-`: Python's stdin is then None, whose read was a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "attnlab", "tokenize", "encode", "--tokenizer", "byte"],
        capture_output=True,
        preexec_fn=lambda: os.close(0),  # noqa: PLW1509 - as the shell's <&-
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"\n", b""), done


def test_a_command_run_in_a_deleted_folder_says_so(tmp_path):
    """A shell left in a folder since deleted: importing torch there ended the process with
    oneMKL's "FATAL ERROR: Cannot load libtorch_cpu.so" and nothing about the folder."""
    gone = tmp_path / "gone"
    gone.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "attnlab", "sample", str(tmp_path / "run")],
        capture_output=True,
        preexec_fn=lambda: (os.chdir(gone), os.rmdir(gone)),  # noqa: PLW1509 - as `rm -r .`
    )
    line = "attnlab: error: the current folder no longer exists (deleted): cd to one that does\n"
    assert (done.returncode, done.stderr.decode()) == (2, line), done


def test_a_plot_written_to_stdout_gets_stdout_to_itself(tmp_path):
    """`inspect lens ... --png /dev/stdout > lens.png`: the table and the "wrote" line go to
    stderr, or they would sit in the middle of the PNG's bytes."""
    folder = tmp_path / "ckpt"
    model = GPT(GPTConfig(vocab_size=256, context_length=16, n_layers=1, n_heads=1, d_model=8))
    save_checkpoint(folder, model.eval(), {"tokenizer": ByteTokenizer()})
    png = tmp_path / "lens.png"
    with png.open("wb") as out:
        argv = ["inspect", "lens", str(folder), "--text", "to be", "--png", "/dev/stdout"]
        done = subprocess.run([sys.executable, "-m", "attnlab", *argv], stdout=out, stderr=-1)
    assert done.returncode == 0, done.stderr
    image = png.read_bytes()
    assert image.startswith(b"\x89PNG") and image.endswith(b"IEND\xaeB`\x82")
    assert b"wrote /dev/stdout" in done.stderr and b"position" in done.stderr
