"""Hugging Face's MambaForCausalLM to and from attnlab's GPT of Mamba blocks without
feed-forwards (interop/hf_mamba.py): the same logits, the same greedy continuations through each
side's own decoding state, the round trip, a checkpoint of a converted model, and what does not
convert. Random small models in float32, their weights moved away from their initial values."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import MambaConfig, MambaForCausalLM  # noqa: E402

from attnlab.generation import generate  # noqa: E402
from attnlab.interop.huggingface import from_hf, to_hf  # noqa: E402
from attnlab.models.gpt import GPT, GPTConfig  # noqa: E402
from attnlab.training.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402

VOCAB = 37
CONFIGS = {
    "defaults": {},
    "biases, no convolution bias": {"use_bias": True, "use_conv_bias": False},
    "untied, wider state": {"tie_word_embeddings": False, "state_size": 12, "conv_kernel": 3},
}


def random_mamba(fields: dict, seed: int = 0) -> MambaForCausalLM:
    torch.manual_seed(seed)
    shape = dict(hidden_size=24, state_size=8, num_hidden_layers=2, conv_kernel=4)
    config = MambaConfig(
        vocab_size=VOCAB,
        expand=2,
        time_step_rank=3,
        layer_norm_epsilon=1e-5,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **{**shape, **fields},
    )
    model = MambaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):  # A spread over a decade each way
                p.uniform_(-2.3, 2.3)
            elif name.endswith("dt_proj.bias"):  # where softplus is not flat
                p.uniform_(-4.0, 1.0)
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.normal_(1.0, 0.3)
            else:  # D of either sign, and every matrix and bias
                p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers_mamba(name):
    hf = random_mamba(CONFIGS[name])
    ours = from_hf(hf)
    c = ours.config
    assert (c.mixer, c.d_ff, c.norm, c.positional, c.bias) == ("mamba", 0, "rmsnorm", "none", False)
    assert c.tie_weights == CONFIGS[name].get("tie_word_embeddings", True)
    assert all(block.feedforward is None for block in ours.blocks)
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())
    ids = torch.randint(0, VOCAB, (3, 29))
    with torch.no_grad():
        expected = hf(ids).logits
        got, _ = ours(ids)
    assert expected.abs().max() > 1  # logits that are not flat
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # as the mixer's test


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_continuations_match_transformers_mamba(name):
    """attnlab's recurrent decoding state against transformers' generate with its cache."""
    hf = random_mamba(CONFIGS[name], seed=1)
    ours = from_hf(hf)
    prompts = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        expected = hf.generate(
            prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=20, do_sample=False
        )
    got = generate(ours, prompts.tolist(), 20, temperature=0)
    assert got == expected[:, 6:].tolist()
    assert len({tuple(row) for row in got}) > 1 or len(set(got[0])) > 1  # not one token over


@pytest.mark.parametrize("name", CONFIGS)
def test_round_trip_through_attnlab_is_exact(name):
    hf = random_mamba(CONFIGS[name])
    back = to_hf(from_hf(hf))
    assert type(back).__name__ == "MambaForCausalLM"
    for key in ("use_bias", "use_conv_bias", "state_size", "conv_kernel", "time_step_rank"):
        assert getattr(back.config, key) == getattr(hf.config, key), key
    assert back.config.tie_word_embeddings == hf.config.tie_word_embeddings
    ids = torch.randint(0, VOCAB, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, rtol=0, atol=0)


def test_a_checkpoint_of_a_converted_mamba_samples_as_it(tmp_path):
    ours = from_hf(random_mamba(CONFIGS["biases, no convolution bias"], seed=2))
    save_checkpoint(tmp_path / "mamba", ours)
    loaded = load_checkpoint(tmp_path / "mamba").model.eval()
    assert loaded.config == ours.config
    prompts = torch.randint(0, VOCAB, (2, 5)).tolist()
    for options in ({"temperature": 0}, {"seed": 3}):  # greedy, and sampled
        assert generate(loaded, prompts, 12, **options) == generate(ours, prompts, 12, **options)


def test_what_attnlab_cannot_compute_is_refused_in_one_line():
    hf = random_mamba({"hidden_act": "gelu"})
    with pytest.raises(ValueError, match=r"hidden_act='gelu' \(attnlab's Mamba gates with 'silu'"):
        from_hf(hf)
    no_feedforward = GPT(GPTConfig(vocab_size=11, context_length=8, n_layers=1, n_heads=2,
                                   d_model=8, d_ff=0))  # fmt: skip
    with pytest.raises(ValueError, match="a gelu/gelu_tanh/relu/silu feed-forward"):
        to_hf(no_feedforward)
    feedforward = GPT(GPTConfig(vocab_size=11, context_length=8, n_layers=1, d_model=8,
                                mixer="mamba", positional="none", norm="rmsnorm",
                                bias=False))  # fmt: skip
    with pytest.raises(ValueError, match="only Mamba-shaped models .* convert to MambaForCausalLM"):
        to_hf(feedforward)


def test_convert_to_hf_writes_a_mamba_checkpoint_as_a_folder(tmp_path, capsys):
    """`attnlab convert --to hf` of a GPT of Mamba blocks: a MambaForCausalLM folder, with its
    byte tokenizer; and back (a Mamba folder converts, its byte-level tokenizer with it)."""
    from helpers import run
    from transformers import AutoTokenizer

    from attnlab.tokenizers.byte import ByteTokenizer

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=256, context_length=32, n_layers=2, d_model=16, d_ff=0,
                       mixer="mamba", positional="none", norm="rmsnorm", bias=False)  # fmt: skip
    ours = GPT(config).eval()
    save_checkpoint(tmp_path / "ckpt", ours, {"tokenizer": ByteTokenizer()})
    code, _, err = run(["convert", str(tmp_path / "ckpt"), "--to", "hf", "--out",
                        str(tmp_path / "hf")], capsys)  # fmt: skip
    assert code == 0, err
    hf = MambaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = AutoTokenizer.from_pretrained(tmp_path / "hf")("to be", return_tensors="pt").input_ids
    assert ids.tolist() == [list(b"to be")]
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids)[0], rtol=0, atol=1e-5)
    code, _, err = run(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "back")], capsys)
    assert code == 0 and "note" not in err, err
    back = load_checkpoint(tmp_path / "back")
    assert back.tokenizer.encode("to be, ünï") == list("to be, ünï".encode())
    weights = back.model.state_dict()
    assert all(torch.equal(weights[name], w) for name, w in ours.state_dict().items())


def test_a_mamba_gpt_with_the_default_bias_converts_as_it_has_none_to_read():
    """GPTConfig.bias reads nothing in a Mamba-shaped GPT (RMSNorm has no bias, there is no
    feed-forward, the mixer's biases are its own options): the default, bias = true, converts."""
    torch.manual_seed(0)
    shape = dict(vocab_size=VOCAB, context_length=16, n_layers=2, d_model=16, d_ff=0,
                 mixer="mamba", positional="none", norm="rmsnorm")  # fmt: skip
    ours = GPT(GPTConfig(**shape)).eval()
    assert ours.config.bias and set(ours.state_dict()) == set(
        GPT(GPTConfig(**shape, bias=False)).state_dict()
    )
    hf = to_hf(ours)
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids)[0], rtol=0, atol=1e-5)
