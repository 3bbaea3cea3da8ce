"""Models: each owns its config, presets, embeddings, head and forward, and registers its kind
(registry.py). Importing the package registers the built-in kinds."""

from attnlab.models import gpt, encoder_decoder, bert, recurrent_lm, vision_transformer, image_gpt  # noqa: F401, I001 - registers the kinds, in this order
from attnlab.models.bert import BertClassifier, BertConfig, BertForMaskedLM
from attnlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.image_gpt import ImageGPT, ImageGPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.models.registry import KINDS, ModelKind, build_model, get_kind, register_kind
from attnlab.models.vision_transformer import VisionTransformer, ViTConfig

__all__ = [
    "GPT",
    "KINDS",
    "BertClassifier",
    "BertConfig",
    "BertForMaskedLM",
    "EncoderDecoder",
    "EncoderDecoderConfig",
    "GPTConfig",
    "ImageGPT",
    "ImageGPTConfig",
    "ModelKind",
    "RecurrentLM",
    "RecurrentLMConfig",
    "ViTConfig",
    "VisionTransformer",
    "build_model",
    "get_kind",
    "register_kind",
]
