"""Capture, patching, the logit lens and layer surgery (attnlab/interpretability). The attention
viewer's page is in test_viewer.py, the induction-head scores in test_induction.py."""

import dataclasses
import math

import pytest
import torch
from helpers import tiny_gpt

from attnlab.cli.reports import plot_confusion
from attnlab.errors import UserError
from attnlab.interpretability import ablate_heads, attention_groups, attention_layers, capture
from attnlab.interpretability.lens import logit_lens
from attnlab.interpretability.plots import Heatmap, save_heatmaps
from attnlab.interpretability.surgery import arrangements, block_stack, layer_surgery, rearranged
from attnlab.layers.attention import MultiHeadAttention
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.registry import KINDS

TOL = 1e-5


def _ids(low, high, *shape):
    return torch.randint(low, high, shape)


# Example inputs of each built-in kind's tiny preset (B = 2). A new built-in kind must add its
# own here: test_every_builtin_kind_is_covered fails until it does.
EXAMPLES = {
    "gpt": lambda c: (_ids(0, c.vocab_size, 2, 12),),
    "bert": lambda c: (torch.cat([_ids(1, c.vocab_size, 2, 10), torch.zeros(2, 2).long()], 1),),
    "classifier": lambda c: (_ids(1, c.vocab_size, 2, 12),),
    "translation": lambda c: (_ids(3, c.vocab_size, 2, 9), _ids(3, c.vocab_size, 2, 7)),
    "vit": lambda c: (torch.randn(2, c.channels, c.image_size, c.image_size),),
    "igpt": lambda c: (_ids(0, c.vocab_size, 2, 12),),
    "lstm_lm": None,  # no attention
}


def builtin_kinds():
    return [k for k in KINDS.values() if k.model.__module__.startswith("attnlab.")]


def test_every_builtin_kind_is_covered():
    assert {k.name for k in builtin_kinds()} == set(EXAMPLES)


def build(kind_name):
    kind = KINDS[kind_name]
    torch.manual_seed(0)
    model = kind.model(kind.presets[kind.default_preset]).eval()
    with torch.no_grad():  # larger weights than at init: attention that is not near-uniform
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


def with_eager_attention(model):
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.backend = "eager"
    return model


ATTENTION_KINDS = [name for name, example in EXAMPLES.items() if example is not None]


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_capture_changes_no_logits_and_weights_are_distributions(kind):
    model = build(kind)
    args = EXAMPLES[kind](model.config)
    with torch.no_grad():
        plain, _ = model(*args)
        with capture(model) as seen:
            captured, _ = model(*args)
        again, _ = model(*args)  # hooks gone: the fused path again
        eager, _ = with_eager_attention(model)(*args)
    assert torch.equal(captured, eager)  # the same computation, to the bit
    finite = plain.isfinite()  # not an image GPT's start token, whose logit is -inf
    assert torch.equal(captured.isfinite(), finite)
    assert torch.equal(captured[~finite], plain[~finite])
    difference = (captured - plain)[finite].abs().max()  # fused: rounding
    assert difference < TOL * max(1.0, plain[finite].abs().max())
    assert torch.equal(again, plain)
    layers = attention_layers(model)
    assert layers and set(seen.attention) == {layer.name for layer in layers}
    for layer in layers:
        weights = seen.attention[layer.name]
        assert weights.dim() == 4 and weights.size(0) == 2
        assert (weights >= 0).all()
        assert (weights.sum(-1) - 1).abs().max() < TOL, layer.name
        if layer.causal:
            upper = torch.ones(weights.shape[-2:], dtype=torch.bool).triu(1)
            assert weights[..., upper].abs().max() == 0, layer.name
    n_blocks = len({layer.name.rpartition(".")[0] for layer in layers})
    assert len(seen.streams) >= 3 * n_blocks
    assert all(s.dim() == 3 and s.size(0) == 2 for s in seen.streams.values())


def test_layers_are_grouped_as_the_model_has_them():
    assert list(attention_groups(build("translation"))) == [
        "encoder_blocks self-attention",
        "decoder_blocks self-attention",
        "decoder_blocks cross-attention",
    ]
    assert list(attention_groups(build("bert"))) == ["encoder.blocks self-attention"]
    assert attention_layers(build("lstm_lm")) == []


