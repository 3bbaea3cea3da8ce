"""Weights to and from Hugging Face ``transformers`` models, through explicit name tables.

Foreign parameter names appear only in the tables below. GPT-2 stores its linear layers as
``Conv1D`` with (in, out) weights, so those entries are transposed on the way across. Llama
(and Mistral, the same weights) is a GPT with RoPE, RMSNorm, SwiGLU, grouped-query attention
and no biases; both rotate channel i with channel i + Dh/2 ("rotate half"), so the query and
key rows cross unpermuted. BERT, Llama and ViT keep separate query, key and value layers, which
our one qkv_projection holds stacked; ViT stores its patch projection as a convolution and its
position table as (1, T, D): those entries are joined, split or reshaped on the way across.
``transformers`` is imported lazily: only these functions need it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnlab.models.bert import BertClassifier, BertConfig, BertForMaskedLM
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.vision_transformer import VisionTransformer, ViTConfig

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
# BERT: (Hugging Face name(s), attnlab name, transpose); "{i}" is the block index. Hugging Face
# keeps query, key and value as three linear layers; attnlab one fused projection.
BERT_ENCODER = [
    ("embeddings.word_embeddings.weight", "encoder.token_embedding.weight", False),
    ("embeddings.position_embeddings.weight", "encoder.position_embedding.weight", False),
    ("embeddings.token_type_embeddings.weight", "encoder.segment_embedding.weight", False),
    ("embeddings.LayerNorm.weight", "encoder.embedding_norm.weight", False),
    ("embeddings.LayerNorm.bias", "encoder.embedding_norm.bias", False),
]
_WEIGHT_BIAS = ("weight", "bias")
BERT_BLOCK = [
    (
        tuple(f"encoder.layer.{{i}}.attention.self.{n}.{p}" for n in ("query", "key", "value")),
        f"encoder.blocks.{{i}}.token_mixer.qkv_projection.{p}",
        False,
    )
    for p in _WEIGHT_BIAS
] + [
    (f"encoder.layer.{{i}}.{hf}.{p}", f"encoder.blocks.{{i}}.{ours}.{p}", False)
    for hf, ours in (
        ("attention.output.dense", "token_mixer.output_projection"),
        ("attention.output.LayerNorm", "mixer_norm"),
        ("intermediate.dense", "feedforward.up_projection"),
        ("output.dense", "feedforward.down_projection"),
        ("output.LayerNorm", "feedforward_norm"),
    )
    for p in _WEIGHT_BIAS
]
BERT_POOLER = [(f"pooler.dense.{p}", f"pooler.{p}", False) for p in _WEIGHT_BIAS]
BERT_CLASSIFIER = [(f"classifier.{p}", f"classifier.{p}", False) for p in _WEIGHT_BIAS]
BERT_MLM_HEAD = [
    (f"cls.predictions.transform.{hf}.{p}", f"{ours}.{p}", False)
    for hf, ours in (("dense", "mlm_transform"), ("LayerNorm", "mlm_norm"))
    for p in _WEIGHT_BIAS
] + [("cls.predictions.bias", "mlm_bias", False)]
# Hugging Face BERT class -> (its encoder's name prefix, the table of its heads)
BERT_HEADS = {
    "BertModel": ("", BERT_POOLER),
    "BertForSequenceClassification": (
        "bert.",
        [("bert." + hf, ours, t) for hf, ours, t in BERT_POOLER] + BERT_CLASSIFIER,
    ),
    "BertForMaskedLM": ("bert.", BERT_MLM_HEAD),
}
# Llama: (Hugging Face name(s), attnlab name, transpose); "{i}" is the block index. A tuple of
# three names (query, key and value rows, in that order) is attnlab's one fused projection.
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
# Hugging Face activation names -> ours
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
    """An attnlab model with the weights of a Hugging Face model: GPT2LMHeadModel,
    LlamaForCausalLM and MistralForCausalLM (without a sliding window) -> GPT;
    BertForMaskedLM -> BertForMaskedLM; BertForSequenceClassification and BertModel ->
    BertClassifier (from BertModel, with a new classification head); ViTForImageClassification
    or ViTModel -> VisionTransformer (from a ViTModel the head is new, zero, with
    config.num_labels outputs, and the pooler, a tanh layer for pre-training, is left behind)."""
    kind = type(model).__name__
    if kind.startswith("Bert"):
        return _bert_from_hf(model)
    if kind in LLAMA_CLASSES or kind.startswith("Qwen2"):
        return _llama_from_hf(model)
    if kind in ("ViTModel", "ViTForImageClassification"):
        return _vit_from_hf(model)
    if kind != "GPT2LMHeadModel":
        raise ValueError(
            "from_hf supports GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, BertModel, "
            "BertForMaskedLM, BertForSequenceClassification, ViTModel and "
            f"ViTForImageClassification, got {kind}"
        )
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


def to_hf(model: nn.Module, head: bool = True) -> nn.Module:
    """A Hugging Face model with the weights of an attnlab model: GPT -> GPT2LMHeadModel, or
    LlamaForCausalLM for a Llama-shaped GPT (RoPE, RMSNorm, SwiGLU, no biases);
    BertForMaskedLM -> BertForMaskedLM, BertClassifier -> BertForSequenceClassification;
    VisionTransformer -> ViTForImageClassification, or with head=False ViTModel (no pooler)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if isinstance(model, BertForMaskedLM | BertClassifier):
        return _bert_to_hf(model)
    if isinstance(model, VisionTransformer):
        return _vit_to_hf(model, head)
    if not isinstance(model, GPT):
        raise ValueError(f"to_hf supports GPT, got {type(model).__name__}")
    c = model.config
    shape = (c.mixer, c.positional, c.norm, c.activation, c.bias)
    if shape == ("attention", "rope", "rmsnorm", "swiglu", False):
        return _llama_to_hf(model)
    activation = {v: k for k, v in GPT2_ACTIVATIONS.items() if k != "gelu_pytorch_tanh"}
    gpt2_shaped = (
        shape[:3] == ("attention", "learned", "layernorm")
        and c.bias
        and (c.n_kv_heads or c.n_heads) == c.n_heads
        and c.activation in activation
    )
    if not gpt2_shaped:
        raise ValueError(
            "only GPT-2-shaped models (learned positions, LayerNorm with bias, multi-head "
            "attention, gelu/gelu_tanh/relu) convert, to GPT2LMHeadModel, and Llama-shaped ones "
            "(attention, RoPE, RMSNorm, SwiGLU, no biases), to LlamaForCausalLM"
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
    source: dict[str, torch.Tensor], target: nn.Module, table: list[tuple[Any, Any, bool]]
) -> None:
    """Copy source[src] (transposed where marked) into target's parameter dst, checking shapes.
    A tuple of source names is concatenated along dim 0 (one fused projection from three); a
    tuple of target names receives consecutive dim-0 slices as long as each target's rows
    (three projections from one; with grouped-query heads, keys and values have fewer rows)."""
    target_state: dict[str, Any] = target.state_dict()
    with torch.no_grad():
        for src, dst, transpose in table:
            value = torch.cat([source[n] for n in src]) if isinstance(src, tuple) else source[src]
            value = value.t() if transpose else value
            pieces = dst if isinstance(dst, tuple) else (dst,)
            rows = [len(target_state[name]) for name in pieces]
            slices = value.split(rows) if sum(rows) == len(value) else [value] * len(pieces)
            for name, piece in zip(pieces, slices, strict=True):
                if piece.shape != target_state[name].shape:
                    raise ValueError(
                        f"shape mismatch {src} {tuple(piece.shape)} -> {name} "
                        f"{tuple(target_state[name].shape)}"
                    )
                target_state[name].copy_(piece)


