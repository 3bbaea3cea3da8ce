"""Sampling filters, the decoding loop (KV cache vs recompute, sliding window, batching, seeds,
streaming) and stop strings."""

import pytest
import torch
from helpers import step_logits, tiny_gpt
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.errors import UserError
from attnlab.generation import (
    SamplingConfig,
    StopScanner,
    apply_temperature,
    generate,
    generate_text,
    repetition_penalty,
    sample_next,
    stream,
    stream_batch,
    stream_text,
    top_k_filter,
    top_p_filter,
)
from attnlab.layers import StaticKVCache
from attnlab.tokenizers import ByteTokenizer, CharTokenizer

INF = float("inf")


# --- filters ---------------------------------------------------------------------------------


def test_temperature_scales_logits():
    logits = torch.tensor([[1.0, -2.0, 4.0]])
    # (logits - their largest) / temperature: the softmax of logits / temperature
    assert torch.equal(apply_temperature(logits, 0.5), torch.tensor([[-6.0, -12.0, 0.0]]))
    assert torch.equal(apply_temperature(logits, 2.0), torch.tensor([[-1.5, -3.0, 0.0]]))
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


def test_an_extreme_temperature_or_penalty_is_greedy_not_nan():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 2.0]])
    generator = torch.Generator().manual_seed(0)
    for temperature in (1e-30, 1e-45, 1e-300):  # logits / temperature alone overflow
        assert sample_next(logits, temperature=temperature, generator=generator).tolist() == [1, 0]
    penalised = repetition_penalty(logits, torch.tensor([[2], [2]]), 1e-300)
    assert not penalised.isnan().any() and penalised.isfinite().all()
    assert sample_next(penalised, generator=generator).tolist() == [2, 2]


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    out = top_k_filter(logits, 2)
    assert torch.equal(out, torch.tensor([[-INF, 3.0, -INF, 2.0, -INF]]))
    assert torch.equal(top_k_filter(logits, 10), logits)
    assert torch.equal(logits, torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]]))  # input untouched


def test_top_k_keeps_exactly_k_even_with_ties():
    out = top_k_filter(torch.zeros(3, 7), 4)
    assert (out.isfinite().sum(-1) == 4).all()


def test_top_p_keeps_the_nucleus():
    # probabilities 0.5, 0.3, 0.15, 0.05 (in a shuffled order)
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    logits = probs.log()
    kept = lambda p: top_p_filter(logits, p).isfinite()[0].tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]  # the top token alone reaches 0.5
    assert kept(0.6) == [False, True, False, True]  # 0.5 + 0.3 >= 0.6
    assert kept(0.8) == [False, True, False, True]
    assert kept(0.81) == [True, True, False, True]
    assert kept(0.01) == [False, True, False, False]  # always at least one token
    assert kept(1.0) == [True, True, True, True]
    kept_values = top_p_filter(logits, 0.6)
    assert torch.equal(kept_values[0, [1, 3]], logits[0, [1, 3]])  # survivors unchanged
    tied = torch.full((1, 40), 0.02).index_fill(1, torch.tensor([20]), 0.22).log()
    assert top_p_filter(tied, 0.25).isfinite().nonzero()[:, 1].tolist() == [0, 1, 20]  # lowest


def test_repetition_penalty_known_values():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    previous = torch.tensor([[0, 1, 1]])  # repeated ids are penalised once
    out = repetition_penalty(logits, previous, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -4.0, 1.0, -1.0]]))
    assert torch.equal(repetition_penalty(logits, previous, 1.0), logits)
    mask = torch.tensor([[True, True, False, False]])  # the same tokens as a (B, V) mask
    assert torch.equal(repetition_penalty(logits, mask, 2.0), out)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-20, 20), min_size=2, max_size=30),
    k=st.integers(1, 40),
    p=st.floats(0.01, 1.0),
)
def test_filter_properties(values, k, p):
    logits = torch.tensor([values])
    by_k = top_k_filter(logits, k)
    assert int(by_k.isfinite().sum()) == min(k, len(values))
    top = logits.max()
    assert logits[by_k.isfinite()].max() == top
    by_p = top_p_filter(logits, p)
    kept = by_p.isfinite()[0]
    probs = torch.softmax(logits.double(), -1)[0]
    assert logits[0][kept].max() == top
    assert float(probs[kept].sum()) >= p - 1e-6
    # minimal: every kept token is at least as likely as every dropped one
    if (~kept).any():
        assert float(probs[kept].min()) >= float(probs[~kept].max())


