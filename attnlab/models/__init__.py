"""Models: each owns its config, presets, embeddings, head and forward."""

from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.registry import MODELS, build_model

__all__ = ["GPT", "GPTConfig", "MODELS", "build_model"]
