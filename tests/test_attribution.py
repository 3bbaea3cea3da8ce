"""Direct logit attribution (interpretability/attribution.py, `attnlab inspect attribution`): the
shares sum to the model's logit, the heads' outputs (the head_outputs hook point) make their
layer's output, an ablated head's share is zero, and the command's output and refusals."""

import json
import re
import string

import pytest
import torch
from helpers import one_line_error, run

from attnlab.errors import UserError
from attnlab.interpretability import ablate_heads, capture, direct_logit_attribution
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.tokenizers.char import CharTokenizer
from attnlab.training.checkpoints import save_checkpoint

V = 23
CONFIGS = {
    "learned, layernorm": {},
    "rope, rmsnorm, no bias": {"positional": "rope", "norm": "rmsnorm", "bias": False},
    "grouped-query, sinusoidal": {"n_kv_heads": 2, "positional": "sinusoidal"},
    "multi-query, alibi, no bias, swiglu": {
        "n_kv_heads": 1, "bias": False, "activation": "swiglu", "positional": "alibi",
    },
    "mamba": {"mixer": "mamba"},
    "mamba as Hugging Face's, no feed-forward": {
        "mixer": "mamba", "d_ff": 0, "positional": "none", "norm": "rmsnorm", "bias": False,
    },
    "attention, no feed-forward": {"d_ff": 0},
}  # fmt: skip


