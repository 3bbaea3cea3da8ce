import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.errors import ConfigError
from attnlab.models.encoder_decoder import PRESETS, EncoderDecoder, EncoderDecoderConfig
from attnlab.models.registry import build_model, describe
from attnlab.training.checkpoints import load_checkpoint, save_checkpoint

PAD, BOS, EOS, V, D = 0, 1, 2, 50, 32


def small(**changes) -> EncoderDecoderConfig:
    fields = dict(
        vocab_size=V,
        max_length=40,
        n_encoder_layers=2,
        n_decoder_layers=3,
        n_heads=4,
        d_model=D,
        d_ff=64,
        dropout=0.0,
    )
    return EncoderDecoderConfig(**{**fields, **changes})


def batch(src_len=7, tgt_len=6):
    src = torch.randint(3, V, (3, src_len))
    src[0, 5:] = PAD
    src[1, 6:] = PAD
    tgt = torch.randint(3, V, (3, tgt_len))
    tgt[2, 4:] = PAD
    return src, tgt


# ----------------------------------------------------------------------------- parity
def _copy_attention(ours, theirs):
    ours.qkv_projection.weight.copy_(theirs.in_proj_weight)
    ours.qkv_projection.bias.copy_(theirs.in_proj_bias)
    ours.output_projection.load_state_dict(theirs.out_proj.state_dict())


def _copy_common(ours, theirs):
    _copy_attention(ours.token_mixer, theirs.self_attn)
    ours.feedforward.up_projection.load_state_dict(theirs.linear1.state_dict())
    ours.feedforward.down_projection.load_state_dict(theirs.linear2.state_dict())
    ours.mixer_norm.load_state_dict(theirs.norm1.state_dict())


@torch.no_grad()
def copy_into(model: EncoderDecoder, reference: nn.Transformer) -> None:
    """torch.nn.Transformer's weights into ours (same layouts: q, k, v rows in one matrix)."""
    for ours, theirs in zip(model.encoder_blocks, reference.encoder.layers, strict=True):
        _copy_common(ours, theirs)
        ours.feedforward_norm.load_state_dict(theirs.norm2.state_dict())
    for ours, theirs in zip(model.decoder_blocks, reference.decoder.layers, strict=True):
        _copy_common(ours, theirs)
        _copy_attention(ours.cross_attention, theirs.multihead_attn)
        ours.cross_norm.load_state_dict(theirs.norm2.state_dict())
        ours.feedforward_norm.load_state_dict(theirs.norm3.state_dict())
    if model.config.has_final_norm:
        model.encoder_norm.load_state_dict(reference.encoder.norm.state_dict())
        model.decoder_norm.load_state_dict(reference.decoder.norm.state_dict())


def reference_logits(model: EncoderDecoder, reference: nn.Transformer, src, tgt):
    """nn.Transformer between our embeddings (·√D + sinusoids) and our output projection."""

    def embed(ids):
        return model.target_embedding(ids) * math.sqrt(D) + model.positions(ids.size(1))

    reference.train()  # dropout is 0; train mode keeps torch off its fused inference fast path
    hidden = reference(
        embed(src),
        embed(tgt),
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(tgt.size(1)),
        tgt_is_causal=True,
        src_key_padding_mask=src == PAD,  # torch's key padding masks: True = ignore
        memory_key_padding_mask=src == PAD,
    )
    return model.output_projection(hidden)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")  # torch's note on norm_first
@pytest.mark.parametrize(
    "prenorm, final_norm, reference_final_norms",
    [
        (False, "yes", True),  # stock nn.Transformer: post-norm layers + final norms
        (False, "auto", False),  # the paper: post-norm, no final norm (torch's set to identity)
        (True, "auto", True),  # pre-norm (norm_first=True) with its final norms
    ],
)
def test_matches_torch_transformer(prenorm, final_norm, reference_final_norms):
    """Tolerance 1e-5 in fp32. nn.Transformer ends both stacks with a LayerNorm even in
    post-norm mode; the paper's post-norm model has none, so for that case the reference's two
    final norms are replaced by identities rather than approximated."""
    model = EncoderDecoder(small(prenorm=prenorm, final_norm=final_norm)).eval()
    reference = nn.Transformer(D, 4, 2, 3, 64, dropout=0.0, batch_first=True, norm_first=prenorm)
    if not reference_final_norms:
        reference.encoder.norm = nn.Identity()
        reference.decoder.norm = nn.Identity()
    assert model.config.has_final_norm == reference_final_norms
    copy_into(model, reference)
    src, tgt = batch()
    logits, _ = model(src, tgt)
    expected = reference_logits(model, reference, src, tgt)
    assert (logits - expected).abs().max() < 1e-5


# ----------------------------------------------------------------------------- invariants
def test_padding_never_changes_real_positions():
    model = EncoderDecoder(small()).eval()
    src, tgt = batch()
    logits, _ = model(src, tgt)
    padded_src = F.pad(src, (0, 4), value=PAD)
    padded_tgt = F.pad(tgt, (0, 3), value=PAD)
    padded_logits, _ = model(padded_src, padded_tgt)
    assert torch.allclose(padded_logits[:, : tgt.size(1)], logits, atol=1e-5)
    # and a sentence decoded alone equals the same sentence inside a padded batch
    alone, _ = model(src[:1, :5], tgt[:1])
    assert torch.allclose(alone, logits[:1], atol=1e-5)


