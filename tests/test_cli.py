import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import one_line_error, run

from attnlab import __version__
from attnlab.cli import COMMANDS, build_parser, main
from attnlab.cli import run as attnlab
from attnlab.cli.options import read_toml
from attnlab.config import config_from_dict, config_to_dict
from attnlab.data.text import TextSplits
from attnlab.models import get_kind
from attnlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.training.checkpoints import load_checkpoint
from attnlab.training.trainer import TrainConfig

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "--context-length",
    "16",
    "--n-layers",
    "1",
    "--n-heads",
    "2",
    "--d-model",
    "16",
    "--batch-size",
    "4",
    "--eval-iters",
    "2",
    "--device",
    "cpu",
]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("To be, or not to be, that is the question.\n" * 40)
    return path


def subcommands(parser, prefix=()):
    """Every command path of the CLI: ("train",), ("train", "gpt"), ("sample",), ..."""
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, child in action.choices.items():
            yield (*prefix, name)
            yield from subcommands(child, (*prefix, name))


def test_help_works_for_every_command(capsys):
    paths = list(subcommands(build_parser()))
    assert {p[0] for p in paths} == set(COMMANDS) and ("train", "gpt") in paths
    for path in [(), *paths]:
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "usage: attnlab" in out
        assert not re.search(r"\(default: (\)|\[\])|\(default: [^)]*\) \(default:", out), path
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"attnlab {__version__}\n"


def test_train_gpt_help_lists_every_field_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "gpt", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--max-iters",
        "--eval-interval",
        "--eval-iters",
        "--batch-size",
        "--seed",
        "--device",
        "--resume",
        "--n-kv-heads",
        "--positional",
        "--compile",
    ):
        assert flag in text
    assert "(default: 2000)" in text and "residual stream width" in text
    # model flags show the preset a run starts from, and each default is said once
    assert "most positions the model reads at once (default: 64)" in text
    assert "--vocab-size" not in text  # the tokenizer's
    assert "[training] (default: none) --preset" in text  # not "(default: none) (default: None)"


