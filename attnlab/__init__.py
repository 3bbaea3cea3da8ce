"""attnlab: build, train, sample, evaluate and look inside your own transformers.

The names below are imported on first use, so that `import attnlab` (and `attnlab --help`)
does not load torch.
"""

import importlib
import os

from attnlab.errors import ConfigError, UserError

__version__ = "0.1.0"

# On CPUs, bf16 matrix products run through oneDNN, whose primitive cache (and PyTorch's LRU
# cache in front of it) keeps a compiled kernel, with buffers sized for its shapes, for each of up
# to 1,024 recent shapes. Where shapes change from batch to batch (translation, masked LM) a
# training process grew by gigabytes. A training step here needs fewer than 32 primitives
# (masked-LM pre-training: 29 in all); PyTorch's cache at 32 slowed that pre-training by 4%, at
# 128 not measurably. Read at the first such product; a user's own setting wins.
for _cache, _capacity in (("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32"), ("LRU_CACHE_CAPACITY", "128")):
    os.environ.setdefault(_cache, _capacity)

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