def test_sample_next_greedy_and_filters():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 2.0]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # top_k=1 leaves only the argmax to draw
        assert sample_next(logits, top_k=1, generator=generator).tolist() == [1, 0]
    # temperature comes before top-p: at 0.5, probabilities 0.5, 0.3, 0.2 sharpen to 0.66, 0.24,
    # 0.11, whose nucleus of 0.6 is the top token alone (untempered, it holds the second too)
    nucleus, favour_second = torch.tensor([[0.5, 0.3, 0.2]]).log(), torch.tensor([[1e3, 1e-3, 1e3]])
    assert sample_next(nucleus, temperature=0.5, top_p=0.6, noise=favour_second).tolist() == [0]
    assert sample_next(nucleus, top_p=0.6, noise=favour_second).tolist() == [1]


def test_sampling_config_applies_its_repetition_penalty_and_vocab_limit():
    logits = torch.tensor([[2.0, 1.5, 1.0, 9.0]])  # id 3 lies past the vocabulary limit
    config = SamplingConfig(temperature=0, repetition_penalty=2.0, vocab_limit=3)
    assert config.choose(logits).tolist() == [0]
    assert config.choose(logits, seen=torch.tensor([[0, 0]])).tolist() == [1]  # 2 / 2 < 1.5


def test_sampling_follows_the_softmax_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]))
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, generator=generator) for _ in range(20000)])
    frequencies = torch.bincount(draws.flatten(), minlength=5) / draws.numel()
    torch.testing.assert_close(
        frequencies, torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0]), atol=0.012, rtol=0
    )
    hot = sample_next(logits.expand(3, 5), temperature=0.1, generator=generator)
    assert hot.shape == (3,) and set(hot.tolist()) <= {0, 1}


def test_sampling_config_rejects_bad_values():
    with pytest.raises(UserError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(UserError, match="top_p"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(UserError, match="top_k"):
        SamplingConfig(top_k=0)


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "positional, crop_to", [("learned", None), ("learned", 9), ("rope", 9), ("alibi", 9)]
)
def test_cache_equals_recompute_across_the_window(positional, crop_to):
    model = tiny_gpt(positional, context_length=16)
    prompt = [1, 2, 3, 4, 5]
    # 30 steps: the sequence passes the 16-token context, so the window slides several times
    cached_ids, cached = step_logits(model, prompt, 30, use_cache=True, crop_to=crop_to)
    full_ids, full = step_logits(model, prompt, 30, use_cache=False, crop_to=crop_to)
    assert cached_ids == full_ids
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    assert generate(model, [prompt], 30, temperature=0, crop_to=crop_to) == [cached_ids]


def band_logits(model, tokens, window):
    """Reference for a sliding cache: the whole sequence in one pass, each position attending
    to itself and the window - 1 positions before it in every layer. (B, N, V)."""
    i = torch.arange(tokens.size(1))
    band = (i[:, None] - i[None, :]) < window  # the blocks' attention adds causality
    x = model.token_embedding(tokens)
    for block in model.blocks:
        x = block(x, mask=band)
    return model.output_head(model.final_norm(x))


@pytest.mark.parametrize("positional", ["rope", "alibi", "none"])
def test_sliding_cache_equals_sliding_window_attention(positional):
    model = tiny_gpt(positional, context_length=16)
    assert model.sliding_cache
    prompt = [1, 2, 3, 4, 5]
    ids, cached = step_logits(model, prompt, 40, use_cache=True)  # 45 positions, context 16
    with torch.no_grad():
        reference = band_logits(model, torch.tensor([prompt + ids]), 16)[0]
    torch.testing.assert_close(cached, reference[len(prompt) - 1 : -1], atol=1e-5, rtol=1e-5)
    assert generate(model, [prompt], 40, temperature=0) == [ids]


@pytest.mark.parametrize(
    "positional, steps",
    [("rope", 40), ("alibi", 40), ("none", 40), ("learned", 10), ("sinusoidal", 10)],
)
def test_static_cache_equals_the_dynamic_cache(positional, steps):
    """The ring of a static cache holds the sliding window's keys out of order; positions are
    tensors. Past the context for relative positions, up to it for absolute ones."""
    model = tiny_gpt(positional, context_length=16)
    tokens = torch.randint(0, 11, (2, 5 + steps))
    logits = []
    with torch.no_grad():
        for static in (False, True):
            cache = model.new_cache(static=static)
            first, _ = model(tokens[:, :5], cache=cache)  # the prompt, then one token a step
            rest = [model(tokens[:, t : t + 1], cache=cache)[0] for t in range(5, 5 + steps)]
            logits.append(torch.cat([first, *rest], dim=1))
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)


