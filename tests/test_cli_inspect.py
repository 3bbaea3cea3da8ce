"""`attnlab inspect attention|induction|lens|layers` on small checkpoints of every kind, and
the bad inputs: one line and exit code 2."""

import json
import shutil
import string
from html.parser import HTMLParser

import pytest
import torch
from helpers import loaded_by, one_line_error, outside_the_figure, overlapping_tick_labels, run

from attnlab.cli import evaluate
from attnlab.cli.runs import run_data
from attnlab.interpretability import plots, viewer
from attnlab.models.bert import BertConfig, BertForMaskedLM
from attnlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.tokenizers.bpe import BPETokenizer
from attnlab.tokenizers.char import CharTokenizer
from attnlab.training.checkpoints import save_checkpoint

CHARS = string.printable


def save(path, model, specials=()):
    save_checkpoint(path, model.eval(), {"tokenizer": CharTokenizer(CHARS, specials)})
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    v = len(CHARS)
    gpt = GPT(GPTConfig(vocab_size=v, context_length=32, n_layers=2, n_heads=2, d_model=16))
    bert = BertForMaskedLM(BertConfig(vocab_size=v + 4, context_length=24, n_layers=2,
                                      n_heads=2, d_model=16, pad_id=v))  # fmt: skip
    translation = EncoderDecoder(EncoderDecoderConfig(
        vocab_size=v + 3, max_length=32, n_encoder_layers=1, n_decoder_layers=2, n_heads=2,
        d_model=16, d_ff=32, pad_id=v, bos_id=v + 1, eos_id=v + 2))  # fmt: skip
    lstm = RecurrentLM(RecurrentLMConfig(vocab_size=v, context_length=24))
    mamba = GPT(GPTConfig(vocab_size=v, context_length=32, n_layers=1, d_model=16, mixer="mamba"))
    return {
        "mamba": save(root / "mamba", mamba),
        "gpt": save(root / "gpt", gpt),
        "bert": save(root / "bert", bert, ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]),
        "translation": save(root / "translation", translation, ["<pad>", "<s>", "</s>"]),
        "lstm": save(root / "lstm", lstm),
    }


def page_data(path):
    class Data(HTMLParser):
        text, inside = "", False

        def handle_starttag(self, tag, attrs):
            self.inside = ("id", "attention-data") in attrs

        def handle_data(self, data):
            if self.inside:
                self.text += data

    parser = Data()
    parser.feed(path.read_text(encoding="utf-8"))
    return json.loads(parser.text)


def test_attention_page_and_png_for_a_gpt(checkpoints, tmp_path, capsys):
    out, png = tmp_path / "view.html", tmp_path / "grid.png"
    text = "<script>alert(1)</script>"
    code, stdout, err = run(["inspect", "attention", checkpoints["gpt"], "--text", text,
                             "--out", str(out), "--png", str(png)], capsys)  # fmt: skip
    assert code == 0, err
    data = page_data(out)
    assert "".join(data["sequences"]["text"]) == text
    assert "<script>alert" not in out.read_text(encoding="utf-8")
    assert [p["title"] for p in data["panels"]] == ["blocks self-attention"]
    assert data["selected"] is None
    assert png.stat().st_size > 1000 and str(out) in stdout


def test_looking_at_attention_loads_no_compiler(checkpoints, tmp_path):
    """Whether the model was compiled is asked without importing torch._dynamo (1-2 s)."""
    argv = ["inspect", "attention", checkpoints["translation"], "--text", "one two"]
    loaded = loaded_by(*argv, "--out", tmp_path / "view.html")
    capture = "attnlab.interpretability.capture"
    assert loaded & {capture, "torch._dynamo"} == {capture}


def test_attention_preselects_a_head_and_draws_it(checkpoints, tmp_path, capsys):
    out, png = tmp_path / "view.html", tmp_path / "head.png"
    code, _, err = run(["inspect", "attention", checkpoints["gpt"], "--text", "hello there",
                        "--layer", "1", "--head", "1", "--out", str(out), "--png", str(png)],
                       capsys)  # fmt: skip
    assert code == 0, err
    assert page_data(out)["selected"] == {"panel": 0, "layer": 1, "head": 1}
    assert png.is_file()


