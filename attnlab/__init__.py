"""attnlab: build, train, sample, evaluate and look inside your own transformers."""

from attnlab.errors import ConfigError, UserError
from attnlab.models import GPT, GPTConfig, build_model
from attnlab.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "ByteTokenizer",
    "CharTokenizer",
    "ConfigError",
    "GPTConfig",
    "Tokenizer",
    "UserError",
    "build_model",
    "load_tokenizer",
]
