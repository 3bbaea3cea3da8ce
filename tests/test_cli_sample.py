"""`attnlab sample`: help, end-to-end sampling from a tiny checkpoint, and clean failures."""

import subprocess
import sys
import unicodedata

import pytest
import torch
from helpers import MUST_COMPILE, Terminal, one_line_error

from attnlab.cli import main
from attnlab.generation import generate_text
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.tokenizers import ByteTokenizer, CharTokenizer
from attnlab.training.checkpoints import save_checkpoint

TEXT = "first citizen:\nbefore we proceed any further, hear me speak.\n"


def save_char_gpt(path, prepare=lambda model: model):
    """A 1-layer character GPT of TEXT's characters saved at `path` (prepare(model) first)."""
    tokenizer = CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1, n_heads=2, d_model=16
    )
    save_checkpoint(path, prepare(GPT(config)), {"tokenizer": tokenizer})
    return config, tokenizer


@pytest.fixture
def checkpoint(tmp_path):
    save_char_gpt(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def sample(capsys, *args):
    code = main(["sample", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--max-new-tokens" in out and "(default: 500)" in out
    assert "(default: '', the start of a text)" in " ".join(out.split())  # not "none"


def test_sample_prints_prompt_and_continuation_only(capsys, checkpoint):
    code, out, err = sample(capsys, checkpoint, "--prompt", "hear", "--max-new-tokens", 30)
    assert code == 0
    assert out.startswith("hear") and out.endswith("\n")
    assert len(out) == len("hear") + 30 + 1
    assert set(out) <= set(TEXT)  # nothing but generated characters
    assert "sample" in err  # notes go to stderr


def test_sample_matches_the_library_and_is_reproducible(capsys, checkpoint, monkeypatch):
    from attnlab.training.checkpoints import load_checkpoint

    caches, new_cache = [], GPT.new_cache  # --no-cache recomputes: it makes no cache
    monkeypatch.setattr(GPT, "new_cache", lambda *a, **k: caches.append(1) or new_cache(*a, **k))
    args = (checkpoint, "--prompt", "me", "--max-new-tokens", 40, "--seed", 5, "--crop-to", 8)
    _, first, _ = sample(capsys, *args)
    _, again, _ = sample(capsys, *args)
    assert first == again and caches
    caches.clear()
    _, uncached, _ = sample(capsys, *args, "--no-cache")
    assert uncached == first and not caches
    loaded = load_checkpoint(checkpoint)
    model, tokenizer = loaded.model, loaded.tokenizer
    expected = generate_text(
        model, tokenizer, "me", 40, temperature=0.8, top_k=200, seed=5, crop_to=8
    )
    assert first == "me" + expected + "\n"


@MUST_COMPILE
def test_compiled_sampling_gives_the_same_text(capsys, checkpoint, monkeypatch):
    from attnlab.generation import decoding

    steps, compiled_step = [], decoding.compiled_step

    def counted(*args):  # the compiled step, counting the tokens it chooses
        step = compiled_step(*args)
        return lambda *inputs: steps.append(1) or step(*inputs)

    monkeypatch.setattr(decoding, "compiled_step", counted)
    args = (checkpoint, "--prompt", "me", "--max-new-tokens", 30, "--temperature", 0)
    _, eager, _ = sample(capsys, *args)
    assert not steps
    code, compiled, _ = sample(capsys, *args, "--compile")  # past the 16-token context
    assert code == 0 and compiled == eager and steps


def test_several_samples_are_separated(capsys, checkpoint):
    code, out, _ = sample(capsys, checkpoint, "--num-samples", 3, "--max-new-tokens", 10)
    assert code == 0
    samples = out.split("---------------\n")
    assert len(samples) == 3
    assert all(len(s) == 11 for s in samples)  # empty prompt: 10 characters and a newline
    assert len(set(samples)) > 1  # one random stream across samples, so they differ


def test_stop_string_cuts_the_sample(capsys, checkpoint):
    _, full, _ = sample(capsys, checkpoint, "--prompt", "a", "--temperature", 0)
    stop = full[5:7]
    _, cut, _ = sample(capsys, checkpoint, "--prompt", "a", "--temperature", 0, "--stop", stop)
    assert cut == full[: full.index(stop, 1)] + "\n"  # the first stop after the prompt "a"


def test_control_characters_are_escaped_on_a_terminal_only(capsys, tmp_path, monkeypatch):
    """An undertrained byte-level model emits escape sequences, bells, carriage returns: shown
    escaped on a terminal (where they would act), written as they are to a file or a pipe."""
    tokenizer = ByteTokenizer()
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1, n_heads=2, d_model=8
    )
    save_checkpoint(tmp_path, GPT(config), {"tokenizer": tokenizer})
    args = (tmp_path, "--max-new-tokens", 200, "--temperature", 2)
    piped = sample(capsys, *args)[1]
    controls = {c for c in piped if unicodedata.category(c) == "Cc"} - {"\n", "\t"}
    assert controls
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert main(["sample", *map(str, args)]) == 0
    escaped = "".join(ascii(c)[1:-1] if c in controls else c for c in piped)
    assert sys.stdout.getvalue() == escaped
    monkeypatch.setattr(sys, "stdout", Terminal())  # the prompt too; DEL and C1 as C0, not tabs
    prompt = "\x1b[2J\x7f\x9b\ta"
    assert main(["sample", str(tmp_path), "--prompt", prompt, "--max-new-tokens", "0"]) == 0
    assert sys.stdout.getvalue() == "\\x1b[2J\\x7f\\x9b\ta\n"


def test_unseen_prompt_characters_exit_2(capsys, checkpoint):
    code, out, err = sample(capsys, checkpoint, "--prompt", "hello WORLD")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "'W'" in err and "'D'" in err


def test_missing_checkpoint_exits_2(capsys, tmp_path):
    code, out, err = sample(capsys, tmp_path / "nowhere")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no checkpoint" in err


def test_corrupt_checkpoint_exits_2(capsys, checkpoint):
    (checkpoint / "model.safetensors").write_bytes(b"not a tensor file")
    code, out, err = sample(capsys, checkpoint)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "corrupt" in err


def test_bad_option_values_exit_2(capsys, checkpoint):
    for flag, value in [("--top-p", 2), ("--num-samples", 0), ("--crop-to", 99),
                        ("--temperature", -1), ("--repetition-penalty", 0)]:  # fmt: skip
        code, out, err = sample(capsys, checkpoint, "--prompt", "me", flag, value)
        assert code == 2 and out == "" and err.count("\n") == 1, (flag, err)
        assert flag in err, err  # the flag, not SamplingConfig's field nor generate's argument


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--temperature", 0, "--top-k", 5, "--seed", 3],
            "--seed and --top-k would change nothing",
        ),
        (["--temperature", 0, "--top-p", 0.5], "--top-p would change nothing at --temperature 0"),
        (["--temperature", 0, "--num-samples", 2], "--num-samples would change nothing"),
        (["--stop", ""], "--stop '' is empty"),
        (["--top-k", 99], "--top-k 99 would change nothing: the model chooses from 25 tokens"),
    ],
)
def test_settings_that_would_change_nothing_are_refused(capsys, checkpoint, flags, message):
    code, out, err = sample(capsys, checkpoint, *flags)
    assert message in one_line_error(code, err) and out == ""


def test_crop_to_on_a_recurrent_model_is_refused(capsys, tmp_path):
    tokenizer = CharTokenizer.from_text(TEXT)
    config = RecurrentLMConfig(vocab_size=tokenizer.vocab_size, n_layers=1, d_model=8)
    save_checkpoint(tmp_path, RecurrentLM(config), {"tokenizer": tokenizer})
    code, out, err = sample(capsys, tmp_path, "--crop-to", 4, "--max-new-tokens", 40)
    assert "--crop-to has no effect: this model has no context" in one_line_error(code, err)


def test_a_reader_that_goes_away_ends_the_command_quietly(checkpoint):
    """`attnlab sample ... | head`: the pipe closes; the command stops with 141, no message."""
    command = (
        f"{sys.executable} -m attnlab sample {checkpoint} --max-new-tokens 4000 "
        "--num-samples 32 | head -c 10 > /dev/null; exit ${PIPESTATUS[0]}"
    )
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 141, done.stderr
    assert "Error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
