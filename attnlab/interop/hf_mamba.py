"""Mamba (MambaForCausalLM) to and from attnlab's GPT. Hugging Face's Mamba is a GPT whose
blocks hold a Mamba mixer and no feed-forward (GPTConfig.d_ff = 0), each ``x + mixer(norm(x))``
with an RMSNorm, no positions, a final RMSNorm and a head tied to the token embedding; its
mixer's weights are attnlab's under other names, in the same layouts (u before the gate z in the
input projection; Δ, B, C in that order in the SSM projection; A kept as log(-A)).

Hugging Face's Mamba names no longest input; attnlab's GPT needs a context_length, which bounds
what one forward pass reads and the windows training cuts, not the mixer (its state has a fixed
size). from_hf takes CONTEXT_LENGTH, the length the state-spaces models were trained on; decoding
with a cache goes on past it (new_cache slides). Hugging Face zeroes the inputs of padded
positions (attention_mask) inside the mixer; attnlab's mixer reads every position it is given, so
a batch of left-padded prompts decodes otherwise there.

A token_order renumbers the vocabulary: our id i is its id token_order[i], the token rows
(embedding, an untied head) moved to match, and rows it does not name (a vocabulary padded past
its tokenizer's) left out; hf_neox gives the order of GPT-NeoX's tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from attnlab.interop.tables import copy_weights, reordered_rows
from attnlab.layers.mamba import MambaOptions
from attnlab.models.gpt import GPT, GPTConfig

CONTEXT_LENGTH = 2048  # positions a converted GPT reads at once (its config's context_length)

# (Hugging Face name, attnlab name, transpose). "{i}" is the block index.
MAMBA_GLOBAL = [
    ("backbone.embeddings.weight", "token_embedding.weight", False),
    ("backbone.norm_f.weight", "final_norm.weight", False),
]
MAMBA_BLOCK = [
    ("backbone.layers.{i}.norm.weight", "blocks.{i}.mixer_norm.weight", False),
] + [
    (f"backbone.layers.{{i}}.mixer.{theirs}", f"blocks.{{i}}.token_mixer.{ours}", False)
    for theirs, ours in [
        ("in_proj.weight", "input_projection.weight"),
        ("conv1d.weight", "convolution.weight"),
        ("x_proj.weight", "ssm_projection.weight"),
        ("dt_proj.weight", "dt_projection.weight"),
        ("dt_proj.bias", "dt_projection.bias"),
        ("A_log", "A_log"),
        ("D", "D"),
        ("out_proj.weight", "output_projection.weight"),
    ]
]
MAMBA_BIASES = [  # with use_bias
    (
        "backbone.layers.{i}.mixer.in_proj.bias",
        "blocks.{i}.token_mixer.input_projection.bias",
        False,
    ),
    (
        "backbone.layers.{i}.mixer.out_proj.bias",
        "blocks.{i}.token_mixer.output_projection.bias",
        False,
    ),
]
MAMBA_CONV_BIAS = [  # with use_conv_bias
    ("backbone.layers.{i}.mixer.conv1d.bias", "blocks.{i}.token_mixer.convolution.bias", False),
]
MAMBA_HEAD = ("lm_head.weight", "output_head.weight", False)


def _mamba_table(config: GPTConfig) -> list[tuple[str, str, bool]]:
    options = config.mixer_settings
    block = list(MAMBA_BLOCK)
    block += MAMBA_BIASES if options.bias else []
    block += MAMBA_CONV_BIAS if options.conv_bias else []
    table = list(MAMBA_GLOBAL)
    for i in range(config.n_layers):
        table += [(hf.format(i=i), ours.format(i=i), t) for hf, ours, t in block]
    if not config.tie_weights:
        table.append(MAMBA_HEAD)
    return table


def mamba_from_hf(model: nn.Module, token_order: Sequence[int] | None = None) -> GPT:
    """A GPT of Mamba blocks (d_ff = 0) with the weights of a MambaForCausalLM; token_order: our
    id i is its id token_order[i], the rows it leaves out dropped (None: the same ids). Its
    residual_in_fp32 (keep the residual stream in float32 in a half-precision model) is not
    carried: an attnlab model keeps its stream in its own dtype, the same in float32."""
    kind, hf = type(model).__name__, model.config
    inner = getattr(hf, "intermediate_size", hf.expand * hf.hidden_size)
    problems = {
        f"hidden_act={hf.hidden_act!r} (attnlab's Mamba gates with 'silu')": hf.hidden_act
        not in ("silu", "swish"),
        f"intermediate_size={inner} (attnlab's is expand · hidden_size)": (
            inner != hf.expand * hf.hidden_size
        ),
    }
    bad = [name for name, present in problems.items() if present]
    if bad:
        raise ValueError(f"{kind} with {', '.join(bad)} does not convert to attnlab's GPT")
    options = MambaOptions(
        d_state=hf.state_size,
        d_conv=hf.conv_kernel,
        expand=hf.expand,
        dt_rank=int(hf.time_step_rank),
        dt_min=hf.time_step_min,
        dt_max=hf.time_step_max,
        dt_floor=hf.time_step_floor,
        bias=bool(hf.use_bias),
        conv_bias=bool(hf.use_conv_bias),
    )
    state, vocab_size = model.state_dict(), hf.vocab_size
    if token_order is not None:
        state, vocab_size = (
            reordered_rows(state, token_order, hf.vocab_size, (MAMBA_GLOBAL[0][0], MAMBA_HEAD[0])),
            len(token_order),
        )
    config = GPTConfig(
        vocab_size=vocab_size,
        context_length=CONTEXT_LENGTH,
        n_layers=hf.num_hidden_layers,
        mixer="mamba",
        mixer_options=options,
        d_model=hf.hidden_size,
        d_ff=0,
        norm="rmsnorm",
        norm_eps=hf.layer_norm_epsilon,
        positional="none",
        bias=False,
        tie_weights=bool(getattr(hf, "tie_word_embeddings", True)),
    )
    ours = GPT(config)
    copy_weights(state, ours, _mamba_table(config))
    return ours


def mamba_to_hf(model: GPT) -> nn.Module:
    """A MambaForCausalLM with the weights of a GPT of Mamba blocks without feed-forwards."""
    from transformers import MambaConfig, MambaForCausalLM

    c = model.config
    # c.bias is not asked for: such a GPT has nothing it reads (RMSNorm has no bias, there is no
    # feed-forward, and the mixer's biases are its own options), the same weights either way.
    shape = (c.mixer, c.ff_width, c.norm, c.positional, c.prenorm)
    if shape != ("mamba", 0, "rmsnorm", "none", True):
        raise ValueError(
            "only Mamba-shaped models (mixer 'mamba', d_ff = 0, RMSNorm, positional 'none', "
            "pre-norm) convert to MambaForCausalLM"
        )
    o: Any = c.mixer_settings
    hf_config = MambaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        state_size=o.d_state,
        num_hidden_layers=c.n_layers,
        layer_norm_epsilon=c.norm_eps,
        expand=o.expand,
        conv_kernel=o.d_conv,
        use_bias=o.bias,
        use_conv_bias=o.conv_bias,
        hidden_act="silu",
        time_step_rank=o.rank(c.d_model),
        time_step_min=o.dt_min,
        time_step_max=o.dt_max,
        time_step_floor=o.dt_floor,
        tie_word_embeddings=c.tie_weights,
        bos_token_id=None,  # attnlab's models name no special tokens
        eos_token_id=None,
        pad_token_id=None,
    )
    hf = MambaForCausalLM(hf_config)
    copy_weights(model.state_dict(), hf, [(ours, theirs, t) for theirs, ours, t in _mamba_table(c)])
    if c.tie_weights:
        hf.tie_weights()
    return hf
