"""Tokenizers: the interface, character- and byte-level tokenizers (BPE lives in bpe.py)."""

from attnlab.tokenizers.base import (
    TOKENIZER_TYPES,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    tokenizer_class,
    tokenizer_from_dict,
)
from attnlab.tokenizers.byte import ByteTokenizer
from attnlab.tokenizers.char import CharTokenizer

__all__ = [
    "TOKENIZER_TYPES",
    "build_tokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "tokenizer_class",
    "tokenizer_from_dict",
]
