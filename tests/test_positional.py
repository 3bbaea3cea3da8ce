import math
from dataclasses import replace

import pytest
import torch
from helpers import one_line_error, run

from attnlab.layers import (
    ALiBi,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
)
from attnlab.layers.positional import alibi_slopes
from attnlab.models.gpt import GPT, GPTConfig


def test_sinusoidal_values_match_the_formula():
    d_model, table = 16, SinusoidalPositionalEncoding(50, 16)(50)
    for pos in (0, 1, 7, 49):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            assert math.isclose(table[pos, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[pos, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)


def test_sinusoids_built_in_float64_are_exact_in_float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        table = SinusoidalPositionalEncoding(50, 16)(50)
    finally:
        torch.set_default_dtype(before)
    assert table.dtype == torch.float64 and table[49, 0].item() == math.sin(49)
    expected = [
        [(math.cos if c % 2 else math.sin)(pos / 10000 ** (2 * (c // 2) / 16)) for c in range(16)]
        for pos in range(50)
    ]  # PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(...): section 3.5
    torch.testing.assert_close(
        table, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_sinusoidal_offset_continues_the_table():
    encoding = SinusoidalPositionalEncoding(20, 8)
    assert torch.equal(encoding(3, offset=5), encoding(20)[5:8])


@pytest.mark.parametrize("weight_init", ["gpt2", "fan_in"])
def test_a_gpts_sinusoids_start_at_its_embeddings_scale_and_learn_it(weight_init):
    config = GPTConfig(vocab_size=300, context_length=256, n_layers=1, n_heads=2, d_model=128)
    torch.manual_seed(0)
    tied = weight_init == "gpt2"  # fan_in embeddings are too large for an output head
    model = GPT(replace(config, positional="sinusoidal", weight_init=weight_init, tie_weights=tied))
    rms = model.position_embedding(256).pow(2).mean().sqrt().item()
    assert rms == pytest.approx(model.token_embedding.weight.std().item(), rel=0.02)
    _, loss = model(torch.randint(300, (2, 16)), torch.randint(300, (2, 16)))
    loss.backward()
    assert model.position_embedding.gain.grad.abs().item() > 0


def test_learned_embedding_rejects_positions_past_the_table():
    with pytest.raises(ValueError, match="context length"):
        LearnedPositionalEmbedding(8, 4)(5, offset=4)


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        rq, rk = rope.rotate(q, m), rope.rotate(k, n)
        return (rq * rk).sum().item()

    for m, n in [(3, 1), (10, 5), (40, 0)]:
        for shift in (1, 7, 100):
            assert math.isclose(
                score(m, n), score(m + shift, n + shift), rel_tol=1e-4, abs_tol=1e-4
            )
    assert not math.isclose(score(3, 1), score(9, 1), rel_tol=1e-3)


def test_rope_keeps_norms_and_leaves_position_zero_alone():
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 3, 5, 8)
    rotated = rope.rotate(x, 4)
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    at_zero = rope.rotate(x[:, :, :1], 0)
    assert torch.allclose(at_zero, x[:, :, :1])


@pytest.mark.parametrize("offset", [3, 1000, 30000])
def test_rope_rotates_channel_pairs_by_position_times_frequency(offset):
    """The written-out definition: channels (i, i + Dh/2) rotate by pos·base^(-2i/Dh), in
    float64 to float64's precision (its angles were float32's: off by 6e-4 at 30,000), and in
    float32 to float32's angles."""
    head_dim, base = 8, 10000.0
    x = torch.randn(1, 2, 6, head_dim, dtype=torch.float64)
    expected = torch.empty_like(x)
    for pos in range(6):
        for i in range(head_dim // 2):
            angle = (pos + offset) * base ** (-2 * i / head_dim)
            a, b = x[..., pos, i], x[..., pos, i + head_dim // 2]
            expected[..., pos, i] = a * math.cos(angle) - b * math.sin(angle)
            expected[..., pos, i + head_dim // 2] = b * math.cos(angle) + a * math.sin(angle)
    rope = RotaryEmbedding(head_dim, base)
    torch.testing.assert_close(rope.rotate(x, offset), expected, rtol=0, atol=1e-12)
    got = rope.rotate(x.float(), offset)  # float32 after float64: the tables follow the dtype
    tolerance = 1e-6 + offset * 3e-8  # float32 angles: an ulp of the angle
    torch.testing.assert_close(got, expected.float(), rtol=0, atol=tolerance)
    with torch.no_grad():  # the decoding path keeps the latest rows: same answer again
        assert torch.equal(rope.rotate(x.float(), offset), got)
        torch.testing.assert_close(rope.rotate(x, offset), expected, rtol=0, atol=1e-12)
    compiled = torch.tensor(offset)  # a static cache's offset: the angles computed per call
    torch.testing.assert_close(rope.rotate(x, compiled), expected, rtol=0, atol=1e-12)


def test_rope_position_interpolation_turns_position_m_as_m_over_scale():
    x = torch.randn(1, 2, 1, 8)
    slow = RotaryEmbedding(8, scale=4)
    for m in (0, 4, 12, 400):
        torch.testing.assert_close(slow.rotate(x, m), RotaryEmbedding(8).rotate(x, m // 4))
    assert not torch.allclose(slow.rotate(x, 2), RotaryEmbedding(8).rotate(x, 2))
    with pytest.raises(ValueError, match="scale must be positive"):
        RotaryEmbedding(8, scale=0)


def test_rope_angles_stay_float32_in_a_model_cast_to_bfloat16():
    """Its frequencies are no buffer for model.to(torch.bfloat16) to round: far positions would
    drift by whole radians."""
    x = torch.randn(1, 2, 4, 64)
    expected = RotaryEmbedding(64).rotate(x, 2000)
    torch.testing.assert_close(RotaryEmbedding(64).to(torch.bfloat16).rotate(x, 2000), expected)


def test_alibi_slopes_and_bias():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    assert len(alibi_slopes(6)) == 6 and torch.all(alibi_slopes(6) > 0)
    bias = ALiBi(2).bias(2, 4)  # the queries are the last two keys: positions 2, 3
    assert bias.shape == (2, 2, 4)
    assert torch.allclose(bias[0, 1], -torch.tensor([3.0, 2.0, 1.0, 0.0]) * 2**-4)


@pytest.mark.parametrize("flags", [[], ["--positional", "learned"], ["--mixer", "lstm"]])
def test_ropes_base_given_without_rope_is_one_line(flags, tmp_path, capsys):
    """A setting that would change nothing is refused, not ignored."""
    out = tmp_path / "run"
    flags = [*flags, "--positional", "none"] if "--mixer" in flags else flags
    code, _, err = run(["train", "gpt", *flags, "--rope-base", "500", "--out", str(out)], capsys)
    assert "--rope-base: a setting of positional 'rope', not of" in one_line_error(code, err)
    assert not out.exists()
