"""Weights to and from Hugging Face ``transformers`` models, through explicit name tables: one
module per family (hf_gpt.py: GPT-2, Llama, Mistral; hf_bert.py; hf_vit.py), foreign parameter
names only in their tables. ``transformers`` is imported lazily: only the conversions need it.
"""

from __future__ import annotations

from torch import nn

from attnlab.interop.hf_bert import bert_from_hf, bert_to_hf
from attnlab.interop.hf_gpt import (
    LLAMA_CLASSES,
    gpt2_from_hf,
    gpt2_to_hf,
    llama_from_hf,
    llama_to_hf,
)
from attnlab.interop.hf_vit import vit_from_hf, vit_to_hf
from attnlab.models.bert import BertClassifier, BertForMaskedLM
from attnlab.models.gpt import GPT
from attnlab.models.vision_transformer import VisionTransformer


def from_hf(model: nn.Module) -> nn.Module:
    """An attnlab model with the weights of a Hugging Face model: GPT2LMHeadModel,
    LlamaForCausalLM and MistralForCausalLM (without a sliding window) -> GPT;
    BertForMaskedLM -> BertForMaskedLM; BertForSequenceClassification and BertModel ->
    BertClassifier (from BertModel, with a new classification head); ViTForImageClassification
    or ViTModel -> VisionTransformer (from a ViTModel the head is new, zero, with
    config.num_labels outputs, and the pooler, a tanh layer for pre-training, is left behind)."""
    kind = type(model).__name__
    if kind.startswith("Bert"):
        return bert_from_hf(model)
    if kind in LLAMA_CLASSES or kind.startswith("Qwen2"):
        return llama_from_hf(model)
    if kind in ("ViTModel", "ViTForImageClassification"):
        return vit_from_hf(model)
    if kind != "GPT2LMHeadModel":
        raise ValueError(
            "from_hf supports GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, BertModel, "
            "BertForMaskedLM, BertForSequenceClassification, ViTModel and "
            f"ViTForImageClassification, got {kind}"
        )
    return gpt2_from_hf(model)


def to_hf(model: nn.Module, head: bool = True) -> nn.Module:
    """A Hugging Face model with the weights of an attnlab model: GPT -> GPT2LMHeadModel, or
    LlamaForCausalLM for a Llama-shaped GPT (RoPE, RMSNorm, SwiGLU, no biases);
    BertForMaskedLM -> BertForMaskedLM, BertClassifier -> BertForSequenceClassification;
    VisionTransformer -> ViTForImageClassification, or with head=False ViTModel (no pooler)."""
    if isinstance(model, BertForMaskedLM | BertClassifier):
        return bert_to_hf(model)
    if isinstance(model, VisionTransformer):
        return vit_to_hf(model, head)
    if not isinstance(model, GPT):
        raise ValueError(
            "to_hf supports GPT, BertForMaskedLM, BertClassifier and VisionTransformer, got "
            f"{type(model).__name__}"
        )
    c = model.config
    llama = ("attention", "rope", "rmsnorm", "swiglu", False)
    if (c.mixer, c.positional, c.norm, c.activation, c.bias) == llama:
        return llama_to_hf(model)
    return gpt2_to_hf(model)
