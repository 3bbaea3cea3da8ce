"""Layers against implementations nobody here wrote: RoPE, RMSNorm and SwiGLU against
`transformers`' Llama modules, grouped-query attention against torch's own SDPA, ALiBi against
`transformers`' BLOOM (which follows the paper authors' code). tests/test_interop_llama.py checks
the same pieces together, as a whole Llama model."""

import math

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.models.bloom.modeling_bloom import build_alibi_tensor  # noqa: E402
from transformers.models.llama import modeling_llama as llama  # noqa: E402

from attnlab.layers import ALiBi, MultiHeadAttention, RotaryEmbedding, make_feedforward  # noqa: E402
from attnlab.layers.attention import causal_mask, scaled_dot_product_attention  # noqa: E402
from attnlab.layers.normalization import RMSNorm  # noqa: E402


@pytest.mark.parametrize("offset", [5, 1000, 4000])
@pytest.mark.parametrize("base, head_dim", [(10000.0, 16), (500.0, 8), (1e6, 32)])
def test_rope_rotates_as_llama(base, head_dim, offset):
    """In float32 against Llama's rotary module, whose float32 angles differ from ours by an
    ulp (so the tolerance grows with the position); in float64 against Llama's
    apply_rotary_pos_emb given float64 angles from Llama's formula, to float64's precision."""
    heads, length = 3, 11
    config = LlamaConfig(hidden_size=heads * head_dim, num_attention_heads=heads, rope_theta=base)
    reference = llama.LlamaRotaryEmbedding(config)
    q, k = torch.randn(2, heads, length, head_dim), torch.randn(2, heads, length, head_dim)
    positions = torch.arange(offset, offset + length)[None]
    cos, sin = reference(q, positions)
    expected_q, expected_k = llama.apply_rotary_pos_emb(q, k, cos, sin)
    rope, tolerance = RotaryEmbedding(head_dim, base), 1e-5 + offset * 1.2e-7  # 2 ulps
    torch.testing.assert_close(rope.rotate(q, offset), expected_q, rtol=0, atol=tolerance)
    torch.testing.assert_close(rope.rotate(k, offset), expected_k, rtol=0, atol=tolerance)
    with torch.no_grad():  # the decoding path (tables kept between calls) agrees as well
        torch.testing.assert_close(rope.rotate(q, offset), expected_q, rtol=0, atol=tolerance)
    inverse_frequency = 1.0 / base ** (torch.arange(0, head_dim, 2).double() / head_dim)
    angles = positions[0, :, None].double() * inverse_frequency  # (T, Dh/2)
    angles = torch.cat([angles, angles], -1)[None]  # (1, T, Dh), as Llama's
    q, k = q.double(), k.double()
    expected_q, expected_k = llama.apply_rotary_pos_emb(q, k, angles.cos(), angles.sin())
    torch.testing.assert_close(rope.rotate(q, offset), expected_q, rtol=0, atol=1e-12)
    torch.testing.assert_close(rope.rotate(k, offset), expected_k, rtol=0, atol=1e-12)


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_rmsnorm_matches_llama_and_torch(eps):
    ours, theirs = RMSNorm(24, eps=eps), llama.LlamaRMSNorm(24, eps=eps)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 7, 24) * 0.1  # small, so that eps matters
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        ours(x), F.rms_norm(x, (24,), ours.weight, eps=eps), rtol=0, atol=1e-6
    )


def test_swiglu_matches_llamas_mlp():
    config = LlamaConfig(
        hidden_size=16, intermediate_size=40, num_attention_heads=2, hidden_act="silu"
    )
    theirs = llama.LlamaMLP(config)
    ours = make_feedforward("swiglu", 16, 40, bias=False)
    with torch.no_grad():
        for name in ("gate", "up", "down"):
            getattr(ours, f"{name}_projection").weight.copy_(getattr(theirs, f"{name}_proj").weight)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kv_heads", [1, 2, 6])
@pytest.mark.parametrize("return_weights", [False, True])
def test_grouped_query_attention_matches_torchs(kv_heads, return_weights):
    """Query head h reads key/value head h // (H / Hkv), as torch's enable_gqa does."""
    q = torch.randn(2, 6, 9, 8)
    k, v = torch.randn(2, kv_heads, 9, 8), torch.randn(2, kv_heads, 9, 8)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    got = scaled_dot_product_attention(q, k, v, causal=True, return_weights=return_weights)
    got = got[0] if return_weights else got
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_grouped_query_layer_equals_multi_head_attention_with_repeated_heads():
    """A layer with 2 key/value heads computes what a multi-head layer computes when its key
    and value heads repeat those two, each for 3 query heads (the definition, Ainslie et al.
    2023), written here with torch.nn.MultiheadAttention."""
    d_model, heads, kv_heads, head_dim = 24, 6, 2, 4
    ours = MultiHeadAttention(d_model, heads, kv_heads, causal=True, bias=False)
    weight = ours.qkv_projection.weight.detach()
    q_rows, k_rows, v_rows = weight.split([heads * head_dim, *[kv_heads * head_dim] * 2])

    def repeat(rows):  # (Hkv·Dh, D) -> (H·Dh, D), each head's rows for H / Hkv query heads
        return rows.view(kv_heads, head_dim, d_model).repeat_interleave(heads // kv_heads, 0)

    reference = torch.nn.MultiheadAttention(d_model, heads, bias=False, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(
            torch.cat([q_rows, repeat(k_rows).flatten(0, 1), repeat(v_rows).flatten(0, 1)])
        )
        reference.out_proj.weight.copy_(ours.output_projection.weight)
    x = torch.randn(2, 10, d_model)
    expected, _ = reference(x, x, x, attn_mask=~causal_mask(10, 10), need_weights=False)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 6, 8, 12, 16, 20, 24])
def test_alibi_matches_bloom(heads):
    """BLOOM adds slope_h · j to the score of key j (any query); ALiBi's -slope_h · (i - j)
    differs from that by -slope_h · i, the same for every key of query i, which softmax
    ignores. So the slopes agree, and so do the attention weights."""
    length = 9
    bloom = build_alibi_tensor(torch.ones(1, length), heads, torch.float32).view(heads, length)
    ours = ALiBi(heads)
    torch.testing.assert_close(ours.slopes, bloom[:, 1], rtol=1e-6, atol=0)
    scores = torch.randn(heads, length, length)
    allowed = causal_mask(length, length)
    ours_weights = torch.softmax(
        (scores + ours.bias(length, length)).masked_fill(~allowed, -math.inf), -1
    )
    bloom_weights = torch.softmax((scores + bloom[:, None, :]).masked_fill(~allowed, -math.inf), -1)
    torch.testing.assert_close(ours_weights, bloom_weights, rtol=0, atol=1e-6)


def test_alibi_is_the_papers_formula():
    """Press et al. 2022, section 3: for 8 heads the slopes are 1/2, 1/4, ..., 1/256, and query
    i adds -m·(i - j) to its score for key j <= i."""
    bias = ALiBi(8).bias(5, 5)
    for h in range(8):
        m = 2.0 ** -(h + 1)
        for i in range(5):
            for j in range(i + 1):
                assert bias[h, i, j].item() == pytest.approx(-m * (i - j), abs=1e-7)
