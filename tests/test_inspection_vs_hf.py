"""Inspection against Hugging Face `transformers`, an implementation nobody here wrote: the
captured attention weights and residual streams, the logit lens, direct logit attribution and
head ablation of models converted with from_hf, each compared with what the Hugging Face model
computes (output_attentions, output_hidden_states, or hooks on its modules), in float32, from
small random configs built offline: GPT-2, and Llama and Mistral with grouped-query heads."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

from attnlab.interop.huggingface import from_hf  # noqa: E402
from attnlab.interpretability import attention_layers, capture, direct_logit_attribution  # noqa: E402
from attnlab.interpretability.lens import logit_lens  # noqa: E402
from attnlab.interpretability.surgery import head_ablation  # noqa: E402

KINDS = ("gpt2", "llama", "mistral")
LAYERS, HEADS, WIDTH, VOCAB = 2, 4, 32, 53
HEAD_DIM = WIDTH // HEADS
NO_SPECIALS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
LLAMA = dict(
    vocab_size=VOCAB,
    hidden_size=WIDTH,
    intermediate_size=48,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=2,  # grouped-query: 2 query heads per key/value head
    max_position_embeddings=24,
    rms_norm_eps=1e-4,
    rope_theta=500.0,
    tie_word_embeddings=False,
    attn_implementation="eager",  # output_attentions needs it
    **NO_SPECIALS,
)


def randomised(model: nn.Module) -> nn.Module:
    """Weights larger than Hugging Face's N(0, 0.02), biases nonzero and norm gains away from 1,
    so that attention patterns, every head and the norms all shape the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            gain = param.dim() == 1 and "norm" in name.lower() and name.endswith("weight")
            gain |= ".ln_" in name and name.endswith("weight")
            if gain:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.2)
    return model


def hf_model(kind: str) -> nn.Module:
    """A Hugging Face model in training mode (GPT-2's with dropout 0.1, its default)."""
    if kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB,
            n_positions=24,
            n_embd=WIDTH,
            n_layer=LAYERS,
            n_head=HEADS,
            layer_norm_epsilon=1e-4,
            tie_word_embeddings=False,
            attn_implementation="eager",
            bos_token_id=None,
            eos_token_id=None,
        )
        return randomised(transformers.GPT2LMHeadModel(config)).train()
    if kind == "llama":
        return randomised(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))).train()
    config = transformers.MistralConfig(**LLAMA, sliding_window=None)
    return randomised(transformers.MistralForCausalLM(config)).train()


def pair(kind: str) -> tuple[nn.Module, nn.Module]:
    """(Hugging Face model in eval mode, attnlab's from it, left in training mode: each
    inspection must evaluate without dropout by itself)."""
    hf = hf_model(kind)
    ours = from_hf(hf)
    assert ours.training
    return hf.eval(), ours


def ids(batch: int = 1, length: int = 14) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def modules(hf: nn.Module) -> dict:
    """The Hugging Face modules the hand computations hook: each layer's attention, its output
    projection (input: the heads' outputs side by side, (B, T, H·Dh)), its feed-forward, and
    the final norm; and each projection's weight as (H·Dh, D), heads' rows in order."""
    if hasattr(hf, "transformer"):  # GPT-2: Conv1D, weights (in, out)
        blocks, norm = hf.transformer.h, hf.transformer.ln_f
        attn = [b.attn for b in blocks]
        proj = [a.c_proj for a in attn]
        return dict(attn=attn, proj=proj, mlp=[b.mlp for b in blocks], norm=norm,
                    rows=[p.weight for p in proj])  # fmt: skip
    blocks, norm = hf.model.layers, hf.model.norm
    proj = [b.self_attn.o_proj for b in blocks]
    return dict(attn=[b.self_attn for b in blocks], proj=proj, mlp=[b.mlp for b in blocks],
                norm=norm, rows=[p.weight.T for p in proj])  # fmt: skip


