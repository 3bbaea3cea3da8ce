"""The residual block: any token mixer and a feed-forward, each in a residual connection.

Dimensions: B batch, T positions, S context positions, D model width.

Post-norm, as in the original paper (section 3.1, "LayerNorm(x + Sublayer(x))"):
    x = norm(x + dropout(mixer(x)))
Pre-norm, as in GPT-2 and most models since (Xiong et al. 2020 show it trains without warmup):
    x = x + dropout(mixer(norm(x)))
A decoder block for the encoder-decoder adds cross attention between the two sub-layers.
The token mixer is anything with ``forward(x, mask=None, cache=None) -> (B, T, D)``: attention,
and later Hyena, Mamba or a recurrent layer; ``new_cache(max_length, **options)`` makes its
decoding state (sliding=True: keep only the last max_length positions, for mixers that have
positions; static=True: fixed shapes, for compiled decoding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.layers.attention import MultiHeadAttention, StaticKVCache


@dataclass
class BlockCache:
    """Decoding state of one block: the mixer's (e.g. a KVCache) and the cross attention's."""

    mixer: Any
    cross: Any = None

    def reorder(self, index: torch.Tensor) -> None:
        for state in (self.mixer, self.cross):
            if state is not None:
                state.reorder(index)


class ResidualBlock(nn.Module):
    def __init__(
        self,
        token_mixer: nn.Module,
        feedforward: nn.Module,
        norm: Callable[[], nn.Module],
        *,
        cross_attention: MultiHeadAttention | None = None,
        prenorm: bool = True,
        dropout: float = 0.0,
    ):
        """norm: makes one normalization layer; called once per sub-layer."""
        super().__init__()
        self.prenorm = prenorm
        self.token_mixer = token_mixer
        self.mixer_norm = norm()
        self.cross_attention = cross_attention
        self.cross_norm = norm() if cross_attention is not None else None
        self.feedforward = feedforward
        self.feedforward_norm = norm()
        self.dropout = dropout  # functional: no module call per sub-layer when it is 0

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: BlockCache | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D); context: (B, S, D), the encoder output for cross attention -> (B, T, D)."""
        x = self._residual(
            x,
            self.mixer_norm,
            lambda h: self.token_mixer(h, mask=mask, cache=cache.mixer if cache else None),
        )
        if self.cross_attention is not None:
            x = self._residual(
                x,
                self.cross_norm,
                lambda h: self.cross_attention(
                    h, context=context, mask=context_mask, cache=cache.cross if cache else None
                ),
            )
        return self._residual(x, self.feedforward_norm, self.feedforward)

    def _residual(self, x: torch.Tensor, norm: nn.Module, sublayer: Callable) -> torch.Tensor:
        if self.prenorm:
            return x + self._dropout(sublayer(norm(x)))
        return norm(x + self._dropout(sublayer(x)))

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        # skipped, not called with p=0: decoding one token is dominated by per-call overhead
        return F.dropout(x, self.dropout, True) if self.training and self.dropout else x

    def new_cache(self, max_length: int = 0, **options) -> BlockCache:
        """The block's decoding state; options (sliding, static) go to the token mixer."""
        cross = self.cross_attention.new_cache() if self.cross_attention is not None else None
        return BlockCache(self.token_mixer.new_cache(max_length, **options), cross)


@dataclass
class DecodingCache:
    """A model's decoding state: one BlockCache per block and how many positions were consumed
    (a 0-dim tensor for static caches, advanced in place). sliding: the blocks keep only the
    last context of positions, so decoding may go past it."""

    blocks: list[BlockCache]
    position: int | torch.Tensor = 0
    sliding: bool = False

    def buffers(self) -> list[torch.Tensor]:
        """The tensors of static caches, which a compiled step updates in place."""
        tensors = [self.position] if isinstance(self.position, torch.Tensor) else []
        for block in self.blocks:
            if isinstance(block.mixer, StaticKVCache):
                tensors += block.mixer.buffers()
        return tensors

    def with_buffers(self, tensors: list[torch.Tensor]) -> DecodingCache:
        """A copy of this cache holding `tensors` in place of buffers(), in that order (an
        exported step takes them as inputs)."""
        rest = iter(tensors)
        position = next(rest) if isinstance(self.position, torch.Tensor) else self.position
        blocks = []
        for block in self.blocks:
            if isinstance(block.mixer, StaticKVCache):
                own = [next(rest) for _ in block.mixer.buffers()]
                block = BlockCache(block.mixer.with_buffers(*own), block.cross)
            blocks.append(block)
        return DecodingCache(blocks, position, self.sliding)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index`, in that order (beam search)."""
        for block in self.blocks:
            block.reorder(index)
