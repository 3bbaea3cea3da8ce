"""`attnlab tokenize`: help, train/encode/decode/show end to end, one-line errors."""

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import Terminal, loaded_by, one_line_error, read_only, run, snapshot

from attnlab.cli import main
from attnlab.tokenizers import load_tokenizer
from attnlab.tokenizers.bpe import BPETokenizer

REPO = Path(__file__).resolve().parent.parent
CORPUS = "the quick brown fox jumps over the lazy dog.\nthe dog sleeps; the fox runs.\n" * 20


@pytest.fixture
def trained_file(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    out = tmp_path / "tok.json"
    code = main(
        [
            "tokenize",
            "train",
            "--data",
            str(tmp_path / "corpus.txt"),
            "--vocab-size",
            "280",
            "--out",
            str(out),
            "--special",
            "<|endoftext|>",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    report = capsys.readouterr().out
    assert "vocab 280:" in report and "bytes/token" in report and "trained in" in report
    return out


@pytest.mark.parametrize("sub", [[], ["train"], ["encode"], ["decode"], ["show"]])
def test_help(sub, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenize", *sub, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: attnlab tokenize" in text
    if sub:  # every option shows its default
        assert "(default:" in text


def test_train_encode_decode_show(trained_file, capsys, monkeypatch):
    tokenizer = load_tokenizer(trained_file)
    assert tokenizer.vocab_size == 280 and tokenizer.special_tokens == {"<|endoftext|>": 279}

    assert main(["tokenize", "encode", "--tokenizer", str(trained_file), "the lazy fox"]) == 0
    ids = capsys.readouterr().out.split()
    assert [int(i) for i in ids] == tokenizer.encode("the lazy fox")

    assert main(["tokenize", "decode", "--tokenizer", str(trained_file), *ids]) == 0
    assert capsys.readouterr().out == "the lazy fox"  # exactly the text: a pipe, a file
    with monkeypatch.context() as terminal:
        terminal.setattr(sys, "stdout", Terminal())
        assert main(["tokenize", "decode", "--tokenizer", str(trained_file), *ids]) == 0
        assert sys.stdout.getvalue() == "the lazy fox\n"  # on a terminal, a line of its own
        terminal.setattr(sys, "stdout", Terminal())  # where an escape sequence would act
        assert main(["tokenize", "decode", "--tokenizer", "byte", "27", "91", "9", "7"]) == 0
        assert sys.stdout.getvalue() == "\\x1b[\t\\x07\n"
    assert main(["tokenize", "decode", "--tokenizer", "byte", "27", "91", "9", "7"]) == 0
    assert capsys.readouterr().out == "\x1b[\t\x07"  # a pipe, a file: exactly

    monkeypatch.setattr(sys, "stdin", io.StringIO("the dog\n"))
    assert main(["tokenize", "encode", "--tokenizer", str(trained_file)]) == 0
    ids = capsys.readouterr().out.strip()
    monkeypatch.setattr(sys, "stdin", io.StringIO(ids))
    assert main(["tokenize", "decode", "--tokenizer", str(trained_file)]) == 0
    assert capsys.readouterr().out == "the dog\n"  # encode | decode gives the text back

    assert main(["tokenize", "show", "--tokenizer", str(trained_file), "the fox"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "|".join(tokenizer.decode([i]) for i in tokenizer.encode("the fox")) == lines[0]
    n = len(tokenizer.encode("the fox"))
    assert lines[1] == f"{n} tokens, 7 bytes: {7 / n:.2f} bytes/token"
    assert main(["tokenize", "show", "--tokenizer", str(trained_file), ""]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "0 tokens, 0 bytes"  # no 0/0 as a ratio
    assert main(["tokenize", "show", "--tokenizer", "byte", "a"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "1 token, 1 byte: 1.00 bytes/token"


def test_show_colours_on_a_terminal(trained_file, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("NO_COLOR", "")  # empty: not set, as no-color.org has it
    monkeypatch.setenv("TERM", "xterm-256color")
    assert main(["tokenize", "show", "--tokenizer", str(trained_file), "the fox"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "\x1b[" in first and "|" not in first
    assert main(["tokenize", "show", "--no-color", "--tokenizer", str(trained_file), "a b"]) == 0
    assert "\x1b[" not in capsys.readouterr().out


@pytest.mark.parametrize("variable, value", [("NO_COLOR", "1"), ("TERM", "dumb")])
def test_show_draws_no_colours_where_the_environment_says_not_to(
    trained_file, capsys, monkeypatch, variable, value
):
    """NO_COLOR (no-color.org) and a terminal that draws no colours (TERM=dumb: an editor's
    shell, say) get the bars a pipe gets, not escape codes shown as text."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv(variable, value)
    assert main(["tokenize", "show", "--tokenizer", str(trained_file), "the fox"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "\x1b" not in first and "|" in first


def test_byte_tokenizer(capsys, monkeypatch):
    assert main(["tokenize", "encode", "--tokenizer", "byte", "hé"]) == 0
    assert capsys.readouterr().out.split() == ["104", "195", "169"]
    assert main(["tokenize", "show", "--tokenizer", "byte", "hé"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "h|\\xc3|\\xa9"
    assert main(["tokenize", "show", "--tokenizer", "byte", "a|¦b"]) == 0  # not a|||¦|b
    assert capsys.readouterr().out.splitlines()[0] == "a‖|‖\\xc2‖\\xa6‖b"
    assert main(["tokenize", "show", "--tokenizer", "byte", "a\x1b[2J\r\n"]) == 0  # not acted on
    assert capsys.readouterr().out.splitlines()[0] == "a|\\x1b|[|2|J|\\r|\\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbfh\xc3\xa9")))
    assert main(["tokenize", "encode", "--tokenizer", "byte"]) == 0  # Notepad's mark: no text
    assert capsys.readouterr().out.split() == ["104", "195", "169"]


def test_a_failed_train_makes_no_folder(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    out = tmp_path / "new" / "sub" / "tok.json"
    argv = ["tokenize", "train", "--data", str(tmp_path / "empty.txt"), "--out", str(out)]
    assert "is empty" in one_line_error(main(argv), capsys.readouterr().err)
    assert not (tmp_path / "new").exists()


def test_a_run_directory_gives_its_tokenizer(trained_file, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tokenizer.json").write_bytes(trained_file.read_bytes())
    assert main(["tokenize", "encode", "--tokenizer", str(tmp_path / "run"), "the fox"]) == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    assert ids == load_tokenizer(trained_file).encode("the fox")


def test_gpt2_tokenizer(capsys, shared_data, monkeypatch):
    if not (shared_data / "gpt2-bpe").is_dir():
        pytest.skip(f"GPT-2 vocabulary not found in {shared_data} (set ATTNLAB_DATA)")
    monkeypatch.setenv("ATTNLAB_DATA", str(shared_data))  # read there, never downloaded
    assert main(["tokenize", "encode", "--tokenizer", "gpt2", "hello world"]) == 0
    assert capsys.readouterr().out.split() == ["31373", "995"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "/no/such/file.txt"], "data not found"),
        (["train", "--data", "{corpus}", "--vocab-size", "256", "--special", "<pad>"], "too small"),
        (
            ["train", "--data", "{corpus}", "--pattern", "([a-z]"],
            "invalid pre-tokenization pattern",
        ),
        (["train", "--data", "{corpus}", "--workers", "0"], "--workers"),
        (["train", "--data", "/no/such", "--special", "<a>", "<b>", "<a>"], "'<a>' given more"),
        (["train", "--data", "/no/such", "--special", ""], "must be a non-empty string"),
        (["train", "--data", "/no/such", "--special", "<a>", "--special", "<a>"], "more than once"),
        (["train", "--data", "{corpus}", "--out", "{corpus}"], "is not a tokenizer: left as"),
        (["train", "--data", "{corpus}", "--out", "{folder}"], "is a folder: give a file"),
        (["train", "--data", "{corpus}", "--out", ""], "--out is empty: give a file"),
        (["decode", "--tokenizer", "{tok}", "1", "two"], "not a token id: 'two'"),
        (["decode", "--tokenizer", "{tok}", "1_0"], "not a token id: '1_0'"),
        (["show", "--tokenizer", "{tok}", "a\udcffb"], "not valid UTF-8"),
        (["decode", "--tokenizer", "{tok}", "280"], "outside the vocabulary"),
        (["encode", "--tokenizer", "/no/such/tok.json", "hi"], "not found"),
        (["encode", "--tokenizer", "{corpus}", "hi"], "not valid JSON"),
        (["encode", "--tokenizer", "{folder}", "hi"], "is a folder without a tokenizer.json"),
        (["show", "--tokenizer", "char", "hi"], "tokenizer 'char' is learned from a corpus"),
        (["encode", "--tokenizer", "bpe:300", "hi"], "tokenizer 'bpe:300' is learned from a"),
        # a pattern that leaves characters between its matches would drop them from every text
        (
            ["train", "--data", "{corpus}", "--out", "{folder}/w.json", "--pattern", r"\w+"],
            "skips characters of the corpus",
        ),
        (
            ["train", "--data", "{corpus}", "--out", "{folder}/w.json", "--pattern", "."],
            "skips characters of the corpus ('\\n' first)",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, trained_file, capsys):
    corpus = trained_file.parent / "corpus.txt"
    args = [a.format(corpus=corpus, tok=trained_file, folder=corpus.parent) for a in args]
    before = snapshot(corpus.parent)
    assert message in one_line_error(main(["tokenize", *args]), capsys.readouterr().err)
    assert snapshot(corpus.parent) == before


@pytest.mark.parametrize(
    "command, pattern, message",
    [
        # tiktoken's backtracking engine gives up on "aaa...b" with a Rust panic: refused on load
        ("encode", r"(?:a(?=a)|a)+c", "needs a backtracking regex engine"),
        # Python's engine takes exponential time on "aaa...b": stopped after its time budget
        ("train", r"(a|aa)+$", "takes too long on this text"),
    ],
)
def test_a_catastrophic_pattern_is_one_line_within_seconds(
    tmp_path, capsys, command, pattern, message
):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a" * 60 + "b")
    tokenizer = tmp_path / "tok.json"
    saved = {**BPETokenizer([]).to_dict(), "pattern": pattern}  # as a hand-edited file
    tokenizer.write_text(json.dumps(saved))
    before = tokenizer.read_bytes()
    argv = {
        "encode": ["encode", "--tokenizer", str(tokenizer), corpus.read_text()],
        "train": ["train", "--data", str(corpus), "--pattern", pattern, "--vocab-size", "260",
                  "--out", str(tmp_path / "new.json")],
    }[command]  # fmt: skip
    start = time.monotonic()
    line = one_line_error(main(["tokenize", *argv]), capsys.readouterr().err)
    assert message in line and time.monotonic() - start < 10
    assert tokenizer.read_bytes() == before and not (tmp_path / "new.json").exists()


@pytest.mark.parametrize("marker", ["run.json", "model.safetensors"])  # a run, a best/ folder
def test_tokenize_train_never_writes_into_a_run_folder(tmp_path, capsys, marker):
    (tmp_path / "corpus.txt").write_text("some text to learn from " * 20)
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / marker).write_text("{}")
    argv = ["tokenize", "train", "--data", str(tmp_path / "corpus.txt"), "--vocab-size", "260"]
    line = one_line_error(main([*argv, "--out", str(run_folder / "tokenizer.json")]),
                          capsys.readouterr().err)  # fmt: skip
    assert "is in the run folder" in line and not (run_folder / "tokenizer.json").exists()


def test_a_read_only_out_stops_tokenize_train_before_training(tmp_path, capsys, monkeypatch):
    (tmp_path / "corpus.txt").write_text("some text to learn from " * 20)
    folder = tmp_path / "read_only"
    folder.mkdir()
    read_only(monkeypatch, folder)
    monkeypatch.setattr(BPETokenizer, "train", None)  # never reached
    argv = ["tokenize", "train", "--data", str(tmp_path / "corpus.txt"), "--vocab-size", "260"]
    line = one_line_error(main([*argv, "--out", str(folder / "tok.json")]), capsys.readouterr().err)
    assert "Permission denied" in line and not any(folder.iterdir())


def test_missing_gpt2_files_exit_2_in_a_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "attnlab", "tokenize", "show", "--tokenizer", "gpt2", "hi"],
        capture_output=True,
        text=True,
        cwd=REPO,
        # no data, and downloads go to a port nobody listens on
        env={
            "ATTNLAB_DATA": str(tmp_path),
            "ATTNLAB_DATA_MIRROR": "http://127.0.0.1:9",
            "PATH": "/usr/bin:/bin",
        },
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("attnlab: error: cannot get dataset 'gpt2-bpe'")
    assert list(tmp_path.rglob("*.*")) == []  # nothing half-written


def test_train_reads_data_by_name_as_train_does(tmp_path, capsys, monkeypatch):
    """`--data` names data inside the data folder, as for `attnlab train`."""
    (tmp_path / "data/notes").mkdir(parents=True)
    (tmp_path / "data/notes/input.txt").write_text("the lazy fox jumps over the lazy dog\n" * 20)
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "tok.json"
    argv = ["tokenize", "train", "--data", "notes/input.txt", "--vocab-size", "270"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    assert load_tokenizer(out).encode("lazy") != list(b"lazy")  # merges learned from the file


def test_a_tokenizer_file_trains_a_gpt_and_brings_weights_saved_without_one(
    trained_file, tmp_path, capsys
):
    """`tokenize train`'s file is a --tokenizer for `train`; weights saved without a tokenizer
    (imported ones) start a run given the tokenizer they read, and are refused without it,
    rather than silently starting new embeddings for another vocabulary."""
    from attnlab.models.gpt import GPT, GPTConfig
    from attnlab.training.checkpoints import load_checkpoint, save_checkpoint

    corpus, small = str(tmp_path / "corpus.txt"), ["--max-iters", "1", "--batch-size", "2"]
    shape = ["--n-layers", "1", "--d-model", "16", "--n-heads", "2", "--context-length", "16"]
    args = ["train", "gpt", "--data", corpus, "--tokenizer", str(trained_file), *small, *shape]
    code, _, err = run([*args, "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    saved = load_checkpoint(tmp_path / "run").artifacts["tokenizer"]
    assert saved.to_dict() == load_tokenizer(trained_file).to_dict()

    config = GPTConfig(vocab_size=saved.vocab_size, context_length=16, n_layers=1, n_heads=2,
                       d_model=16)  # fmt: skip
    save_checkpoint(tmp_path / "imported", GPT(config), {})  # no tokenizer.json
    init = ["train", "gpt", "--data", corpus, *small, "--init", str(tmp_path / "imported")]
    line = one_line_error(*run([*init, "--out", str(tmp_path / "a")], capsys)[::2])
    assert f"its vocab_size is {saved.vocab_size}" in line and "holds no tokenizer" in line
    assert not (tmp_path / "a").exists()
    given = [*init, "--tokenizer", str(trained_file), "--out", str(tmp_path / "b")]
    code, _, err = run(given, capsys)
    assert code == 0 and "new: none; left out: none" in err, err


def test_showing_tokens_loads_no_torch():
    """Reading a tokenizer (GPT-2's, a file) needs no torch, which takes 1-2 s to load."""
    loaded = loaded_by("tokenize", "show", "--tokenizer", "byte", "hello")
    assert loaded & {"attnlab.cli.tokenize", "torch"} == {"attnlab.cli.tokenize"}


@pytest.mark.parametrize(
    ("flags", "advice"),
    [(["--special", "-x-"], "; a value that starts with '-' is written --special=-x- (see"),
     (["--out", "--pattern", "gpt2"], " (see")],  # a flag where a value was missing: no advice
)  # fmt: skip
def test_a_value_starting_with_a_dash_is_told_to_follow_an_equals_sign(flags, advice, capsys):
    """As for a flag of one value, so for one of one or more ("expected at least one")."""
    with pytest.raises(SystemExit) as exit_:
        main(["tokenize", "train", "corpus.txt", *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and f"argument{advice}" in err