def test_train_sample_evaluate_end_to_end(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    code, _, err = run(
        [
            "train",
            "gpt",
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--max-iters",
            "6",
            "--eval-interval",
            "3",
            *TINY,
        ],
        capsys,
    )
    assert code == 0, err
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {"step", "train_loss", "lr", "tokens_per_s"} <= records[0].keys()
    assert "val_loss" in records[2] and "val_loss" in records[5]

    code, text, _ = run(
        ["sample", str(out), "--prompt", "To be", "--max-new-tokens", "20", "--seed", "3"], capsys
    )
    assert code == 0 and text.startswith("To be") and len(text) >= 20
    assert (
        run(
            ["sample", str(out), "--prompt", "To be", "--max-new-tokens", "20", "--seed", "3"],
            capsys,
        )[1]
        == text
    )

    code, text, _ = run(["evaluate", str(out), "--data", str(corpus), "--json"], capsys)
    assert code == 0
    check_evaluation(json.loads(text), out, corpus)
    assert run(["evaluate", str(out), "--json"], capsys)[1] == text  # the run's data (run.json)
    (tmp_path / "short.txt").write_text("To be, or not")  # shorter than the context: scored
    argv = ["evaluate", str(out), "--data", str(tmp_path / "short.txt"), "--split", "all"]
    assert json.loads(run([*argv, "--json"], capsys)[1])["tokens"] == 12

    # --resume extends the run with more steps; earlier metric lines are kept
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "8"], capsys)
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_run_in_a_notebook_leaves_its_plots_alone(tmp_path, corpus, capsys):
    """`attnlab.cli.run`, as a notebook calls it: the command runs in this process and writes
    its loss plot without touching pyplot (the notebook's backend and open figures stay); a
    failing command raises, a bad flag too."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # any backend other than the Agg that files are written with
    try:
        figure = plt.figure()
        attnlab(f"train gpt --data {corpus} --out {tmp_path / 'run'} --max-iters 2 "
                "--eval-interval 1 --eval-iters 1 --context-length 8 --n-layers 1 --d-model 16 "
                "--n-heads 2 --no-compile")  # fmt: skip
        assert (tmp_path / "run/loss.png").stat().st_size > 0
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == [figure.number]
        plt.close(figure)
    finally:
        matplotlib.use(before)
    with pytest.raises(RuntimeError, match="exit code 2"):
        attnlab(f"sample {tmp_path / 'nothing here'}")
    with pytest.raises(RuntimeError, match="exit code 2"):
        attnlab("train gpt --no-such-flag")
    capsys.readouterr()


def check_evaluation(result: dict, run_dir: Path, corpus: Path) -> None:
    """`evaluate --json` on the validation split against the same loss computed here: the mean
    cross-entropy over non-overlapping context windows, every token but the first a target once
    (the last window shorter); perplexity and bits per byte from it (one byte per character of
    this ASCII corpus)."""
    loaded = load_checkpoint(run_dir)
    model, length = loaded.model.eval(), loaded.model.config.context_length
    tokens = TextSplits.from_tokens(np.array(loaded.tokenizer.encode(corpus.read_text()))).val
    ids = torch.from_numpy(tokens.astype(np.int64))
    logits, targets = [], ids[1:]
    with torch.no_grad():
        for start in range(0, len(ids) - 1, length):
            inputs = ids[None, start : min(start + length, len(ids) - 1)]
            logits.append(model(inputs)[0][0])
    loss = F.cross_entropy(torch.cat(logits), targets).item()
    assert result["tokens"] == targets.numel() == result["bytes"]
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(loss / math.log(2), rel=1e-5)


def test_bad_input_is_one_line_and_exit_2(tmp_path, corpus, capsys):
    out = str(tmp_path / "run")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    bad_key = tmp_path / "bad_key.toml"
    bad_key.write_text("[model]\nn_layer = 3\n")
    bad_type = tmp_path / "bad_type.toml"
    bad_type.write_text('[training]\nbatch_size = "twelve"\n')
    cases = [
        (["train", "gpt", "--data", str(tmp_path / "missing.txt"), "--out", out], "not found"),
        (["train", "gpt", "--data", str(empty), "--out", out], "empty"),
        (["train", "gpt", "--data", str(short), "--out", out, *TINY], "context_length"),
        (
            ["train", "gpt", "--config", str(bad_key), "--data", str(corpus), "--out", out],
            "n_layer",
        ),
        (
            ["train", "gpt", "--config", str(bad_type), "--data", str(corpus), "--out", out],
            "batch_size",
        ),
        (
            ["train", "gpt", "--data", str(corpus), "--out", out, "--d-model", "30"],
            "--d-model=30 must be divisible by --n-heads=4",
        ),
        (["evaluate", str(tmp_path / "nowhere"), "--data", str(corpus)], "no checkpoint"),
        (["sample", str(tmp_path / "nowhere")], "no checkpoint"),
    ]
    for argv, needle in cases:
        line = one_line_error(*run(argv, capsys)[::2])
        assert needle in line, (argv, line)


def test_existing_checkpoint_is_never_overwritten_without_resume(tmp_path, corpus, capsys):
    out = str(tmp_path / "run")
    args = ["train", "gpt", "--data", str(corpus), "--out", out, "--max-iters", "2", *TINY]
    assert run(args, capsys)[0] == 0
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    assert "--resume" in one_line_error(*run(args, capsys)[::2])
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_sample_names_characters_the_tokenizer_never_saw(tmp_path, corpus, capsys):
    out = str(tmp_path / "run")
    run(["train", "gpt", "--data", str(corpus), "--out", out, "--max-iters", "1", *TINY], capsys)
    line = one_line_error(*run(["sample", out, "--prompt", "Zebra €"], capsys)[::2])
    assert "'Z'" in line and "'€'" in line and "--tokenizer byte or bpe:N" in line


def gpt_parameters(c: GPTConfig) -> int:
    """A GPT's parameter count from its shape: embeddings, per block an attention layer (query,
    key and value rows, output), a feed-forward (two or, gated, three matrices) and two norms,
    a final norm, and an untied head."""
    assert c.mixer == "attention"
    d, width = c.d_model, c.ff_width

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + (n_out if c.bias else 0)

    qkv_rows = (c.n_heads + 2 * (c.n_kv_heads or c.n_heads)) * c.head_dim
    attention = linear(d, qkv_rows) + linear(c.n_heads * c.head_dim, d)
    gated = c.activation in ("swiglu", "geglu")
    feedforward = (2 if gated else 1) * linear(d, width) + linear(width, d)
    norm = 2 * d if c.norm == "layernorm" and c.bias else d
    positions = c.context_length * d if c.positional == "learned" else 0
    head = 0 if c.tie_weights else c.vocab_size * d
    block = attention + feedforward + 2 * norm
    return c.vocab_size * d + positions + c.n_layers * block + norm + head


def encoder_decoder_parameters(c: EncoderDecoderConfig) -> int:
    """torch.nn.Transformer of the same shape (its final norms only where ours has them), plus
    the embedding matrices: one shared with the output projection, or three."""
    assert c.norm == "layernorm" and c.activation not in ("swiglu", "geglu")
    reference = torch.nn.Transformer(
        c.d_model, c.n_heads, c.n_encoder_layers, c.n_decoder_layers, c.d_ff, bias=c.bias,
        batch_first=True,  # as ours (else torch warns that it cannot use nested tensors)
    )  # fmt: skip
    if not c.has_final_norm:
        reference.encoder.norm = reference.decoder.norm = torch.nn.Identity()
    embeddings = (1 if c.share_embeddings else 3) * c.vocab_size * c.d_model
    return sum(p.numel() for p in reference.parameters()) + embeddings


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_builds_its_model(path):
    """A config names its kind (`kind = "vit"`; GPT when it does not); the model is that kind's
    preset with the [model] fields over it."""
    toml = read_toml(str(path))
    kind = get_kind(toml.get("kind", "gpt"))
    base = config_to_dict(kind.presets[toml.get("preset", kind.default_preset)])
    model = kind.model(config_from_dict(kind.config, {**base, **toml.get("model", {})}))
    counted = {GPT: gpt_parameters, EncoderDecoder: encoder_decoder_parameters}.get(type(model))
    if counted is not None:  # counted from the shape, independently of the modules
        assert model.num_parameters() == counted(model.config)
    if "training" in toml:
        config_from_dict(TrainConfig, toml["training"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; `timeout`, a job
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, corpus, signum, built_kernels):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attnlab",
            "train",
            "gpt",
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--max-iters",
            "100000",
            "--eval-interval",
            "100000",
            *TINY,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] >= 1 and (out / "optimizer.safetensors").is_file()


def test_top_level_help_answers_without_loading_torch():
    code = (
        "import sys\nfrom attnlab.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("unit", ["token", "sequence"])
def test_the_loss_plot_names_the_unit_the_loss_is_per(tmp_path, monkeypatch, unit):
    from attnlab.cli import reports

    drawn = []
    monkeypatch.setattr("attnlab.figures.save_figure", lambda fig, path: drawn.append(fig) or path)
    record = {"step": 1, "train_loss": 0.7, f"{unit}s_per_s": 10.0, "val_loss": 0.6}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    reports.plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert drawn[0].axes[0].get_ylabel() == f"loss (nats/{unit})"


def test_a_resumed_runs_progress_bar_rates_only_the_steps_it_trains(monkeypatch):
    from attnlab.cli.reports import progress_printer

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress_printer(100)
    bar.start_at(90, 0.0)
    now = {**bar.bar.format_dict, "n": 95, "elapsed": 5.0, "rate": None}  # 5 steps in 5 s
    assert "[00:05<00:05,  1.00step/s]" in bar.bar.format_meter(**now)


@pytest.mark.parametrize(
    "argv", [["train", "gpt", "--max-iters", "abc"], ["train", "gpt", "--bogus"], ["sample"]]
)
def test_a_malformed_command_line_is_one_line_naming_the_commands_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "usage" not in err
    assert err.startswith(f"attnlab {' '.join(argv[:2]) if argv[0] == 'train' else argv[0]}: ")
    assert err.endswith("--help)\n")


def test_the_data_command_loads_neither_torch_nor_numpy():
    code = (
        "import sys; from attnlab.cli import data; from attnlab.cli import options; "
        "print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.stdout.strip() == "[]", result.stderr
