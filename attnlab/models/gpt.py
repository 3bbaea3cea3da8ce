"""GPT: a decoder-only transformer language model (Radford et al. 2018, 2019).

Dimensions: B batch, T positions, D model width, V vocabulary size.

Token embeddings (+ absolute positions) -> n_layers pre-norm causal blocks -> final norm ->
a linear head to V logits, tied to the token embedding by default (Press & Wolf 2017).
prenorm=False gives GPT-1's post-norm blocks, x = norm(x + sublayer(x)), and no final norm:
each block already ends in one (as the encoder-decoder's post-norm stacks by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnlab.config import (
    check_at_least,
    check_choice,
    check_dropout,
    check_positive,
    check_types,
)
from attnlab.data.text import TextDataConfig, text_training_data
from attnlab.errors import ConfigError
from attnlab.layers import (
    ALiBi,
    DecodingCache,
    LearnedPositionalEmbedding,
    MixerContext,
    RelativePosition,
    ResidualBlock,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    initialize,
    make_feedforward,
    make_norm,
)
from attnlab.layers.contracts import is_residual_output
from attnlab.layers.dropout import dropout
from attnlab.layers.feedforward import FEEDFORWARDS
from attnlab.layers.mixers import mixer_options, mixer_spec, unread_reasons
from attnlab.layers.normalization import NORMS
from attnlab.models.registry import GENERATE, ModelKind, register_kind
from attnlab.training.sources import token_loss

POSITIONALS = ("learned", "sinusoidal", "rope", "alibi", "none")
RELATIVE = ("rope", "alibi", "none")  # no absolute positions: the decoding window can slide
INITS = ("gpt2", "fan_in")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257  # tokens in the vocabulary
    context_length: int = 1024  # most positions the model reads at once
    n_layers: int = 12  # residual blocks
    mixer: str = "attention"  # token mixer of every block, by registered name
    mixer_options: Any = None  # its options: a TOML table, or flag KEY=VALUE,...; None = defaults
    n_heads: int = 12  # query heads per attention layer
    n_kv_heads: int | None = None  # key/value heads; None = n_heads, fewer = grouped-query
    d_model: int = 768  # residual stream width
    d_ff: int | None = None  # feed-forward hidden width; None = 4 * d_model, 0 = no feed-forward
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5  # added to the variance inside each norm
    prenorm: bool = True  # norm before each sub-layer, and a final norm (GPT-2); else after (GPT-1)
    positional: str = "learned"  # learned | sinusoidal | rope | alibi | none
    activation: str = "gelu_tanh"  # relu | gelu | gelu_tanh | silu | swiglu | geglu
    bias: bool = True  # biases in linear layers and LayerNorm
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    tie_weights: bool = True  # output head shares the token embedding matrix
    rope_base: float = 10000.0  # RoPE frequency base
    weight_init: str = "gpt2"  # gpt2: std 0.02 | fan_in: std 1/√fan_in, embeddings std 1

    @staticmethod
    def unread(values: dict[str, Any]) -> dict[str, str]:
        """The fields that a config of these values would not read, each with what reads it
        (check_read): attention's heads for another mixer, RoPE's base for other positions."""
        reasons = unread_reasons(values.get("mixer", "attention"), values.get("mixer_options"))
        if (positional := values.get("positional", "learned")) != "rope":
            reasons["rope_base"] = f"of positional 'rope', not of {positional!r}"
        if values.get("d_ff") == 0:
            reasons["activation"] = "of the feed-forward, which d_ff = 0 leaves out"
        return reasons

    def __post_init__(self):
        check_types(self)
        name = "GPTConfig"
        check_positive(
            name,
            vocab_size=self.vocab_size,
            context_length=self.context_length,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            norm_eps=self.norm_eps,
            n_kv_heads=self.n_kv_heads,
        )
        if self.d_ff is not None:
            check_at_least(name, "d_ff", self.d_ff, 0, " (0: blocks without a feed-forward)")
        check_choice(name, "norm", self.norm, NORMS)
        check_choice(name, "positional", self.positional, POSITIONALS)
        check_choice(name, "activation", self.activation, FEEDFORWARDS)
        check_dropout(name, "dropout", self.dropout)
        if not 1 < self.rope_base < math.inf:  # wavelengths 2π·base^(2i/d) must grow with i
            raise ConfigError(f"{name}.rope_base must be a number > 1, got {self.rope_base!r}")
        check_choice(name, "weight_init", self.weight_init, INITS)
        if self.weight_init == "fan_in" and self.tie_weights:
            raise ConfigError(
                f"{name}.weight_init='fan_in' starts embeddings at unit scale, too large for an "
                "output head: set tie_weights = false (--no-tie-weights)"
            )
        spec = mixer_spec(self.mixer)
        # Checked, and kept as the mixer's own (frozen) dataclass; the defaults as None, so that
        # a preset's defaults never stand in the way of choosing another mixer.
        options = mixer_options(self.mixer, self.mixer_options, name)
        object.__setattr__(self, "mixer_options", None if options == spec.options() else options)
        if spec.check is not None:
            spec.check(self)
        if self.positional in ("rope", "alibi") and not spec.relative_positions:
            raise ConfigError(
                f"{name}.positional={self.positional!r} acts inside attention; mixer "
                f"{self.mixer!r} takes 'learned', 'sinusoidal' or 'none'"
            )
        if self.positional == "rope" and self.head_dim % 2:
            raise ConfigError(
                f"{name}.positional='rope' needs an even head width, got {self.head_dim}"
            )

    @property
    def mixer_settings(self) -> Any:
        """The mixer's options, its defaults filled in (an instance of its options class)."""
        return mixer_options(self.mixer, self.mixer_options, "GPTConfig")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_width(self) -> int:
        """The feed-forward's hidden width; 0 where the blocks have none."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff


def _gpt2(n_layers: int, n_heads: int, d_model: int) -> GPTConfig:
    return GPTConfig(n_layers=n_layers, n_heads=n_heads, d_model=d_model)


PRESETS: dict[str, GPTConfig] = {
    "gpt2": _gpt2(12, 12, 768),  # 124M
    "gpt2-medium": _gpt2(24, 16, 1024),  # 355M
    "gpt2-large": _gpt2(36, 20, 1280),  # 774M
    "gpt2-xl": _gpt2(48, 25, 1600),  # 1558M
    # The classic CPU "baby GPT": trains on a laptop in minutes.
    "tiny": GPTConfig(vocab_size=256, context_length=64, n_layers=4, n_heads=4, d_model=128),
}


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = TokenEmbedding(c.vocab_size, c.d_model)
        self.position_embedding = {
            "learned": lambda: LearnedPositionalEmbedding(c.context_length, c.d_model),
            # sinusoids of the embeddings' starting scale: a table whose RMS is their std
            "sinusoidal": lambda: SinusoidalPositionalEncoding(
                c.context_length, c.d_model, gain=math.sqrt(2) * self.embedding_std
            ),
        }.get(c.positional, lambda: None)()
        relative = {  # one module for every layer: they share its tables
            "rope": lambda: RotaryEmbedding(c.head_dim, c.rope_base),
            "alibi": lambda: ALiBi(c.n_heads),
        }.get(c.positional, lambda: None)()
        self.blocks = nn.ModuleList(self._block(i, relative) for i in range(c.n_layers))
        # post-norm blocks each end in a norm: the last one's output is normalised already
        self.final_norm = self._norm() if c.prenorm else nn.Identity()
        self.output_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_weights:
            self.output_head.weight = self.token_embedding.weight
        self.reset_parameters()

    def _block(self, layer: int, relative: RelativePosition | None) -> ResidualBlock:
        c = self.config
        context = MixerContext(
            d_model=c.d_model,
            context_length=c.context_length,
            n_heads=c.n_heads,
            n_kv_heads=c.n_kv_heads,
            causal=True,
            bias=c.bias,
            dropout=c.dropout,
            layer=layer,
            n_layers=c.n_layers,
            relative_position=relative,
        )
        mixer = mixer_spec(c.mixer).build(c.mixer_settings, context)
        feedforward = None
        if c.ff_width:
            feedforward = make_feedforward(c.activation, c.d_model, c.ff_width, bias=c.bias)
        return ResidualBlock(mixer, feedforward, self._norm, prenorm=c.prenorm, dropout=c.dropout)

    def _norm(self) -> nn.Module:
        c = self.config
        return make_norm(c.norm, c.d_model, bias=c.bias, eps=c.norm_eps)

    def reset_parameters(self) -> None:
        """GPT-2 initialisation of the weights of linear and embedding layers: N(0, 0.02), and
        the projections that write into the residual stream scaled by 1/√N, N the residual
        sub-layers (2·n_layers; n_layers where the blocks have no feed-forward), so the stream's
        variance does not grow with depth (GPT-2 paper, section 2.3); post-norm blocks
        renormalise the stream themselves, so theirs keep GPT-1's plain N(0, 0.02). Every other
        parameter is its layer's own: a recurrent mixer's matrices, the short convolutions and
        Hyena's filter networks keep torch's initialisation, Mamba's Δ projection the paper's.

        With weight_init="fan_in", embeddings start N(0, 1) and each other linear weight
        N(0, 1/fan_in), a standard deviation of 1/√fan_in (the residual writers of pre-norm
        blocks again scaled by 1/√N). At small widths 0.02 is far below 1/√d_model,
        and token embeddings of 0.02 are soon drowned by what the blocks add to the stream: a
        2-layer model of width 64 then learns in-context recall only after a long plateau
        (benchmarks/RESULTS.md, "Synthetic tasks")."""
        c = self.config
        fan_in = c.weight_init == "fan_in"
        sublayers = c.n_layers * (2 if c.ff_width else 1)  # the mixer's, and the feed-forward's
        depth = 1 / math.sqrt(sublayers) if c.prenorm else 1.0

        def matrix_init(weight: nn.Parameter, layer: nn.Module) -> None:
            if isinstance(layer, nn.Embedding):
                std = self.embedding_std
            else:
                std = weight.size(-1) ** -0.5 if fan_in else 0.02
            nn.init.normal_(weight, std=std * depth if is_residual_output(weight) else std)

        initialize(self, matrix_init)

    @property
    def embedding_std(self) -> float:
        """The standard deviation embeddings start at: 1 with fan_in, GPT-2's 0.02 otherwise."""
        return 1.0 if self.config.weight_init == "fan_in" else 0.02

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: DecodingCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids; targets: (B, T) next-token ids (IGNORE_INDEX to skip).

        Returns logits (B, T, V) and the mean cross-entropy loss (None without targets). With a
        cache, idx holds only the tokens after those the cache has seen; a sliding cache (see
        new_cache) then goes on past the context one token at a time.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        _, length = idx.shape
        offset = cache.position if cache is not None else 0
        sliding = cache is not None and cache.sliding
        # a static cache's position is a tensor, not read here (see new_cache)
        exceeds = isinstance(offset, int) and offset + length > self.config.context_length
        if exceeds and not sliding:
            raise ValueError(
                f"{offset + length} positions exceed the context length "
                f"{self.config.context_length}"
            )
        x = self.token_embedding(idx)  # (B, T, D)
        if self.position_embedding is not None:
            x = x + self.position_embedding(length, offset)
        x = dropout(x, self.config.dropout, self.training)
        for i, block in enumerate(self.blocks):
            x = block(x, cache=cache.blocks[i] if cache is not None else None)
        logits = self.readout(x)  # (B, T, V)
        if cache is not None:
            cache.position += length
        loss = None
        if targets is not None:
            loss = token_loss(logits, targets)
        return logits, loss

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream (..., D) as logits (..., V): the final norm (pre-norm only) and the
        head. The logit lens (interpretability/lens.py) reads every layer's stream through it."""
        return self.output_head(self.final_norm(x))

    def new_cache(self, max_length: int | None = None, static: bool = False) -> DecodingCache:
        """An empty decoding cache with room for max_length positions (default: the context).

        With relative or no positions (rope, alibi, none) the cache slides: past max_length
        positions each new token attends to the last max_length of every layer's cached keys
        (sliding-window attention), so decoding goes on without re-running a window. Learned
        and sinusoidal positions end at the context, so their cache stops there.

        static=True: StaticKVCaches (fixed shapes, tensor positions) for a compiled one-token
        step. The model then never reads the position, so the caller must not feed learned or
        sinusoidal positions past the context (generation does not).
        """
        max_length = max_length or self.config.context_length
        sliding = self.sliding_cache
        blocks = [
            block.new_cache(max_length, sliding=sliding, static=static) for block in self.blocks
        ]
        device = self.output_head.weight.device
        position = torch.zeros((), dtype=torch.long, device=device) if static else 0
        return DecodingCache(blocks, position, sliding)

    def compile_regions(self) -> list[nn.Module]:
        """What training compiles: the blocks, which share one compiled graph."""
        return list(self.blocks)

    @property
    def sliding_cache(self) -> bool:
        """Whether new_cache() slides past the context (relative or no positions)."""
        return self.config.positional in RELATIVE

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied head counts once), optionally without embedding tables."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.token_embedding.weight.numel()
            if isinstance(self.position_embedding, LearnedPositionalEmbedding):
                total -= self.position_embedding.weight.numel()
        return total

    def flops_per_token(self, sequence_length: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6·N (Kaplan et al. 2020; PaLM appendix
        B), N = weights used in matrix products (the head included, the embedding lookups not),
        plus what each mixer computes beyond its weights (attention: 12·T·D for the scores and
        the weighted sum of values)."""
        c = self.config
        length = sequence_length or c.context_length
        head = c.vocab_size * c.d_model if c.tie_weights else 0  # an untied one is counted
        matmul_params = self.num_parameters(exclude_embeddings=True) + head
        mixing = sum(
            getattr(block.token_mixer, "mixing_flops_per_token", lambda _: 0)(length)
            for block in self.blocks
        )
        return 6 * matmul_params + mixing


register_kind(
    ModelKind(
        name="gpt",
        config=GPTConfig,
        model=GPT,
        presets=PRESETS,
        data_config=TextDataConfig,
        build_data=text_training_data,
        data_fields={"vocab_size"},
        capabilities={GENERATE},
        description="a decoder-only language model on a text corpus (default: Python's stdlib)",
    )
)