def test_bert_padding_is_never_attended_to():
    model = build("bert")
    (ids,) = EXAMPLES["bert"](model.config)
    with torch.no_grad(), capture(model) as seen:
        model(ids)
    for weights in seen.attention.values():
        assert weights[..., -2:].abs().max() == 0  # the two [PAD] keys


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rope", "alibi", "none"])
@pytest.mark.parametrize("n_kv_heads", [None, 1])
def test_gpt_capture_for_every_positional_encoding(positional, n_kv_heads):
    model = tiny_gpt(positional)
    if n_kv_heads:
        config = dataclasses.replace(model.config, n_kv_heads=n_kv_heads)
        model = type(model)(config).eval()
    ids = _ids(0, 11, 3, 16)
    with torch.no_grad():
        plain, _ = model(ids)
        with capture(model) as seen:
            captured, _ = model(ids)
    assert (captured - plain).abs().max() < TOL
    for weights in seen.attention.values():
        assert weights.shape == (3, 2, 16, 16)
        assert (weights.sum(-1) - 1).abs().max() < TOL
        assert weights[..., torch.ones(16, 16, dtype=torch.bool).triu(1)].abs().max() == 0


def test_captured_weights_are_the_attention_equation():
    """Layer 0 of a GPT (learned positions), recomputed by hand from the captured stream."""
    model = tiny_gpt("learned")
    ids = _ids(0, 11, 2, 16)
    with torch.no_grad(), capture(model) as seen:
        model(ids)
        block = model.blocks[0]
        h = block.mixer_norm(seen.streams["blocks.0.stream_in"])
        q, k, _ = block.token_mixer.qkv_projection(h).split(16, dim=-1)  # D = 16, 2 heads of 8
        q, k = (t.view(2, 16, 2, 8).transpose(1, 2) for t in (q, k))
        scores = q @ k.transpose(-1, -2) / math.sqrt(8)
        scores = scores.masked_fill(torch.ones(16, 16).triu(1).bool(), float("-inf"))
        expected = scores.softmax(-1)
    assert (seen.attention["blocks.0.token_mixer"] - expected).abs().max() < 1e-6


def test_ablating_every_head_leaves_only_the_output_bias():
    model = tiny_gpt()
    ids = _ids(0, 11, 2, 16)
    patch = {"blocks.0.token_mixer.attention_weights": ablate_heads([0, 1])}
    with torch.no_grad(), capture(model, attention=False, patches=patch) as seen:
        model(ids)
    added = seen.streams["blocks.0.stream_after_mixer"] - seen.streams["blocks.0.stream_in"]
    bias = model.blocks[0].token_mixer.output_projection.bias
    assert (added - bias).abs().max() < 1e-6


def test_weights_changed_in_place_are_the_weights_used_and_recorded():
    model = tiny_gpt()
    ids = _ids(0, 11, 2, 16)

    def in_place(weights):
        weights.zero_()  # returns nothing: the tensor itself is the patch

    point = "blocks.0.token_mixer.attention_weights"
    with torch.no_grad():
        with capture(model, attention=False, patches={point: ablate_heads([0, 1])}) as ablated:
            model(ids)
        handle = dict(model.named_modules())[point].register_forward_hook(
            lambda module, args, out: in_place(out)
        )
        try:
            with capture(model, attention=False) as edited:
                model(ids)
        finally:
            handle.remove()
    for name in ("blocks.0.stream_after_mixer", "blocks.1.stream_out"):
        assert torch.equal(edited.streams[name], ablated.streams[name])
    with (
        pytest.raises(KeyError, match=r"no hook point blocks.0.stream_inn in GPT; it has .*\.\.\."),
        capture(model, only=["blocks.0.stream_inn"]),
    ):
        pass


def test_a_patch_in_place_changes_no_earlier_record_and_keeps_backward_working():
    model = tiny_gpt()
    ids = _ids(0, 11, 2, 16)
    with torch.no_grad(), capture(model) as plain:
        model(ids)
    zero = {"blocks.1.stream_in": lambda t: t.zero_()}  # the same tensor as blocks.0.stream_out
    with torch.no_grad(), capture(model, patches=zero) as patched:
        model(ids)
    assert torch.equal(patched.streams["blocks.0.stream_out"], plain.streams["blocks.0.stream_out"])
    assert not patched.streams["blocks.1.stream_in"].any()

    def first_key_off(weights):
        weights[..., 0] = 0
        return weights

    with capture(model, patches={"blocks.0.token_mixer.attention_weights": first_key_off}):
        model(ids)[0].sum().backward()  # softmax's backward reads its own output
    assert model.blocks[0].token_mixer.output_projection.weight.grad is not None


