"""ViT (ViTModel, ViTForImageClassification) to and from attnlab's VisionTransformer. ViT keeps
separate query, key and value layers, stores its patch projection as a convolution and its
position table as (1, T, D): those entries are joined, split or reshaped on the way across."""

from __future__ import annotations

import torch
from torch import nn

from attnlab.interop.tables import ACTIVATIONS, TO_HF_ACTIVATIONS, check_shape
from attnlab.models.vision_transformer import VisionTransformer, ViTConfig

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


def vit_from_hf(model: nn.Module) -> VisionTransformer:
    hf = model.config
    sizes = {name: getattr(hf, name) for name in ("image_size", "patch_size")}
    for name, size in sizes.items():
        if not isinstance(size, int) and len(set(size)) > 1:
            raise ValueError(f"a ViT of non-square {name} {tuple(size)} does not convert")
    side, patch = (s if isinstance(s, int) else s[0] for s in sizes.values())
    if not hf.qkv_bias:
        raise ValueError("ViT configs with qkv_bias=False are not supported")
    if hf.hidden_act not in ACTIVATIONS:
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
        activation=ACTIVATIONS[hf.hidden_act],
        norm_eps=hf.layer_norm_eps,
        dropout=hf.hidden_dropout_prob,  # fine-tuning regularises as it would there
    )
    ours = VisionTransformer(config)
    head = type(model).__name__ == "ViTForImageClassification"
    source, target = model.state_dict(), ours.state_dict()
    with torch.no_grad():
        for hf_names, our_name, reshape in _vit_table(config, head):
            value = torch.cat([source[n] for n in hf_names])
            check_shape(hf_names[0], value, our_name, target[our_name], reshape)
            target[our_name].copy_(value.reshape(target[our_name].shape))
    return ours


def vit_to_hf(model: VisionTransformer, head: bool) -> nn.Module:
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTForImageClassification, ViTModel

    c = model.config
    shape = (c.pooling, c.norm, c.bias)
    if shape != ("cls", "layernorm", True) or c.activation not in TO_HF_ACTIVATIONS:
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
        hidden_act=TO_HF_ACTIVATIONS[c.activation],
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
                check_shape(our_name, part, name, target[name], False)
                target[name].copy_(part)
    return hf