def _bert_table(config: BertConfig, hf_class: str) -> list[tuple[Any, str, bool]]:
    """The name table of a BERT model of Hugging Face class `hf_class`."""
    prefix, heads = BERT_HEADS[hf_class]
    rows = list(BERT_ENCODER)
    for i in range(config.n_layers):
        rows += [(_format(hf, i), ours.format(i=i), t) for hf, ours, t in BERT_BLOCK]
    return [(_prefixed(prefix, hf), ours, t) for hf, ours, t in rows] + heads


def _format(name: Any, i: int) -> Any:
    return tuple(n.format(i=i) for n in name) if isinstance(name, tuple) else name.format(i=i)


def _prefixed(prefix: str, name: Any) -> Any:
    return tuple(prefix + n for n in name) if isinstance(name, tuple) else prefix + name


def _bert_from_hf(model: nn.Module) -> nn.Module:
    kind = type(model).__name__
    if kind not in BERT_HEADS:
        raise ValueError(f"from_hf supports {', '.join(BERT_HEADS)} among BERT models, got {kind}")
    hf = model.config
    if getattr(hf, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"BERT with {hf.position_embedding_type} positions is not supported")
    if hf.hidden_act not in GPT2_ACTIVATIONS:
        raise ValueError(f"unsupported BERT activation {hf.hidden_act!r}")
    config = BertConfig(
        vocab_size=hf.vocab_size,
        context_length=hf.max_position_embeddings,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        d_model=hf.hidden_size,
        d_ff=hf.intermediate_size,
        n_segments=hf.type_vocab_size,
        activation=GPT2_ACTIVATIONS[hf.hidden_act],
        norm_eps=hf.layer_norm_eps,
        dropout=hf.hidden_dropout_prob,
        pad_id=hf.pad_token_id if hf.pad_token_id is not None else 0,
        n_classes=hf.num_labels,
    )
    ours = BertForMaskedLM(config) if kind == "BertForMaskedLM" else BertClassifier(config)
    _copy(model.state_dict(), ours, _bert_table(config, kind))
    return ours