def test_static_cache_refuses_what_it_cannot_hold():
    cache = StaticKVCache(4)
    cache.append(torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 8))
    with pytest.raises(ValueError, match="only while it is empty"):
        cache.append(torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 8))
    with pytest.raises(ValueError, match="overflows"):
        StaticKVCache(4).append(torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 5, 8))


def test_sliding_cache_prefills_the_last_window_of_a_long_prompt():
    model = tiny_gpt("rope", context_length=8)
    prompt = list(range(11)) + list(range(9))  # 20 tokens
    # the first step sees exactly the last 8 prompt tokens, as re-running the window would
    first, _ = step_logits(model, prompt, 1, use_cache=True)
    assert first == step_logits(model, prompt, 1, use_cache=False)[0]
    assert len(generate(model, [prompt], 12, temperature=0)[0]) == 12


def test_default_window_matches_a_naive_sampler():
    """With crop_to unset, every step sees exactly the last context_length tokens."""
    model = tiny_gpt(context_length=8)
    tokens = [3, 1, 4]
    with torch.no_grad():
        for _ in range(20):
            logits, _ = model(torch.tensor([tokens[-8:]]))
            tokens.append(int(logits[0, -1].argmax()))
    assert generate(model, [[3, 1, 4]], 20, temperature=0) == [tokens[3:]]


def test_the_repetition_penalty_reads_the_prompt_and_every_token_made():
    model, tokens = tiny_gpt(context_length=8), [3, 1, 4]
    with torch.no_grad():
        for _ in range(12):
            logits = model(torch.tensor([tokens[-8:]]))[0][:, -1]
            tokens.append(int(repetition_penalty(logits, torch.tensor([tokens]), 5.0).argmax()))
    assert generate(model, [[3, 1, 4]], 12, temperature=0, repetition_penalty=5.0) == [tokens[3:]]
    assert generate(model, [[3, 1, 4]], 12, temperature=0) != [tokens[3:]]


def test_prompt_longer_than_the_context():
    model = tiny_gpt(context_length=8)
    prompt = list(range(11)) + list(range(9))
    cached = generate(model, [prompt], 5, temperature=0)
    assert cached == generate(model, [prompt], 5, temperature=0, use_cache=False)


def test_same_seed_same_samples_different_seed_different():
    model = tiny_gpt()
    run = lambda seed: generate(model, [[1, 2]], 24, temperature=1.0, seed=seed)  # noqa: E731
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_batched_prompts_equal_one_by_one():
    model = tiny_gpt()
    prompts = [[1, 2, 3], [4], [5, 6, 7], [8, 9, 10, 1, 2, 3, 4, 5, 6, 7]]
    batched = generate(model, prompts, 12, temperature=0)
    assert batched == [generate(model, [p], 12, temperature=0)[0] for p in prompts]
    assert all(len(row) == 12 for row in batched)


def test_tensor_prompts_and_stream_batch_shapes():
    model = tiny_gpt()
    prompts = torch.tensor([[1, 2], [3, 4], [5, 6]])
    steps = list(stream_batch(model, prompts, 4, sampling=SamplingConfig(temperature=0)))
    assert len(steps) == 4 and steps[0].shape == (3,)
    assert torch.stack(steps, 1).tolist() == generate(model, prompts, 4, temperature=0)


def test_stream_yields_the_same_tokens_as_generate():
    model = tiny_gpt()
    options = dict(temperature=0.9, top_k=5, top_p=0.9, repetition_penalty=1.3, seed=3)
    streamed = list(stream(model, [1, 2, 3], 20, **options))
    assert streamed == generate(model, [[1, 2, 3]], 20, **options)[0]


def test_stop_ids_end_each_row():
    model = tiny_gpt()
    full = generate(model, [[1, 2], [3, 4]], 15, temperature=0)
    stop = full[0][4]
    cut = generate(model, [[1, 2], [3, 4]], 15, temperature=0, stop_ids=[stop])
    for row, whole in zip(cut, full, strict=True):
        expected = whole[: whole.index(stop)] if stop in whole else whole
        assert row == expected
    assert list(stream(model, [1, 2], 15, temperature=0, stop_ids=[stop])) == cut[0]


