import pytest
import torch
from torch import nn

from attnlab.layers import (
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)
from attnlab.layers.attention import KVCache

TOL = 1e-5


def qkv(batch=2, heads=4, kv_heads=4, q_len=7, k_len=7, dim=8):
    return (
        torch.randn(batch, heads, q_len, dim),
        torch.randn(batch, kv_heads, k_len, dim),
        torch.randn(batch, kv_heads, k_len, dim),
    )


def both_paths(q, k, v, **kwargs):
    eager, weights = scaled_dot_product_attention(q, k, v, return_weights=True, **kwargs)
    fused = scaled_dot_product_attention(q, k, v, **kwargs)
    return eager, fused, weights


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_eager_equals_fused_without_mask(causal, kv_heads):
    eager, fused, weights = both_paths(*qkv(kv_heads=kv_heads), causal=causal)
    assert (eager - fused).abs().max() < TOL
    assert torch.allclose(weights.sum(-1), torch.ones(()))


def test_eager_is_the_equation():
    q, k, v = qkv()
    expected = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1) @ v
    eager, _ = scaled_dot_product_attention(q, k, v, return_weights=True)
    assert (eager - expected).abs().max() < TOL


def test_eager_equals_fused_with_masks():
    q, k, v = qkv(q_len=5, k_len=9)
    tokens = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    boolean = padding_mask(tokens, pad_id=0)
    additive = torch.randn(1, 4, 5, 9)
    for mask in (
        boolean,
        additive,
        boolean & (torch.rand(2, 4, 5, 9) > 0.3) | torch.eye(5, 9, dtype=torch.bool),
    ):
        eager, fused, weights = both_paths(q, k, v, mask=mask)
        assert (eager - fused).abs().max() < TOL
    eager, fused, weights = both_paths(q, k, v, mask=boolean, causal=True)
    assert (eager - fused).abs().max() < TOL
    assert weights[1, :, :, 6:].abs().max() == 0  # padded keys get no weight


