"""Weights to and from Hugging Face ``transformers`` models, through explicit name tables: one
module per family (hf_gpt.py: GPT-2, Llama, Mistral; hf_mamba.py; hf_bert.py; hf_vit.py),
foreign parameter names only in their tables. ``transformers`` is imported lazily: only the
conversions need it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from attnlab.interop.hf_bert import bert_from_hf, bert_to_hf
from attnlab.interop.hf_gpt import (
    LLAMA_CLASSES,
    gpt2_from_hf,
    gpt2_to_hf,
    llama_from_hf,
    llama_to_hf,
)
from attnlab.interop.hf_mamba import mamba_from_hf, mamba_to_hf
from attnlab.interop.hf_vit import vit_from_hf, vit_to_hf
from attnlab.models.bert import BertClassifier, BertForMaskedLM
from attnlab.models.gpt import GPT
from attnlab.models.vision_transformer import VisionTransformer
from attnlab.training.artifacts import ClassNames


def from_hf(model: nn.Module, token_order: Sequence[int] | None = None) -> nn.Module:
    """An attnlab model with the weights of a Hugging Face model: GPT2LMHeadModel,
    LlamaForCausalLM and MistralForCausalLM (without a sliding window) -> GPT;
    MambaForCausalLM -> GPT of Mamba blocks without feed-forwards (see hf_mamba: its context
    length, and the padding it does not mask);
    BertForMaskedLM -> BertForMaskedLM; BertForSequenceClassification and BertModel ->
    BertClassifier (from BertModel, with a new classification head); ViTForImageClassification
    or ViTModel -> VisionTransformer (from a ViTModel the head is new, zero, with
    config.num_labels outputs, and the pooler, a tanh layer for pre-training, is left behind).
    The model comes in the given one's mode (training or eval) and dtype. token_order, for a
    BERT, a Mamba or a Llama: our id i is its id token_order[i] (see hf_bert.bert_from_hf; a
    Mamba's or a Llama's rows it leaves out are dropped, see hf_mamba)."""
    kind = type(model).__name__
    if isinstance(model, str | os.PathLike):
        raise ValueError(
            "from_hf takes a Hugging Face model object: load a folder or hub name with "
            "transformers first (AutoModelForCausalLM.from_pretrained(path), say)"
        )
    ordered = kind.startswith("Bert") or kind in ("MambaForCausalLM", *LLAMA_CLASSES)
    if token_order is not None and not ordered:
        raise ValueError(
            f"token_order renumbers a BERT's, a Mamba's or a Llama's vocabulary, not a {kind}'s"
        )
    if kind.startswith("Bert"):
        convert = functools.partial(bert_from_hf, token_order=token_order)
    elif kind in LLAMA_CLASSES or kind.startswith("Qwen2"):
        convert = functools.partial(llama_from_hf, token_order=token_order)
    elif kind in ("ViTModel", "ViTForImageClassification"):
        convert = vit_from_hf
    elif kind == "GPT2LMHeadModel":
        convert = gpt2_from_hf
    elif kind == "MambaForCausalLM":
        convert = functools.partial(mamba_from_hf, token_order=token_order)
    else:
        raise ValueError(
            "from_hf supports GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, "
            "MambaForCausalLM, BertModel, "
            "BertForMaskedLM, BertForSequenceClassification, ViTModel and "
            f"ViTForImageClassification, got {kind}"
        )
    return _converted(convert, model)


def _converted(convert: Callable[[nn.Module], nn.Module], model: nn.Module) -> nn.Module:
    """convert(model) in model's dtype and mode; built in float64 for a float64 model, so that
    its weights are copied without rounding."""
    dtype = next(model.parameters()).dtype
    with _default_dtype(torch.float64 if dtype == torch.float64 else torch.get_default_dtype()):
        converted = convert(model)
    return converted.to(dtype).train(model.training)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def to_hf(
    model: nn.Module, head: bool = True, classes: ClassNames | Sequence[str] | None = None
) -> nn.Module:
    """A Hugging Face model with the weights of an attnlab model: GPT -> GPT2LMHeadModel, or
    LlamaForCausalLM for a Llama-shaped GPT (RoPE, RMSNorm, SwiGLU, no biases), or
    MambaForCausalLM for one of Mamba blocks without feed-forwards (d_ff = 0);
    BertForMaskedLM -> BertForMaskedLM, BertClassifier -> BertForSequenceClassification;
    VisionTransformer -> ViTForImageClassification, or with head=False ViTModel (no pooler).
    classes: a classifier's class names (its checkpoint's "classes" artefact), which become
    the config's id2label and label2id (else Hugging Face's LABEL_0, LABEL_1, ...).
    The model comes in the given one's mode (training or eval) and dtype. A subclass (an image
    GPT, with its palette and masked start token) is refused: Hugging Face's class would not be
    it."""
    if not head and type(model) is not VisionTransformer:  # else it would come with its head
        raise ValueError(f"head=False: a {type(model).__name__} converts with its head")
    if isinstance(classes, str):  # else each of its characters would name a class
        raise ValueError(f"classes is a list of class names, not one string: got {classes!r}")
    if classes is not None:
        names = list(classes.names if isinstance(classes, ClassNames) else classes)
        classifier = type(model) is BertClassifier or (type(model) is VisionTransformer and head)
        if not classifier or model.config.n_classes != len(names) or len(set(names)) < len(names):
            raise ValueError(
                f"classes: {len(names)} names, each its own, for a classifier of as many classes "
                "(a BertClassifier, or a VisionTransformer with its head)"
            )
    if type(model) in (BertForMaskedLM, BertClassifier):
        convert = bert_to_hf
    elif type(model) is VisionTransformer:
        convert = functools.partial(vit_to_hf, head=head)
    elif type(model) is GPT:
        c = model.config
        if not c.prenorm:
            raise ValueError(
                "a post-norm GPT (prenorm = false) does not convert: GPT-2 and Llama normalise "
                "before each sub-layer (pre-norm), with a final norm"
            )
        llama = ("attention", "rope", "rmsnorm", "swiglu", False)
        llama_shaped = (c.mixer, c.positional, c.norm, c.activation, c.bias) == llama
        if c.mixer == "mamba":
            convert = mamba_to_hf
        else:
            convert = llama_to_hf if llama_shaped and c.ff_width else gpt2_to_hf
    else:
        raise ValueError(
            "to_hf supports GPT, BertForMaskedLM, BertClassifier and VisionTransformer, got "
            f"{type(model).__name__}"
        )
    converted = _converted(convert, model)
    if classes is not None:
        converted.config.id2label = dict(enumerate(names))
        converted.config.label2id = {name: i for i, name in enumerate(names)}
    return converted


def class_names(model: nn.Module) -> ClassNames | None:
    """The class names of a Hugging Face classifier (its config's id2label), as the "classes"
    artefact of a checkpoint saves them; None where they are Hugging Face's placeholders
    (LABEL_0, LABEL_1, ...), names attnlab's classes cannot have (as train's --label-names:
    empty, twice, or with a tab or line break, which classify's fields would split) or the
    model has no classes."""
    id2label = getattr(model.config, "id2label", None) or {}
    names = tuple(str(id2label[i]) for i in range(len(id2label)) if i in id2label)
    if len(names) != len(id2label) or names == tuple(f"LABEL_{i}" for i in range(len(names))):
        return None
    if len(set(names)) < len(names) or not all(n and n.isprintable() for n in names):
        return None
    return ClassNames(names)
