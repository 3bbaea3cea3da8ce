"""What decoding guards against: ids past the tokenizer, infinite and NaN logits, a model in
training mode (streams of it interleaved), low-precision logits, arguments that are not ids, and
models of kinds that do not decode so."""

import dataclasses

import pytest
import torch
from helpers import tiny_gpt

from attnlab.errors import ConfigError, UserError
from attnlab.generation import SamplingConfig, generate, generate_text, sample_next, stream
from attnlab.generation.beam_search import beam_search, greedy_search
from attnlab.generation.compiled import decoding_step
from attnlab.models.gpt import GPT
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.models.registry import KINDS, build_model
from attnlab.tokenizers import CharTokenizer

INF = float("inf")


def test_a_vocabulary_padded_past_the_tokenizer_never_yields_undecodable_ids():
    tokenizer = CharTokenizer.from_text("abc")  # 3 ids; the model has 11, as if padded
    model = tiny_gpt(vocab_size=11)
    greedy = generate(model, [tokenizer.encode("ab")], 20, temperature=0)[0]
    assert max(greedy) >= tokenizer.vocab_size  # without the limit, padded ids come out
    for temperature in (0, 1.5):
        text = generate_text(model, tokenizer, "ab", 50, temperature=temperature, seed=0)
        assert len(text) == 50 and set(text) <= set("abc")
    assert generate(model, [[0]], 5, temperature=0, vocab_limit=1)[0] == [0] * 5
    with pytest.raises(ConfigError, match="vocab_limit"):
        SamplingConfig(vocab_limit=0)


def test_an_infinite_logit_is_the_most_likely_token_and_nan_logits_stop_decoding():
    logits = torch.tensor([[0.0, INF, 1.0, 2.0]])
    generator = torch.Generator().manual_seed(0)
    for options in ({}, {"temperature": 0.5, "top_k": 2}, {"top_p": 0.9}):
        assert sample_next(logits, generator=generator, **options).tolist() == [1], options
    model = tiny_gpt()
    with torch.no_grad():
        model.output_head.weight.fill_(float("nan"))
    with pytest.raises(UserError, match="logits hold NaN at position 2"):
        generate(model, [[1, 2]], 3)


def test_interleaved_streams_of_a_training_model_decode_without_dropout():
    """Each step runs in eval mode and gives the model back: streams may interleave."""
    model = tiny_gpt()
    expected = generate(model, [[3, 4]], 8, temperature=0)[0]
    dropping = GPT(dataclasses.replace(model.config, dropout=0.5))
    dropping.load_state_dict(model.state_dict())
    dropping.train()
    a, b = (stream(dropping, [3, 4], 8, temperature=0) for _ in range(2))
    first = [next(a), next(b)]
    a.close()
    assert first + list(b) == expected[:1] + expected and dropping.training


def test_the_sampler_reads_float32_logits_of_a_bf16_model():
    model = tiny_gpt().to(torch.bfloat16)
    ids = torch.tensor([[1, 2]])
    _, logits = decoding_step(model, SamplingConfig(), ids, None, None, None)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("prompts", [[[1.9, 2.9]], ["12"], torch.tensor([[1.0, 2.0]])])
def test_prompt_ids_must_be_integers(prompts):
    with pytest.raises(UserError, match="integers|not text"):
        generate(tiny_gpt(), prompts, 2)


@pytest.mark.parametrize("prompts", [[1, 2], "12"])
def test_prompts_that_are_one_prompt_or_text_say_what_generate_takes(prompts):
    with pytest.raises(UserError, match=r"a list of prompts, each a list of token ids \(not text"):
        generate(tiny_gpt(), prompts, 2)


def test_crop_to_on_a_model_without_a_context_length_is_refused():
    model = RecurrentLM(RecurrentLMConfig(vocab_size=11, n_layers=1, d_model=8))
    assert len(generate(model, [[1]], 40, temperature=0)[0]) == 40  # no limit: never crops
    with pytest.raises(UserError, match="crop_to has no effect: this model has no context"):
        generate(model, [[1]], 40, crop_to=5)


def test_stream_takes_one_sequence():
    with pytest.raises(UserError, match=r"one sequence of ids \(T,\), got shape \(1, 3\)"):
        stream(tiny_gpt(), torch.tensor([[1, 2, 3]]), 3)


def test_a_count_of_new_tokens_or_stop_ids_that_are_not_integers_are_one_line():
    with pytest.raises(UserError, match="max_new_tokens must be an integer, got 3.0"):
        generate(tiny_gpt(), [[1]], 3.0)
    with pytest.raises(UserError, match="stop_ids is token ids, not text"):
        generate(tiny_gpt(), [[1]], 3, stop_ids="a")
    with pytest.raises(UserError, match="stop_ids must be token ids, integers; got 5"):
        stream(tiny_gpt(), [1], 3, stop_ids=5)


@pytest.mark.parametrize(
    "kind, call, message",
    [
        ("translation", lambda m: generate(m, [[3, 4]], 3), "generation needs a model that can "
         "generate text or generate images; a 'translation' can translate"),
        ("bert", lambda m: stream(m, [3, 4], 3), "a 'bert' can fill in masked words"),
        ("vit", lambda m: generate(m, [[3]], 3), "a 'vit' can classify images"),
        ("gpt", lambda m: beam_search(m, torch.tensor([[3, 4]])), "beam search needs a model "
         "that can translate; a 'gpt' can generate text"),
        ("gpt", lambda m: greedy_search(m, torch.tensor([[3, 4]])), "greedy search needs"),
    ],
)  # fmt: skip
def test_decoding_a_model_of_a_kind_that_cannot_is_one_line(kind, call, message):
    model = build_model(kind, KINDS[kind].presets[KINDS[kind].default_preset])
    with pytest.raises(UserError, match=message):
        call(model)


def test_a_kind_that_declares_no_capabilities_is_left_to_try_any_procedure():
    from test_platform import SumConfig, SumModel

    from attnlab.models.registry import GENERATE, TRANSLATE, check_capable

    for capability in (GENERATE, TRANSLATE):  # its author knows what it can do
        check_capable(SumModel(SumConfig()), "generation", capability)


@pytest.mark.parametrize("use_cache", [True, False])
def test_decoding_steps_do_not_check_their_ids_again(monkeypatch, use_cache):
    """A model checks its ids are in its vocabulary (one min and max: on a GPU, a wait); a
    decoding step's are a checked prompt's and the model's own, and are not checked again."""
    from attnlab.layers import embedding
    from attnlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig

    checked = []
    monkeypatch.setattr(embedding, "check_token_ids", lambda ids, size: checked.append(ids))
    generate(tiny_gpt(), [[1, 2]], 5, use_cache=use_cache)
    config = EncoderDecoderConfig(vocab_size=12, max_length=16, n_encoder_layers=1,
                                  n_decoder_layers=1, n_heads=1, d_model=8, d_ff=16)  # fmt: skip
    for search in (greedy_search, beam_search):
        search(EncoderDecoder(config), torch.tensor([[5, 6, 2]]), use_cache=use_cache)
    assert len(checked) == 2  # the sources, by the encoder
    tiny_gpt()(torch.tensor([[1, 2]]))
    assert len(checked) == 3