def _bert_to_hf(model: nn.Module) -> nn.Module:
    from transformers import BertConfig as HFBertConfig
    from transformers import BertForMaskedLM as HFBertForMaskedLM
    from transformers import BertForSequenceClassification

    c = model.config
    if c.prenorm or c.positional != "learned":
        raise ValueError(
            "only BERT-shaped models (post-norm, learned positions) convert to Hugging Face"
        )
    activation = {v: k for k, v in GPT2_ACTIVATIONS.items() if k != "gelu_pytorch_tanh"}
    hf_config = HFBertConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        intermediate_size=c.ff_width,
        hidden_act=activation[c.activation],
        hidden_dropout_prob=c.dropout,
        attention_probs_dropout_prob=c.dropout,
        max_position_embeddings=c.context_length,
        type_vocab_size=c.n_segments,
        layer_norm_eps=c.norm_eps,
        pad_token_id=c.pad_id,
        num_labels=c.n_classes,
    )
    masked = isinstance(model, BertForMaskedLM)
    hf = (HFBertForMaskedLM if masked else BertForSequenceClassification)(hf_config)
    table = _bert_table(c, type(hf).__name__)
    _copy(model.state_dict(), hf, [(ours, theirs, t) for theirs, ours, t in table])
    if masked:
        hf.tie_weights()
    return hf


