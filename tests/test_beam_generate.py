"""Beam search for decoder-only models (generation/beam_decoding.py): against Hugging Face's
generate(num_beams=...), against brute force over every sequence, with and without the cache
for every mixer, and `attnlab sample --beam-size`."""

import itertools

import pytest
import torch
from helpers import one_line_error, tiny_gpt
from test_cli_sample import sample, save_char_gpt

from attnlab.errors import UserError
from attnlab.generation import beam_generate, beam_hypotheses, beam_text, generate
from attnlab.generation.beam_search import gnmt_length_penalty
from attnlab.layers.caches import KVCache, RecurrentState
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig


def sharp(model, scale=0.5):
    """Wider weights than the models' initialisation: peaked distributions, so beam search and
    greedy disagree, and summed log-probabilities are not near ties."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, scale)
    return model.eval()


@torch.no_grad()
def sequence_log_prob(model, prompt, ids):
    """log P(ids | prompt), the prompt and each id fed alone to a fresh cache of one row."""
    cache = model.new_cache()
    logits = model(torch.tensor([prompt]), cache=cache)[0][0, -1]
    total = 0.0
    for token in ids:
        total += float(torch.log_softmax(logits.double(), -1)[token])
        logits = model(torch.tensor([[token]]), cache=cache)[0][0, -1]
    return total


@pytest.mark.parametrize("eos", [None, 1])
def test_the_same_tokens_as_hugging_faces_beam_search(eos):
    """GPT2LMHeadModel converted from a random GPT, generate(num_beams=K, do_sample=False,
    early_stopping=True): the same search (2K candidates a step, the best K that do not end
    live on, a hypothesis ends at the end id among the best K, the search at K ended or at
    max_new_tokens, where the live ones end as they are). The length penalties differ (Hugging
    Face's |Y|^α, GNMT's here), so they are set apart: with no end token every hypothesis has
    max_new_tokens tokens and neither can reorder them (α 2 there, 0 here); with one, α = 0 on
    both sides ranks by summed log-probability alone."""
    transformers = pytest.importorskip("transformers")
    from attnlab.interop.huggingface import to_hf

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=23, context_length=32, n_layers=2, n_heads=2, d_model=16)
    ours = sharp(GPT(config))
    hf = to_hf(ours).eval()
    assert isinstance(hf, transformers.GPT2LMHeadModel)
    stop_ids = [] if eos is None else [eos]
    differs = ended = stopped_early = 0
    for beams, length in itertools.product((2, 3, 5), (1, 4)):
        prompt = torch.randint(0, 23, (length,)).tolist()
        expected = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, length, dtype=torch.long),
            num_beams=beams,
            max_new_tokens=20,
            do_sample=False,
            early_stopping=True,
            length_penalty=2.0 if eos is None else 0.0,
            eos_token_id=eos,
            pad_token_id=0,
        )[0, length:].tolist()
        expected = expected[: expected.index(eos)] if eos in expected else expected
        options = dict(beam_size=beams, length_penalty=0.0, stop_ids=stop_ids)
        found = beam_hypotheses(ours, prompt, 20, **options)
        got = found[0][1]
        assert got == expected, (beams, prompt)
        differs += got != generate(ours, [prompt], 20, temperature=0, stop_ids=stop_ids)[0]
        ended += len(got) < 20
        # once K hypotheses have ended the search stops: none is left to reach the limit
        stopped_early += len(found) >= beams and all(len(ids) < 20 for _, ids in found)
    assert differs >= 2  # the beams matter: not greedy in disguise
    assert ended >= (0 if eos is None else 3) and stopped_early >= (0 if eos is None else 2)


@pytest.mark.parametrize("stop", [False, True])
def test_a_beam_as_wide_as_every_sequence_finds_the_best_one(stop):
    """V = 5 and 3 steps: 125 beams hold every sequence, so the search returns the argmax of
    brute force, by summed log-probability (no stop id) or, with a stop id, by GNMT's score of
    each hypothesis (ended at the stop, or at the limit without it), and finishes every one."""
    model = sharp(tiny_gpt(vocab_size=5), 0.8)
    prompt, alpha, stop_ids = [3], 1.5, [4] if stop else []
    hypotheses = set()
    for sequence in itertools.product(range(5), repeat=3):
        cut = next((i for i, t in enumerate(sequence) if t in stop_ids), None)
        hypotheses.add(sequence if cut is None else sequence[: cut + 1])

    def score(ids):
        log_prob = sequence_log_prob(model, prompt, ids)
        return log_prob / gnmt_length_penalty(len(ids), alpha) if stop_ids else log_prob

    ranked = sorted(hypotheses, key=score, reverse=True)
    assert score(ranked[0]) - score(ranked[1]) > 1e-4  # no tie for rounding to break
    best = [t for t in ranked[0] if t not in stop_ids]
    options = dict(beam_size=125, length_penalty=alpha, stop_ids=stop_ids)
    assert beam_generate(model, prompt, 3, **options) == best
    found = beam_hypotheses(model, prompt, 3, **options)
    assert len(found) == len(hypotheses)
    greedy = generate(model, [prompt], 3, temperature=0, stop_ids=stop_ids)[0]
    assert best != greedy  # the beams matter
    if stop:  # and so does α: the most likely hypothesis is a short one, (4,)
        assert max(hypotheses, key=lambda ids: sequence_log_prob(model, prompt, ids)) == (4,)


@pytest.mark.parametrize("stop_ids", [[], [2], [0, 2]])
def test_a_beam_of_one_is_greedy(stop_ids):
    model = sharp(tiny_gpt(vocab_size=7))
    for prompt in ([1], [3, 4, 5], list(range(7)) * 3):  # the last past the context
        greedy = generate(model, [prompt], 25, temperature=0, stop_ids=stop_ids)[0]
        assert beam_generate(model, prompt, 25, beam_size=1, stop_ids=stop_ids) == greedy


def mixer_gpt(mixer, positional="learned"):
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=13,
        context_length=16,
        n_layers=2,
        n_heads=2,
        d_model=16,
        mixer=mixer,
        positional=positional,
    )
    return sharp(GPT(config), 0.3)


def lstm_lm():
    torch.manual_seed(0)
    return sharp(RecurrentLM(RecurrentLMConfig(vocab_size=13, n_layers=2, d_model=16)), 0.3)


MODELS = {
    **{name: lambda name=name: mixer_gpt(name) for name in ("attention", "mamba", "lstm")},
    **{name: lambda name=name: mixer_gpt(name) for name in ("gru", "rnn", "hyena")},
    "lstm_lm": lstm_lm,
}


@pytest.mark.parametrize("name", MODELS)
def test_the_cache_reordered_per_beam_gives_what_recomputing_gives(name):
    """The KV cache or recurrent state follows each beam (reorder): the search decodes as it
    does recomputing every hypothesis from scratch, within the context."""
    model = MODELS[name]()
    prompt, new = [1, 2, 3], 12
    greedy = generate(model, [prompt], new, temperature=0)[0]
    differs = 0
    for beams in (2, 4):
        options = dict(beam_size=beams, stop_ids=[0], length_penalty=0.6)
        cached = beam_hypotheses(model, prompt, new, **options)
        recomputed = beam_hypotheses(model, prompt, new, use_cache=False, **options)
        assert [ids for _, ids in cached] == [ids for _, ids in recomputed]
        for (a, _), (b, _) in zip(cached, recomputed, strict=True):
            assert abs(a - b) < 1e-4
        differs += cached[0][1] != greedy
    assert differs  # the beams matter


@pytest.mark.parametrize("mixer, positional", [("attention", "rope"), ("mamba", "none")])
def test_each_hypothesis_scores_as_decoded_alone_past_the_context(mixer, positional):
    """Past the context a RoPE model's KV cache slides (it is not a recompute of a window):
    each hypothesis's summed log-probability is what its own cache of one row gives it."""
    model = mixer_gpt(mixer, positional)
    prompt = [1, 2, 3, 4, 5]
    found = beam_hypotheses(model, prompt, 30, beam_size=3)
    assert len(found) == 3 and found[0][1] != generate(model, [prompt], 30, temperature=0)[0]
    for log_prob, ids in found:
        assert len(ids) == 30
        assert abs(log_prob - sequence_log_prob(model, prompt, ids)) < 1e-3


