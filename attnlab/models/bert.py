"""BERT: a bidirectional encoder pre-trained by masked-language modelling (Devlin et al. 2019),
and the same encoder fine-tuned to classify sequences.

Dimensions: B batch, T positions, D model width, V vocabulary size, C classes.

Token + learned position + segment embeddings -> (LayerNorm) -> n_layers bidirectional blocks
(post-norm as in the paper; pre-norm as an option, with a final norm instead of the embedding
norm). Padding is masked out of every attention layer: a pad token is never attended to.

Two model kinds share the encoder (attribute ``encoder``, so one's weights start the other):
- "bert", BertForMaskedLM: the masked-LM head (dense + GELU + LayerNorm, then a projection to V
  tied to the token embeddings, with its own bias), with the loss on the selected positions only;
- "classifier", BertClassifier: the pooler (dense + tanh on the first, [CLS], position, or on
  the mean over the non-padding positions) and a linear classification head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.config import (
    TWO_CLASSES,
    check_at_least,
    check_choice,
    check_divides,
    check_dropout,
    check_positive,
    check_range,
    check_types,
)
from attnlab.data.classification import ClassificationDataConfig, classification_training_data
from attnlab.data.masked_lm import MaskedLMDataConfig, masked_lm_training_data
from attnlab.errors import ConfigError
from attnlab.layers import (
    LearnedPositionalEmbedding,
    MixerContext,
    ResidualBlock,
    RotaryEmbedding,
    TokenEmbedding,
    initialize,
    make_feedforward,
    make_norm,
    padding_mask,
)
from attnlab.layers.attention import AttentionOptions, build_attention
from attnlab.layers.dropout import dropout
from attnlab.layers.feedforward import ACTIVATIONS
from attnlab.models.registry import CLASSIFY, FILL_MASK, ModelKind, register_kind
from attnlab.training.sources import IGNORE_INDEX, check_targets, token_loss


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522  # tokens in the vocabulary, special tokens included
    context_length: int = 512  # most positions the model reads at once
    n_layers: int = 12  # encoder blocks
    n_heads: int = 12  # attention heads per block
    d_model: int = 768  # residual stream width
    d_ff: int | None = None  # feed-forward hidden width; None = 4 * d_model
    n_segments: int = 2  # segment (token type) embeddings: sentence A and B
    prenorm: bool = False  # pre-norm blocks and a final norm (BERT itself is post-norm)
    positional: str = "learned"  # learned (BERT) | rope (rotary, as RoFormer)
    activation: str = "gelu"  # relu | gelu | gelu_tanh | silu
    norm_eps: float = 1e-12  # added to the variance inside each norm
    dropout: float = 0.1  # on embeddings, attention weights and residual branches
    pad_id: int = 0  # the padding token: never attended to
    n_classes: int = 2  # classes of the classification head (the classifier kind)
    pooling: str = "cls"  # what the classifier's pooler reads: cls (BERT) | mean (of the tokens)
    long_text: str = "head_tail"  # a text over the context: head_tail | windows (logits averaged)

    def __post_init__(self):
        check_types(self)
        name = "BertConfig"
        check_positive(
            name,
            vocab_size=self.vocab_size,
            context_length=self.context_length,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            n_segments=self.n_segments,
            norm_eps=self.norm_eps,
        )
        check_at_least(name, "n_classes", self.n_classes, 2, TWO_CLASSES)
        if self.context_length < 3:
            raise ConfigError(
                f"{name}.context_length must be >= 3 ([CLS], a token, [SEP]); got "
                f"{self.context_length}"
            )
        check_positive(name, d_ff=self.d_ff)
        check_divides(name, "n_heads", self.n_heads, "d_model", self.d_model)
        check_choice(name, "activation", self.activation, ACTIVATIONS)
        check_choice(name, "positional", self.positional, ("learned", "rope"))
        check_choice(name, "pooling", self.pooling, ("cls", "mean"))
        check_choice(name, "long_text", self.long_text, ("head_tail", "windows"))
        check_dropout(name, "dropout", self.dropout)
        check_range(name, "pad_id", self.pad_id, 0, self.vocab_size - 1)

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model


def _shape(n_layers: int, d_model: int, context_length: int = 512) -> BertConfig:
    return BertConfig(
        n_layers=n_layers, n_heads=max(d_model // 64, 1), d_model=d_model,
        context_length=context_length,
    )  # fmt: skip


PRESETS: dict[str, BertConfig] = {
    "bert-base": _shape(12, 768),  # 110M
    "bert-large": BertConfig(n_layers=24, n_heads=16, d_model=1024),  # 340M
    # the compact models of Turc et al. 2019 ("Well-Read Students Learn Better")
    "bert-tiny": _shape(2, 128),
    "bert-mini": _shape(4, 256),
    "bert-small": _shape(4, 512),
    "bert-medium": _shape(8, 512),
    # CPU shapes: a few minutes (tiny) to an hour (small-cpu) on two cores
    # (no dropout: a short pre-training run underfits rather than overfits)
    "tiny": BertConfig(
        vocab_size=512, context_length=64, n_layers=2, n_heads=2, d_model=64, dropout=0.0
    ),
    "small-cpu": BertConfig(context_length=128, n_layers=4, n_heads=4, d_model=256, dropout=0.0),
}


class BertEncoder(nn.Module):
    """Embeddings and the encoder blocks: ids (B, T) -> hidden states (B, T, D)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = TokenEmbedding(c.vocab_size, c.d_model)
        learned = c.positional == "learned"
        self.position_embedding = (
            LearnedPositionalEmbedding(c.context_length, c.d_model) if learned else None
        )
        # rotary positions: one module for every layer, inside attention
        self.rotary = None if learned else RotaryEmbedding(c.d_model // c.n_heads)
        self.segment_embedding = nn.Embedding(c.n_segments, c.d_model)
        norm = lambda: make_norm("layernorm", c.d_model, eps=c.norm_eps)  # noqa: E731
        # post-norm normalises the embeddings; pre-norm normalises the last block's output
        self.embedding_norm = None if c.prenorm else norm()
        self.final_norm = norm() if c.prenorm else None
        self.blocks = nn.ModuleList(
            ResidualBlock(
                build_attention(AttentionOptions(), self._context(layer)),
                make_feedforward(c.activation, c.d_model, c.ff_width),
                norm,
                prenorm=c.prenorm,
                dropout=c.dropout,
            )
            for layer in range(c.n_layers)
        )

    def _context(self, layer: int) -> MixerContext:
        c = self.config
        return MixerContext(
            d_model=c.d_model,
            context_length=c.context_length,
            n_heads=c.n_heads,
            n_kv_heads=None,
            causal=False,
            bias=True,
            dropout=c.dropout,
            layer=layer,
            n_layers=c.n_layers,
            relative_position=self.rotary,
        )

    def forward(self, ids: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """ids, segments: (B, T) -> (B, T, D). Segments default to 0 (one sentence)."""
        length = ids.size(1)
        if length > self.config.context_length:
            raise ValueError(
                f"{length} positions exceed the context length {self.config.context_length}"
            )
        x = self.token_embedding(ids)
        if self.position_embedding is not None:
            x = x + self.position_embedding(length)
        x = x + (
            self.segment_embedding(segments)
            if segments is not None
            else self.segment_embedding.weight[0]
        )
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = dropout(x, self.config.dropout, self.training)
        mask = padding_mask(ids, self.config.pad_id) if (ids == self.config.pad_id).any() else None
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.final_norm(x) if self.final_norm is not None else x

    def flops_per_token(self, length: int) -> int:
        """Training FLOPs per token of the blocks (6 per weight of their matrix products, plus
        attention's scores and weighted sum)."""
        weights = sum(p.numel() for p in self.blocks.parameters() if p.dim() == 2)
        return 6 * weights + sum(b.token_mixer.mixing_flops_per_token(length) for b in self.blocks)


def _initialize(model: nn.Module) -> None:
    """BERT's initialisation: every matrix N(0, 0.02), as Hugging Face's (Google's code truncates
    the normal at two standard deviations); biases 0, norms 1 (their layers' own)."""
    initialize(model, lambda weight, layer: nn.init.normal_(weight, std=0.02))


HEAD_ROWS = 128  # the masked-LM head's row count is rounded up to a multiple of this


class BertForMaskedLM(nn.Module):
    """The encoder with the masked-LM head: predicts the tokens at the selected positions."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = c = config
        self.encoder = BertEncoder(c)
        self.mlm_transform = nn.Linear(c.d_model, c.d_model)
        self.mlm_activation = ACTIVATIONS[c.activation]
        self.mlm_norm = make_norm("layernorm", c.d_model, eps=c.norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(c.vocab_size))
        _initialize(self)

    def forward(
        self,
        ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids: (B, T); targets: (B, T), the original token where a position was selected and
        IGNORE_INDEX elsewhere. Without targets: logits (B, T, V) and None. With targets: the
        logits of the selected positions only (N, V), which is all the loss needs (about 15% of
        the head's work), and the mean cross-entropy over them."""
        hidden = self.encoder(ids, segments)
        if targets is None:
            return self.head(hidden), None
        check_targets(targets, ids.shape)
        targets = targets.flatten()
        rows = (targets != IGNORE_INDEX).nonzero()[:, 0]  # (N,)
        # N differs every batch: the head runs on N rounded up to a multiple of HEAD_ROWS (the
        # extra rows repeat position 0 and the loss ignores them), so that its matrix products
        # come in a few shapes whose kernels and buffers the CPU libraries reuse, instead of
        # holding on to ever more of them (gigabytes over a long run).
        n = len(rows)
        rows = torch.cat([rows, rows.new_zeros(-n % HEAD_ROWS)])
        picked = targets[rows]
        picked[n:] = IGNORE_INDEX
        logits = self.head(hidden.flatten(0, 1)[rows])  # (N + padding, V)
        loss = token_loss(logits, picked)
        return logits[:n], loss

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden states -> (..., V) logits."""
        h = self.mlm_norm(self.mlm_activation(self.mlm_transform(hidden)))
        return F.linear(h, self.encoder.token_embedding.weight, self.mlm_bias)

    def flops_per_token(self) -> int:
        """The encoder's training FLOPs per token (the head, run on the selected positions
        only, is left out)."""
        return self.encoder.flops_per_token(self.config.context_length)

    def compile_regions(self) -> list[nn.Module]:
        """What training compiles by block: the encoder's blocks."""
        return list(self.encoder.blocks)


class BertClassifier(nn.Module):
    """The encoder, the pooler on [CLS] (or the mean) and a linear head to C classes."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = c = config
        self.encoder = BertEncoder(c)
        self.pooler = nn.Linear(c.d_model, c.d_model)
        self.classifier = nn.Linear(c.d_model, c.n_classes)
        _initialize(self)

    def forward(
        self,
        ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids: (B, T), starting with [CLS], or (B, W, T): each text in W windows (empty ones,
        all padding, for a text with fewer), whose logits are averaged; labels: (B,) class
        indices -> logits (B, C), loss."""
        logits = (self._windows if ids.dim() == 3 else self._logits)(ids, segments)
        loss = None if labels is None else token_loss(logits, labels)
        return logits, loss

    def _logits(self, ids: torch.Tensor, segments: torch.Tensor | None) -> torch.Tensor:
        hidden = self.encoder(ids, segments)  # (B, T, D)
        if self.config.pooling == "mean":
            keep = (ids != self.config.pad_id).unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            summary = (hidden * keep).sum(1) / keep.sum(1).clamp_min(1)  # padding alone: 0
        else:
            summary = hidden[:, 0]
        pooled = torch.tanh(self.pooler(summary))  # (B, D)
        return self.classifier(dropout(pooled, self.config.dropout, self.training))  # (B, C)

    def _windows(self, ids: torch.Tensor, segments: torch.Tensor | None) -> torch.Tensor:
        batch, windows = ids.shape[:2]
        rows = ids.flatten(0, 1)  # (B·W, T)
        used = rows[:, 0] != self.config.pad_id  # the windows that hold text
        if segments is not None:
            segments = segments.flatten(0, 1)[used]
        logits = self._logits(rows[used], segments)  # (U, C)
        text = torch.arange(batch, device=ids.device).repeat_interleave(windows)[used]  # (U,)
        summed = logits.new_zeros(batch, logits.size(-1)).index_add_(0, text, logits)
        return summed / used.view(batch, windows).sum(1, keepdim=True)

    def compile_regions(self) -> list[nn.Module]:
        return list(self.encoder.blocks)


register_kind(
    ModelKind(
        name="bert",
        config=BertConfig,
        model=BertForMaskedLM,
        presets=PRESETS,
        data_config=MaskedLMDataConfig,
        build_data=masked_lm_training_data,
        capabilities={FILL_MASK},
        description="a BERT encoder pre-trained by masked-language modelling on a text corpus",
        data_fields={"vocab_size", "pad_id"},
        unused_fields={"n_classes", "pooling", "long_text"},  # the classifier's
    )
)
register_kind(
    ModelKind(
        name="classifier",
        config=BertConfig,
        model=BertClassifier,
        presets=PRESETS,
        data_config=ClassificationDataConfig,
        build_data=classification_training_data,
        capabilities={CLASSIFY},
        description="a BERT sequence classifier on labelled texts (--init: a pre-trained bert)",
        init_from=("bert",),
        data_fields={"vocab_size", "pad_id", "n_classes"},
        unused_fields={"eval_iters"},  # every dev example is scored at each evaluation
    )
)