def test_a_patch_in_place_returning_nothing_is_the_patch_and_a_reshaping_one_is_refused():
    model = tiny_gpt()
    ids = _ids(0, 11, 2, 16)
    point = "blocks.0.token_mixer.attention_weights"
    with torch.no_grad(), capture(model, attention=False, patches={point: ablate_heads([0, 1])}):
        expected, _ = model(ids)

    def in_place(weights):
        weights.zero_()  # returns None, as the docs allow

    for grad in (False, True):
        for streams in (True, False):  # recorded, or only patched
            with (
                torch.set_grad_enabled(grad),
                capture(model, attention=False, streams=streams, patches={point: in_place}),
            ):
                logits, _ = model(ids)
            assert torch.equal(logits.detach(), expected), (grad, streams)
    for bad, got in [
        (lambda t: t[:1], r"torch.float32 \(1, 16, 16\); it must return a torch.float32 "),
        (lambda t: t.double(), r"torch.float64 \(2, 16, 16\)"),
        (lambda t: 0.0, r"float; .* the shape it was given, \(2, 16, 16\)"),
    ]:
        wrong = r"the patch at blocks.0.stream_out returned " + got
        with (
            pytest.raises(ValueError, match=wrong),
            torch.no_grad(),
            capture(model, patches={"blocks.0.stream_out": bad}),
        ):
            model(ids)


def test_capture_refuses_what_it_could_not_see_or_do():
    model = tiny_gpt()
    ids = _ids(0, 11, 1, 8)
    point = "blocks.0.token_mixer.attention_weights"
    off = "only= names blocks.0.token_mixer.attention_weights"
    with pytest.raises(ValueError, match=off), capture(model, attention=False, only=[point]):
        pass
    with pytest.raises(TypeError, match="a list of hook paths, got the string 'blocks.0.st"):
        capture(model, only="blocks.0.stream_in").__enter__()  # not 16 one-letter paths
    for heads in (1, [1.5], [True]):  # not head 1, silently
        with pytest.raises(TypeError, match="head indices, a list of ints, got"):
            ablate_heads(heads)
    ablated = capture(model, patches={point: ablate_heads([5])})
    wrong = "head 5 is out of range: the layer has heads 0 to 1"
    with pytest.raises(ValueError, match=wrong), torch.no_grad(), ablated:
        model(ids)
    model.blocks[1].compile()  # compiled code would not call the hooks
    compiled = "capture needs the model uncompiled; compiled: blocks.1"
    with pytest.raises(RuntimeError, match=compiled), capture(model):
        pass


def test_patching_a_stream_replaces_it_downstream():
    model = tiny_gpt()
    ids = _ids(0, 11, 2, 16)
    patch = {"blocks.1.stream_out": torch.zeros_like}
    with torch.no_grad():
        with capture(model, patches=patch):
            logits, _ = model(ids)
        expected = model.readout(torch.zeros(2, 16, 16))
    assert (logits - expected).abs().max() < 1e-6
    with (
        pytest.raises(KeyError, match="no hook point"),
        capture(model, patches={"blocks.9.stream_out": torch.zeros_like}),
    ):
        pass


# -------------------------------------------------------------------------------- lens, surgery
def test_capture_of_a_model_without_hook_points_says_so():
    from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig

    with (
        pytest.raises(ValueError, match="RecurrentLM has no hook points"),
        capture(RecurrentLM(RecurrentLMConfig(vocab_size=11, d_model=8))),
    ):
        pass


def test_patching_attention_weights_of_a_model_without_attention_says_why():
    model = GPT(GPTConfig(vocab_size=11, context_length=16, n_layers=2, d_model=16, mixer="mamba"))
    point = "blocks.0.token_mixer.attention_weights"
    why = r"; it has no attention layers \(its mamba token mixers compute no attention weights\)"
    with pytest.raises(KeyError, match=f"no hook point {point} in GPT.*{why}"):
        capture(model, patches={point: ablate_heads([0])}).__enter__()


def test_the_lens_ends_at_the_models_own_logits():
    model = tiny_gpt()
    ids = _ids(0, 11, 1, 16)
    report = logit_lens(model, (ids,))
    assert report.rows == ["embeddings", "0 mixer", "0 out", "1 mixer", "1 out"]
    with torch.no_grad():
        logits, _ = model(ids)
    assert (report.logits[-1] - logits[0]).abs().max() < 1e-6
    probabilities, top = report.top(3)
    assert top.shape == (5, 16, 3) and (probabilities[..., 0] >= probabilities[..., 1]).all()
    with pytest.raises(ValueError, match="a batch of one, got 2 rows"):  # row 1 went unread
        logit_lens(model, (ids.expand(2, -1),))


