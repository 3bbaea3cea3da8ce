"""Model kinds by name: the config class and the model class, for checkpoints and the CLI."""

from __future__ import annotations

from typing import Any

from torch import nn

from attnlab.config import config_from_dict, config_to_dict
from attnlab.errors import UserError
from attnlab.models.encoder_decoder import PRESETS as ENCODER_DECODER_PRESETS
from attnlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.gpt import PRESETS as GPT_PRESETS

MODELS: dict[str, tuple[type, type[nn.Module], dict[str, Any]]] = {
    "gpt": (GPTConfig, GPT, GPT_PRESETS),
    "encoder_decoder": (EncoderDecoderConfig, EncoderDecoder, ENCODER_DECODER_PRESETS),
}


def model_kind(model: nn.Module) -> str:
    for kind, (_, model_class, _) in MODELS.items():
        if type(model) is model_class:
            return kind
    raise ValueError(f"{type(model).__name__} is not a registered model kind")


def build_model(kind: str, config: dict[str, Any] | Any) -> nn.Module:
    """A model of `kind` from its config (a config object or a dict, as in config.json)."""
    if kind not in MODELS:
        raise UserError(f"unknown model kind {kind!r}; known kinds: {', '.join(MODELS)}")
    config_class, model_class, _ = MODELS[kind]
    if isinstance(config, dict):
        config = config_from_dict(config_class, config, source=f"{kind} config")
    return model_class(config)


def describe(model: nn.Module) -> dict[str, Any]:
    """The JSON-ready description saved beside weights: kind and config."""
    return {"kind": model_kind(model), "config": config_to_dict(model.config)}
