"""The encoder–decoder transformer of "Attention Is All You Need" (Vaswani et al. 2017).

Dimensions: B batch, S source positions, T target positions, D model width, V vocabulary size.

source ids -> embedding·√D + sinusoids -> n_encoder_layers self-attention blocks -> memory
target ids -> embedding·√D + sinusoids -> n_decoder_layers blocks (causal self-attention, cross
attention over the memory, feed-forward) -> linear projection to V logits.

Post-norm blocks as in the paper (section 3.1) by default; pre-norm as an option, which then
ends each stack with a final norm (the sub-layer outputs are otherwise never normalized).
``final_norm`` can state that choice explicitly: torch.nn.Transformer always ends both stacks with
a LayerNorm, even in post-norm mode, so matching it exactly means post-norm with final_norm="yes".

One vocabulary is shared by source and target (a joint BPE), and by default one matrix serves
as source embedding, target embedding and output projection (section 3.4, after Press & Wolf
2017). Padding is given by ``pad_id``: padded source keys are masked out of every attention, and
padded targets add nothing to the loss. Sequences are right-padded, so padding never moves the
positions of real tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.config import (
    check_choice,
    check_divides,
    check_dropout,
    check_positive,
    check_range,
    check_types,
)
from attnlab.data.translation import TranslationDataConfig, translation_training_data
from attnlab.errors import ConfigError
from attnlab.layers import (
    DecodingCache,
    MultiHeadAttention,
    ResidualBlock,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    initialize,
    make_feedforward,
    make_norm,
    padding_mask,
)
from attnlab.layers.dropout import dropout
from attnlab.layers.feedforward import FEEDFORWARDS
from attnlab.layers.normalization import NORMS
from attnlab.models.registry import TRANSLATE, ModelKind, register_kind
from attnlab.training.sources import IGNORE_INDEX, token_loss

FINAL_NORMS = ("auto", "yes", "no")


@dataclass(frozen=True)
class EncoderDecoderConfig:
    vocab_size: int = 37000  # joint source/target vocabulary, special tokens included
    max_length: int = 256  # most positions in a source or a target sequence
    n_encoder_layers: int = 6  # encoder blocks
    n_decoder_layers: int = 6  # decoder blocks
    n_heads: int = 8  # attention heads
    d_model: int = 512  # residual stream width
    d_ff: int = 2048  # feed-forward hidden width
    activation: str = "relu"  # relu | gelu | gelu_tanh | silu | swiglu | geglu
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5  # added to the variance inside each norm
    prenorm: bool = False  # norm before each sub-layer; the paper normalizes after (post-norm)
    final_norm: str = "auto"  # norm at the end of each stack: auto (= with prenorm), yes, no
    bias: bool = True  # biases in linear layers and norms
    dropout: float = 0.1  # on each sub-layer output and on the embedding sums (section 5.4)
    attention_dropout: float = 0.0  # on attention weights (torch.nn.Transformer uses dropout)
    activation_dropout: float = 0.0  # on the feed-forward's hidden activations (likewise)
    share_embeddings: bool = True  # one matrix for source, target embeddings and output
    label_smoothing: float = 0.1  # epsilon of label smoothing in the loss (section 5.4)
    pad_id: int = 0  # padding token id (masked in attention, ignored in the loss)
    bos_id: int = 1  # token id that starts every target sequence
    eos_id: int = 2  # token id that ends every source and target sequence

    def __post_init__(self):
        check_types(self)
        name = "EncoderDecoderConfig"
        check_positive(
            name,
            vocab_size=self.vocab_size,
            max_length=self.max_length,
            n_encoder_layers=self.n_encoder_layers,
            n_decoder_layers=self.n_decoder_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            d_ff=self.d_ff,
            norm_eps=self.norm_eps,
        )
        check_divides(name, "n_heads", self.n_heads, "d_model", self.d_model)
        check_choice(name, "activation", self.activation, FEEDFORWARDS)
        check_choice(name, "norm", self.norm, NORMS)
        check_choice(name, "final_norm", self.final_norm, FINAL_NORMS)
        for field in ("dropout", "attention_dropout", "activation_dropout"):
            check_dropout(name, field, getattr(self, field))
        check_dropout(name, "label_smoothing", self.label_smoothing)
        specials = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        for field, value in specials.items():
            check_range(name, field, value, 0, self.vocab_size - 1)
        if len(set(specials.values())) < 3:
            raise ConfigError(f"{name}: pad_id, bos_id and eos_id must differ, got {specials}")

    @property
    def has_final_norm(self) -> bool:
        return self.prenorm if self.final_norm == "auto" else self.final_norm == "yes"


def _shape(layers: int, heads: int, d_model: int, d_ff: int, dropout: float, **kw):
    return EncoderDecoderConfig(
        n_encoder_layers=layers,
        n_decoder_layers=layers,
        n_heads=heads,
        d_model=d_model,
        d_ff=d_ff,
        dropout=dropout,
        **kw,
    )


PRESETS: dict[str, EncoderDecoderConfig] = {
    # Table 3 of the paper: base (65M parameters with a 37k vocabulary) and big (213M).
    "base": _shape(6, 8, 512, 2048, 0.1),
    "big": _shape(6, 16, 1024, 4096, 0.3),
    # CPU sizes: "small" for a real corpus such as Multi30k, "tiny" for the embedded task.
    "small": _shape(3, 4, 256, 1024, 0.1, vocab_size=8000, max_length=256),
    "tiny": _shape(2, 4, 64, 256, 0.0, vocab_size=512, max_length=128),
}


class EncoderDecoder(nn.Module):
    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        self.config = c = config
        self.target_embedding = TokenEmbedding(c.vocab_size, c.d_model)
        self.source_embedding = (
            self.target_embedding if c.share_embeddings else TokenEmbedding(c.vocab_size, c.d_model)
        )
        self.positions = SinusoidalPositionalEncoding(c.max_length, c.d_model)
        self.encoder_blocks = nn.ModuleList(
            self._block(cross=False) for _ in range(c.n_encoder_layers)
        )
        self.decoder_blocks = nn.ModuleList(
            self._block(cross=True) for _ in range(c.n_decoder_layers)
        )
        self.encoder_norm = self._norm() if c.has_final_norm else nn.Identity()
        self.decoder_norm = self._norm() if c.has_final_norm else nn.Identity()
        self.output_projection = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.share_embeddings:
            self.output_projection.weight = self.target_embedding.weight
        self.reset_parameters()

    def _norm(self) -> nn.Module:
        return make_norm(
            self.config.norm, self.config.d_model, bias=self.config.bias, eps=self.config.norm_eps
        )

    def _attention(self, *, causal: bool = False, cross: bool = False) -> MultiHeadAttention:
        c = self.config
        return MultiHeadAttention(
            c.d_model,
            c.n_heads,
            causal=causal,
            cross=cross,
            bias=c.bias,
            dropout=c.attention_dropout,
        )

    def _block(self, *, cross: bool) -> ResidualBlock:
        """An encoder block (self-attention), or a decoder block (causal self-attention, then
        cross attention over the encoder output): they differ only in these two arguments."""
        c = self.config
        return ResidualBlock(
            self._attention(causal=cross),
            make_feedforward(
                c.activation, c.d_model, c.d_ff, bias=c.bias, dropout=c.activation_dropout
            ),
            self._norm,
            cross_attention=self._attention(cross=True) if cross else None,
            prenorm=c.prenorm,
            dropout=c.dropout,
        )

    def reset_parameters(self) -> None:
        """Xavier-uniform matrices (Glorot & Bengio 2010, as torch.nn.Transformer and the
        tensor2tensor reference use), zero biases; norms initialise themselves. Embeddings are
        N(0, 1/D): the √D scaling of section 3.4 then gives token vectors of unit variance, the
        scale of the sinusoids added to them. As the tied output projection they give logits of
        unit variance (a normed decoder output has |h|² ≈ D), so the first loss is about
        ln V + 1/2, not ln V; an untied projection's Xavier rows give smaller logits."""

        def matrix_init(weight: nn.Parameter, layer: nn.Module) -> None:
            if isinstance(layer, nn.Embedding):
                nn.init.normal_(weight, std=self.config.d_model**-0.5)
            else:
                nn.init.xavier_uniform_(weight)

        initialize(self, matrix_init)

    def _embed(self, table: nn.Embedding, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        length = ids.size(1)
        if offset + length > self.config.max_length:
            raise ValueError(
                f"{offset + length} positions exceed max_length {self.config.max_length}"
            )
        x = table(ids) * math.sqrt(self.config.d_model)  # (B, T, D), section 3.4
        return dropout(x + self.positions(length, offset), self.config.dropout, self.training)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src: (B, S) right-padded ids -> memory (B, S, D) and the source mask (B, 1, 1, S)
        (True = a real token), which every cross attention over this memory needs."""
        src_mask = padding_mask(src, self.config.pad_id)
        x = self._embed(self.source_embedding, src)  # (B, S, D)
        for block in self.encoder_blocks:
            x = block(x, mask=src_mask)
        return self.encoder_norm(x), src_mask

    def decode(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
        cache: DecodingCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) for target inputs tgt_in (B, T) given the encoder's output.

        With a cache, tgt_in holds only the positions after those the cache has seen; the
        decoder's self-attention keys and values of earlier positions, and the projected memory
        of every cross attention, come from the cache. Right padding in tgt_in needs no mask:
        causal attention keeps each real position from seeing the pads after it.
        """
        offset = cache.position if cache is not None else 0
        x = self._embed(self.target_embedding, tgt_in, offset)  # (B, T, D)
        for i, block in enumerate(self.decoder_blocks):
            block_cache = cache.blocks[i] if cache is not None else None
            x = block(x, context=memory, context_mask=src_mask, cache=block_cache)
        if cache is not None:
            cache.position += tgt_in.size(1)
        return self.output_projection(self.decoder_norm(x))  # (B, T, V)

    def forward(
        self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """src: (B, S); tgt_in: (B, T) = <s> y1 .. yn; tgt_out: (B, T) = y1 .. yn </s>.

        Returns logits (B, T, V) and the label-smoothed cross-entropy over the targets that are
        neither padding nor IGNORE_INDEX (None without tgt_out).
        """
        memory, src_mask = self.encode(src)
        logits = self.decode(tgt_in, memory, src_mask)
        loss = None
        if tgt_out is not None:
            scored = tgt_out.masked_fill(tgt_out == self.config.pad_id, IGNORE_INDEX)
            loss = token_loss(logits, scored, self.config.label_smoothing)
        return logits, loss

    def new_cache(self, max_length: int | None = None) -> DecodingCache:
        """An empty decoding cache for the decoder (self-attention keys/values and the cross
        attentions' projected memory), with room for max_length target positions."""
        max_length = max_length or self.config.max_length
        return DecodingCache([block.new_cache(max_length) for block in self.decoder_blocks])

    def compile_regions(self) -> list[nn.Module]:
        """What training compiles: the blocks (each stack's share one compiled graph)."""
        return [*self.encoder_blocks, *self.decoder_blocks]

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (tied matrices count once), optionally without the embeddings."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            tables = {
                id(t.weight): t.weight for t in (self.source_embedding, self.target_embedding)
            }
            total -= sum(w.numel() for w in tables.values())
        return total


register_kind(
    ModelKind(
        name="translation",
        config=EncoderDecoderConfig,
        model=EncoderDecoder,
        presets=PRESETS,
        data_config=TranslationDataConfig,
        build_data=translation_training_data,
        data_fields={"vocab_size", "pad_id", "bos_id", "eos_id"},
        unused_fields={"batch_size"},  # batches hold up to max_batch_tokens tokens
        capabilities={TRANSLATE},
        description="an encoder-decoder on a parallel corpus (default: an embedded task)",
        aliases=("encoder_decoder",),
    )
)