def test_a_huge_max_new_tokens_reserves_room_only_for_what_is_made():
    """The token buffer grows with the output: 10**12 new tokens asked for (8 TB, were the
    buffer reserved up front) and three taken costs nothing; past the first growths the tokens
    are those of a run that asked for exactly as many."""
    model = tiny_gpt(positional="rope")
    first = stream(model, [1, 2], 10**12, temperature=0)
    assert [next(first) for _ in range(3)] == generate(model, [[1, 2]], 3, temperature=0)[0]
    long = stream(model, [1, 2], 10**12, temperature=0)
    assert [next(long) for _ in range(600)] == generate(model, [[1, 2]], 600, temperature=0)[0]


def test_model_mode_is_restored():
    model = tiny_gpt().train()
    generate(model, [[1]], 3, temperature=0)
    assert model.training


def test_bad_prompts_are_user_errors():
    model = tiny_gpt()
    with pytest.raises(UserError, match="empty"):
        generate(model, [[]], 3)
    with pytest.raises(UserError, match="vocabulary"):
        generate(model, [[99]], 3)
    with pytest.raises(UserError, match="crop_to"):
        generate(model, [[1]], 3, crop_to=17)
    with pytest.raises(UserError, match="crop_to"):
        generate(model, [[1]], 3, crop_to=0)
    assert generate(model, [], 3) == []


# --- text --------------------------------------------------------------------------------------


def test_stop_scanner_cuts_at_a_split_stop_string():
    scanner = StopScanner(["END", "\n\n"])
    pieces = ["ab", "c E", "N", "xyz"]  # "E" could start "END": held back until "N"... then "x"
    out = [scanner.feed(p) for p in pieces]
    assert "".join(out) + scanner.flush() == "abc ENxyz"
    scanner = StopScanner(["END"])
    out = [scanner.feed(p) for p in ["ab", "c E", "N", "Dxyz"]]
    assert "".join(out) == "abc " and scanner.stopped
    assert out[1] == "c "  # " E" split: only the safe part is given out


def test_generate_text_stops_at_a_stop_string():
    text = "hello world, hello there\n"
    tokenizer = CharTokenizer.from_text(text)
    model = tiny_gpt(vocab_size=tokenizer.vocab_size, context_length=32)
    full = generate_text(model, tokenizer, "he", 40, temperature=0)
    assert len(full) == 40
    stop = full[10:12]
    cut = generate_text(model, tokenizer, "he", 40, temperature=0, stop=[stop])
    assert cut == full[: full.index(stop)]
    assert "".join(stream_text(model, tokenizer, "he", 40, temperature=0)) == full
    with pytest.raises(ValueError, match=r"not one string: give \['lo'\]"):  # not 'l', 'o'
        generate_text(model, tokenizer, "he", 40, temperature=0, stop="lo")


def test_text_starts_from_endoftext_and_stops_there():
    tokenizer = CharTokenizer.from_text("abc", special_tokens=["<|endoftext|>"])
    model = tiny_gpt(vocab_size=tokenizer.vocab_size)
    eot = tokenizer.special_tokens["<|endoftext|>"]
    ids = generate(model, [[eot]], 30, temperature=0)[0]
    text = generate_text(model, tokenizer, "", 30, temperature=0)
    expected = ids[: ids.index(eot)] if eot in ids else ids
    assert text == tokenizer.decode(expected)


def test_byte_text_waits_for_whole_characters_and_adds_up_to_the_decoded_text():
    tokenizer = ByteTokenizer(["<|endoftext|>"])
    ids = list("aé€b".encode())  # 1 + 2 + 3 + 1 bytes
    assert list(tokenizer.decode_stream(ids)) == ["a", "é", "€", "b"]
    assert list(tokenizer.decode_stream([0xE2, 0x82])) == ["\ufffd"]  # unfinished: flushed
    eot = tokenizer.special_tokens["<|endoftext|>"]
    random = torch.Generator().manual_seed(0)
    for _ in range(200):  # invalid bytes too: the pieces are decode's text, cut up
        ids = torch.randint(0, 257, (12,), generator=random).tolist()
        pieces = list(tokenizer.decode_stream(ids))
        assert "".join(pieces) == tokenizer.decode(ids) and all(pieces)
    assert list(tokenizer.decode_stream([0xE2, eot, 0x41])) == ["\ufffd<|endoftext|>", "A"]


def test_char_tokenizer_rejects_unseen_prompt_characters():
    tokenizer = CharTokenizer.from_text("abc")
    model = tiny_gpt(vocab_size=tokenizer.vocab_size)
    with pytest.raises(UserError, match="'z'"):
        generate_text(model, tokenizer, "abz", 3)