# ----------------------------------------------------------------------------- ViT
# (Hugging Face names, stacked in this order along dim 0, attnlab name, reshape). "{p}" is the
# backbone's prefix ("vit." in ViTForImageClassification), "{i}" the block index. Reshaped
# entries keep their values in order: the convolution kernel (D, C, P, P) is our linear weight
# (D, C·P·P) over patches flattened in (channel, row, column) order.
VIT_GLOBAL = [
    (("{p}embeddings.cls_token",), "class_token", False),
    (("{p}embeddings.position_embeddings",), "position_embedding.weight", True),
    (
        ("{p}embeddings.patch_embeddings.projection.weight",),
        "patch_embedding.projection.weight",
        True,
    ),
    (("{p}embeddings.patch_embeddings.projection.bias",), "patch_embedding.projection.bias", False),
    (("{p}layernorm.weight",), "final_norm.weight", False),
    (("{p}layernorm.bias",), "final_norm.bias", False),
]
VIT_BLOCK = [
    (
        tuple(f"{{p}}layers.{{i}}.attention.{x}_proj.weight" for x in "qkv"),
        "blocks.{i}.token_mixer.qkv_projection.weight",
        False,
    ),
    (
        tuple(f"{{p}}layers.{{i}}.attention.{x}_proj.bias" for x in "qkv"),
        "blocks.{i}.token_mixer.qkv_projection.bias",
        False,
    ),
    (
        ("{p}layers.{i}.attention.o_proj.weight",),
        "blocks.{i}.token_mixer.output_projection.weight",
        False,
    ),
    (
        ("{p}layers.{i}.attention.o_proj.bias",),
        "blocks.{i}.token_mixer.output_projection.bias",
        False,
    ),
    (("{p}layers.{i}.layernorm_before.weight",), "blocks.{i}.mixer_norm.weight", False),
    (("{p}layers.{i}.layernorm_before.bias",), "blocks.{i}.mixer_norm.bias", False),
    (("{p}layers.{i}.layernorm_after.weight",), "blocks.{i}.feedforward_norm.weight", False),
    (("{p}layers.{i}.layernorm_after.bias",), "blocks.{i}.feedforward_norm.bias", False),
    (("{p}layers.{i}.mlp.fc1.weight",), "blocks.{i}.feedforward.up_projection.weight", False),
    (("{p}layers.{i}.mlp.fc1.bias",), "blocks.{i}.feedforward.up_projection.bias", False),
    (("{p}layers.{i}.mlp.fc2.weight",), "blocks.{i}.feedforward.down_projection.weight", False),
    (("{p}layers.{i}.mlp.fc2.bias",), "blocks.{i}.feedforward.down_projection.bias", False),
]
VIT_HEAD = [
    (("classifier.weight",), "head.weight", False),
    (("classifier.bias",), "head.bias", False),
]
# ViT's activation names -> ours
VIT_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu", "silu": "silu"}

Joined = tuple[tuple[str, ...], str, bool]


def _vit_table(config: ViTConfig, head: bool) -> list[Joined]:
    prefix = "vit." if head else ""
    entries = list(VIT_GLOBAL) + [
        (tuple(n.replace("{i}", str(i)) for n in hf), ours.format(i=i), reshape)
        for i in range(config.n_layers)
        for hf, ours, reshape in VIT_BLOCK
    ]
    table = [(tuple(n.replace("{p}", prefix) for n in hf), ours, r) for hf, ours, r in entries]
    return table + (VIT_HEAD if head else [])


def _vit_from_hf(model: nn.Module) -> VisionTransformer:
    hf = model.config
    side = hf.image_size if isinstance(hf.image_size, int) else hf.image_size[0]
    patch = hf.patch_size if isinstance(hf.patch_size, int) else hf.patch_size[0]
    if not hf.qkv_bias:
        raise ValueError("ViT configs with qkv_bias=False are not supported")
    if hf.hidden_act not in VIT_ACTIVATIONS:
        raise ValueError(f"unsupported ViT activation {hf.hidden_act!r}")
    config = ViTConfig(
        image_size=side,
        patch_size=patch,
        channels=hf.num_channels,
        n_classes=hf.num_labels,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        d_model=hf.hidden_size,
        d_ff=hf.intermediate_size,
        activation=VIT_ACTIVATIONS[hf.hidden_act],
        norm_eps=hf.layer_norm_eps,
    )
    ours = VisionTransformer(config)
    head = type(model).__name__ == "ViTForImageClassification"
    source, target = model.state_dict(), ours.state_dict()
    with torch.no_grad():
        for hf_names, our_name, reshape in _vit_table(config, head):
            value = torch.cat([source[n] for n in hf_names])
            _check_shape(hf_names[0], value, our_name, target[our_name], reshape)
            target[our_name].copy_(value.reshape(target[our_name].shape))
    return ours


