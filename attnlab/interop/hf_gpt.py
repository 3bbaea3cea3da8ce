"""GPT-2 and Llama (Mistral: the same weights) to and from attnlab's GPT. GPT-2 stores its
linear layers as ``Conv1D`` with (in, out) weights, so those entries are transposed on the way
across. Llama is a GPT with RoPE, RMSNorm, SwiGLU, grouped-query attention and no biases; both
rotate channel i with channel i + Dh/2 ("rotate half"), so the query and key rows cross
unpermuted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from attnlab.interop.tables import (
    ACTIVATIONS,
    TO_HF_ACTIVATIONS,
    copy_weights,
    layer_name,
    reordered_rows,
)
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
# Llama: (Hugging Face name(s), attnlab name, transpose); a tuple of names is one fused weight.
LLAMA_GLOBAL = [
    ("model.embed_tokens.weight", "token_embedding.weight", False),
    ("model.norm.weight", "final_norm.weight", False),
]
LLAMA_BLOCK = [
    ("model.layers.{i}.input_layernorm.weight", "blocks.{i}.mixer_norm.weight", False),
    (
        tuple(f"model.layers.{{i}}.self_attn.{n}_proj.weight" for n in "qkv"),
        "blocks.{i}.token_mixer.qkv_projection.weight",
        False,
    ),
    (
        "model.layers.{i}.self_attn.o_proj.weight",
        "blocks.{i}.token_mixer.output_projection.weight",
        False,
    ),
    (
        "model.layers.{i}.post_attention_layernorm.weight",
        "blocks.{i}.feedforward_norm.weight",
        False,
    ),
] + [
    (
        f"model.layers.{{i}}.mlp.{n}_proj.weight",
        f"blocks.{{i}}.feedforward.{n}_projection.weight",
        False,
    )
    for n in ("gate", "up", "down")
]
LLAMA_HEAD = ("lm_head.weight", "output_head.weight", False)
# Hugging Face classes whose weights and computation are Llama's (Mistral: without a window)
LLAMA_CLASSES = ("LlamaForCausalLM", "MistralForCausalLM")


def _gpt2_table(config: GPTConfig) -> list[tuple[str, str, bool]]:
    table = list(GPT2_GLOBAL)
    for i in range(config.n_layers):
        table += [(hf.format(i=i), ours.format(i=i), t) for hf, ours, t in GPT2_BLOCK]
    if not config.tie_weights:
        table.append(GPT2_HEAD)
    return table


def gpt2_from_hf(model: nn.Module) -> GPT:
    hf = model.config
    unsupported = {
        "scale_attn_by_inverse_layer_idx": True,
        "reorder_and_upcast_attn": True,
        "scale_attn_weights": False,
    }
    for key, bad in unsupported.items():
        if getattr(hf, key, not bad) == bad:
            raise ValueError(f"GPT-2 config with {key}={bad} is not supported")
    if hf.activation_function not in ACTIVATIONS:
        raise ValueError(f"unsupported GPT-2 activation {hf.activation_function!r}")
    if getattr(hf, "add_cross_attention", False):
        raise ValueError("a GPT-2 with cross-attention (add_cross_attention) does not convert")
    config = GPTConfig(
        vocab_size=hf.vocab_size,
        context_length=hf.n_positions,
        n_layers=hf.n_layer,
        n_heads=hf.n_head,
        d_model=hf.n_embd,
        d_ff=hf.n_inner,
        activation=ACTIVATIONS[hf.activation_function],
        norm_eps=hf.layer_norm_epsilon,
        dropout=hf.resid_pdrop,  # one rate for residual branches, embeddings, attention weights
        tie_weights=bool(getattr(hf, "tie_word_embeddings", True)),
    )
    ours = GPT(config)
    copy_weights(
        model.state_dict(),
        ours,
        [(hf_name, our_name, t) for hf_name, our_name, t in _gpt2_table(config)],
    )
    return ours


def gpt2_to_hf(model: GPT) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    unlike_gpt2 = {  # what GPT-2 has not
        f"mixer {c.mixer!r}": c.mixer != "attention",
        f"positional {c.positional!r}": c.positional != "learned",
        f"norm {c.norm!r}": c.norm != "layernorm",
        "no biases": not c.bias,
        f"grouped-query heads (n_kv_heads {c.n_kv_heads})": c.n_kv_heads not in (None, c.n_heads),
        f"activation {c.activation!r}": c.activation not in TO_HF_ACTIVATIONS,
        "no feed-forward (d_ff 0)": not c.ff_width,
    }
    if unlike := [what for what, differs in unlike_gpt2.items() if differs]:
        raise ValueError(
            f"this GPT has {', '.join(unlike)}: only GPT-2-shaped models (learned positions, "
            "LayerNorm with bias, multi-head attention, a gelu/gelu_tanh/relu/silu feed-forward) "
            "convert, to GPT2LMHeadModel, Llama-shaped ones (attention, RoPE, RMSNorm, SwiGLU, no "
            "biases), to LlamaForCausalLM, and Mamba-shaped ones, to MambaForCausalLM"
        )
    hf_config = GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.context_length,
        n_embd=c.d_model,
        n_layer=c.n_layers,
        n_head=c.n_heads,
        n_inner=c.d_ff,
        activation_function=TO_HF_ACTIVATIONS[c.activation],
        layer_norm_epsilon=c.norm_eps,
        tie_word_embeddings=c.tie_weights,
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        bos_token_id=None,  # attnlab's models name no special tokens (GPT-2's 50256 is not ours)
        eos_token_id=None,
    )
    hf = GPT2LMHeadModel(hf_config)
    copy_weights(model.state_dict(), hf, [(ours, theirs, t) for theirs, ours, t in _gpt2_table(c)])
    if c.tie_weights:
        hf.tie_weights()
    return hf


def _llama_table(config: GPTConfig) -> list[tuple[Any, str, bool]]:
    table = list(LLAMA_GLOBAL)
    for i in range(config.n_layers):
        table += [(layer_name(hf, i), ours.format(i=i), t) for hf, ours, t in LLAMA_BLOCK]
    if not config.tie_weights:
        table.append(LLAMA_HEAD)
    return table


def _rope_base(hf: Any) -> float:
    """The RoPE base of a Llama-family config (transformers 5: rope_parameters; 4: rope_theta
    and rope_scaling); scaled or partial rotations are refused."""
    parameters = getattr(hf, "rope_parameters", None)
    if parameters is None:  # transformers 4
        parameters = dict(getattr(hf, "rope_scaling", None) or {}, rope_theta=hf.rope_theta)
    if (
        parameters.get("rope_type", parameters.get("type", "default")) != "default"
        or parameters.get("partial_rotary_factor", 1.0) != 1.0
    ):
        raise ValueError(f"only plain RoPE converts, got rope parameters {parameters}")
    return float(parameters["rope_theta"])


def llama_from_hf(model: nn.Module, token_order: Sequence[int] | None = None) -> GPT:
    """attnlab's GPT of a Llama-family model; token_order: our id i is its id token_order[i],
    the rows it leaves out dropped (None: the same ids)."""
    kind, hf = type(model).__name__, model.config
    if kind.startswith("Qwen2"):
        raise ValueError(
            "Qwen2 has biases on its query, key and value projections only; GPTConfig.bias puts "
            "them on every linear layer or on none, so Qwen2 does not convert"
        )
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    window = getattr(hf, "sliding_window", None)
    rate = getattr(hf, "attention_dropout", 0.0)
    problems = {
        f"hidden_act={hf.hidden_act!r} (SwiGLU needs 'silu')": ACTIVATIONS.get(hf.hidden_act)
        != "silu",
        "attention_bias=True": getattr(hf, "attention_bias", False),
        "mlp_bias=True": getattr(hf, "mlp_bias", False),
        f"head_dim={head_dim} (attnlab's is hidden_size / heads)": (
            head_dim * hf.num_attention_heads != hf.hidden_size
        ),
        f"sliding_window={window}": window is not None and window < hf.max_position_embeddings,
        f"attention_dropout={rate} (attnlab's rate also drops residual branches: set it to 0, "
        "and choose --dropout when training)": rate,
    }
    bad = [name for name, present in problems.items() if present]
    if bad:
        raise ValueError(f"{kind} with {', '.join(bad)} does not convert to attnlab's GPT")
    state, vocab_size = model.state_dict(), hf.vocab_size
    if token_order is not None:
        names = (LLAMA_GLOBAL[0][0], LLAMA_HEAD[0])
        state, vocab_size = reordered_rows(state, token_order, vocab_size, names), len(token_order)
    config = GPTConfig(
        vocab_size=vocab_size,
        context_length=hf.max_position_embeddings,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        n_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
        d_model=hf.hidden_size,
        d_ff=hf.intermediate_size,
        norm="rmsnorm",
        norm_eps=hf.rms_norm_eps,
        positional="rope",
        rope_base=_rope_base(hf),
        activation="swiglu",
        bias=False,
        tie_weights=bool(getattr(hf, "tie_word_embeddings", False)),
    )
    ours = GPT(config)
    copy_weights(state, ours, _llama_table(config))
    return ours


def llama_to_hf(model: GPT) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    hf_config = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.ff_width,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads or c.n_heads,
        hidden_act="silu",
        max_position_embeddings=c.context_length,
        rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_base,
        # attnlab's dropout also drops residual branches, which Llama cannot (from_hf refuses a
        # nonzero attention_dropout for that reason): none goes across, so the model comes back
        attention_dropout=0.0,
        tie_word_embeddings=c.tie_weights,
        bos_token_id=None,  # attnlab's models name no special tokens
        eos_token_id=None,
        pad_token_id=None,
    )
    hf = LlamaForCausalLM(hf_config)
    table = [(ours, theirs, t) for theirs, ours, t in _llama_table(c)]
    copy_weights(model.state_dict(), hf, table)
    if c.tie_weights:
        hf.tie_weights()
    return hf