def test_attention_of_an_encoder_decoder_has_source_target_and_cross(checkpoints, tmp_path, capsys):
    out = tmp_path / "view.html"
    code, _, err = run(["inspect", "attention", checkpoints["translation"], "--text", "one two",
                        "--target", "1 2", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    data = page_data(out)
    assert data["sequences"] == {"source": [*"one two", "</s>"], "target": ["<s>", *"1 2"]}
    sides = [(p["title"], p["queries"], p["keys"], len(p["layers"])) for p in data["panels"]]
    assert sides == [
        ("encoder_blocks self-attention", "source", "source", 1),
        ("decoder_blocks self-attention", "target", "target", 2),
        ("decoder_blocks cross-attention", "target", "source", 2),
    ]
    cross = data["panels"][2]["layers"][0][0]
    assert len(cross) == 4 and len(cross[0]) == 8  # target by source positions
    argv = ["inspect", "attention", checkpoints["translation"], "--text", "one two", "--out",
            str(out), "--layer", "1", "--head", "1"]  # fmt: skip
    for group, panel in [(None, 1), ("decoder", 1), ("cross", 2)]:
        code, _, err = run([*argv, *(["--group", group] if group else [])], capsys)
        assert code == 0 and page_data(out)["selected"] == {"panel": panel, "layer": 1, "head": 1}
    line = one_line_error(*run([*argv, "--group", "encoder"], capsys)[::2])
    assert "--layer 1 is out of range: --group encoder has layers 0 to 0" in line


def test_the_head_grid_draws_every_head_as_large_however_long_its_sides(
    checkpoints, tmp_path, monkeypatch, capsys
):
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, png, **_: drawn.append(fig) or png)
    code, _, err = run(["inspect", "attention", checkpoints["translation"], "--text", "one",
                        "--target", "1 2 3 4 5 6 7 8 9 10 11", "--out", str(tmp_path / "v.html"),
                        "--png", str(tmp_path / "grid.png")], capsys)  # fmt: skip
    assert code == 0, err
    fig = drawn[0]
    fig.canvas.draw()  # cross attention, 24 target by 4 source tokens: no sliver of a square
    widths = [
        ax.get_position().width for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"
    ]
    assert len(widths) == 5 * 2 and max(widths) < 1.05 * min(widths)


@pytest.mark.parametrize("heads", [1, 2])
def test_the_head_grid_of_a_one_head_model_keeps_its_title_whole(monkeypatch, heads):
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, png, **_: drawn.append(fig) or png)
    plots.save_head_grid("grid.png", [("blocks self-attention", torch.rand(1, heads, 1, 1))])
    assert outside_the_figure(drawn[0]) == []