def test_vocab_limit_and_bad_arguments():
    model = mixer_gpt("attention")
    assert max(beam_generate(model, [1], 20, beam_size=3, vocab_limit=4)) < 4
    assert beam_generate(model, [1], 0) == []
    for bad, message in [
        (dict(beam_size=0), "beam size must be an integer >= 1"),
        (dict(length_penalty=-1.0), "length penalty must be a number >= 0"),
        (dict(stop_ids="a"), "stop_ids is token ids, not text"),
        (dict(crop_to=40), "crop_to must be between 1 and the context length 16"),
    ]:
        with pytest.raises(UserError, match=message):
            beam_generate(model, [1], 5, **bad)
    with pytest.raises(UserError, match="a prompt is one sequence of ids"):
        beam_generate(model, torch.ones(2, 3, dtype=torch.long), 5)


@pytest.mark.parametrize("state", [KVCache, RecurrentState])
def test_a_state_that_cannot_reorder_is_one_line(state, monkeypatch):
    model = mixer_gpt("attention" if state is KVCache else "mamba")
    expected = beam_generate(model, [1, 2], 8, beam_size=3, use_cache=False)
    monkeypatch.delattr(state, "reorder")
    with pytest.raises(UserError, match="cannot .*AttributeError.*use_cache=False"):
        beam_generate(model, [1, 2], 8, beam_size=3)
    assert beam_generate(model, [1, 2], 8, beam_size=3, use_cache=False) == expected


