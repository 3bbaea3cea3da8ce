"""The residual block: any token mixer and a feed-forward, each in a residual connection.

Dimensions: B batch, T positions, S context positions, D model width.

Post-norm, as in the original paper (section 3.1, "LayerNorm(x + Sublayer(x))"):
    x = norm(x + dropout(mixer(x)))
Pre-norm, as in GPT-2 and most models since (Xiong et al. 2020 show it trains without warmup):
    x = x + dropout(mixer(norm(x)))
A decoder block for the encoder-decoder adds cross attention between the two sub-layers. A block
may have no feed-forward (feedforward=None: Mamba's blocks, the mixer alone); its output is then
the stream after its last sub-layer.
The token mixer is anything that keeps the TokenMixer contract (contracts.py): attention, or a
recurrent, Hyena or Mamba layer. Hook points mark the residual stream before and after each
sub-layer (hooks.py), for inspection of any model built of blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attnlab.layers.attention import MultiHeadAttention
from attnlab.layers.caches import BlockCache
from attnlab.layers.dropout import dropout
from attnlab.layers.hooks import HookPoint


class ResidualBlock(nn.Module):
    def __init__(
        self,
        token_mixer: nn.Module,
        feedforward: nn.Module | None,
        norm: Callable[[], nn.Module],
        *,
        cross_attention: MultiHeadAttention | None = None,
        prenorm: bool = True,
        dropout: float = 0.0,
    ):
        """norm: makes one normalization layer; called once per sub-layer. feedforward: None for
        none (and no norm before it)."""
        super().__init__()
        self.prenorm = prenorm
        self.token_mixer = token_mixer
        self.mixer_norm = norm()
        self.cross_attention = cross_attention
        self.cross_norm = norm() if cross_attention is not None else None
        self.feedforward = feedforward
        self.feedforward_norm = norm() if feedforward is not None else None
        self.dropout = dropout  # functional: no module call per sub-layer when it is 0
        self.stream_in = HookPoint()  # the residual stream entering the block
        self.stream_after_mixer = HookPoint()
        self.stream_after_cross = HookPoint() if cross_attention is not None else None
        self.stream_out = HookPoint()  # the block's output: after the feed-forward, if any

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
            self.stream_in.tap(x),
            self.mixer_norm,
            lambda h: self.token_mixer(h, mask=mask, cache=cache.mixer if cache else None),
        )
        x = self.stream_after_mixer.tap(x)
        if self.cross_attention is not None:
            x = self._residual(
                x,
                self.cross_norm,
                lambda h: self.cross_attention(
                    h, context=context, mask=context_mask, cache=cache.cross if cache else None
                ),
            )
            x = self.stream_after_cross.tap(x)
        if self.feedforward is not None:
            x = self._residual(x, self.feedforward_norm, self.feedforward)
        return self.stream_out.tap(x)

    def _residual(self, x: torch.Tensor, norm: nn.Module, sublayer: Callable) -> torch.Tensor:
        if self.prenorm:
            return x + dropout(sublayer(norm(x)), self.dropout, self.training)
        return norm(x + dropout(sublayer(x), self.dropout, self.training))

    def new_cache(self, max_length: int = 0, **options) -> BlockCache:
        """The block's decoding state; options (sliding, static) go to the token mixer."""
        cross = self.cross_attention.new_cache() if self.cross_attention is not None else None
        return BlockCache(self.token_mixer.new_cache(max_length, **options), cross)
