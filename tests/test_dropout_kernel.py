"""attnlab's dropout kernel (attnlab/kernels/dropout.cpp): what it keeps, how its masks are
distributed, its gradient, and where layers take it."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.kernels import cpu as kernel
from attnlab.layers import causal_mask, scaled_dot_product_attention
from attnlab.layers.dropout import dropout
from attnlab.models import GPT, GPTConfig


@pytest.fixture(scope="module", autouse=True)
def _enabled():
    assert kernel.load(), "the CPU kernels did not build"
    with kernel.enabled():
        yield


def kept(y: torch.Tensor) -> torch.Tensor:
    return (y != 0).flatten().double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keeps_each_element_with_probability_1_minus_p_divided_by_it(dtype, p):
    x = (torch.rand(300, 1001) + 0.5).to(dtype)  # no zeros of its own; numel not a block multiple
    y = kernel.dropout(x, p)
    assert y.dtype == dtype and y.shape == x.shape
    keep = kept(y)
    n = keep.numel()
    assert abs(keep.mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    scale = torch.tensor(1.0) / (1 - p)  # in float32, as torch's dropout scales its mask
    scaled = (x.float() * scale).to(dtype)  # bfloat16: rounded once, from the float32 product
    assert torch.equal(y[y != 0], scaled[y != 0])


def test_masks_are_independent_between_neighbours_rows_and_calls():
    x = torch.ones(512, 1024)
    a, b = kept(kernel.dropout(x, 0.5)), kept(kernel.dropout(x, 0.5))
    bound = 5 / math.sqrt(a.numel())  # five standard errors of a correlation of independent bits

    def correlation(u, v):
        return torch.corrcoef(torch.stack([u, v]))[0, 1].item()

    assert abs(correlation(a[:-1], a[1:])) < bound  # neighbours
    assert abs(correlation(a[:-1024], a[1024:])) < bound  # the same column in the next row
    assert abs(correlation(a[:-256], a[256:])) < bound  # the kernel's block length apart
    assert abs(correlation(a, b)) < bound  # two calls
    # the four patterns of two neighbours, each a quarter (chi-square, 3 degrees of freedom)
    pairs = (2 * a[0::2] + a[1::2]).long().bincount(minlength=4).double()
    expected = pairs.sum() / 4
    assert ((pairs - expected) ** 2 / expected).sum().item() < 16.3  # p = 0.001


def test_the_gradient_drops_what_the_forward_pass_dropped():
    x = (torch.rand(64, 33) + 0.5).t().requires_grad_()  # neither contiguous
    weights = torch.randn(66, 64)[::2]
    y = kernel.dropout(x, 0.25)
    (y * weights).sum().backward()
    scale = torch.tensor(1.0) / 0.75
    torch.testing.assert_close(x.grad, weights * (y != 0) * scale, rtol=0, atol=0)


def test_a_seed_repeats_a_mask_under_any_thread_count():
    x = torch.randn(40, 5000)
    threads = torch.get_num_threads()
    masks = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            torch.manual_seed(3)
            masks.append(kernel.dropout(x, 0.3))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[1], masks[2])
    assert not torch.equal(masks[0], kernel.dropout(x, 0.3))  # a new call, a new mask


def test_the_ops_registrations_agree_with_the_kernel():
    x = torch.randn(7, 9, requires_grad=True)
    seed = torch.tensor(12345)
    torch.library.opcheck(torch.ops.attnlab.dropout.default, (x, 0.2, seed))


def test_compiles_into_one_graph_with_a_consistent_gradient():
    step = torch.compile(lambda x: kernel.dropout(x, 0.2).sum() * 3, fullgraph=True)
    x = torch.ones(50, 200, requires_grad=True)
    step(x).backward()
    keep = x.grad != 0
    assert abs(keep.double().mean().item() - 0.8) < 0.03
    torch.testing.assert_close(x.grad[keep], torch.full_like(x.grad[keep], 3 / 0.8))


def test_layers_take_the_kernel_only_in_training_where_it_is_enabled(monkeypatch):
    calls = []
    original = kernel.dropout
    monkeypatch.setattr(kernel, "dropout", lambda *a: calls.append(1) or original(*a))
    x = torch.randn(4, 8, requires_grad=True)
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    dropout(x, 0.1)
    assert len(calls) == 1
    with kernel.enabled(False):
        torch.manual_seed(0)
        ours = dropout(x, 0.1)
    torch.manual_seed(0)
    assert torch.equal(ours, F.dropout(x, 0.1)) and len(calls) == 1  # torch's, when disabled
    config = GPTConfig(
        vocab_size=11, context_length=8, d_model=16, n_heads=2, n_layers=2, dropout=0.5
    )
    idx = torch.randint(11, (2, 8))
    GPT(config)(idx, idx)[1].backward()
    # the embeddings, then in each block the attention weights and both sub-layers' outputs
    assert len(calls) == 1 + 1 + 3 * config.n_layers  # after the one call above


def test_attention_with_dropout_is_the_equation_with_the_kernels_mask():
    q, k, v = (torch.randn(2, 3, 10, 8, requires_grad=True) for _ in range(3))
    torch.manual_seed(5)
    out = scaled_dot_product_attention(q, k, v, causal=True, dropout_p=0.3)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~causal_mask(10, 10), -math.inf)
    torch.manual_seed(5)
    expected = kernel.dropout(torch.softmax(scores, dim=-1), 0.3) @ v
    torch.testing.assert_close(out, expected)
    with kernel.enabled(False):  # torch's fused attention, which computes the same function
        torch.manual_seed(5)
        theirs = scaled_dot_product_attention(q, k, v, causal=True, dropout_p=0.3)
    assert not torch.allclose(out, theirs)  # a mask of its own


def test_attention_with_dropout_gives_a_query_that_sees_no_key_zeros_and_finite_gradients():
    """The equation's path (the kernel's mask): such a row's softmax is uniform over its
    masked keys, so the output is multiplied by whether the query sees any key, as torch's
    fused kernel does."""
    q, k, v = (torch.randn(2, 3, 4, 8, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[False, False, True, True], [False] * 4])[:, None, None, :]
    out = scaled_dot_product_attention(q, k, v, mask=mask, causal=True, dropout_p=0.1)
    blind = [(0, 0), (0, 1), *((1, i) for i in range(4))]  # left padding, and padding only
    assert all(not out[b, :, i].any() for b, i in blind)
    assert out[0, :, 2:].abs().sum() > 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
