"""Activation patching (interpretability/patching.py, `attnlab inspect patching`): the identities
it must meet (the last stream restores 1 at the metric's position only, the embeddings 1 where
the texts differ and 0 where they agree, a head's patch is its output's change through the
output projection), batching changes nothing, and the command's output and refusals."""

import json
import re

import pytest
import torch
from helpers import one_line_error, run
from test_attribution import CHARS, CONFIGS, gpt

from attnlab.cli import inspect_patching
from attnlab.errors import UserError
from attnlab.interpretability import capture, plots
from attnlab.interpretability import patching as patching_module
from attnlab.interpretability.patching import activation_patching
from attnlab.layers.attention import MultiHeadAttention
from attnlab.layers.mamba import Mamba, MambaOptions
from attnlab.models.bert import BertConfig, BertForMaskedLM
from attnlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.models.vision_transformer import VisionTransformer, ViTConfig
from attnlab.tokenizers.char import CharTokenizer
from attnlab.training.checkpoints import save_checkpoint

V, T, AT = 23, 12, 8  # vocabulary, positions, the metric's position


def texts(*differ: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A clean text (1, T) of random tokens, and a copy with other tokens at `differ`."""
    clean = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(seed))
    corrupt = clean.clone()
    corrupt[0, list(differ)] = (clean[0, list(differ)] + 1) % V
    return clean, corrupt


def metric(model, ids, patches=None, target=3, versus=5) -> float:
    with torch.no_grad(), capture(model, attention=False, streams=False, patches=patches or {}):
        logits = model(ids)[0][0, AT].double()
    return float(logits[target] - logits[versus])


@pytest.mark.parametrize("fields", [*CONFIGS.values(), {"prenorm": False}],
                         ids=[*CONFIGS, "post-norm"])  # fmt: skip
def test_the_last_stream_restores_one_at_the_metrics_position_and_the_embeddings_where_they_differ(
    fields,
):
    model = gpt(**fields)
    clean, corrupt = texts(5)
    report = activation_patching(model, clean, corrupt, target=3, versus=5, position=AT)
    assert report.rows == ["embeddings", "0 out", "1 out"] and report.residual.shape == (3, T)
    assert (report.clean, report.corrupt) == (metric(model, clean), metric(model, corrupt))
    assert abs(report.gap) > 1e-3  # a gap to restore

    def only(position: int) -> torch.Tensor:  # (T,): the clean metric at position, else corrupt
        expected = torch.full((T,), report.corrupt, dtype=torch.float64)
        return expected.index_fill(0, torch.tensor(position), report.clean)

    assert torch.allclose(report.residual[-1], only(AT), rtol=0, atol=1e-5)
    # the one differing position patched in the embeddings: the clean run itself
    assert torch.allclose(report.residual[0], only(5), rtol=0, atol=1e-5)
    assert report.residual[:, AT + 1 :].eq(report.corrupt).all()  # after the metric's position


def test_positions_where_the_texts_agree_restore_nothing_in_the_embeddings():
    model = gpt()
    report = activation_patching(model, *texts(2, 6), target=3, versus=5, position=AT)
    embeddings = report.restored(report.residual[0])
    agree = [t for t in range(T) if t not in (2, 6)]
    assert not embeddings[agree].any() and embeddings[[2, 6]].abs().min() > 1e-3
    assert report.residual[1:, :2].eq(report.corrupt).all()  # before any difference: unchanged


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_a_heads_patch_adds_its_outputs_change_through_the_output_projection(n_kv_heads):
    """Patching head h of layer i is adding W_O[:, h's columns] (clean - corrupt output of h) to
    the stream after layer i's attention, at every position."""
    model, (clean, corrupt) = gpt(n_kv_heads=n_kv_heads), texts(3, 5)
    report = activation_patching(model, clean, corrupt, target=3, versus=5, position=AT)
    assert report.heads.shape == (2, 4)
    outputs = {}
    for name, ids in (("clean", clean), ("corrupt", corrupt)):
        with torch.no_grad(), capture(model, attention=False, heads=True) as seen:
            model(ids)
        outputs[name] = seen.heads
    for i in range(2):
        layer = f"blocks.{i}.token_mixer"
        for h in range(4):
            change = torch.zeros_like(outputs["clean"][layer])  # (1, H, T, Dh)
            change[:, h] = outputs["clean"][layer][:, h] - outputs["corrupt"][layer][:, h]
            weight = model.get_submodule(layer).output_projection.weight
            added = change.transpose(1, 2).flatten(2) @ weight.T  # (1, T, D)
            expected = metric(model, corrupt, {f"blocks.{i}.stream_after_mixer": added.__radd__})
            assert abs(report.heads[i, h] - expected) < 1e-4, (i, h)


def test_the_only_head_of_one_layer_restores_everything_when_the_position_agrees():
    """One layer of one head, and the texts differ only before the metric's position: the
    head's output is all that carries the difference there."""
    model = gpt(n_layers=1, n_heads=1)
    report = activation_patching(model, *texts(2, 4), target=3, versus=5, position=AT)
    assert abs(report.restored(report.heads)[0, 0] - 1) < 1e-5


def test_batched_passes_give_what_one_patch_a_pass_gives(monkeypatch):
    model, pair = gpt(), texts(1, 7)
    batched = activation_patching(model, *pair, target=3, versus=5)
    monkeypatch.setattr(patching_module, "TOKENS_PER_PASS", 1)  # a pass per patch
    alone = activation_patching(model, *pair, target=3, versus=5)
    assert torch.allclose(batched.residual, alone.residual, atol=1e-5)
    assert torch.allclose(batched.heads, alone.heads, atol=1e-5)


def test_a_layer_of_another_mixer_or_fewer_heads_is_nan_in_the_heads_map(monkeypatch, capsys):
    """Mixed layers (a user's mixer may build any per layer): the heads map is as wide as the
    widest layer, NaN where a layer has no such head; the table and the PNG leave those out."""
    model = gpt(n_layers=3)
    model.blocks[1].token_mixer = Mamba(MambaOptions(), 32)
    model.blocks[2].token_mixer = MultiHeadAttention(32, 2, causal=True)
    clean, corrupt = texts(3)
    report = activation_patching(model.eval(), clean, corrupt, target=3, versus=5, position=AT)
    missing = torch.zeros(3, 4, dtype=torch.bool)
    missing[1], missing[2, 2:] = True, True
    assert report.heads.shape == (3, 4) and report.heads.isnan().equal(missing)
    with torch.no_grad(), capture(model, attention=False, heads=True) as seen:
        model(clean)
    for h in range(2):  # layer 2's heads: what patching each alone gives

        def patch(outputs, h=h):  # (1, 2, T, Dh), in place
            outputs[:, h] = seen.heads["blocks.2.token_mixer"][:, h]

        expected = metric(model, corrupt, {"blocks.2.token_mixer.head_outputs": patch})
        assert abs(report.heads[2, h] - expected) < 1e-5
    heads = report.restored(report.heads).tolist()
    summary = dict(tokens=list("abcdefghijkl"), differ=[3], position=AT, metric="m",
                   clean=report.clean, corrupt=report.corrupt, gap=report.gap, rows=report.rows,
                   residual=report.restored(report.residual).tolist(), heads=heads)  # fmt: skip
    inspect_patching._print(summary, top=10)
    shown = re.findall(r"^L(\d)H(\d) ", capsys.readouterr().out, re.MULTILINE)
    assert sorted(shown) == [(i, h) for i, n in (("0", 4), ("2", 2)) for h in map(str, range(n))]
    drawn = {}
    monkeypatch.setattr(plots, "save_heatmaps", lambda png, panels, columns: drawn.update(p=panels))
    inspect_patching._png("patching.png", summary)
    assert [[cell == "" for cell in row] for row in drawn["p"][1].cells] == missing.tolist()


def test_another_mixer_is_patched_in_its_residual_stream_only():
    report = activation_patching(gpt(mixer="mamba"), *texts(4), target=3, position=AT)
    assert report.heads is None and report.residual.shape == (3, T)


def test_no_gap_and_no_blocks_are_refused():
    with pytest.raises(UserError, match=r"same metric at position 8 .*no gap to restore"):
        activation_patching(gpt(), *texts(10), target=3, position=AT)  # differs after it
    lstm = RecurrentLM(RecurrentLMConfig(vocab_size=V, context_length=16))
    with pytest.raises(UserError, match="needs a language model of residual blocks"):
        activation_patching(lstm, *texts(4), target=3)


# --------------------------------------------------------------------------------------- CLI
CLEAN, CORRUPT = "to be or not to b", "to be or not so b"  # they differ at position 13
SONG = "to be or not to be, that is the question. "


def trained(tokenizer, steps=40) -> GPT:
    """A 2-layer GPT after a few steps on one line, over and over."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=24, n_layers=2, n_heads=4,
                       d_model=32)  # fmt: skip
    model, ids = GPT(config), torch.tensor(tokenizer.encode(SONG * 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 25, (8,))
        x, y = (torch.stack([ids[s + k : s + k + 24] for s in starts]) for k in (0, 1))
        model(x, y)[1].backward()
        optimizer.step(), optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("patching")
    tokenizer = CharTokenizer(CHARS)
    v = tokenizer.vocab_size
    models = {
        "gpt": trained(tokenizer),
        "mamba": gpt(vocab_size=v, mixer="mamba", context_length=24),
        "lstm": RecurrentLM(RecurrentLMConfig(vocab_size=v, context_length=24)),
        "bert": BertForMaskedLM(BertConfig(vocab_size=v, context_length=16, n_layers=1, n_heads=2,
                                           d_model=16)),
        "translation": EncoderDecoder(EncoderDecoderConfig(
            vocab_size=v, max_length=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2,
            d_model=16, d_ff=32)),
        "vit": VisionTransformer(ViTConfig(image_size=8, patch_size=4, channels=1, n_classes=3,
                                           n_layers=1, n_heads=2, d_model=16)),
    }  # fmt: skip
    for name, model in models.items():
        text_model = name not in ("vit", "bert", "translation")
        save_checkpoint(root / name, model, {"tokenizer": tokenizer} if text_model else {})
    return {name: str(root / name) for name in models}


def test_the_command_prints_the_gap_and_the_largest_patches(checkpoints, capsys):
    argv = ["inspect", "patching", checkpoints["gpt"], "--clean", CLEAN, "--corrupt", CORRUPT,
            "--target", "e", "--versus", "a", "--top", "3"]  # fmt: skip
    code, out, _ = run(argv, capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "metric: the logit of 'e' - logit of 'a' at position 16 ('b')"
    clean, corrupt, gap = map(float, re.findall(r"[+-]\d+\.\d+", lines[1])[:3])
    assert abs(clean - corrupt - gap) < 2e-4 and gap != 0
    assert "restored = (patched - corrupt) / (clean - corrupt): 1 = the whole gap" in lines[2]
    assert lines[4].split()[:4] == ["stream", "position", "token", "restored"]
    streams = [re.fullmatch(r"(embeddings|\d out) +(\d+)  (\S+) +(\*?) +([+-]\d\.\d{4})", line)
               for line in lines[5:8]]  # fmt: skip
    sizes = [abs(float(match[5])) for match in streams]
    assert sizes == sorted(sizes, reverse=True) and lines[8].startswith("(48 smaller not shown")
    assert ("embeddings", "13", "t", "*", "+1.0000") in [match.groups() for match in streams]
    assert lines[10].split() == ["head", "restored", "(all", "positions)"]
    assert all(re.fullmatch(r"L[01]H[0-3] +[+-]\d\.\d{4}", line) for line in lines[11:14])
    assert lines[14] == "(5 smaller not shown: --top, or --json for all)"


def test_a_small_gap_gets_a_note(checkpoints, capsys, monkeypatch):
    """Shares of a gap of 1e-4 (an untrained model's, as here) can read +3.5 and -2.5: real, and
    nearly meaningless; the note says so. A gap above SMALL_GAP gets none."""
    from attnlab.cli import inspect_patching

    argv = ["inspect", "patching", checkpoints["gpt"], "--clean", CLEAN, "--corrupt", CORRUPT,
            "--target", "e", "--versus", "a", "--json"]  # fmt: skip
    code, out, err = run(argv, capsys)
    gap = json.loads(out)["gap"]
    assert code == 0 and abs(gap) < inspect_patching.SMALL_GAP
    assert f"attnlab: note: the texts' metrics differ by only {gap:+.2g}: a share of" in err
    monkeypatch.setattr(inspect_patching, "SMALL_GAP", abs(gap) / 2)
    code, _, err = run(argv, capsys)
    assert code == 0 and "differ by only" not in err


def test_json_holds_the_full_maps_and_png_draws_them(checkpoints, tmp_path, capsys):
    png = tmp_path / "patching.png"
    argv = ["inspect", "patching", checkpoints["gpt"], "--clean", CLEAN, "--corrupt", CORRUPT,
            "--target", "e", "--position", "14", "--json", "--png", str(png)]  # fmt: skip
    code, out, err = run(argv, capsys)
    report = json.loads(out)
    assert code == 0 and f"wrote {png}" in err and png.read_bytes()[:4] == b"\x89PNG"
    assert report["tokens"] == list(CLEAN) and report["corrupt_tokens"] == list(CORRUPT)
    assert (report["differ"], report["position"], report["metric"]) == ([13], 14, "logit of 'e'")
    assert report["rows"] == ["embeddings", "0 out", "1 out"]
    residual = torch.tensor(report["residual"])  # (3, 17)
    assert residual.shape == (3, 17) and torch.tensor(report["heads"]).shape == (2, 4)
    assert torch.allclose(residual[0], torch.eye(17)[13], atol=1e-4)
    assert torch.allclose(residual[2], torch.eye(17)[14], atol=1e-4)
    assert abs(report["clean"] - report["corrupt"] - report["gap"]) < 1e-9


def test_a_model_without_attention_gets_the_residual_map_and_a_note(checkpoints, tmp_path, capsys):
    png = tmp_path / "patching.png"
    argv = ["inspect", "patching", checkpoints["mamba"], "--clean", CLEAN, "--corrupt", CORRUPT,
            "--target", "e", "--versus", "a", "--json", "--png", str(png)]  # fmt: skip
    code, out, err = run(argv, capsys)
    assert code == 0 and json.loads(out)["heads"] is None and png.exists()
    assert "note: no attention heads to patch (mamba token mixers)" in err


def test_the_help_says_what_restored_means(capsys):
    with pytest.raises(SystemExit):
        run(["inspect", "patching", "--help"], capsys)
    assert "restored = (patched - corrupt) / (clean - corrupt): 1 = the whole gap, 0 = nothing" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("name", "flags", "message"),
    [
        ("gpt", ["--corrupt", "to be"], "--clean is 17 token(s) and --corrupt 5: patching pairs"),
        ("gpt", ["--clean", ""], "--clean encodes to no tokens"),
        ("gpt", ["--corrupt", "a" * 30], "--corrupt is 30 tokens, longer than the 24 the model"),
        ("gpt", ["--corrupt", "to be or not to B"], "--corrupt text has 1 character(s) the"),
        ("gpt", ["--target", "ab"], "--target 'ab' encodes to 2 tokens ('a', 'b'): give the text"),
        ("gpt", ["--versus", "e"], "--versus 'e' is the --target"),
        ("gpt", ["--position", "17"], "--position 17 is out of range: the text has 17 token(s)"),
        ("gpt", ["--position", "-18"], "--position -18 is out of range"),
        ("gpt", ["--corrupt", CLEAN], "same metric at position 16 (+"),
        ("gpt", ["--top", "0"], "--top must be >= 1"),
        ("lstm", [], "needs a language model of residual blocks"),
        ("bert", [], "holds a 'bert' model, which `attnlab inspect patching` does not serve"),
        ("translation", [], "holds a 'translation' model, which `attnlab inspect patching`"),
        ("vit", [], "holds a 'vit' model, which `attnlab inspect patching` does not serve"),
    ],
)
def test_bad_input_is_one_line(checkpoints, capsys, name, flags, message):
    given = dict(zip(["--clean", "--corrupt", "--target"], [CLEAN, CORRUPT, "e"], strict=True))
    given.update(zip(flags[::2], flags[1::2], strict=True))
    argv = ["inspect", "patching", checkpoints[name], *[w for pair in given.items() for w in pair]]
    code, _, err = run(argv, capsys)
    assert message in one_line_error(code, err)