def gpt(seed=0, **fields) -> GPT:
    """A 2-layer GPT of random weights large enough that logits spread, and norms'
    gains and biases far from 1 and 0 (std 0.5)."""
    torch.manual_seed(seed)
    config = dict(vocab_size=V, context_length=16, n_layers=2, n_heads=4, d_model=32)
    model = GPT(GPTConfig(**{**config, **fields})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.normal_(1, 0.5)
    return model


@pytest.mark.parametrize("fields", CONFIGS.values(), ids=CONFIGS)
def test_the_shares_sum_to_the_models_logit(fields):
    model = gpt(**fields)
    ids = torch.randint(0, V, (1, 12))
    with torch.no_grad():
        logits = model(ids)[0][0].double()  # (T, V)
    for target, versus in ((None, None), (3, None), (None, 5), (7, 2)):
        report = direct_logit_attribution(model, ids, target, versus)
        targets = torch.cat([ids[0, 1:], logits[-1:].argmax(-1)]) if target is None else target
        expected = logits[torch.arange(12), targets] - (0 if versus is None else logits[:, versus])
        assert expected.abs().max() > 0.5  # a logit worth splitting
        assert torch.allclose(report.logits, expected)
        assert report.error.abs().max() < 1e-4, (target, versus)
        assert torch.allclose(report.contributions.sum(0) + report.norm_bias, expected, atol=1e-4)
    layers, heads = (2, 4) if "mixer" not in fields else (2, 0)
    feedforward = fields.get("d_ff") != 0
    assert report.heads.shape == (layers, heads, 12)
    names = report.components
    assert names[0] == "embed" and ("pos" in names) == (
        fields.get("positional") in (None, "sinusoidal")
    )
    assert ("L1 attn bias" in names) == (heads > 0 and fields.get("bias", True))
    for i in range(layers):
        assert (f"L{i} ffn" in names) == feedforward and (f"L{i} mixer" in names) == (heads == 0)
        for h in range(heads):
            assert torch.equal(report.contributions[names.index(f"L{i}H{h}")], report.heads[i, h])


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_the_heads_outputs_through_the_output_projection_are_the_layers_output(n_kv_heads):
    model, ids = gpt(n_kv_heads=n_kv_heads), torch.randint(0, V, (2, 10))
    with torch.no_grad():
        plain = model(ids)[0]
        with capture(model, attention=False, heads=True) as seen:
            hooked = model(ids)[0]
    assert torch.equal(hooked, plain)  # watching the heads changes nothing
    for i, block in enumerate(model.blocks):
        heads = seen.heads[f"blocks.{i}.token_mixer"]  # (B, H, T, Dh)
        assert heads.shape == (2, 4, 10, 8)
        added = (
            seen.streams[f"blocks.{i}.stream_after_mixer"] - seen.streams[f"blocks.{i}.stream_in"]
        )
        with torch.no_grad():
            output = block.token_mixer.output_projection(heads.transpose(1, 2).flatten(2))
        assert torch.allclose(output, added, atol=1e-5)


def test_patching_a_heads_output_is_ablating_its_weights():
    model, ids = gpt(), torch.randint(0, V, (1, 10))

    def zero_head_2(outputs):  # (B, H, T, Dh)
        outputs[:, 2] = 0

    point = "blocks.0.token_mixer"
    with torch.no_grad():
        with capture(model, streams=False, patches={f"{point}.head_outputs": zero_head_2}):
            patched = model(ids)[0]
        with capture(
            model, streams=False, patches={f"{point}.attention_weights": ablate_heads([2])}
        ):
            ablated = model(ids)[0]
        assert not torch.allclose(patched, model(ids)[0])
    assert torch.allclose(patched, ablated, atol=1e-5)


def test_a_head_ablated_in_the_last_layer_has_no_direct_share():
    """Its share is zero; its layer's other heads write what they wrote, and so have the shares
    they had, but for the final norm's scale, which changes every share alike (embed's too)."""
    model, ids = gpt(), torch.randint(0, V, (1, 12))
    clean = direct_logit_attribution(model, ids, target=4)
    patch = {"blocks.1.token_mixer.attention_weights": ablate_heads([1])}
    with capture(model, attention=False, streams=False, patches=patch):
        ablated = direct_logit_attribution(model, ids, target=4)
    assert clean.heads[1, 1].abs().min() > 0 and not ablated.heads[1, 1].any()
    assert ablated.error.abs().max() < 1e-4
    rescaled = ablated.contributions[0] / clean.contributions[0]  # embed's: (T,)
    for head in (0, 2, 3):
        assert torch.allclose(ablated.heads[1, head], clean.heads[1, head] * rescaled)
    assert not torch.allclose(ablated.logits, clean.logits)


def test_a_post_norm_model_is_refused():
    with pytest.raises(UserError, match="needs pre-norm blocks and a final norm"):
        direct_logit_attribution(gpt(prenorm=False), torch.zeros(1, 4, dtype=torch.long))


CHARS = string.ascii_lowercase + " ,."


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("attribution")
    tokenizer = CharTokenizer(CHARS)
    paths = {}
    for name, fields in {
        "gpt": {},
        "mamba": {"mixer": "mamba"},
        "postnorm": {"prenorm": False},
    }.items():
        model = gpt(vocab_size=tokenizer.vocab_size, **fields)
        save_checkpoint(root / name, model, {"tokenizer": tokenizer})
        paths[name] = str(root / name)
    lstm = RecurrentLM(RecurrentLMConfig(vocab_size=tokenizer.vocab_size, context_length=16))
    save_checkpoint(root / "lstm", lstm, {"tokenizer": tokenizer})
    return {**paths, "lstm": str(root / "lstm")}


def test_the_command_prints_the_largest_shares_and_their_sum(checkpoints, capsys):
    code, out, _ = run(["inspect", "attribution", checkpoints["gpt"], "--text", "to be or not",
                        "--top", "3"], capsys)  # fmt: skip
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("position 11, token 't': the logit of '")
    assert lines[0].endswith("(target: the model's top prediction)")
    assert lines[1].split() == ["component", "direct", "share"]
    shown = [
        re.fullmatch(r"(L\d\S*( \S+)?|embed|pos) +([+-]\d+\.\d+)", line) for line in lines[2:5]
    ]
    sizes = [abs(float(match[3])) for match in shown]  # the 3 largest, largest first
    assert sizes == sorted(sizes, reverse=True)
    assert lines[5].startswith("(11 smaller share(s) not shown")
    shares, bias, total, model = map(float, re.findall(r"[+-]\d+\.\d+", lines[-1]))
    assert abs(shares + bias - total) < 2e-4 and abs(total - model) < 2e-4


def test_json_and_png(checkpoints, tmp_path, capsys):
    png = tmp_path / "dla.png"
    argv = ["inspect", "attribution", checkpoints["gpt"], "--text", "to be or", "--position", "2",
            "--target", "x", "--versus", "e", "--json", "--png", str(png)]  # fmt: skip
    code, out, err = run(argv, capsys)
    report = json.loads(out)
    assert code == 0 and f"wrote {png}" in err and png.read_bytes()[:4] == b"\x89PNG"
    assert (report["position"], report["target"], report["versus"]) == (2, "x", "e")
    assert report["tokens"] == list("to be or") and len(report["heads"]) == 2
    assert abs(sum(report["components"].values()) + report["norm_bias"] - report["logit"]) < 1e-4
    assert report["components"]["L1H3"] == report["heads"][1][3]


def test_a_model_of_another_mixer_is_attributed_per_layer(checkpoints, tmp_path, capsys):
    png = tmp_path / "dla.png"
    code, out, _ = run(["inspect", "attribution", checkpoints["mamba"], "--text", "to be",
                        "--json", "--png", str(png)], capsys)  # fmt: skip
    report = json.loads(out)
    assert code == 0 and png.exists()
    assert list(report["components"]) == [
        "embed",
        "pos",
        "L0 mixer",
        "L0 ffn",
        "L1 mixer",
        "L1 ffn",
    ]


def test_a_long_text_is_cut_with_a_note(checkpoints, capsys):
    code, out, err = run(["inspect", "attribution", checkpoints["gpt"], "--text", "a" * 20,
                          "--json"], capsys)  # fmt: skip
    assert code == 0 and "4 token(s) longer than the model reads" in err
    assert json.loads(out)["position"] == 15


@pytest.mark.parametrize(
    ("name", "flags", "message"),
    [
        ("postnorm", [], "needs pre-norm blocks and a final norm"),
        ("lstm", [], "needs a language model of residual blocks"),
        ("gpt", ["--target", "ab"], "--target 'ab' encodes to 2 tokens ('a', 'b'): give the text"),
        ("gpt", ["--versus", ""], "--versus '' encodes to 0 tokens: give the text of one token"),
        ("gpt", ["--target", "é"], "--target 'é' has 1 character(s) the tokenizer never saw"),
        ("gpt", ["--versus", "\udcff"], "not valid UTF-8"),  # a byte of no UTF-8 on the line
        ("gpt", ["--target", "e", "--versus", "e"], "--versus 'e' is the --target: their"),
        ("gpt", ["--position", "5"], "--position 5 is out of range: the text has 5 token(s)"),
        ("gpt", ["--position", "-6"], "--position -6 is out of range"),
        ("gpt", ["--top", "0"], "--top must be >= 1"),
    ],
)
def test_bad_input_is_one_line(checkpoints, capsys, name, flags, message):
    code, _, err = run(["inspect", "attribution", checkpoints[name], "--text", "to be", *flags],
                       capsys)  # fmt: skip
    assert message in one_line_error(code, err)
