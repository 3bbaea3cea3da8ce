"""Byte-level tokenizer: the 256 byte values of the UTF-8 encoding are the vocabulary.

Any text encodes (a lone surrogate as U+FFFD, as BPE and tiktoken do); decoding any id sequence
gives text, with invalid UTF-8 replaced by U+FFFD.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from attnlab.tokenizers.base import Tokenizer, fix_surrogates


class ByteTokenizer(Tokenizer):
    kind = "byte"

    def __init__(self, special_tokens: Iterable[str] = ()):
        super().__init__(256, special_tokens)

    def encode(self, text: str) -> list[int]:
        return list(fix_surrogates(text).encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(fix_surrogates(text).encode("utf-8"), dtype=np.uint8)

    def _decode_ordinary(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([token_id])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ByteTokenizer:
        return cls(data.get("special_tokens", ()))