def _vit_to_hf(model: VisionTransformer, head: bool) -> nn.Module:
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTForImageClassification, ViTModel

    c = model.config
    activation = {v: k for k, v in VIT_ACTIVATIONS.items()}
    if (c.pooling, c.norm, c.bias) != ("cls", "layernorm", True) or c.activation not in activation:
        raise ValueError(
            "only ViT-shaped models (a class token, LayerNorm with bias, biases, "
            "gelu/gelu_tanh/relu/silu) convert to Hugging Face's ViT"
        )
    hf_config = HFViTConfig(
        image_size=c.image_size,
        patch_size=c.patch_size,
        num_channels=c.channels,
        num_labels=c.n_classes,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        hidden_size=c.d_model,
        intermediate_size=c.d_ff or 4 * c.d_model,
        hidden_act=activation[c.activation],
        layer_norm_eps=c.norm_eps,
        hidden_dropout_prob=c.dropout,
        attention_probs_dropout_prob=c.dropout,
    )
    hf = ViTForImageClassification(hf_config) if head else ViTModel(hf_config, False)
    source, target = model.state_dict(), hf.state_dict()
    with torch.no_grad():
        for hf_names, our_name, reshape in _vit_table(c, head):
            parts = source[our_name]
            if reshape:  # only single entries are reshaped
                parts = parts.reshape(target[hf_names[0]].shape)
            for name, part in zip(hf_names, parts.chunk(len(hf_names)), strict=True):
                _check_shape(our_name, part, name, target[name], False)
                target[name].copy_(part)
    return hf


def _check_shape(src: str, value: torch.Tensor, dst: str, target: torch.Tensor, reshape: bool):
    """Equal shapes, or with reshape equal sizes."""
    same = value.numel() == target.numel() if reshape else value.shape == target.shape
    if not same:
        raise ValueError(
            f"shape mismatch {src} {tuple(value.shape)} -> {dst} {tuple(target.shape)}"
        )


def _llama_table(config: GPTConfig) -> list[tuple[Any, str, bool]]:
    table = list(LLAMA_GLOBAL)
    for i in range(config.n_layers):
        table += [(_format(hf, i), ours.format(i=i), t) for hf, ours, t in LLAMA_BLOCK]
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


def _llama_from_hf(model: nn.Module) -> GPT:
    kind, hf = type(model).__name__, model.config
    if kind.startswith("Qwen2"):
        raise ValueError(
            "Qwen2 has biases on its query, key and value projections only; GPTConfig.bias puts "
            "them on every linear layer or on none, so Qwen2 does not convert"
        )
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    window = getattr(hf, "sliding_window", None)
    problems = {
        f"hidden_act={hf.hidden_act!r} (SwiGLU needs 'silu')": hf.hidden_act != "silu",
        "attention_bias=True": getattr(hf, "attention_bias", False),
        "mlp_bias=True": getattr(hf, "mlp_bias", False),
        f"head_dim={head_dim} (attnlab's is hidden_size / heads)": (
            head_dim * hf.num_attention_heads != hf.hidden_size
        ),
        f"sliding_window={window}": window is not None and window < hf.max_position_embeddings,
    }
    bad = [name for name, present in problems.items() if present]
    if bad:
        raise ValueError(f"{kind} with {', '.join(bad)} does not convert to attnlab's GPT")
    config = GPTConfig(
        vocab_size=hf.vocab_size,
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
        dropout=getattr(hf, "attention_dropout", 0.0),
        tie_weights=bool(getattr(hf, "tie_word_embeddings", False)),
    )
    ours = GPT(config)
    _copy(model.state_dict(), ours, _llama_table(config))
    return ours


def _llama_to_hf(model: GPT) -> nn.Module:
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
        attention_dropout=c.dropout,
        tie_word_embeddings=c.tie_weights,
        bos_token_id=None,  # attnlab's models name no special tokens
        eos_token_id=None,
        pad_token_id=None,
    )
    hf = LlamaForCausalLM(hf_config)
    table = [(ours, theirs, t) for theirs, ours, t in _llama_table(c)]
    _copy(model.state_dict(), hf, table)
    if c.tie_weights:
        hf.tie_weights()
    return hf
