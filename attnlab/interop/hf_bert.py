"""BERT (BertModel, BertForMaskedLM, BertForSequenceClassification) to and from attnlab's
BertForMaskedLM and BertClassifier. Hugging Face keeps query, key and value as three linear
layers; attnlab one fused projection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnlab.interop.tables import (
    ACTIVATIONS,
    TO_HF_ACTIVATIONS,
    copy_weights,
    layer_name,
    prefixed,
)
from attnlab.models.bert import BertClassifier, BertConfig, BertForMaskedLM

# (Hugging Face name(s), attnlab name, transpose); "{i}" is the block index, a tuple of names
# one fused weight.
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


def _bert_table(config: BertConfig, hf_class: str) -> list[tuple[Any, str, bool]]:
    """The name table of a BERT model of Hugging Face class `hf_class`."""
    prefix, heads = BERT_HEADS[hf_class]
    rows = list(BERT_ENCODER)
    for i in range(config.n_layers):
        rows += [(layer_name(hf, i), ours.format(i=i), t) for hf, ours, t in BERT_BLOCK]
    return [(prefixed(prefix, hf), ours, t) for hf, ours, t in rows] + heads


def bert_from_hf(model: nn.Module, token_order: Sequence[int] | None = None) -> nn.Module:
    """attnlab's BERT of a Hugging Face one; token_order: our id i is its id token_order[i], the
    vocabulary rows (embeddings, masked-LM bias) and pad_id renumbered to match (None: the same
    ids). WordPieceTokenizer.from_vocab gives the order that puts the special tokens last."""
    kind = type(model).__name__
    if kind not in BERT_HEADS:
        raise ValueError(f"from_hf supports {', '.join(BERT_HEADS)} among BERT models, got {kind}")
    hf = model.config
    if getattr(hf, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"BERT with {hf.position_embedding_type} positions is not supported")
    if hf.hidden_act not in ACTIVATIONS:
        raise ValueError(f"unsupported BERT activation {hf.hidden_act!r}")
    if hf.is_decoder or hf.add_cross_attention:
        raise ValueError("a BERT decoder (is_decoder, add_cross_attention) does not convert")
    if hf.pad_token_id is None:
        raise ValueError(
            "a BERT without pad_token_id does not convert: attnlab's BERT never attends to its "
            "padding token, so it needs one (set config.pad_token_id)"
        )
    if kind == "BertForSequenceClassification" and (
        hf.num_labels < 2 or hf.problem_type not in (None, "single_label_classification")
    ):
        raise ValueError(
            "only single-label classification (2 or more classes) converts: attnlab's "
            "classifier is trained by cross-entropy over its classes"
        )
    if kind == "BertForMaskedLM" and not getattr(hf, "tie_word_embeddings", True):
        raise ValueError(
            "a BertForMaskedLM whose output layer is not its word embeddings does not convert: "
            "attnlab's masked-LM head shares them"
        )
    source, pad_id = model.state_dict(), hf.pad_token_id
    if token_order is not None:
        source, pad_id = _renumbered(source, kind, token_order), list(token_order).index(pad_id)
    config = BertConfig(
        vocab_size=hf.vocab_size,
        context_length=hf.max_position_embeddings,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        d_model=hf.hidden_size,
        d_ff=hf.intermediate_size,
        n_segments=hf.type_vocab_size,
        activation=ACTIVATIONS[hf.hidden_act],
        norm_eps=hf.layer_norm_eps,
        dropout=hf.hidden_dropout_prob,
        pad_id=pad_id,
        n_classes=hf.num_labels,
    )
    ours = BertForMaskedLM(config) if kind == "BertForMaskedLM" else BertClassifier(config)
    copy_weights(source, ours, _bert_table(config, kind))
    return ours


def _renumbered(
    state: dict[str, torch.Tensor], kind: str, order: Sequence[int]
) -> dict[str, torch.Tensor]:
    """The state dict with its vocabulary rows in `order` (a permutation of the ids)."""
    embedding = BERT_HEADS[kind][0] + "embeddings.word_embeddings.weight"
    rows = [embedding, "cls.predictions.bias"]  # the second: a masked-LM head's, where it has one
    vocab_size = len(state[embedding])
    if sorted(order) != list(range(vocab_size)):
        raise ValueError(f"token_order must be a permutation of the {vocab_size} token ids")
    index = torch.as_tensor(list(order))
    return {**state, **{name: state[name][index] for name in rows if name in state}}


def bert_to_hf(model: nn.Module) -> nn.Module:
    """Hugging Face's BertForMaskedLM or BertForSequenceClassification of attnlab's, its ids
    as they are (pad_token_id: pad_id). A masked LM's pooling is not refused: it has no pooler."""
    from transformers import BertConfig as HFBertConfig
    from transformers import BertForMaskedLM as HFBertForMaskedLM
    from transformers import BertForSequenceClassification

    c = model.config
    unlike = [what for what, differs in (
        ("pre-norm blocks", c.prenorm),
        (f"{c.positional} positions", c.positional != "learned"),
        (f"{c.pooling} pooling", c.pooling != "cls" and isinstance(model, BertClassifier)),
    ) if differs]  # fmt: skip
    if unlike:
        raise ValueError(
            "only BERT-shaped models (post-norm, learned positions, [CLS] pooling) convert to "
            f"Hugging Face: this one has {' and '.join(unlike)}"
        )
    hf_config = HFBertConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        intermediate_size=c.ff_width,
        hidden_act=TO_HF_ACTIVATIONS[c.activation],
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
    copy_weights(model.state_dict(), hf, [(ours, theirs, t) for theirs, ours, t in table])
    if masked:
        hf.tie_weights()
    return hf