@torch.no_grad()
def hf_run(hf: nn.Module, x: torch.Tensor):
    """HF's outputs (hidden states, attentions) and, by hooks, each attention's output, each
    projection's input, each feed-forward's output and the final norm's input."""
    parts, seen, handles = modules(hf), {}, []

    def keep(key, pre=False):
        if pre:
            return lambda module, args: seen.__setitem__(key, args[0].detach().clone())
        return lambda module, args, out: seen.__setitem__(
            key, (out[0] if isinstance(out, tuple) else out).detach().clone()
        )

    for i in range(LAYERS):
        handles.append(parts["attn"][i].register_forward_hook(keep(("attn", i))))
        handles.append(parts["proj"][i].register_forward_pre_hook(keep(("heads", i), pre=True)))
        handles.append(parts["mlp"][i].register_forward_hook(keep(("mlp", i))))
    handles.append(parts["norm"].register_forward_pre_hook(keep("final", pre=True)))
    try:
        out = hf(x, output_attentions=True, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return out, seen


@pytest.mark.parametrize("kind", KINDS)
def test_captured_attention_weights_are_hfs_for_every_query_head(kind):
    hf, ours = pair(kind)
    x = ids(batch=2)
    out, _ = hf_run(hf, x)
    with torch.no_grad(), capture(ours.eval(), streams=False) as seen:  # as `inspect attention`
        ours(x)
    assert [layer.name for layer in attention_layers(ours)] == list(seen.attention)
    for i, expected in enumerate(out.attentions):
        got = seen.attention[f"blocks.{i}.token_mixer"]
        assert got.shape == expected.shape == (2, HEADS, 14, 14)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        # heads that share a key/value head (Llama's 0 and 1) still attend each their own way
        assert (expected[:, 0] - expected[:, 1]).abs().max() > 0.05


@pytest.mark.parametrize("kind", KINDS)
def test_captured_streams_are_hfs_hidden_states(kind):
    """HF's hidden_states: the embeddings, then each block's output, but the last with the
    final norm applied; attnlab's streams are all raw, and its last block's output is that
    one before the norm. stream_after_mixer adds HF's attention output to the block's input."""
    hf, ours = pair(kind)
    x = ids(batch=2)
    out, hooked = hf_run(hf, x)
    with torch.no_grad(), capture(ours.eval()) as seen:
        ours(x)
    streams, hidden = seen.streams, out.hidden_states
    assert len(hidden) == LAYERS + 1
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(streams["blocks.0.stream_in"], hidden[0], **close)
    for i in range(LAYERS):
        out_i = streams[f"blocks.{i}.stream_out"]
        if i + 1 < LAYERS:
            torch.testing.assert_close(out_i, hidden[i + 1], **close)
            torch.testing.assert_close(streams[f"blocks.{i + 1}.stream_in"], out_i)
        else:
            torch.testing.assert_close(out_i, hooked["final"], **close)
            torch.testing.assert_close(ours.final_norm(out_i), hidden[i + 1], **close)
            assert (out_i - hidden[i + 1]).abs().max() > 0.1  # the norm is no no-op here
        added = streams[f"blocks.{i}.stream_after_mixer"] - streams[f"blocks.{i}.stream_in"]
        torch.testing.assert_close(added, hooked[("attn", i)], **close)


@pytest.mark.parametrize("kind", KINDS)
def test_logit_lens_is_hfs_head_on_each_hidden_state(kind):
    hf, ours = pair(kind)
    x = ids()
    out, hooked = hf_run(hf, x)
    report = logit_lens(ours, (x,))
    assert report.rows == ["embeddings", "0 mixer", "0 out", "1 mixer", "1 out"]
    norm = modules(hf)["norm"]

    def read(stream):  # HF's own final norm and head, applied by hand
        return hf.lm_head(norm(stream))[0]

    with torch.no_grad():
        expected = {"embeddings": read(out.hidden_states[0]), "1 out": out.logits[0]}
        expected["0 out"] = read(out.hidden_states[1])
        for i in range(LAYERS):
            expected[f"{i} mixer"] = read(out.hidden_states[i] + hooked[("attn", i)])
        for row, logits in zip(report.rows, report.logits, strict=True):
            torch.testing.assert_close(logits, expected[row], atol=1e-5, rtol=1e-5)
        _, top_id = report.top(1)
        torch.testing.assert_close(top_id[-1, :, 0], out.logits[0].argmax(-1))
        assert (expected["0 out"] - expected["1 out"]).abs().max() > 0.1  # rows differ


def hand_attribution(hf: nn.Module, x: torch.Tensor, targets, versus):
    """Each part's direct share of the logit (difference) from HF's weights and activations, in
    float64: the part through the final norm held at the scale of the stream it reads (LayerNorm
    also centres the part), times the gain, dotted with the head's row for the target (less
    the row for versus)."""
    out, hooked = hf_run(hf, x)
    parts = modules(hf)
    norm = parts["norm"]
    final = hooked["final"][0].double()  # (T, D), the stream the final norm reads
    row = hf.lm_head.weight.double()[targets]
    logit = out.logits[0].double().gather(-1, targets[:, None])[:, 0]
    if versus is not None:
        row, logit = row - hf.lm_head.weight.double()[versus], logit - out.logits[0, :, versus]
    gain = norm.weight.double()
    if isinstance(norm, nn.LayerNorm):
        scale = (final.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()

        def share(part):
            return ((part - part.mean(-1, keepdim=True)) / scale * gain * row).sum(-1)

        norm_bias = row @ norm.bias.double()
    else:  # Llama's RMSNorm
        scale = (final.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()

        def share(part):
            return (part / scale * gain * row).sum(-1)

        norm_bias = torch.zeros_like(logit)
    shares = {}
    for i in range(LAYERS):
        heads, weight = hooked[("heads", i)][0].double(), parts["rows"][i].double()
        for h in range(HEADS):
            cut = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            shares[f"L{i}H{h}"] = share(heads[:, cut] @ weight[cut])
        if getattr(parts["proj"][i], "bias", None) is not None:
            shares[f"L{i} attn bias"] = share(parts["proj"][i].bias.double().expand_as(final))
        shares[f"L{i} ffn"] = share(hooked[("mlp", i)][0].double())
    return shares, norm_bias, logit.double()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("versus", [None, 7])
def test_direct_logit_attribution_is_the_hand_computation_from_hfs_weights(kind, versus):
    hf, ours = pair(kind)
    x = ids()
    got = direct_logit_attribution(ours, x, versus=versus)
    with torch.no_grad():
        logits = hf(x).logits[0]
    # default targets: the next token, and at the last position the model's top prediction
    torch.testing.assert_close(got.targets, torch.cat([x[0, 1:], logits[-1:].argmax(-1)]))
    shares, norm_bias, logit = hand_attribution(hf, x, got.targets, versus)
    close = dict(atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got.logits, logit, **close)
    torch.testing.assert_close(got.norm_bias, norm_bias, **close)
    # the documented sum: the shares plus the norm's bias are the model's logit (difference)
    torch.testing.assert_close(got.contributions.sum(0) + got.norm_bias, logit, **close)
    assert got.error.abs().max() < 1e-5
    for name, share in shares.items():
        torch.testing.assert_close(got.contributions[got.components.index(name)], share, **close)
    for i in range(LAYERS):
        for h in range(HEADS):
            torch.testing.assert_close(got.heads[i, h], shares[f"L{i}H{h}"], **close)
    # the rest: the embeddings (token, and position where learned) are what the parts leave
    rest = {"embed", "pos"} if kind == "gpt2" else {"embed"}
    assert set(got.components) == set(shares) | rest
    embeddings = logit - norm_bias - sum(shares.values())
    in_model = sum(got.contributions[got.components.index(name)] for name in rest)
    torch.testing.assert_close(in_model, embeddings, **close)
    assert got.heads.abs().max() > 0.1  # the heads' shares are no rounding noise


def hf_loss_without_head(hf: nn.Module, x, loss_of, proj: nn.Module | None, head: int) -> float:
    """HF's loss with one head's output zeroed where it enters the output projection (what
    head_mask did: the head's weights times 0; transformers 5 has no head_mask)."""

    def zero(module, args):
        heads = args[0].clone()
        heads[..., head * HEAD_DIM : (head + 1) * HEAD_DIM] = 0
        return (heads, *args[1:])

    handle = proj.register_forward_pre_hook(zero) if proj is not None else None
    try:
        with torch.no_grad():
            return loss_of(hf(x).logits)
    finally:
        if handle is not None:
            handle.remove()


def next_token_loss(logits: torch.Tensor, x: torch.Tensor) -> float:
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()))


@pytest.mark.parametrize("kind", KINDS)
def test_head_ablation_is_hfs_loss_with_the_head_masked(kind):
    hf, ours = pair(kind)
    x = ids(batch=2)
    baseline, results = head_ablation(ours, lambda: next_token_loss(ours(x)[0], x))
    assert ours.training  # put back as it was

    def loss(logits):
        return next_token_loss(logits, x)

    assert baseline == pytest.approx(hf_loss_without_head(hf, x, loss, None, 0), abs=1e-5)
    assert list(results) == [f"blocks.{i}.token_mixer" for i in range(LAYERS)]
    for i, proj in enumerate(modules(hf)["proj"]):
        expected = [hf_loss_without_head(hf, x, loss, proj, h) for h in range(HEADS)]
        assert results[f"blocks.{i}.token_mixer"] == pytest.approx(expected, abs=1e-5)
    changes = [abs(v - baseline) for row in results.values() for v in row]
    assert max(changes) > 0.01  # the heads matter: a wrong head would show


def test_bert_head_ablation_is_hfs_loss_with_the_head_masked():
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=40,
        max_position_embeddings=24,
        attn_implementation="eager",
        pad_token_id=0,
    )
    hf = randomised(transformers.BertForMaskedLM(config)).eval()
    ours = from_hf(hf)
    x = torch.randint(1, VOCAB, (2, 14), generator=torch.Generator().manual_seed(2))  # no padding

    def loss(logits):  # any fixed measure: here, reconstructing every token
        return float(F.cross_entropy(logits.flatten(0, 1), x.flatten()))

    baseline, results = head_ablation(ours, lambda: loss(ours(x)[0]))
    projs = [layer.attention.output.dense for layer in hf.bert.encoder.layer]
    assert baseline == pytest.approx(hf_loss_without_head(hf, x, loss, None, 0), abs=1e-5)
    assert len(results) == LAYERS
    for proj, row in zip(projs, results.values(), strict=True):
        expected = [hf_loss_without_head(hf, x, loss, proj, h) for h in range(HEADS)]
        assert row == pytest.approx(expected, abs=1e-5)
    assert max(abs(v - baseline) for row in results.values() for v in row) > 0.01
