"""attnlab: build, train, sample, evaluate and look inside your own transformers.

The names below are imported on first use, so that `import attnlab` (and `attnlab --help`)
does not load torch.
"""

import importlib

from attnlab.errors import ConfigError, UserError

__version__ = "0.1.0"

_LAZY = {
    "GPT": "attnlab.models",
    "GPTConfig": "attnlab.models",
    "VisionTransformer": "attnlab.models",
    "ViTConfig": "attnlab.models",
    "build_model": "attnlab.models",
    "register_kind": "attnlab.models",
    "ModelKind": "attnlab.models",
    "register_mixer": "attnlab.layers",
    "ByteTokenizer": "attnlab.tokenizers",
    "CharTokenizer": "attnlab.tokenizers",
    "Tokenizer": "attnlab.tokenizers",
    "load_tokenizer": "attnlab.tokenizers",
}

__all__ = ["ConfigError", "UserError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnlab' has no attribute {name!r}")
