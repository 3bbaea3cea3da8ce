import pytest
import torch
from torch import nn

from attnlab.layers import (
    MultiHeadAttention,
    ResidualBlock,
    TokenEmbedding,
    make_feedforward,
    make_norm,
    padding_mask,
)
from attnlab.layers.attention import causal_mask
from attnlab.layers.normalization import RMSNorm


def test_layernorm_without_bias_has_no_bias():
    assert make_norm("layernorm", 8, bias=False).bias is None


def test_rmsnorm_formula():
    x = torch.randn(3, 8)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 8))
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)
    wide = x.double().requires_grad_()  # float64 stays float64: gradcheck holds
    assert torch.autograd.gradcheck(norm.double(), (wide,))


@pytest.mark.parametrize(
    "kind, bias", [("layernorm", True), ("layernorm", False), ("rmsnorm", False)]
)
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_norms_and_their_gradients_match_torchs_in_float64(kind, bias, eps):
    ours = make_norm(kind, 16, bias=bias, eps=eps).double()
    reference = (
        nn.LayerNorm(16, eps=eps, bias=bias) if kind == "layernorm" else nn.RMSNorm(16, eps=eps)
    ).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(0.5, 2.0)
        reference.load_state_dict(ours.state_dict())
    x = (torch.randn(3, 5, 16, dtype=torch.float64) * 0.1 + 0.05).requires_grad_()
    got, expected = ours(x), reference(x)  # small inputs: eps matters
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    grad = torch.randn_like(got)
    mine = torch.autograd.grad(got, (x, *ours.parameters()), grad)
    theirs = torch.autograd.grad(expected, (x, *reference.parameters()), grad)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_swiglu_is_gated():
    ff = make_feedforward("swiglu", 8, 16, bias=False)
    x = torch.randn(2, 8)
    expected = ff.down_projection(
        torch.nn.functional.silu(ff.gate_projection(x)) * ff.up_projection(x)
    )
    assert torch.allclose(ff(x), expected)
    assert ff.up_projection.bias is None


def test_relu_feedforward_is_the_paper_ffn():
    ff = make_feedforward("relu", 8, 32)
    x = torch.randn(4, 8)
    expected = ff.down_projection(torch.relu(ff.up_projection(x)))
    assert torch.allclose(ff(x), expected)


def copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    theirs.in_proj_weight.copy_(ours.qkv_projection.weight)
    theirs.in_proj_bias.copy_(ours.qkv_projection.bias)
    theirs.out_proj.load_state_dict(ours.output_projection.state_dict())


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")  # torch's note on norm_first
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("prenorm", [False, True])
@pytest.mark.parametrize("decoder", [False, True])
def test_blocks_match_torchs_encoder_and_decoder_layers_in_float64(decoder, prenorm, activation):
    """An encoder block (padded keys) and a decoder block (causal, cross attention to padded
    memory), post-norm as the paper's and pre-norm (norm_first), forward and gradients."""
    d_model, heads, d_ff = 12, 3, 20
    layer = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    options = dict(dropout=0.0, activation=activation, batch_first=True, norm_first=prenorm)
    reference = layer(d_model, heads, d_ff, **options).double()
    block = ResidualBlock(
        MultiHeadAttention(d_model, heads, causal=decoder),
        make_feedforward(activation, d_model, d_ff),
        lambda: nn.LayerNorm(d_model),
        cross_attention=MultiHeadAttention(d_model, heads, cross=True) if decoder else None,
        prenorm=prenorm,
    ).double()
    norms = [block.mixer_norm, block.cross_norm, block.feedforward_norm]
    with torch.no_grad():
        for p in block.parameters():  # norms' weights and biases away from 1 and 0 too
            p.normal_(0, 0.3)
        copy_attention(block.token_mixer, reference.self_attn)
        if decoder:
            copy_attention(block.cross_attention, reference.multihead_attn)
        for i, norm in enumerate(n for n in norms if n is not None):  # norm1, norm2 (, norm3)
            getattr(reference, f"norm{i + 1}").load_state_dict(norm.state_dict())
        reference.linear1.load_state_dict(block.feedforward.up_projection.state_dict())
        reference.linear2.load_state_dict(block.feedforward.down_projection.state_dict())
    x = torch.randn(3, 7, d_model, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(3, 9, d_model, dtype=torch.float64, requires_grad=True)
    tokens = torch.ones(3, 9 if decoder else 7, dtype=torch.long)
    tokens[1, -3:], tokens[2, -1:] = 0, 0
    if decoder:
        got = block(x, context=memory, context_mask=padding_mask(tokens, 0))
        expected = reference(
            x, memory, tgt_mask=~causal_mask(7, 7), tgt_is_causal=True,
            memory_key_padding_mask=tokens == 0,
        )  # fmt: skip
    else:
        got = block(x, mask=padding_mask(tokens, 0))
        expected = reference(x, src_key_padding_mask=tokens == 0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    grad, inputs = torch.randn_like(got), (x, memory) if decoder else (x,)
    theirs = torch.autograd.grad(expected, inputs, grad)
    for a, b in zip(torch.autograd.grad(got, inputs, grad), theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_pre_norm_block_is_residual():
    block = ResidualBlock(
        MultiHeadAttention(8, 2), make_feedforward("gelu", 8, 16), lambda: nn.LayerNorm(8)
    )
    for p in (
        block.token_mixer.output_projection.weight,
        block.token_mixer.output_projection.bias,
        block.feedforward.down_projection.weight,
        block.feedforward.down_projection.bias,
    ):
        nn.init.zeros_(p)
    x = torch.randn(2, 5, 8)
    assert torch.equal(block(x), x)  # zeroed branches leave the residual stream untouched


def test_token_embedding_compiled_sums_gradient_rows_like_nn_embedding():
    table, reference = TokenEmbedding(7, 5), nn.Embedding(7, 5)
    reference.weight = nn.Parameter(table.weight.detach().clone())
    ids = torch.randint(0, 7, (3, 9))  # repeated ids: their gradient rows add up
    grad = torch.randn(3, 9, 5)
    out = torch.compile(table, fullgraph=True)(ids)
    out.backward(grad)
    reference(ids).backward(grad)
    torch.testing.assert_close(out, reference(ids))
    torch.testing.assert_close(table.weight.grad, reference.weight.grad)


@pytest.mark.parametrize("kind", ["forward_hook", "forward_pre_hook"])
def test_a_global_module_hook_sees_every_hook_point(kind):
    """torch's register_module_forward_hook (a profiler's, a tracer's) sees every module's call;
    hook points skipped their call where no hook of their own was attached."""
    from helpers import tiny_gpt

    from attnlab.layers.hooks import hook_points

    model, seen = tiny_gpt(), []
    register = getattr(nn.modules.module, f"register_module_{kind}")
    handle = register(lambda m, *_: seen.append(m))
    try:
        with torch.no_grad():
            model(torch.randint(0, 11, (1, 8)))
    finally:
        handle.remove()
    points = hook_points(model).values()
    assert points and all(any(p is m for m in seen) for p in points)