@pytest.fixture
def checkpoint(tmp_path):
    config, tokenizer = save_char_gpt(tmp_path / "ckpt", lambda model: sharp(model, 0.3))
    return tmp_path / "ckpt", config, tokenizer


def test_sample_with_a_beam_prints_the_best_continuation(capsys, checkpoint):
    path, _, tokenizer = checkpoint
    from attnlab.training.checkpoints import load_checkpoint

    model = load_checkpoint(path).model
    args = (path, "--prompt", "hear", "--max-new-tokens", 30)
    code, out, err = sample(capsys, *args, "--beam-size", 3)
    assert code == 0 and "beam search of 3" in err
    assert out == "hear" + beam_text(model, tokenizer, "hear", 30, beam_size=3) + "\n"
    assert len(out) == len("hear") + 30 + 1
    assert sample(capsys, *args, "--beam-size", 3)[1] == out  # deterministic
    assert sample(capsys, *args, "--beam-size", 3, "--no-cache")[1] == out
    greedy = sample(capsys, *args, "--temperature", 0)[1]
    assert greedy != out and sample(capsys, *args, "--beam-size", 1)[1] == greedy
    new = out[len("hear") : -1]
    stopped = sample(capsys, *args, "--beam-size", 3, "--stop", new[-2:])[1]
    assert stopped == "hear" + new[: new.find(new[-2:])] + "\n"  # cut after the search


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--beam-size", 3, "--temperature", 0.5], "--temperature does not apply to beam search"),
        (["--beam-size", 3, "--temperature=0.8"], "--temperature does not apply"),  # its default
        (["--beam-size", 3, "--top-k", 5, "--seed", 2], "--seed and --top-k do not apply"),
        (["--beam-size", 2, "--num-samples", 2], "--num-samples does not apply"),
        (["--beam-size", 2, "--compile"], "--compile does not apply"),
        (["--beam-size", 0], "--beam-size must be >= 1, got 0"),
        (["--beam-size", 2, "--length-penalty", -1], "--length-penalty must be a number >= 0"),
        (["--length-penalty", 1], "--length-penalty ranks beam search's continuations"),
        (["--beam-size", 1, "--length-penalty", 1], "would change nothing at --beam-size 1"),
    ],
)
def test_sample_refuses_flags_beam_search_does_not_take(capsys, checkpoint, flags, message):
    code, out, err = sample(capsys, checkpoint[0], *flags)
    assert message in one_line_error(code, err) and out == ""