def test_every_colour_bar_says_what_its_colour_means(checkpoints, tmp_path, monkeypatch, capsys):
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, png, **_: drawn.append(fig) or png)
    corpus, gpt = tmp_path / "corpus.txt", checkpoints["gpt"]
    corpus.write_text("to be or not to be, that is the question. " * 10)
    attention = ["attention", gpt, "--text", "to be", "--out", str(tmp_path / "v.html")]
    for argv in ([*attention, "--layer", "1"], attention, ["induction", gpt, "--sequences", "4"],
                 ["lens", gpt, "--text", "to be"],
                 ["layers", gpt, "--data", str(corpus), "--windows", "4"]):  # fmt: skip
        code, _, err = run(["inspect", *argv, "--png", str(tmp_path / "x.png")], capsys)
        assert code == 0, err
    bars = [ax for fig in drawn for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 + 1 + 2 + 1 + 2 and all(ax.get_ylabel() for ax in bars)


def test_token_labels_of_a_heatmap_never_overlap(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, png, **_: drawn.append(fig) or png)
    for n in (3, 7, 8, 12):  # tokens of 8 characters (what a label shows at most), as BPE's
        tokens = [f"abcdefg{i}" for i in range(n)]
        plots.save_heatmaps(
            tmp_path / "head.png", [plots.Heatmap(torch.rand(n, n), "head", tokens, tokens)]
        )
        assert overlapping_tick_labels(drawn.pop()) == [], n


def test_attention_of_bert_reads_cls_text_sep(checkpoints, tmp_path, capsys):
    out = tmp_path / "view.html"
    code, _, err = run(["inspect", "attention", checkpoints["bert"], "--text", "a [MASK] b",
                        "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    tokens = page_data(out)["sequences"]["text"]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[MASK]" in tokens


def test_a_long_text_is_cut_with_a_note(checkpoints, tmp_path, capsys):
    out = tmp_path / "view.html"
    code, _, err = run(["inspect", "attention", checkpoints["gpt"], "--text", "x" * 40,
                        "--out", str(out)], capsys)  # fmt: skip
    assert code == 0 and "attnlab: note: the input is 8 token(s) longer than the model reads" in err
    assert len(page_data(out)["sequences"]["text"]) == 32


@pytest.mark.parametrize(
    ("name", "flags", "message"),
    [
        ("lstm", ["--text", "hi"], "RecurrentLM with no attention layers (it computes no "),
        ("mamba", ["--text", "hi"], "GPT with no attention layers (its mamba token mixers"),
        ("gpt", ["--text", "hi", "--layer", "2"], "--layer 2 is out of range"),
        ("gpt", ["--text", "hi", "--head", "-1"], "--head -1 is out of range"),
        ("gpt", ["--text", "  "], "non-empty --text"),
        ("gpt", ["--text", "hé"], "é"),
        ("gpt", ["--text", "hi", "--target", "salut"], "--target is for translation models"),
        ("gpt", ["--text", "hi", "--image", "x.png"], "--image is for image models"),
        ("gpt", ["--text", "hi", "--png", "{out}"], "--out and --png name the same file"),
        ("gpt", ["--text", "hi", "--png", "{tmp}/sub/../view.html"], "name the same file"),
        ("gpt", ["--text", "hi", "--png", "{tmp}"], "is a folder: give a file"),
        ("gpt", ["--image", "{tmp}/x.png", "--png", "{tmp}/x.png"], "overwrite --image's file"),
        ("gpt", ["--text", "hi", "--png", "{tmp}/x.png/y.png"], "is a file, not a folder"),
        ("gpt", ["--text", "hi", "--png", ""], "--png is empty: give a file"),
    ],
)
def test_attention_bad_input_is_one_line(checkpoints, tmp_path, capsys, name, flags, message):
    out = tmp_path / "view.html"
    (tmp_path / "x.png").write_bytes(b"")  # a file where --png wants a folder
    (tmp_path / "sub").mkdir()
    flags = [flag.format(out=out, tmp=tmp_path) for flag in flags]
    code, _, err = run(["inspect", "attention", checkpoints[name], *flags, "--out", str(out)],
                       capsys)  # fmt: skip
    assert message in one_line_error(code, err)
    assert not out.exists()


def test_a_page_too_large_to_open_is_refused_with_a_text_that_fits(
    checkpoints, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(viewer, "MAX_WEIGHTS", 2 * 2 * 16 * 16)  # 2 layers of 2 heads, T = 16
    out = tmp_path / "view.html"
    argv = ["inspect", "attention", checkpoints["gpt"], "--out", str(out), "--text"]
    line = one_line_error(*run([*argv, "x" * 32], capsys)[::2])
    assert "would hold 4,096 attention weights, more than a browser opens (1,024)" in line
    assert "at most about 16 tokens" in line
    assert not out.exists()
    assert run([*argv, "x" * 16], capsys)[0] == 0 and out.is_file()
    argv = ["inspect", "attention", checkpoints["translation"], "--out", str(tmp_path / "t.html")]
    line = one_line_error(*run([*argv, "--text", "x" * 32, "--target", "y" * 32], capsys)[::2])
    assert "give a text and a --target of at most about" in line


def test_induction_command(checkpoints, tmp_path, capsys):
    png = tmp_path / "induction.png"
    code, stdout, err = run(["inspect", "induction", checkpoints["gpt"], "--sequences", "4",
                             "--json", "--png", str(png)], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert len(result["prefix_matching"]) == 2 and len(result["prefix_matching"][0]) == 2
    assert len(result["copying"]) == 2 and png.is_file()
    code, stdout, _ = run(["inspect", "induction", checkpoints["gpt"], "--length", "5"], capsys)
    assert code == 0 and "in-context learning score" in stdout
    code, _, err = run(["inspect", "induction", checkpoints["gpt"], "--length", "17"], capsys)
    assert "length (the tokens of each copy, --length) must be 2 to 16" in one_line_error(code, err)
    for seed in ("-1", str(2**64)):
        code, _, err = run(["inspect", "induction", checkpoints["gpt"], "--seed", seed], capsys)
        assert f"--seed must be in [0, 2**63), got {seed}" in one_line_error(code, err)
    for length in ("0", "1", "-5"):  # 0 is no request for the default
        code, _, err = run(["inspect", "induction", checkpoints["gpt"], "--length", length], capsys)
        assert f"--length must be at least 2 tokens per copy, got {length}" in one_line_error(
            code, err
        )
    code, _, err = run(["inspect", "induction", checkpoints["bert"]], capsys)
    assert "'bert'" in one_line_error(code, err)


def test_lens_command(checkpoints, tmp_path, capsys):
    png = tmp_path / "lens.png"
    code, stdout, err = run(["inspect", "lens", checkpoints["gpt"], "--text", "to be or",
                             "--json", "--png", str(png)], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert result["rows"] == ["embeddings", "0 mixer", "0 out", "1 mixer", "1 out"]
    assert len(result["top"]) == 5 and len(result["top"][0]) == 8 and png.is_file()
    code, stdout, _ = run(["inspect", "lens", checkpoints["gpt"], "--text", "to be"], capsys)
    assert code == 0 and "embeddings" in stdout.splitlines()[0]
    code, _, err = run(["inspect", "lens", checkpoints["lstm"], "--text", "hi"], capsys)
    assert "logit lens needs" in one_line_error(code, err)


def test_the_lens_table_is_aligned_by_display_width_for_wide_characters(tmp_path, capsys):
    """A CJK character takes two columns of a terminal: padded by characters, every wide
    token pushed the columns after it one to the right."""
    from attnlab.interpretability.plots import display_width, padded, short

    chars = "東京は大きな都市abc"
    gpt = GPT(GPTConfig(vocab_size=len(chars), context_length=16, n_layers=1, n_heads=1,
                        d_model=8))  # fmt: skip
    save_checkpoint(tmp_path, gpt.eval(), {"tokenizer": CharTokenizer(chars)})
    code, stdout, err = run(["inspect", "lens", str(tmp_path), "--text", "東京aは大"], capsys)
    assert code == 0, err
    assert {display_width(line) for line in stdout.splitlines()} == {8 + 2 + 10 + 3 * 12}
    assert short("東京は大きな都市", 10) == "東京は大…" and padded("東京", 5) == "東京 "
    assert short("abcdefgh", 8) == "abcdefgh" and short("東京は大", 8) == "東京は大"  # as wide
    assert display_width("ＡＢ") == 4 and display_width("e\u0301te\u0301") == 3  # full-width


def test_layers_command(checkpoints, tmp_path, capsys):
    corpus, png = tmp_path / "corpus.txt", tmp_path / "layers.png"
    corpus.write_text("to be or not to be, that is the question. " * 10)
    code, stdout, err = run(["inspect", "layers", checkpoints["gpt"], "--data", str(corpus),
                             "--windows", "4", "--json", "--png", str(png)], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert set(result["loss"]) == {"drop 0", "drop 1", "duplicate 0", "duplicate 1", "swap 0 1"}
    assert png.is_file()
    code, _, err = run(["inspect", "layers", checkpoints["gpt"], "--data", str(tmp_path / "no")],
                       capsys)  # fmt: skip
    assert code == 2
    code, _, err = run(["inspect", "layers", checkpoints["gpt"], "--data", str(corpus),
                        "--png", str(corpus)], capsys)  # fmt: skip
    assert "would overwrite --data's file" in one_line_error(code, err)


def test_layers_reads_the_runs_own_data_by_default_as_evaluate_does(
    checkpoints, tmp_path, capsys, monkeypatch
):
    run_folder, corpus = tmp_path / "run", tmp_path / "corpus.txt"
    shutil.copytree(checkpoints["gpt"], run_folder)
    corpus.write_text("to be or not to be, that is the question. " * 10)
    (run_folder / "run.json").write_text(json.dumps({"kind": "gpt", "data": {"data": str(corpus)}}))
    argv = ["inspect", "layers", str(run_folder), "--windows", "2", "--json"]
    code, own, err = run(argv, capsys)
    assert code == 0, err
    assert own == run([*argv, "--data", str(corpus)], capsys)[1]
    asked = []  # evaluate asks for the run's data once
    monkeypatch.setattr(evaluate, "run_data", lambda *a, **k: asked.append(a) or run_data(*a, **k))
    assert json.loads(run(["evaluate", str(run_folder), "--json"], capsys)[1])["tokens"] > 0
    assert asked == [(str(run_folder), None)]
    for command in (["inspect", "layers"], ["evaluate"]):  # a checkpoint in no run folder
        code, _, err = run([*command, checkpoints["gpt"]], capsys)
        assert "give --data: " in one_line_error(code, err)
    code, _, err = run(["inspect", "layers", str(tmp_path / "none")], capsys)  # no checkpoint
    assert f"no checkpoint at {tmp_path / 'none'}" in one_line_error(code, err)


def test_layers_refuses_a_translation_run_for_its_kind_not_its_data(checkpoints, tmp_path, capsys):
    run_folder = tmp_path / "run"  # a run of the embedded pairs: no data to name
    shutil.copytree(checkpoints["translation"], run_folder)
    (run_folder / "run.json").write_text('{"kind": "translation", "data": {"data": null}}')
    code, _, err = run(["inspect", "layers", str(run_folder)], capsys)
    assert "which `attnlab inspect layers` does not serve" in one_line_error(code, err)


@pytest.mark.parametrize("what", ["attention", "induction", "lens", "layers"])
def test_a_plot_type_matplotlib_cannot_write_is_one_line_before_the_work(
    checkpoints, tmp_path, capsys, what
):
    out, png = tmp_path / "view.html", tmp_path / "plot.xyz"
    flags = {"attention": ["--text", "hi", "--out", str(out)], "lens": ["--text", "hi"],
             "layers": ["--data", str(tmp_path / "absent.txt")]}.get(what, [])  # fmt: skip
    code, _, err = run(["inspect", what, checkpoints["gpt"], *flags, "--png", str(png)], capsys)
    error = one_line_error(code, err)
    assert ".xyz is not a plot file type" in error and ".png, .ps" in error and ".svg" in error
    assert list(tmp_path.iterdir()) == []  # refused first: no page, no plot, no data read


def test_a_plot_name_without_an_extension_is_the_png_written(checkpoints, tmp_path, capsys):
    png = tmp_path / "lensplot"
    code, stdout, err = run(["inspect", "lens", checkpoints["gpt"], "--text", "to be",
                             "--png", str(png)], capsys)  # fmt: skip
    assert code == 0, err
    assert f"wrote {png}" in stdout and png.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["lensplot"]
    svg = tmp_path / "induction.svg"
    code, stdout, err = run(["inspect", "induction", checkpoints["gpt"], "--sequences", "2",
                             "--png", str(svg)], capsys)  # fmt: skip
    assert code == 0 and f"wrote {svg}" in stdout and b"<svg" in svg.read_bytes()


def test_tokens_of_part_of_a_character_or_with_dollars_are_shown_as_they_are(tmp_path, capsys):
    """A byte-level token holding part of a character shows its bytes (\\xe2), not U+FFFD as
    every such token would; a token like "$$" is drawn as written, not read as a formula."""
    tokenizer = BPETokenizer.train(["$$x$$ $y$ "] * 20, 262)  # "$$" and "$" merge: tokens
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1,
                          n_heads=1, d_model=8, tie_weights=False))  # fmt: skip
    out, png = tmp_path / "view.html", tmp_path / "lens.png"
    text = "$$x$$ €"  # the euro sign: three byte tokens
    for predicted, shown in [(tokenizer.encode("$$")[0], "$$"), (0xFF, r"\xff")]:
        with torch.no_grad():  # the lens's top prediction everywhere (its cells in the plot)
            model.final_norm.weight.zero_(), model.final_norm.bias.fill_(1)
            model.output_head.weight.zero_(), model.output_head.weight[predicted].fill_(1)
        save_checkpoint(tmp_path / "run", model.eval(), {"tokenizer": tokenizer})
        code, stdout, err = run(["inspect", "lens", str(tmp_path / "run"), "--text", text,
                                 "--json", "--png", str(png)], capsys)  # fmt: skip
        assert code == 0, err
        lens = json.loads(stdout)
        assert lens["tokens"] == ["$$", "x", "$$", " ", r"\xe2", r"\x82", r"\xac"]
        assert {top for row in lens["top"] for top in row} == {shown}
    code, _, err = run(["inspect", "attention", str(tmp_path / "run"), "--text", text, "--out",
                        str(out), "--png", str(png), "--layer", "0"], capsys)  # fmt: skip
    assert code == 0, err
    assert page_data(out)["sequences"]["text"][-3:] == [r"\xe2", r"\x82", r"\xac"]


@pytest.mark.parametrize("what", ["attention", "lens"])
def test_text_help_says_a_text_model_needs_one_not_a_default(what, capsys):
    with pytest.raises(SystemExit):
        run(["inspect", what, "--help"], capsys)
    text = " ".join(capsys.readouterr().out.split())
    assert "--text TEXT the text to look at (required for a text model)" in text
    assert "context (default: none)" not in text  # without it a text model is refused