def test_incremental_decoding_equals_full_recompute():
    model = EncoderDecoder(small()).eval()
    src, tgt = batch()
    memory, src_mask = model.encode(src)
    full = model.decode(tgt, memory, src_mask)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, :2], memory, src_mask, cache)]  # a prefill of two positions
    steps += [model.decode(tgt[:, t : t + 1], memory, src_mask, cache) for t in range(2, 6)]
    assert cache.position == 6
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_causal_decoder_ignores_future_targets():
    model = EncoderDecoder(small()).eval()
    src, tgt = batch()
    changed = tgt.clone()
    changed[:, 4:] = 7
    assert torch.allclose(model(src, tgt)[0][:, :4], model(src, changed)[0][:, :4], atol=1e-6)


def test_loss_ignores_pad_and_applies_label_smoothing():
    model = EncoderDecoder(small(label_smoothing=0.0)).eval()
    src, tgt = batch()
    out = torch.randint(3, V, tgt.shape)
    out[2, 4:] = PAD
    logits, loss = model(src, tgt, out)
    keep = out != PAD
    assert torch.allclose(loss, F.cross_entropy(logits[keep], out[keep]))
    smoothed = EncoderDecoder(small(label_smoothing=0.1)).eval()
    smoothed.load_state_dict(model.state_dict())
    expected = F.cross_entropy(logits[keep], out[keep], label_smoothing=0.1)
    assert torch.allclose(smoothed(src, tgt, out)[1], expected)


def test_initial_loss_follows_from_the_initialisation():
    """The decoder's final LayerNorm gives vectors h with |h|² ≈ D, and the tied output
    projection's rows are N(0, 1/D) at init, so each logit h·e_v is about N(0, 1), independent
    across the vocabulary. For a target drawn independently of the inputs, the expected loss is
    then E[logsumexp(z)] - E[z_y] ≈ ln(V·E[e^z]) - 0 = ln V + 1/2. Over 4 models of 384 targets
    each its spread is about 0.03 (0.19 for one batch of 32 targets, which is why comparing one
    small batch with ln V failed for some seeds): 0.15 is 5 standard deviations."""
    vocab, excess = 500, []
    for draw in range(4):
        torch.manual_seed(draw)
        model = EncoderDecoder(small(label_smoothing=0.0, vocab_size=vocab)).eval()
        src, tgt = torch.randint(3, vocab, (16, 12)), torch.randint(3, vocab, (16, 24))
        with torch.no_grad():
            _, loss = model(src, tgt, torch.randint(3, vocab, (16, 24)))
        excess.append(loss.item() - math.log(vocab))
    assert abs(sum(excess) / len(excess) - 0.5) < 0.15, excess


def test_embeddings_are_shared_and_tied_by_default():
    model = EncoderDecoder(small())
    assert model.source_embedding is model.target_embedding
    assert model.output_projection.weight is model.target_embedding.weight
    separate = EncoderDecoder(small(share_embeddings=False))
    assert model.num_parameters() + 2 * V * D == separate.num_parameters()
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - V * D


def test_overfits_one_batch():
    model = EncoderDecoder(small(label_smoothing=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    src, tgt = batch()
    out = torch.roll(tgt, -1, dims=1)
    for _ in range(60):
        _, loss = model(src, tgt, out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


# ----------------------------------------------------------------------------- config
def test_base_preset_has_the_papers_size():
    model = EncoderDecoder(PRESETS["base"])  # paper, Table 3: 65M parameters
    assert 60e6 < model.num_parameters() < 66e6


@pytest.mark.parametrize(
    "changes",
    [
        dict(n_heads=5),
        dict(pad_id=2),
        dict(eos_id=V),
        dict(dropout=1.5),
        dict(final_norm="x"),
        dict(activation="tanh"),
        dict(label_smoothing=-0.1),
        dict(label_smoothing=1.0),  # every target uniform: nothing to learn
    ],
)
def test_bad_config_is_a_config_error(changes):
    with pytest.raises(ConfigError):
        small(**changes)


def test_checkpoint_round_trip(tmp_path):
    from attnlab.data.translation import SPECIAL_TOKENS
    from attnlab.tokenizers import ByteTokenizer

    model = EncoderDecoder(small(vocab_size=259, pad_id=256, bos_id=257, eos_id=258)).eval()
    save_checkpoint(tmp_path, model, {"tokenizer": ByteTokenizer(SPECIAL_TOKENS)})
    loaded = load_checkpoint(tmp_path).model
    assert describe(loaded)["kind"] == "translation"
    assert isinstance(build_model("encoder_decoder", describe(model)["config"]), EncoderDecoder)
    src = torch.randint(0, 256, (2, 5))
    assert torch.equal(model(src, src)[0], loaded(src, src)[0])
