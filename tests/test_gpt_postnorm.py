"""GPTConfig.prenorm = False: GPT-1's post-norm blocks, x = norm(x + sublayer(x)), and no final
norm before the head."""

import json

import pytest
import torch
from test_layers import copy_attention
from test_run_directory import train
from torch import nn

from attnlab.generation import generate
from attnlab.layers.attention import causal_mask
from attnlab.layers.mixers import MIXERS
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.training.checkpoints import load_checkpoint
from attnlab.training.optimizers import build_optimizer

TINY = dict(vocab_size=23, context_length=16, n_layers=2, n_heads=3, d_model=12)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")  # torch's note on norm_first
@pytest.mark.parametrize("prenorm", [False, True])
def test_gpt_is_torchs_encoder_layers_with_a_causal_mask_in_float64(prenorm):
    """Each block is nn.TransformerEncoderLayer(norm_first=prenorm) under a causal mask, and
    the head reads the last block's output directly in post-norm (through a final norm in
    pre-norm): the whole model's logits and input gradients, weights copied."""
    torch.manual_seed(0)
    config = GPTConfig(**TINY, d_ff=20, activation="gelu", prenorm=prenorm)
    model = GPT(config).double()
    options = dict(dropout=0.0, activation="gelu", batch_first=True, norm_first=prenorm)
    layers = [nn.TransformerEncoderLayer(12, 3, 20, **options).double() for _ in model.blocks]
    with torch.no_grad():
        for p in model.parameters():  # norms' weights and biases away from 1 and 0 too
            p.add_(torch.randn_like(p) * 0.3)
        for block, layer in zip(model.blocks, layers, strict=True):
            copy_attention(block.token_mixer, layer.self_attn)
            layer.norm1.load_state_dict(block.mixer_norm.state_dict())
            layer.norm2.load_state_dict(block.feedforward_norm.state_dict())
            layer.linear1.load_state_dict(block.feedforward.up_projection.state_dict())
            layer.linear2.load_state_dict(block.feedforward.down_projection.state_dict())
    assert isinstance(model.final_norm, nn.LayerNorm) == prenorm
    ids = torch.randint(0, 23, (3, 9))
    x = model.token_embedding(ids) + model.position_embedding(9, 0)
    for layer in layers:
        x = layer(x, src_mask=~causal_mask(9, 9), is_causal=True)
    expected = model.output_head(model.final_norm(x) if prenorm else x)
    got = model(ids)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    grad = torch.randn_like(got)
    for mine, theirs in zip(
        torch.autograd.grad(got, model.token_embedding.weight, grad),
        torch.autograd.grad(expected, model.token_embedding.weight, grad),
        strict=True,
    ):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_every_mixer_decodes_post_norm_with_its_cache_as_recomputed(mixer):
    torch.manual_seed(0)
    fields = {**TINY, "n_heads": 2} if mixer == "attention" else {**TINY, "n_heads": 1}
    model = GPT(GPTConfig(**fields, mixer=mixer, prenorm=False)).eval()
    assert all(not block.prenorm for block in model.blocks)
    assert isinstance(model.final_norm, nn.Identity)
    assert not any("final_norm" in name for name in model.state_dict())
    idx = torch.randint(0, 23, (2, 14))
    with torch.no_grad():
        full = model(idx)[0]
        cache = model.new_cache()
        steps = [model(idx[:, :6], cache=cache)[0]]
        steps += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(6, 14)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    prompt = idx[0, :4].tolist()
    cached = generate(model, [prompt], 8, temperature=0)
    assert cached == generate(model, [prompt], 8, temperature=0, use_cache=False)


@pytest.mark.parametrize("weight_init", ["gpt2", "fan_in"])
def test_only_pre_norm_scales_the_residual_writers_by_depth(weight_init):
    """GPT-2 scales them by 1/√(2·n_layers) to keep the stream's variance; post-norm blocks
    renormalise the stream, and GPT-1 kept N(0, 0.02) for every matrix."""
    stds = {}
    for prenorm in (True, False):
        torch.manual_seed(0)
        config = GPTConfig(vocab_size=11, context_length=8, n_layers=8, n_heads=2, d_model=64,
                           prenorm=prenorm, weight_init=weight_init, tie_weights=False)  # fmt: skip
        block = GPT(config).blocks[0]
        stds[prenorm] = [
            layer.weight.std().item()
            for layer in (block.token_mixer.output_projection, block.feedforward.down_projection)
        ]
    base = [0.02, 0.02] if weight_init == "gpt2" else [64**-0.5, 256**-0.5]
    assert stds[False] == pytest.approx(base, rel=0.05)
    assert stds[True] == pytest.approx([s / 4 for s in base], rel=0.05)  # 1/√16


def test_a_one_layer_post_norm_gpt_learns_a_repeating_sequence():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "n_layers": 1, "n_heads": 2}, prenorm=False))
    ids = torch.arange(17).repeat(4, 1) % 5  # 0 1 2 3 4 0 1 ...: each token names the next
    optimizer = build_optimizer(model, 1e-2, 0.0, (0.9, 0.99))
    losses = []
    for _ in range(40):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses


def test_train_gpt_no_prenorm_saves_a_post_norm_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    flags = ["--no-prenorm", "--n-layers", "1", "--d-model", "16", "--n-heads", "2"]
    code, _, err = train(capsys, corpus, out, *flags, "--max-iters", "2")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["config"]["prenorm"] is False
    model = load_checkpoint(out).model
    assert not model.config.prenorm and isinstance(model.final_norm, nn.Identity)
    assert len(generate(model, [[1, 2]], 5, temperature=0)[0]) == 5


def test_train_gpt_help_offers_the_switch(capsys):
    from attnlab.cli import main

    with pytest.raises(SystemExit):
        main(["train", "gpt", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--prenorm, --no-prenorm norm before each sub-layer" in text
