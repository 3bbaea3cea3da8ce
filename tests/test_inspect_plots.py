"""The PNGs of `attnlab inspect layers` where there is little to show: one layer, changes of
a millionth of a nat."""

import string

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from attnlab.cli import main
from attnlab.interpretability import plots
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.tokenizers.char import CharTokenizer
from attnlab.training.checkpoints import save_checkpoint


def test_a_layers_plot_of_one_layer_with_tiny_changes_says_so(tmp_path, monkeypatch):
    """No swap of one layer: the grey panel says why. Changes of 1e-6 nats: no "1e-6" above
    each colour bar (where it ran into the next panel's title), the ticks' own values."""
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, png, **_: drawn.append(fig) or png)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=len(string.printable), context_length=8, n_layers=1,
                       n_heads=2, d_model=16)  # fmt: skip
    tokenizer = CharTokenizer(string.printable)
    save_checkpoint(tmp_path / "one", GPT(config).eval(), {"tokenizer": tokenizer})
    (tmp_path / "corpus.txt").write_text("to be or not to be, that is the question. " * 4)
    assert main(["inspect", "layers", str(tmp_path / "one"), "--data",
                 str(tmp_path / "corpus.txt"), "--png", str(tmp_path / "l.png")]) == 0  # fmt: skip
    tiny = plots.Heatmap(torch.tensor([[3e-7, -8e-7]]), "t", ["a"], ["x", "y"], vmin=-1e-6)
    plots.save_heatmaps(tmp_path / "t.png", [tiny, tiny], columns=2)
    for fig in drawn:
        FigureCanvasAgg(fig).draw()
    note = next(text for text in drawn[0].axes[0].texts if text.get_text().startswith("one"))
    assert note.get_text() == "one layer: no pair to swap" and note.get_position() == (0.5, 0.5)
    bars = [ax for fig in drawn for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 4 and not [ax for ax in bars if ax.yaxis.get_offset_text().get_text()]
    ticks = [float(label.get_text().replace("\u2212", "-")) for label in bars[-1].get_yticklabels()]
    assert 0 < max(map(abs, ticks)) <= 1e-6  # each tick its value, not a multiple of 1e-6
    nan = float("nan")
    some = plots.Heatmap(torch.tensor([[nan, 1.0]]), "some", ["a"], ["x", "y"], empty="none")
    unnoted = plots.Heatmap(torch.tensor([[nan]]), "no note asked for", ["a"], ["x"])
    plots.save_heatmaps(tmp_path / "n.png", [some, unnoted], columns=2)
    assert not [text for ax in drawn[-1].axes for text in ax.texts]  # a note only where asked


def test_cells_show_two_figures_of_the_largest_value_and_no_minus_zero():
    """The attribution PNG wrote every share with two decimals: a small model's read 0.00 and
    -0.00 in every cell."""
    small = torch.tensor([[0.0031, -0.0004], [-0.00001, 0.0]])
    assert plots.signed_cells(small, 0.0031) == [["+0.0031", "-0.0004"], ["+0.0000", "+0.0000"]]
    assert plots.signed_cells(torch.tensor([[12.3, -0.04]]), 12.3) == [["+12", "+0"]]
    assert plots.signed_cells(torch.tensor([[-1.234]]), 1.234) == [["-1.2"]]
    assert (plots.signed(-0.00004), plots.signed(-0.00006), plots.signed(2)) == (
        "+0.0000",
        "-0.0001",
        "+2.0000",
    )  # the tables of inspect attribution and patching
