"""Tokenizers: the interface, character- and byte-level tokenizers (BPE lives in bpe.py)."""

from attnlab.tokenizers.base import TOKENIZER_TYPES, Tokenizer, load_tokenizer, tokenizer_class
from attnlab.tokenizers.byte import ByteTokenizer
from attnlab.tokenizers.char import CharTokenizer

__all__ = [
    "TOKENIZER_TYPES",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "tokenizer_class",
]
