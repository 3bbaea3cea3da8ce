"""Building blocks shared by every model."""

from attnlab.layers.attention import (
    HookPoint,
    KVCache,
    MultiHeadAttention,
    StaticKVCache,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)
from attnlab.layers.blocks import BlockCache, DecodingCache, ResidualBlock
from attnlab.layers.embedding import TokenEmbedding
from attnlab.layers.feedforward import FeedForward, GatedFeedForward, make_feedforward
from attnlab.layers.normalization import RMSNorm, make_norm
from attnlab.layers.positional import (
    ALiBi,
    LearnedPositionalEmbedding,
    RelativePosition,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
)

__all__ = [
    "ALiBi",
    "BlockCache",
    "DecodingCache",
    "FeedForward",
    "GatedFeedForward",
    "HookPoint",
    "KVCache",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "RMSNorm",
    "RelativePosition",
    "ResidualBlock",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "StaticKVCache",
    "TokenEmbedding",
    "causal_mask",
    "make_feedforward",
    "make_norm",
    "padding_mask",
    "scaled_dot_product_attention",
]
