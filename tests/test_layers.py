import pytest
import torch
from torch import nn

from attnlab.layers import (
    MultiHeadAttention,
    ResidualBlock,
    TokenEmbedding,
    make_feedforward,
    make_norm,
)
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


def test_post_norm_block_matches_torch_encoder_layer():
    d_model, heads = 16, 4
    reference = nn.TransformerEncoderLayer(d_model, heads, 32, dropout=0.0, batch_first=True).eval()
    attention = MultiHeadAttention(d_model, heads)
    block = ResidualBlock(
        attention,
        make_feedforward("relu", d_model, 32),
        lambda: nn.LayerNorm(d_model),
        prenorm=False,
    ).eval()
    with torch.no_grad():
        attention.qkv_projection.weight.copy_(reference.self_attn.in_proj_weight)
        attention.qkv_projection.bias.copy_(reference.self_attn.in_proj_bias)
        attention.output_projection.load_state_dict(reference.self_attn.out_proj.state_dict())
        block.feedforward.up_projection.load_state_dict(reference.linear1.state_dict())
        block.feedforward.down_projection.load_state_dict(reference.linear2.state_dict())
        block.mixer_norm.load_state_dict(reference.norm1.state_dict())
        block.feedforward_norm.load_state_dict(reference.norm2.state_dict())
    x = torch.randn(2, 6, d_model)
    assert (block(x) - reference(x)).abs().max() < 1e-5


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
