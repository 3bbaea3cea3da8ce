"""Bad numbers and bad text from the user: one line, exit code 2, nothing written."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import one_line_error, run

from attnlab import figures
from attnlab.errors import UserError
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.tokenizers.bpe import BPETokenizer
from attnlab.training.checkpoints import save_checkpoint

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TEXT = "the quick brown fox jumps over the lazy dog " * 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = BPETokenizer.train([TEXT], 300)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1, n_heads=2, d_model=16
    )
    path = tmp_path_factory.mktemp("bad") / "ckpt"
    torch.manual_seed(0)  # set up before the test's seeding: weights of its own, in any order
    save_checkpoint(path, GPT(config), {"tokenizer": tokenizer})
    return path


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--temperature", "nan"], "temperature"),
        (["--temperature", "inf"], "temperature"),
        (["--repetition-penalty", "nan"], "--repetition-penalty"),
        (["--top-p", "nan"], "--top-p"),
        (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
        (["--seed", str(2**70)], "seed"),
        (["--seed", str(2**63)], f"--seed must be in [0, 2**63), got {2**63}"),
        (["--prompt", "fox \udcff"], "not valid UTF-8"),  # a command-line byte that is not UTF-8
    ],
)
def test_sample_refuses_non_numbers_and_non_text(checkpoint, capsys, flags, expected):
    line = one_line_error(*run(["sample", str(checkpoint), *flags], capsys)[::2])
    assert expected in line


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--learning-rate", "nan"], "--learning-rate must be a finite number"),
        (["--norm-eps", "inf"], "--norm-eps must be a finite number"),
        (["--seed", str(2**64)], "--seed must be in [0, 2**63)"),
        (["--beta1", "2"], "--beta1 must be in [0, 1)"),
        (["--beta2", "1"], "--beta2 must be in [0, 1)"),
        (["--adam-eps", "0"], "--adam-eps must be a positive number, got 0.0"),
        (["--adam-eps", "inf"], "--adam-eps must be a finite number"),
        (["--weight-decay", "-1"], "--weight-decay must be at least 0, got -1.0"),
        (["--warmup-iters", "-1"], "--warmup-iters must be at least 0, got -1"),
        (["--time-limit", "0"], "--time-limit must be a positive number"),
        (["--time-limit", "-1"], "--time-limit must be a positive number"),
        (["--compile-by-block"], "--compile-by-block is a way to compile: it needs compile"),
    ],
)
def test_train_refuses_non_finite_settings(tmp_path, capsys, flags, expected):
    (tmp_path / "corpus.txt").write_text(TEXT)
    argv = ["train", "gpt", "--data", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "r")]
    assert expected in one_line_error(*run([*argv, *flags], capsys)[::2])
    assert not (tmp_path / "r").exists()


def test_an_empty_out_or_a_way_to_compile_a_model_without_blocks_is_refused(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # where runs/gpt would go
    (tmp_path / "corpus.txt").write_text(TEXT)
    (tmp_path / "c.toml").write_text('out = ""\n')
    argv = ["train", "gpt", "--data", "corpus.txt", "--max-iters", "1", "--n-layers", "1"]
    line = one_line_error(*run([*argv, "--out", ""], capsys)[::2])
    assert line.endswith("--out is empty: give a run directory")
    line = one_line_error(*run([*argv, "--config", "c.toml"], capsys)[::2])
    assert line.endswith("c.toml: out is empty: give a run directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "corpus.txt"]
    argv = ["train", "lstm_lm", "--data", "corpus.txt", "--out", "r", "--max-iters", "1"]
    line = one_line_error(*run([*argv, "--compile", "--compile-by-block"], capsys)[::2])
    assert "--compile-by-block: RecurrentLM has no blocks to compile one by one" in line


def test_a_task_with_a_tokenizer_is_one_line_and_a_finished_run_resumed_says_so(tmp_path, capsys):
    out = str(tmp_path / "r")
    task = ["train", "gpt", "--data", "task:mqar", "--out", out, "--context-length", "64"]
    line = one_line_error(*run([*task, "--tokenizer", "bpe:300"], capsys)[::2])
    assert "character by character: leave --tokenizer bpe:300 out" in line
    assert not (tmp_path / "r").exists()
    tiny = ["--n-layers", "1", "--d-model", "16", "--n-heads", "2", "--eval-iters", "1"]
    assert run([*task, *tiny, "--max-iters", "2"], capsys)[0] == 0
    code, _, err = run(["train", "gpt", "--out", out, "--resume"], capsys)
    assert code == 0 and "is at step 2 already (max_iters 2): nothing to train" in err
    assert "warm-up" not in err  # of steps it will not take


def test_a_nan_in_a_config_file_is_one_line(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(TEXT)
    (tmp_path / "c.toml").write_text(
        f'data = "{tmp_path / "corpus.txt"}"\n[model]\nnorm_eps = nan\n'
    )
    argv = ["train", "gpt", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r")]
    assert "norm_eps must be a finite number" in one_line_error(*run(argv, capsys)[::2])


def test_a_config_file_with_a_byte_order_mark_in_a_pipe_or_not_utf8_is_read_or_named(
    tmp_path, capsys
):
    """Notepad's UTF-8 starts with a byte-order mark; bash's <(...) is a pipe; a Latin-1 file
    is named, not "the input"; a folder is no config file."""
    (tmp_path / "corpus.txt").write_text(TEXT)
    body = f'data = "{tmp_path / "corpus.txt"}"\r\n[model]\r\nnorm_eps = nan\r\n'.encode()
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + body)
    reader, writer = os.pipe()
    os.write(writer, body)
    os.close(writer)
    (tmp_path / "latin1.toml").write_bytes(b'data = "caf\xe9.txt"\n')
    (tmp_path / "mark.toml").write_bytes(b'\xef\xbb\xbfdata = "caf\xe9.txt"\n')  # counted
    for config in ("bom.toml", f"/dev/fd/{reader}"):
        argv = ["train", "gpt", "--config", str(tmp_path / config), "--out", str(tmp_path / "r")]
        assert "norm_eps must be a finite number" in one_line_error(*run(argv, capsys)[::2])
    os.close(reader)
    for config, expected in [
        ("latin1.toml", "latin1.toml is not UTF-8 text (invalid continuation byte at byte 11)"),
        ("mark.toml", "mark.toml is not UTF-8 text (invalid continuation byte at byte 14)"),
        ("", f"{tmp_path} is a folder: give a config file"),
    ]:
        argv = ["train", "gpt", "--config", str(tmp_path / config), "--out", str(tmp_path / "r")]
        assert expected in one_line_error(*run(argv, capsys)[::2])
    assert not (tmp_path / "r").exists()


def test_a_config_of_another_kind_is_named_before_its_keys(capsys):
    config = str(CONFIGS / "vit_mnist.toml")  # `shift` is a key only a vision kind knows
    line = one_line_error(*run(["train", "gpt", "--config", config], capsys)[::2])
    assert line.endswith("vit_mnist.toml is for `attnlab train vit`, not gpt")


def test_an_unknown_preset_in_a_config_file_is_named_with_the_file(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('preset = "huge"\n')
    argv = ["train", "gpt", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r")]
    line = one_line_error(*run(argv, capsys)[::2])
    assert line.endswith("c.toml: unknown preset 'huge'; choose one of gpt2, gpt2-medium, "
                         "gpt2-large, gpt2-xl, tiny")  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_a_config_key_in_the_wrong_table_is_named_with_its_table(tmp_path, capsys):
    argv = ["train", "gpt", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r")]
    for text, expected in [
        ("[model]\nmax_iters = 2\n", "max_iters belongs in [training], not in [model]"),
        ("n_layers = 2\n", "n_layers belongs in [model], not at the top level (before any table)"),
        ('[training]\ndata = "x"\n', "data belongs at the top level (before any table), not in"),
    ]:
        (tmp_path / "c.toml").write_text(text)
        assert f"c.toml: {expected}" in one_line_error(*run(argv, capsys)[::2])
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_file_for_its_folder_and_init_changes_are_named_as_given(checkpoint, capsys):
    line = one_line_error(*run(["sample", str(checkpoint / "model.safetensors")], capsys)[::2])
    assert line.endswith(
        f"model.safetensors is a file, not a checkpoint: give its folder, {checkpoint}"
    )
    argv = ["train", "gpt", "--init", str(checkpoint), "--out", str(checkpoint.parent / "r")]
    line = one_line_error(*run([*argv, "--n-layers", "2", "--d-model", "16"], capsys)[::2])
    assert line.endswith(f"takes the model from {checkpoint} (n_layers 1): leave --n-layers 2 out")


def test_stdin_that_is_not_utf8_is_one_line(checkpoint):
    tokenizer = str(checkpoint / "tokenizer.json")
    done = subprocess.run(
        [sys.executable, "-m", "attnlab", "tokenize", "encode", "--tokenizer", tokenizer],
        input=b"\xef\xbb\xbfcaf\xe9 \xff\n",  # where: in the bytes given, the mark's counted
        capture_output=True,
    )
    line = one_line_error(done.returncode, done.stderr.decode())
    assert "not valid UTF-8 text (invalid continuation byte at byte 6)" in line


def test_output_the_encoding_of_stdout_cannot_hold_is_one_line_naming_it():
    """PYTHONIOENCODING=ascii (or a locale's 8-bit encoding) and a text it has no bytes for:
    the output is at fault, not the input, and the line says how to print such text."""
    decode = ["tokenize", "decode", "--tokenizer", "byte", "97", "195", "175"]  # "aï"
    done = subprocess.run(
        [sys.executable, "-m", "attnlab", *decode],
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
        capture_output=True,
    )
    line = one_line_error(done.returncode, done.stderr.decode("ascii"))
    assert "U+00EF (LATIN SMALL LETTER I WITH DIAERESIS)" in line and "not valid" not in line
    assert "the output's encoding is ascii; set PYTHONIOENCODING=utf-8" in line


def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(TEXT)
    (tmp_path / "file").write_text("mine")
    argv = [
        "train",
        "gpt",
        "--data",
        str(tmp_path / "corpus.txt"),
        "--out",
        str(tmp_path / "file" / "run"),
    ]
    one_line_error(*run(argv, capsys)[::2])
    assert (tmp_path / "file").read_text() == "mine"


def test_a_run_directory_named_like_mathematics_plots_as_text(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(TEXT)
    out = tmp_path / "$\\frac{1}{$"  # a broken formula, were it read as one
    argv = ["train", "gpt", "--data", str(tmp_path / "corpus.txt"), "--out", str(out),
            "--max-iters", "2", "--eval-interval", "1", "--context-length", "8",
            "--n-layers", "1", "--d-model", "16", "--n-heads", "2", "--no-compile"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert (out / "loss.png").stat().st_size > 0
    assert f"sample it:  attnlab sample '{out}'\n" in err  # quoted, as a shell must be given it


def test_characters_no_font_has_are_one_warning_and_an_installed_font_draws_them(
    tmp_path, monkeypatch
):
    """Not matplotlib's two warnings for each character (in a run's name, a token, a class)."""
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure

    class Warns(Artist):  # a warning of another kind, raised in drawing: passed on
        def draw(self, renderer):
            warnings.warn("drawn", UserWarning, stacklevel=2)

    def warnings_saving(name, title="run ℊℊ 東"):
        fig = Figure(figsize=(2, 2), layout="tight")
        fig.subplots().set_title(title)
        fig.add_artist(Warns())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            figures.save_figure(fig, tmp_path / name)
        return [str(warning.message) for warning in caught]

    monkeypatch.setattr(figures, "FALLBACK_FONTS", ())
    *drawn, line = warnings_saving("none.png")
    assert drawn and set(drawn) == {"drawn"}
    assert "none.png: no installed font has 2 of its characters (ℊ 東), drawn as boxes" in line
    ten = "一二三四五六七八九十"  # all shown: no "..."
    assert f"10 of its characters ({' '.join(ten)}), drawn" in warnings_saving("10.png", ten)[-1]
    monkeypatch.setattr(figures, "FALLBACK_FONTS", ("STIXGeneral",))  # has ℊ, as DejaVu Sans not
    assert "1 of its characters (東)" in warnings_saving("stix.png")[-1]


def test_control_characters_in_an_error_are_shown_escaped(tmp_path, capsys):
    """A name with a newline would break the one line; an escape sequence would act on the
    terminal (here, turn it red)."""
    name = tmp_path / "run\n\x1b[31mred"
    line = one_line_error(*run(["sample", str(name)], capsys)[::2])
    assert "run\\n\\x1b[31mred" in line and "\x1b" not in line


def test_a_huge_max_new_tokens_streams_at_once_in_little_memory(checkpoint):
    """`sample --max-new-tokens 1000000000 | head`: text comes at once, nothing is reserved for
    a billion tokens, and the closed pipe ends the run quietly."""
    probe = (
        "import resource, subprocess, sys\n"
        "argv = [sys.executable, '-m', 'attnlab', 'sample', sys.argv[1], '--max-new-tokens',\n"
        "        '1000000000']\n"
        "with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as done:\n"
        "    first = done.stdout.read(64)\n"
        "    done.stdout.close()\n"
        "    code, err = done.wait(timeout=120), done.stderr.read()\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(code, len(first), peak, repr(err))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(checkpoint)], capture_output=True)
    code, length, peak_kb, err = out.stdout.decode().split(maxsplit=3)
    assert (code, length) == ("141", "64") and "Traceback" not in err, out
    assert int(peak_kb) < 1_000_000, peak_kb


def test_a_file_where_a_folder_must_go_is_named(tmp_path, capsys):
    (tmp_path / "notes").write_text(TEXT)
    (tmp_path / "afile").write_text("")
    argv = ["tokenize", "train", "--data", str(tmp_path / "notes"), "--vocab-size", "300"]
    line = one_line_error(*run([*argv, "--out", str(tmp_path / "afile" / "tok.json")], capsys)[::2])
    assert line == f"attnlab: error: {tmp_path / 'afile'} is a file, not a folder"
    argv = ["train", "gpt", "--data", str(tmp_path / "notes"), "--out", str(tmp_path / "afile/r")]
    line = one_line_error(*run(argv, capsys)[::2])  # a run's folder too (made under its lock)
    assert line == f"attnlab: error: {tmp_path / 'afile'} is a file, not a folder"


def test_a_link_to_nothing_where_a_folder_must_go_is_named(tmp_path, capsys, monkeypatch):
    """A link whose target is gone was "File exists: LINK" (tokenize train: after the training)."""
    (tmp_path / "notes").write_text(TEXT)
    (tmp_path / "runs").symlink_to(tmp_path / "gone")
    expected = f"attnlab: error: {tmp_path / 'runs'} is a link that leads nowhere, or around in a "
    expected += f"loop (to {tmp_path / 'gone'})"
    monkeypatch.setattr(BPETokenizer, "train", None)  # never reached
    argv = ["tokenize", "train", "--data", str(tmp_path / "notes"), "--vocab-size", "300"]
    line = one_line_error(*run([*argv, "--out", str(tmp_path / "runs" / "tok.json")], capsys)[::2])
    assert line == expected
    argv = ["train", "gpt", "--data", str(tmp_path / "notes"), "--out", str(tmp_path / "runs")]
    assert one_line_error(*run(argv, capsys)[::2]) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "runs"]


def test_a_misspelt_best_score_stops_at_the_first_evaluation_with_that_step_saved(tmp_path):
    from test_training import make_trainer

    trainer = make_trainer(tmp_path, max_iters=4, eval_interval=2)
    trainer.keep_best = "val_acc"
    with pytest.raises(UserError, match="no score 'val_acc'; evaluation gives val_loss .*step 2"):
        trainer.fit()
    assert json.loads((tmp_path / "trainer_state.json").read_text())["step"] == 2


@pytest.mark.parametrize(
    "command",
    [
        ["sample", "ckpt"],
        ["evaluate", "ckpt"],
        ["translate", "ckpt", "Hallo"],
        ["classify", "ckpt", "fine"],
        ["fill-mask", "ckpt", "a [MASK]"],
        ["classify-image", "ckpt", "x.png"],
        ["sample-images", "ckpt"],
        ["inspect", "attention", "ckpt"],
    ],
)
def test_every_command_takes_a_numbered_gpu_and_refuses_other_devices_as_it_parses(command, capsys):
    from attnlab.cli import build_parser

    parser = build_parser(command[0])
    assert parser.parse_args([*command, "--device", "cuda:1"]).device == "cuda:1"
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args([*command, "--device", "gpu"])
    assert stopped.value.code == 2
    assert "--device: choose one of auto, cpu, cuda, mps or cuda:N" in capsys.readouterr().err


def test_every_command_names_its_checkpoint_and_its_text_alike():
    """A checkpoint argument is CKPT and a text TEXT in every command's usage (as --init CKPT)."""
    from attnlab.cli import build_parser

    def leaves(parser):
        actions = parser._subparsers._group_actions if parser._subparsers else []
        children = [child for action in actions for child in action.choices.values()]
        return [leaf for child in children for leaf in leaves(child)] if children else [parser]

    names = {"checkpoint": "CKPT", "text": "TEXT", "texts": "TEXT"}
    for parser in leaves(build_parser()):
        for action in parser._actions:
            if not action.option_strings and action.dest in names:
                assert action.metavar == names[action.dest], (parser.prog, action.dest)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "gpt", "--config", ""], "an empty path: give a config file"),
        (["sample", ""], "an empty path: give a checkpoint's folder"),
        (["classify-image", "", "x.png"], "an empty path: give a checkpoint's folder"),
        (["tokenize", "show", "--tokenizer", "", "hi"], "an empty tokenizer: give byte, gpt2"),
    ],
)
def test_an_empty_path_is_named_so_not_taken_for_the_current_folder(argv, message, capsys):
    """`--config "$UNSET"`: Path("") is ".", and the error spoke of a folder "." or ""."""
    assert message in one_line_error(*run(argv, capsys)[::2])


def test_out_of_memory_is_one_line_naming_the_size(checkpoint, capsys, monkeypatch):
    """`sample --beam-size 100000000` asked the CPU allocator for 51 GB: a traceback."""
    from attnlab.errors import memory_error_line
    from attnlab.generation import decoding

    cpu = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 51200000000 bytes."
    gpu = "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79 GiB"
    assert "(it asked for 51.2 GB at once)" in memory_error_line(RuntimeError(cpu))
    assert "(it asked for 20.00 GiB at once)" in memory_error_line(torch.OutOfMemoryError(gpu))
    assert memory_error_line(MemoryError()).startswith("out of memory: ")
    assert memory_error_line(RuntimeError("shapes do not match")) is None

    def allocate(*args, **kwargs):
        raise RuntimeError(cpu)

    monkeypatch.setattr(decoding, "_decode", allocate)
    code, _, err = run(["sample", str(checkpoint), "--max-new-tokens", "3"], capsys)
    assert "out of memory (it asked for 51.2 GB at once)" in one_line_error(code, err)