@pytest.mark.parametrize(
    "q_len, kv_heads, masks",
    [
        (5, 4, {}),
        (5, 2, {"causal": True}),
        (9, 4, {"causal": True}),  # queries past the keys' start: the first see none
        (5, 1, {"mask": "padding"}),
        (5, 4, {"mask": "padding", "causal": True}),
        (5, 4, {"mask": "additive", "causal": True}),
        (1, 2, {"causal": True}),  # a decoding step
    ],
)
def test_eager_and_fused_paths_and_their_gradients_agree_in_float64(q_len, kv_heads, masks):
    q, k, v = (t.double().requires_grad_() for t in qkv(kv_heads=kv_heads, q_len=q_len, k_len=7))
    kinds = {
        "padding": padding_mask(torch.tensor([[1] * 7, [1] * 4 + [0] * 3]), pad_id=0),
        "additive": torch.randn(1, 4, q_len, 7, dtype=torch.float64),
    }
    masks = {name: kinds.get(value, value) for name, value in masks.items()}
    eager, _ = scaled_dot_product_attention(q, k, v, return_weights=True, **masks)
    fused = scaled_dot_product_attention(q, k, v, **masks)
    torch.testing.assert_close(eager, fused, rtol=0, atol=1e-12)
    grad = torch.randn_like(eager)
    for a, b in zip(
        torch.autograd.grad(eager, (q, k, v), grad),
        torch.autograd.grad(fused, (q, k, v), grad),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _unseeing(case):
    """Inputs with rows that may see no key, and those rows' (batch, query) indices."""
    q, k, v = qkv(q_len=4, k_len=4)
    padding = padding_mask(torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]]), pad_id=0)
    if case == "padding":  # a row of padding only
        return (q, k, v), {"mask": padding}, [(1, i) for i in range(4)]
    if case == "left padding, causal":  # the first queries see only padding
        return (q, k, v), {"mask": padding, "causal": True}, [(0, 0), (0, 1), (1, 0)]
    if case == "additive":
        additive = torch.zeros(2, 1, 4, 4).masked_fill(~padding, float("-inf"))
        return (q, k, v), {"mask": additive}, [(1, i) for i in range(4)]
    q, k, v = qkv(q_len=4, k_len=2)  # more queries than keys: the first two see none
    return (q, k, v), {"causal": True}, [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.mark.parametrize("case", ["padding", "left padding, causal", "additive", "causal"])
def test_a_query_that_may_see_no_key_gives_zeros_on_every_path_and_finite_gradients(case):
    """torch's fused kernel gives such a query 0; the equation gave NaN (softmax over no key),
    in capture's outputs and, in training with dropout on a CPU, in every gradient."""
    (q, k, v), masks, blind = _unseeing(case)
    eager, fused, weights = both_paths(q, k, v, **masks)
    assert (eager - fused).abs().max() < TOL
    assert all(not eager[b, :, i].any() and not weights[b, :, i].any() for b, i in blind)
    q.requires_grad_(True)
    scaled_dot_product_attention(q, k, v, dropout_p=0.1, **masks).sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("fill", [float("-inf"), torch.finfo(torch.float16).min])
def test_an_fp16_row_that_sees_no_key_stays_finite_with_low_scores(fill):
    """Scores below -16 plus fp16's lowest number overflowed to -inf: NaN on such rows."""
    k = torch.ones(1, 1, 3, 4, dtype=torch.float16) * 4
    q, v = (-k).requires_grad_(), torch.randn(1, 1, 3, 4).half()  # every score -32
    mask = torch.zeros(3, 3, dtype=torch.float16)
    mask[1] = fill  # the second query sees no key
    out, weights = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    out.float().sum().backward()
    assert not out[0, 0, 1].any() and not weights[0, 0, 1].any()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_additive_mask_and_the_causal_mask_stay_in_that_precision(dtype):
    """ALiBi's bias, say: merged with the causal mask, the eager path keeps the model's dtype."""
    q, k, v = (t.to(dtype) for t in qkv(q_len=5, k_len=5))
    bias = torch.randn(1, 4, 5, 5).to(dtype)
    eager, fused, weights = both_paths(q, k, v, mask=bias, causal=True)
    assert eager.dtype == weights.dtype == dtype
    assert (eager.float() - fused.float()).abs().max() < 0.05


def test_causal_with_fewer_queries_aligns_to_the_last_keys():
    q, k, v = qkv(q_len=3, k_len=8)
    eager, fused, weights = both_paths(q, k, v, causal=True)
    assert (eager - fused).abs().max() < TOL
    assert torch.equal(weights[0, 0] > 0, causal_mask(3, 8))
    assert causal_mask(3, 8)[0].tolist() == [True] * 6 + [False] * 2


def copy_to_torch_mha(
    ours: MultiHeadAttention, d_model: int, n_heads: int
) -> nn.MultiheadAttention:
    reference = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(ours.qkv_projection.weight)
        reference.in_proj_bias.copy_(ours.qkv_projection.bias)
        reference.out_proj.weight.copy_(ours.output_projection.weight)
        reference.out_proj.bias.copy_(ours.output_projection.bias)
    return reference.eval()


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kind", ["self", "causal", "cross"])
@pytest.mark.parametrize("backend", ["fused", "eager"])
def test_attention_and_its_gradients_match_torch_multihead_attention_in_float64(
    backend, kind, padded
):
    ours = MultiHeadAttention(32, 4, causal=kind == "causal", cross=kind == "cross").double()
    ours.backend = backend
    reference = copy_to_torch_mha(ours, 32, 4).double()
    x = torch.randn(3, 10, 32, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(3, 11, 32, dtype=torch.float64, requires_grad=True)
    keys = memory if kind == "cross" else x
    tokens = torch.ones(3, keys.size(1), dtype=torch.long)
    if padded:
        # row 2 sees no key: its attention gives 0 (then the output bias), as torch's does
        # but for its no-grad inference fast path, which gives NaN (docs/reference.md)
        tokens[1, 7:], tokens[2] = 0, 0
    expected, _ = reference(
        x, keys, keys, need_weights=False,
        attn_mask=~causal_mask(10, 10) if kind == "causal" else None,
        key_padding_mask=tokens == 0 if padded else None,
    )  # fmt: skip
    got = ours(
        x, context=memory if kind == "cross" else None,
        mask=padding_mask(tokens, 0) if padded else None,
    )  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    grad, inputs = torch.randn_like(got), (x, memory)
    ours_grads = torch.autograd.grad(got, (*inputs, *ours.parameters()), grad, allow_unused=True)
    theirs = torch.autograd.grad(
        expected, (*inputs, *reference.parameters()), grad, allow_unused=True
    )
    for mine, their in zip(ours_grads, theirs, strict=True):  # same parameter order
        assert (mine is None) == (their is None)
        if mine is not None:
            torch.testing.assert_close(mine, their, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_kv_cache_decoding_equals_full_pass(kv_heads):
    attention = MultiHeadAttention(32, 4, kv_heads, causal=True).eval()
    x = torch.randn(2, 9, 32)
    full = attention(x)
    cache = KVCache(max_length=4)  # smaller than needed: exercises buffer growth
    steps = [attention(x[:, :5], cache=cache)] + [
        attention(x[:, t : t + 1], cache=cache) for t in range(5, 9)
    ]
    assert (torch.cat(steps, dim=1) - full).abs().max() < TOL
    assert cache.length == 9


def test_sliding_cache_keeps_the_last_positions_in_order():
    cache = KVCache(max_length=3, sliding=True)
    cache.append(torch.zeros(1, 1, 2, 1), torch.zeros(1, 1, 2, 1))  # positions 0 and 1
    for p in range(2, 12):  # then one at a time, moving the window back within the buffer
        one = torch.full((1, 1, 1, 1), float(p))
        keys, values = cache.append(one, -one)
    assert keys.flatten().tolist() == [9.0, 10.0, 11.0]
    assert values.flatten().tolist() == [-9.0, -10.0, -11.0]
    assert (cache.length, cache.position) == (3, 12)
    assert cache.keys.size(2) == 6  # fixed buffers of 2 * max_length
    with pytest.raises(ValueError, match="one position at a time"):
        cache.append(torch.zeros(1, 1, 2, 1), torch.zeros(1, 1, 2, 1))


def test_sliding_attention_cache_equals_a_band_mask():
    """One token at a time through a sliding cache of 4 == full attention where each query sees
    itself and the 3 keys before it."""
    attention = MultiHeadAttention(16, 2, causal=True).eval()
    x = torch.randn(1, 10, 16)
    i = torch.arange(10)
    band = (i[:, None] - i[None, :]) < 4
    cache = attention.new_cache(4, sliding=True)
    steps = [attention(x[:, :3], cache=cache)]
    steps += [attention(x[:, t : t + 1], cache=cache) for t in range(3, 10)]
    assert (torch.cat(steps, dim=1) - attention(x, mask=band)).abs().max() < TOL


def test_cross_attention_cache_projects_context_once():
    attention = MultiHeadAttention(16, 2, cross=True).eval()
    memory = torch.randn(1, 6, 16)
    cache = attention.new_cache()
    first = attention(torch.randn(1, 1, 16), context=memory, cache=cache)
    assert cache.length == 6 and first.shape == (1, 1, 16)
    x = torch.randn(1, 1, 16)
    assert torch.allclose(attention(x, context=None, cache=cache), attention(x, context=memory))


def test_hook_point_captures_the_weights_used():
    attention = MultiHeadAttention(16, 2, causal=True).eval()
    captured = []
    handle = attention.attention_weights.register_forward_hook(lambda m, i, o: captured.append(o))
    x = torch.randn(1, 5, 16)
    out = attention(x)
    handle.remove()
    assert captured[0].shape == (1, 2, 5, 5)
    assert torch.all(captured[0].triu(1) == 0)
    assert (out - attention(x)).abs().max() < TOL  # fused path without the hook: same output


def test_bad_head_counts_are_rejected():
    with pytest.raises(ValueError):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError):
        MultiHeadAttention(32, 4, 3)
    with pytest.raises(ValueError, match="bad heads"):
        MultiHeadAttention(32, 0)  # not a division by zero
    with pytest.raises(ValueError, match="backend must be one of fused, eager, got 'flash'"):
        MultiHeadAttention(32, 4, backend="flash")  # was the fused path, without a word
    for eager in (False, True):  # 2 heads of each of 3 key/value heads: none, so zeros came out
        with pytest.raises(ValueError, match="3 key/value heads must divide the 4 query heads"):
            scaled_dot_product_attention(*qkv(kv_heads=3), return_weights=eager)