def test_the_lens_keeps_the_streams_not_every_rows_logits():  # R times a forward's (R, T, V)
    report = logit_lens(tiny_gpt(), (_ids(0, 11, 1, 16),))
    assert [tuple(t.shape) for t in vars(report).values() if torch.is_tensor(t)] == [(5, 16, 16)]
    expected = report.logits.softmax(-1).topk(2)
    assert all(map(torch.equal, report.top(2), expected))


def test_the_lens_reads_a_training_model_without_dropout():
    config = GPTConfig(vocab_size=11, context_length=16, n_layers=2, n_heads=2, d_model=16)
    model = GPT(dataclasses.replace(config, dropout=0.5)).eval()
    ids = _ids(0, 11, 1, 16)
    expected = logit_lens(model, (ids,)).logits
    model.train()
    torch.testing.assert_close(logit_lens(model, (ids,)).logits, expected, rtol=0, atol=0)
    assert model.training


def test_surgery_arrangements_and_restoring_the_order():
    assert arrangements(3) == {
        "drop 0": [1, 2], "drop 1": [0, 2], "drop 2": [0, 1],
        "duplicate 0": [0, 0, 1, 2], "duplicate 1": [0, 1, 1, 2], "duplicate 2": [0, 1, 2, 2],
        "swap 0 1": [1, 0, 2], "swap 0 2": [2, 1, 0], "swap 1 2": [0, 2, 1],
    }  # fmt: skip
    model = tiny_gpt()
    stack = block_stack(model)
    blocks = list(stack)
    ids = _ids(0, 11, 2, 16)
    with torch.no_grad():
        with rearranged(stack, [1, 0]):
            assert list(stack) == blocks[::-1]
            swapped, _ = model(ids)
        logits, _ = model(ids)
    assert list(stack) == blocks
    assert not torch.allclose(swapped, logits)


def test_surgery_finds_a_layer_that_does_nothing():
    model = tiny_gpt()
    with torch.no_grad():  # block 1 writes nothing into the residual stream: an identity
        for name, p in model.blocks[1].named_parameters():
            if "output_projection" in name or "feedforward" in name:
                p.zero_()
    ids = _ids(0, 11, 4, 16)
    baseline, results = layer_surgery(model, lambda: model(ids, ids)[1].item())
    assert results["drop 1"] == pytest.approx(baseline, abs=1e-6)
    assert results["duplicate 1"] == pytest.approx(baseline, abs=1e-6)
    assert abs(results["drop 0"] - baseline) > 1e-3
    with pytest.raises(Exception, match="one list of residual blocks"):
        block_stack(build("translation"))


# -------------------------------------------------------------------------------------- plots
def test_every_plot_is_written_under_exactly_the_name_given(tmp_path):
    panel = Heatmap(torch.rand(2, 3), "title", ["a", "b"], ["x", "y", "z"])
    conf, heads = tmp_path / "conf", tmp_path / "heads.PDF"
    assert plot_confusion(torch.tensor([[3, 1], [0, 4]]), ["cat", "dog"], conf, "title") == conf
    assert save_heatmaps(heads, [panel]) == heads
    assert conf.read_bytes().startswith(b"\x89PNG") and heads.read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf", "heads.PDF"]


@pytest.mark.parametrize("name", ["c.xyz", "c.pgf"])  # pgf: matplotlib's, but it needs TeX
def test_a_plot_type_that_cannot_be_written_is_a_user_error(tmp_path, name):
    panel = Heatmap(torch.rand(2, 2), "title", ["a", "b"], ["x", "y"])
    png = tmp_path / name
    for draw in (
        lambda: plot_confusion(torch.eye(2, dtype=torch.long), ["a", "b"], png, "title"),
        lambda: save_heatmaps(png, [panel]),
    ):
        with pytest.raises(UserError, match=r"is not a plot file type; give a name ending in"):
            draw()
    assert list(tmp_path.iterdir()) == []


def test_a_map_of_many_positions_is_drawn_at_a_size_that_opens(tmp_path):
    labels = [str(i) for i in range(200)]  # an image GPT's 16 x 16 pixels: no tick labels
    png = save_heatmaps(tmp_path / "map.png", [Heatmap(torch.rand(200, 200), "t", labels, labels)])
    from PIL import Image

    assert max(Image.open(png).size) < 3000  # as for 64 positions, not 7000 pixels a side
