"""Llama-family weights to and from Hugging Face: logits, greedy continuations and round trips
against `transformers`' own LlamaForCausalLM / MistralForCausalLM, built offline from small
random configs. They cover attnlab's RoPE (and its base), RMSNorm (and its eps), SwiGLU and
grouped-query attention with an implementation nobody here wrote."""

import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from attnlab.generation import generate  # noqa: E402
from attnlab.interop.huggingface import from_hf, to_hf  # noqa: E402
from attnlab.models.gpt import GPT, GPTConfig  # noqa: E402

SMALL = dict(vocab_size=101, hidden_size=48, intermediate_size=80, max_position_embeddings=64)
CONFIGS = {
    # grouped-query (2 query heads per key/value head), untied head, non-default base and eps
    "gqa-untied": dict(
        SMALL,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=500.0,
        rms_norm_eps=1e-3,
        tie_word_embeddings=False,
    ),
    # multi-query attention, tied head
    "mqa-tied": dict(
        SMALL,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=1,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="swish",  # SiLU by its other name
    ),
    # plain multi-head attention, a large base
    "mha": dict(
        SMALL,
        num_hidden_layers=1,
        num_attention_heads=3,
        num_key_value_heads=3,
        rope_theta=1e6,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
}
NO_SPECIALS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Weights larger than Hugging Face's N(0, 0.02) and norm gains away from 1, so that
    attention patterns, RoPE and the norms all shape the logits. In float64: the two then differ
    only where transformers works in float32 whatever the model's dtype (RMSNorm's statistics,
    RoPE's angles), by 5e-6 at most here, where in float32 orders of summation that vary from
    CPU to CPU took them past 1e-5 on some."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.2)
    return model.double().eval()


def random_llama(fields: dict) -> LlamaForCausalLM:
    return randomised(LlamaForCausalLM(LlamaConfig(**fields, **NO_SPECIALS)))


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers_llama(name):
    hf = random_llama(CONFIGS[name])
    ours = from_hf(hf).eval()
    c = ours.config
    assert (c.positional, c.norm, c.activation, c.bias) == ("rope", "rmsnorm", "swiglu", False)
    assert c.rope_base == CONFIGS[name]["rope_theta"]
    assert c.norm_eps == CONFIGS[name]["rms_norm_eps"]
    idx = torch.randint(0, SMALL["vocab_size"], (3, 40))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    assert expected.abs().max() > 1  # logits that are not flat
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_continuations_match_transformers_llama(name):
    hf = random_llama(CONFIGS[name])
    ours = from_hf(hf).eval()
    prompts = torch.randint(0, SMALL["vocab_size"], (2, 6))
    with torch.no_grad():
        expected = hf.generate(
            prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=20, do_sample=False
        )
    got = generate(ours, prompts.tolist(), 20, temperature=0)  # attnlab's cached decoding
    assert got == expected[:, 6:].tolist()


@pytest.mark.parametrize("name", CONFIGS)
def test_round_trip_through_attnlab_is_exact(name):
    hf = random_llama(CONFIGS[name])
    back = to_hf(from_hf(hf))
    assert type(back).__name__ == "LlamaForCausalLM"
    original, returned = hf.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    for key, value in original.items():
        assert torch.equal(value, returned[key]), key
    assert back.config.rope_parameters["rope_theta"] == CONFIGS[name]["rope_theta"]
    assert back.config.rms_norm_eps == CONFIGS[name]["rms_norm_eps"]
    assert back.config.tie_word_embeddings == CONFIGS[name]["tie_word_embeddings"]


def test_an_attnlab_model_runs_the_same_in_transformers():
    torch.manual_seed(1)
    config = GPTConfig(
        vocab_size=77,
        context_length=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_model=32,
        d_ff=72,
        norm="rmsnorm",
        norm_eps=1e-4,
        positional="rope",
        rope_base=2000.0,
        activation="swiglu",
        bias=False,
        tie_weights=False,
        dropout=0.1,  # Llama has no place for it (no residual dropout): exported as none
    )
    ours = randomised(GPT(config))
    hf = to_hf(ours).eval()
    idx = torch.randint(0, 77, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=0, atol=1e-5)
    again = from_hf(hf)
    assert again.config == dataclasses.replace(config, dropout=0.0)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_mistral_without_a_window_converts_and_matches():
    fields = dict(CONFIGS["gqa-untied"], sliding_window=None)
    hf = randomised(MistralForCausalLM(MistralConfig(**fields, **NO_SPECIALS)))
    ours = from_hf(hf).eval()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "model, message",
    [
        (lambda: MistralForCausalLM(MistralConfig(**CONFIGS["mha"], sliding_window=8)), "sliding"),
        (lambda: LlamaForCausalLM(LlamaConfig(**CONFIGS["mha"], attention_bias=True)), "bias"),
        (lambda: LlamaForCausalLM(LlamaConfig(**CONFIGS["mha"], hidden_act="gelu")), "silu"),
        (
            lambda: LlamaForCausalLM(LlamaConfig(**CONFIGS["mha"], attention_dropout=0.3)),
            "attention_dropout=0.3 .*set it to 0",
        ),
        (lambda: LlamaForCausalLM(LlamaConfig(**CONFIGS["mha"], head_dim=8)), "head_dim"),
        (
            lambda: LlamaForCausalLM(
                LlamaConfig(
                    **{k: v for k, v in CONFIGS["mha"].items() if k != "rope_theta"},
                    rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
                )
            ),
            "RoPE",
        ),
        (lambda: Qwen2ForCausalLM(Qwen2Config(**CONFIGS["mha"])), "Qwen2"),
    ],
)
def test_what_attnlab_cannot_express_is_refused(model, message):
    with pytest.raises(ValueError, match=message):
        from_hf(model())


def test_to_hf_refuses_a_rope_model_llama_cannot_express():
    config = GPTConfig(
        vocab_size=10, context_length=8, n_layers=1, n_heads=2, d_model=8, positional="rope"
    )
    with pytest.raises(ValueError, match="Llama-shaped"):
        to_hf(GPT(config))
