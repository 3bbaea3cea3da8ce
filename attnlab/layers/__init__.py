"""Building blocks shared by every model. Importing the package registers the built-in token
mixers (layers/mixers.py)."""

from attnlab.layers import hyena, mamba, recurrent  # noqa: F401 - register their mixers
from attnlab.layers.attention import (
    AttentionOptions,
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)
from attnlab.layers.blocks import ResidualBlock
from attnlab.layers.caches import BlockCache, DecodingCache, KVCache, StaticKVCache
from attnlab.layers.contracts import (
    DecodingState,
    TokenMixer,
    initialize,
    keep_init,
    learning_rate_scale,
    no_weight_decay,
    writes_residual,
)
from attnlab.layers.embedding import TokenEmbedding
from attnlab.layers.feedforward import FeedForward, GatedFeedForward, make_feedforward
from attnlab.layers.hooks import HookPoint, hook_points
from attnlab.layers.mixers import MIXERS, MixerContext, register_mixer
from attnlab.layers.normalization import RMSNorm, make_norm
from attnlab.layers.positional import (
    ALiBi,
    LearnedPositionalEmbedding,
    RelativePosition,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
)

__all__ = [
    "MIXERS",
    "ALiBi",
    "AttentionOptions",
    "BlockCache",
    "DecodingCache",
    "DecodingState",
    "FeedForward",
    "GatedFeedForward",
    "HookPoint",
    "KVCache",
    "LearnedPositionalEmbedding",
    "MixerContext",
    "MultiHeadAttention",
    "RMSNorm",
    "RelativePosition",
    "ResidualBlock",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "StaticKVCache",
    "TokenEmbedding",
    "TokenMixer",
    "causal_mask",
    "hook_points",
    "initialize",
    "keep_init",
    "learning_rate_scale",
    "make_feedforward",
    "make_norm",
    "no_weight_decay",
    "padding_mask",
    "register_mixer",
    "scaled_dot_product_attention",
    "writes_residual",
]
