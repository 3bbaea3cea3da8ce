"""`attnlab inspect heads`: the loss with each attention head zero-ablated, checked against the
same loss computed here with the public capture API; and the checkpoints it refuses."""

import json
import random
import string
import sys

import pytest
import torch
from helpers import Terminal, one_line_error, run

from attnlab.interpretability import ablate_heads, capture, plots
from attnlab.interpretability.surgery import head_ablation
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.tokenizers.char import CharTokenizer
from attnlab.training.checkpoints import save_checkpoint

TEXT = "to be or not to be, that is the question. " * 10  # too short to split off a tenth
CONTEXT, WINDOWS = 32, 4


def trained_gpt():
    """A 2-layer, 3-head GPT after a few steps on TEXT: its heads have begun to matter."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer(string.printable)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=CONTEXT, n_layers=2,
                          n_heads=3, d_model=24))  # fmt: skip
    ids = torch.tensor(tokenizer.encode(TEXT))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        starts = torch.randint(0, len(ids) - CONTEXT - 1, (8,)).tolist()
        x = torch.stack([ids[s : s + CONTEXT] for s in starts])
        y = torch.stack([ids[s + 1 : s + CONTEXT + 1] for s in starts])
        optimizer.zero_grad()
        model(x, y)[1].backward()
        optimizer.step()
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    model, tokenizer = trained_gpt()
    save_checkpoint(root / "gpt", model, {"tokenizer": tokenizer})
    (root / "corpus.txt").write_text(TEXT)
    return model, tokenizer, str(root / "gpt"), str(root / "corpus.txt")


def windows(tokenizer):
    """The first WINDOWS windows of TEXT, end to end, as `inspect layers|heads` scores them."""
    ids = torch.tensor(tokenizer.encode(TEXT)[: WINDOWS * CONTEXT + 1])
    x = torch.stack([ids[i * CONTEXT : (i + 1) * CONTEXT] for i in range(WINDOWS)])
    y = torch.stack([ids[i * CONTEXT + 1 : (i + 1) * CONTEXT + 1] for i in range(WINDOWS)])
    return x, y


def test_each_heads_loss_is_the_loss_with_that_head_ablated(trained, capsys):
    model, tokenizer, checkpoint, corpus = trained
    code, stdout, err = run(["inspect", "heads", checkpoint, "--data", corpus,
                             "--windows", str(WINDOWS), "--json"], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    x, y = windows(tokenizer)
    with torch.no_grad():
        assert result["baseline"] == pytest.approx(model(x, y)[1].item(), abs=1e-5)
        layers = ["blocks.0.token_mixer", "blocks.1.token_mixer"]
        assert list(result["loss"]) == layers
        for layer in layers:
            expected = []
            for head in range(3):
                patch = {f"{layer}.attention_weights": ablate_heads([head])}
                with capture(model, patches=patch):
                    expected.append(model(x, y)[1].item())
            assert result["loss"][layer] == pytest.approx(expected, abs=1e-5)
    changes = [v - result["baseline"] for losses in result["loss"].values() for v in losses]
    assert max(changes) > 1e-2  # trained heads matter: ablating one costs loss

    code, table, err = run(["inspect", "heads", checkpoint, "--data", corpus,
                            "--windows", str(WINDOWS)], capsys)  # fmt: skip
    assert code == 0, err
    lines = table.splitlines()
    assert f"baseline loss {result['baseline']:.4f}" in lines[0]
    assert lines[2].split() == ["layer", "0", "1", "2"]
    rows = [line.split() for line in lines[3:5]]
    assert [row[0] for row in rows] == ["0", "1"]
    shown = [float(cell) for row in rows for cell in row[1:]]
    assert shown == pytest.approx(changes, abs=1e-4)  # a layers x heads table of the changes
    layer, head = divmod(max(range(6), key=changes.__getitem__), 3)
    assert lines[5].startswith(f"most needed: layer {layer}, head {head} ")


def test_the_heatmap_is_centred_at_no_change(trained, tmp_path, capsys, monkeypatch):
    _, _, checkpoint, corpus = trained
    drawn = []
    real_save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, png, **k: drawn.append(fig) or
                        real_save(fig, png, **k))  # fmt: skip
    png = tmp_path / "heads.png"
    code, stdout, err = run(["inspect", "heads", checkpoint, "--data", corpus, "--windows", "2",
                             "--json", "--png", str(png)], capsys)  # fmt: skip
    assert code == 0, err
    assert png.read_bytes().startswith(b"\x89PNG") and f"wrote {png}" in err
    result = json.loads(stdout)  # stdout: the one object, the note on stderr
    image = drawn[0].axes[0].images[0]
    low, high = image.get_clim()
    assert low == -high and image.get_array().shape == (2, 3)
    changes = [v - result["baseline"] for losses in result["loss"].values() for v in losses]
    assert high == pytest.approx(max(map(abs, changes)))
    cells = [float(text.get_text()) for text in drawn[0].axes[0].texts]
    assert cells == pytest.approx(changes, abs=high / 10)  # two figures of the largest change
    assert len(set(cells)) > 1 and max(map(abs, cells)) >= high / 2


def test_cell_text_is_white_on_a_dark_cell(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, png, **_: drawn.append(fig) or png)
    values = torch.tensor([[-1.0, 0.0, 1.0]])
    cells = [["low", "none", "high"]]
    panels = [
        plots.Heatmap(values, cmap, ["r"], list("abc"), cmap=cmap, vmin=-1, vmax=1, cells=cells)
        for cmap in ("RdBu_r", "Blues")
    ]
    plots.save_heatmaps(tmp_path / "cells.png", panels, columns=2)
    maps = [ax for ax in drawn[0].axes if ax.get_label() != "<colorbar>"]
    colours = [[text.get_color() for text in ax.texts] for ax in maps]
    assert colours == [["white", "black", "white"], ["black", "black", "white"]]


@pytest.mark.parametrize("mixer", ["mamba", "lstm"])
def test_a_model_without_attention_is_one_line(tmp_path, capsys, mixer):
    vocab = len(string.printable)
    if mixer == "lstm":
        model = RecurrentLM(RecurrentLMConfig(vocab_size=vocab, context_length=16))
    else:
        model = GPT(GPTConfig(vocab_size=vocab, context_length=16, n_layers=1, d_model=16,
                              mixer=mixer))  # fmt: skip
    save_checkpoint(tmp_path / "run", model.eval(), {"tokenizer": CharTokenizer(string.printable)})
    (tmp_path / "corpus.txt").write_text(TEXT)
    code, stdout, err = run(["inspect", "heads", str(tmp_path / "run"), "--data",
                             str(tmp_path / "corpus.txt")], capsys)  # fmt: skip
    assert "no attention layers" in one_line_error(code, err) and stdout == ""


def test_head_ablation_leaves_the_model_as_it_was(trained):
    model, tokenizer, _, _ = trained
    x, y = windows(tokenizer)
    model.train()

    def loss():
        with torch.no_grad():
            return model(x, y)[1].item()

    baseline, results = head_ablation(model, loss)
    assert model.training and len(results) == 2 and all(len(r) == 3 for r in results.values())
    model.eval()
    assert loss() == baseline  # no patch left behind


def test_a_nan_loss_is_shown_and_passed_over(trained, tmp_path, capsys, monkeypatch):
    """A model that overflows with a head ablated (its loss NaN): the table shows nan, the most
    needed head is among the others and the heatmap is scaled to them."""
    from attnlab.interpretability import surgery

    _, _, checkpoint, corpus = trained
    nan = float("nan")  # first: max() of a list that starts with NaN is NaN
    losses = {"blocks.0.token_mixer": [nan, 2.5, 2.0], "blocks.1.token_mixer": [2.0, 2.25, nan]}
    monkeypatch.setattr(surgery, "head_ablation", lambda model, loss: (2.0, losses))
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, png, **_: drawn.append(fig) or png)
    code, stdout, err = run(["inspect", "heads", checkpoint, "--data", corpus, "--windows", "1",
                             "--png", str(tmp_path / "heads.png")], capsys)  # fmt: skip
    assert code == 0, err
    assert "   +nan" in stdout and "most needed: layer 0, head 1 (loss +0.5000 " in stdout
    assert drawn[0].axes[0].images[0].get_clim() == (-0.5, 0.5)


def test_a_terminal_sees_a_bar_counting_the_passes(trained, capsys, monkeypatch):
    """One pass for the baseline and one a head: 7 for 2 layers of 3, drawn on a terminal."""
    _, _, checkpoint, corpus = trained
    monkeypatch.setattr("sys.stderr", Terminal())
    code, _, _ = run(["inspect", "heads", checkpoint, "--data", corpus, "--windows", "1"], capsys)
    drawn = sys.stderr.getvalue()
    assert code == 0 and "inspect heads:" in drawn and "/7 " in drawn, drawn


def test_a_long_context_scores_fewer_windows_by_default(tmp_path, capsys):
    """32 windows of 1,024 tokens cost hours at GPT-2's size on a CPU: without --windows, a
    context over 256 tokens scores as many windows as hold 8,192 tokens (8 of 1,024 here, where
    the text holds 9), one of 256 or less 32."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer(string.printable)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=1024, n_layers=1,
                          n_heads=1, d_model=8)).eval()  # fmt: skip
    save_checkpoint(tmp_path / "gpt", model, {"tokenizer": tokenizer})
    text = "".join(random.Random(0).choices(string.ascii_lowercase, k=9 * 1024 + 1))
    (tmp_path / "text.txt").write_text(text)
    argv = ["inspect", "heads", str(tmp_path / "gpt"), "--data", str(tmp_path / "text.txt")]
    code, stdout, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    ids = torch.tensor(tokenizer.encode(text))
    x, y = ids[:-1].view(9, 1024), ids[1:].view(9, 1024)
    with torch.no_grad():
        eight = model(x[:8], y[:8])[1].item()
        assert abs(model(x, y)[1].item() - eight) > 1e-4  # 8 and 9 windows tell apart
    assert json.loads(stdout)["baseline"] == pytest.approx(eight, abs=1e-5)
