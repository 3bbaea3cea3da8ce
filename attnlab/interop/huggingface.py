"""Weights to and from Hugging Face ``transformers`` models, through explicit name tables.

Foreign parameter names appear only in the tables below. GPT-2 stores its linear layers as
``Conv1D`` with (in, out) weights, so those entries are transposed on the way across.
``transformers`` is imported lazily: only these functions need it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnlab.models.gpt import GPT, GPTConfig

# (Hugging Face name, attnlab name, transpose). "{i}" is the block index.
GPT2_GLOBAL = [
    ("transformer.wte.weight", "token_embedding.weight", False),
    ("transformer.wpe.weight", "position_embedding.weight", False),
    ("transformer.ln_f.weight", "final_norm.weight", False),
    ("transformer.ln_f.bias", "final_norm.bias", False),
]
GPT2_BLOCK = [
    ("transformer.h.{i}.ln_1.weight", "blocks.{i}.mixer_norm.weight", False),
    ("transformer.h.{i}.ln_1.bias", "blocks.{i}.mixer_norm.bias", False),
    ("transformer.h.{i}.attn.c_attn.weight", "blocks.{i}.token_mixer.qkv_projection.weight", True),
    ("transformer.h.{i}.attn.c_attn.bias", "blocks.{i}.token_mixer.qkv_projection.bias", False),
    (
        "transformer.h.{i}.attn.c_proj.weight",
        "blocks.{i}.token_mixer.output_projection.weight",
        True,
    ),
    ("transformer.h.{i}.attn.c_proj.bias", "blocks.{i}.token_mixer.output_projection.bias", False),
    ("transformer.h.{i}.ln_2.weight", "blocks.{i}.feedforward_norm.weight", False),
    ("transformer.h.{i}.ln_2.bias", "blocks.{i}.feedforward_norm.bias", False),
    ("transformer.h.{i}.mlp.c_fc.weight", "blocks.{i}.feedforward.up_projection.weight", True),
    ("transformer.h.{i}.mlp.c_fc.bias", "blocks.{i}.feedforward.up_projection.bias", False),
    ("transformer.h.{i}.mlp.c_proj.weight", "blocks.{i}.feedforward.down_projection.weight", True),
    ("transformer.h.{i}.mlp.c_proj.bias", "blocks.{i}.feedforward.down_projection.bias", False),
]
GPT2_HEAD = ("lm_head.weight", "output_head.weight", False)
# GPT-2's activation names -> ours
GPT2_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}


def _gpt2_table(config: GPTConfig) -> list[tuple[str, str, bool]]:
    table = list(GPT2_GLOBAL)
    for i in range(config.n_layers):
        table += [(hf.format(i=i), ours.format(i=i), t) for hf, ours, t in GPT2_BLOCK]
    if not config.tie_weights:
        table.append(GPT2_HEAD)
    return table


def from_hf(model: nn.Module) -> nn.Module:
    """An attnlab model with the weights of a Hugging Face model (GPT2LMHeadModel)."""
    kind = type(model).__name__
    if kind != "GPT2LMHeadModel":
        raise ValueError(f"from_hf supports GPT2LMHeadModel, got {kind}")
    hf = model.config
    unsupported = {
        "scale_attn_by_inverse_layer_idx": True,
        "reorder_and_upcast_attn": True,
        "scale_attn_weights": False,
    }
    for key, bad in unsupported.items():
        if getattr(hf, key, not bad) == bad:
            raise ValueError(f"GPT-2 config with {key}={bad} is not supported")
    if hf.activation_function not in GPT2_ACTIVATIONS:
        raise ValueError(f"unsupported GPT-2 activation {hf.activation_function!r}")
    config = GPTConfig(
        vocab_size=hf.vocab_size,
        context_length=hf.n_positions,
        n_layers=hf.n_layer,
        n_heads=hf.n_head,
        d_model=hf.n_embd,
        d_ff=hf.n_inner,
        activation=GPT2_ACTIVATIONS[hf.activation_function],
        norm_eps=hf.layer_norm_epsilon,
        tie_weights=bool(getattr(hf, "tie_word_embeddings", True)),
    )
    ours = GPT(config)
    _copy(
        model.state_dict(),
        ours,
        [(hf_name, our_name, t) for hf_name, our_name, t in _gpt2_table(config)],
    )
    return ours


def to_hf(model: nn.Module) -> nn.Module:
    """A Hugging Face model with the weights of an attnlab model (GPT -> GPT2LMHeadModel)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if not isinstance(model, GPT):
        raise ValueError(f"to_hf supports GPT, got {type(model).__name__}")
    c = model.config
    activation = {v: k for k, v in GPT2_ACTIVATIONS.items() if k != "gelu_pytorch_tanh"}
    if (c.positional, c.norm, c.bias, c.n_kv_heads or c.n_heads) != (
        "learned",
        "layernorm",
        True,
        c.n_heads,
    ) or c.activation not in activation:
        raise ValueError(
            "only GPT-2-shaped models (learned positions, LayerNorm with bias, "
            "multi-head attention, gelu/gelu_tanh/relu) convert to GPT2LMHeadModel"
        )
    hf_config = GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.context_length,
        n_embd=c.d_model,
        n_layer=c.n_layers,
        n_head=c.n_heads,
        n_inner=c.d_ff,
        activation_function=activation[c.activation],
        layer_norm_epsilon=c.norm_eps,
        tie_word_embeddings=c.tie_weights,
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
    )
    hf = GPT2LMHeadModel(hf_config)
    _copy(model.state_dict(), hf, [(ours, theirs, t) for theirs, ours, t in _gpt2_table(c)])
    if c.tie_weights:
        hf.tie_weights()
    return hf


def _copy(
    source: dict[str, torch.Tensor], target: nn.Module, table: list[tuple[str, str, bool]]
) -> None:
    """Copy source[src] (transposed where marked) into target's parameter dst, checking shapes."""
    target_state: dict[str, Any] = target.state_dict()
    with torch.no_grad():
        for src, dst, transpose in table:
            value = source[src].t() if transpose else source[src]
            if value.shape != target_state[dst].shape:
                raise ValueError(
                    f"shape mismatch {src} {tuple(value.shape)} -> {dst} "
                    f"{tuple(target_state[dst].shape)}"
                )
            target_state[dst].copy_(value)
