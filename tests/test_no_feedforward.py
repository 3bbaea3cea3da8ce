"""A GPT whose blocks have no feed-forward (GPTConfig.d_ff = 0, Mamba's blocks): the block holds
its mixer alone, its output is the stream after it, it counts, initialises, trains, and the
logit lens and direct logit attribution read it."""

import json
import string

import pytest
import torch
from helpers import run

from attnlab.config import config_from_dict
from attnlab.errors import ConfigError
from attnlab.interpretability import capture
from attnlab.interpretability.lens import logit_lens
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.tokenizers.char import CharTokenizer
from attnlab.training.checkpoints import save_checkpoint
from attnlab.training.optimizers import build_optimizer

SMALL = dict(vocab_size=11, context_length=16, n_layers=2, n_heads=2, d_model=16)


def test_d_ff_0_is_a_block_of_the_mixer_alone():
    model = GPT(GPTConfig(**SMALL, d_ff=0))
    full = GPT(GPTConfig(**SMALL))
    for block in model.blocks:
        assert block.feedforward is None and block.feedforward_norm is None
    feedforward = sum(p.numel() for n, p in full.named_parameters() if ".feedforward" in n)
    assert model.num_parameters() == full.num_parameters() - feedforward
    assert full.flops_per_token() - model.flops_per_token() == 6 * feedforward  # 6·N
    assert GPTConfig(**SMALL).ff_width == 64 and GPTConfig(**SMALL, d_ff=0).ff_width == 0
    with pytest.raises(ConfigError, match=r"d_ff must be at least 0 \(0: blocks without"):
        GPTConfig(**SMALL, d_ff=-1)


def test_the_activation_is_refused_where_there_is_no_feedforward_to_read_it():
    from attnlab.config import check_read

    reasons = GPTConfig.unread({"d_ff": 0})
    with pytest.raises(ConfigError, match="activation: a setting of the feed-forward, which d_ff"):
        check_read(reasons, {"d_ff", "activation"}, "GPTConfig")
    assert "activation" not in GPTConfig.unread({"d_ff": 32})
    assert config_from_dict(GPTConfig, {"d_ff": 0}).d_ff == 0


@pytest.mark.parametrize("prenorm", [True, False])
def test_the_blocks_output_is_the_stream_after_its_mixer(prenorm):
    model = GPT(GPTConfig(**SMALL, d_ff=0, prenorm=prenorm)).eval()
    ids = torch.randint(0, 11, (2, 9))
    with torch.no_grad(), capture(model, attention=False) as seen:
        model(ids)
    for i in range(2):
        after = seen.streams[f"blocks.{i}.stream_after_mixer"]
        assert torch.equal(seen.streams[f"blocks.{i}.stream_out"], after)
    assert torch.equal(seen.streams["blocks.1.stream_in"], seen.streams["blocks.0.stream_out"])


@pytest.mark.parametrize("mixer", ["attention", "mamba"])
def test_a_gpt_without_feedforwards_trains_a_step(mixer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL, d_ff=0, mixer=mixer))
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]}
    assert id(model.blocks[0].token_mixer.output_projection.weight) in decayed
    ids = torch.randint(0, 11, (4, 12))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(2):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("mixer", ["attention", "mamba"])
def test_the_lens_reads_a_block_without_a_feedforward_once(mixer):
    """Its output is the stream after its mixer: one row, named for the mixer."""
    model = GPT(GPTConfig(**SMALL, d_ff=0, mixer=mixer)).eval()
    ids = torch.randint(0, 11, (1, 16))
    report = logit_lens(model, (ids,))
    assert report.rows == ["embeddings", "0 mixer", "1 mixer"]
    with torch.no_grad():
        assert (report.logits[-1] - model(ids)[0][0]).abs().max() < 1e-6


def test_inspect_lens_and_attribution_of_a_mamba_without_feedforwards(tmp_path, capsys):
    chars = string.ascii_lowercase + " "
    config = GPTConfig(vocab_size=len(chars), context_length=16, n_layers=2, d_model=16, d_ff=0,
                       mixer="mamba", positional="none", norm="rmsnorm", bias=False)  # fmt: skip
    save_checkpoint(tmp_path, GPT(config).eval(), {"tokenizer": CharTokenizer(chars)})
    code, out, err = run(["inspect", "lens", str(tmp_path), "--text", "to be", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["rows"] == ["embeddings", "0 mixer", "1 mixer"]
    argv = ["inspect", "attribution", str(tmp_path), "--text", "to be", "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert list(report["components"]) == ["embed", "L0 mixer", "L1 mixer"]
    assert abs(sum(report["components"].values()) + report["norm_bias"] - report["logit"]) < 1e-4


@pytest.mark.parametrize("mixer", ["attention", "mamba"])
def test_the_residual_writers_start_scaled_by_the_sub_layers_there_are(mixer):
    """GPT-2's 1/√N, N the residual sub-layers: one per block without a feed-forward (as
    Hugging Face's Mamba initialises, 1/√n_layers), not two."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**SMALL, "n_layers": 8, "d_model": 128}, d_ff=0, mixer=mixer))
    for block in model.blocks:
        std = block.token_mixer.output_projection.weight.std().item()
        assert abs(std - 0.02 / 8**0.5) < 0.1 * 0.02 / 8**0.5, std
