"""The tokenizer interface every tokenizer keeps, and JSON save/load.

A tokenizer maps text to integer ids and back. Special tokens (``<|endoftext|>``, ``<pad>``,
...) have ids after the ordinary vocabulary; ``encode`` treats its input as plain text, so a
special token is only ever produced on purpose, by looking up its id.
"""

from __future__ import annotations

import codecs
import importlib
import os
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np

from attnlab.errors import UserError
from attnlab.files import atomic_write_json, read_json


def fix_surrogates(text: str) -> str:
    """Text that UTF-8 can encode: pairs of surrogates join, lone ones become U+FFFD.

    tiktoken does this before encoding; the reference encoder must do the same to match it.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def visible(text: str) -> str:
    """The text with its unprintable characters as escapes (\\n, \\t, \\x1b): for showing tokens
    on a terminal or a plot, where they would act or vanish. A token that starts with a combining
    mark (Hindi's े, Thai's ั) has it on a dotted circle, as Unicode's charts show one alone: it
    would sit on what is drawn before it (a separator, the previous token)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return "\u25cc" + shown if shown and unicodedata.category(shown[0])[0] == "M" else shown


def check_special_tokens(tokens: Iterable[str]) -> list[str]:
    """The special tokens as a list, once each is a non-empty string of UTF-8 text given once
    (ValueError)."""
    if isinstance(tokens, str):
        raise ValueError(f"special tokens must be a list of strings, not the string {tokens!r}")
    tokens = list(tokens)
    if bad := [t for t in tokens if not isinstance(t, str) or not t]:
        raise ValueError(f"a special token must be a non-empty string, got {bad[0]!r}")
    if bad := [t for t in tokens if fix_surrogates(t) != t]:  # not saved again: a lone surrogate
        raise ValueError(f"a special token must be text UTF-8 can encode, got {bad[0]!r}")
    if repeated := sorted({t for t in tokens if tokens.count(t) > 1}):
        raise ValueError(f"special token(s) {', '.join(map(repr, repeated))} given more than once")
    return tokens


class Tokenizer(ABC):
    kind: ClassVar[str]  # the "type" field in the saved JSON

    def __init__(self, base_vocab_size: int, special_tokens: Iterable[str] = ()):
        special_tokens = check_special_tokens(special_tokens)
        self.special_tokens: dict[str, int] = {
            token: base_vocab_size + i for i, token in enumerate(special_tokens)
        }
        self._special_by_id = {i: t for t, i in self.special_tokens.items()}
        self._base_vocab_size = base_vocab_size

    @property
    def vocab_size(self) -> int:
        """Ordinary tokens plus special tokens: the model's V."""
        return self._base_vocab_size + len(self.special_tokens)

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of `text`, read as plain text."""

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of `text` as one array, for a whole corpus: without the Python int per token
        (some 36 bytes each) of encode's list, where a tokenizer can."""
        return np.asarray(self.encode(text), dtype=np.uint32)

    @abstractmethod
    def _decode_ordinary(self, ids: list[int]) -> str:
        """Text of ids below the base vocabulary size."""

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes of an ordinary id (a byte-level token may hold part of a character)."""
        return self._decode_ordinary([token_id]).encode("utf-8", "surrogatepass")

    def token_text(self, token_id: int) -> str:
        """One id's own text, to show it (a special token's name): bytes of part of a character
        (a byte-level token may hold some) as \\xNN, which decode would make U+FFFD each."""
        if 0 <= token_id < self._base_vocab_size:
            return self.token_bytes(token_id).decode("utf-8", "backslashreplace")
        return self.decode([token_id])

    def byte_lengths(self) -> np.ndarray:
        """Bytes each id stands for, (vocab_size,), special tokens their names': the bytes of a
        token array, counted without decoding it."""
        ordinary = [len(self.token_bytes(i)) for i in range(self._base_vocab_size)]
        special = [len(token.encode("utf-8", "surrogatepass")) for token in self.special_tokens]
        return np.array(ordinary + special, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens appear as their names. Unknown ids raise ValueError."""
        pieces, run = [], []
        for i in ids:
            i = int(i)
            if 0 <= i < self._base_vocab_size:
                run.append(i)
            elif i in self._special_by_id:
                pieces += [self._decode_ordinary(run), self._special_by_id[i]]
                run = []
            else:
                raise self._unknown(i)
        pieces.append(self._decode_ordinary(run))
        return "".join(pieces)

    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        """The text of `ids` piece by piece as they come, adding up to decode(ids): a character
        whose bytes span several ids appears once it is complete (bytes that never make one
        appear as U+FFFD, as decode gives them)."""
        pending = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for i in ids:
            i = int(i)
            if 0 <= i < self._base_vocab_size:
                text = pending.decode(self.token_bytes(i))
            elif i in self._special_by_id:
                text = pending.decode(b"", final=True) + self._special_by_id[i]
            else:
                raise self._unknown(i)
            if text:
                yield text
        if rest := pending.decode(b"", final=True):
            yield rest

    def _unknown(self, token_id: int) -> ValueError:
        return ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "special_tokens": list(self.special_tokens)}

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer: ...

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


# type name -> "module:class", imported on first use.
TOKENIZER_TYPES = {
    "char": "attnlab.tokenizers.char:CharTokenizer",
    "byte": "attnlab.tokenizers.byte:ByteTokenizer",
    "bpe": "attnlab.tokenizers.bpe:BPETokenizer",
    "wordpiece": "attnlab.tokenizers.wordpiece:WordPieceTokenizer",
}


def tokenizer_class(kind: str) -> type[Tokenizer]:
    if kind not in TOKENIZER_TYPES:
        raise UserError(
            f"unknown tokenizer type {kind!r}; known types: {', '.join(TOKENIZER_TYPES)}"
        )
    module, name = TOKENIZER_TYPES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load any saved tokenizer; its "type" field picks the class."""
    return tokenizer_from_dict(read_json(path, "tokenizer file"), source=f"tokenizer file {path}")


def tokenizer_from_dict(data: Any, source: str = "tokenizer") -> Tokenizer:
    """A tokenizer from its to_dict() form; its "type" field picks the class."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in TOKENIZER_TYPES:
        theirs = isinstance(data, dict) and {"model", "added_tokens"} <= data.keys()
        hint = "; it is a Hugging Face tokenizer: `attnlab convert` its model's folder"
        raise UserError(
            f"{source} has unknown type {kind!r}; known types: {', '.join(TOKENIZER_TYPES)}"
            f"{hint if theirs else ''}"
        )
    try:
        return tokenizer_class(kind).from_dict(data)
    except KeyError as error:  # a field the type needs (str(error) would be the bare key)
        raise UserError(f"{source} is malformed: it lacks {error}") from None
    except (TypeError, ValueError) as error:
        raise UserError(f"{source} is malformed: {error}") from None


def build_tokenizer(
    spec: str,
    texts: Iterable[str],
    progress: bool = False,
    special_tokens: Iterable[str] | None = None,
) -> Tokenizer:
    """A tokenizer by spec, fitted to `texts` where it learns: "char", "byte" or "bpe:N".
    special_tokens: after the ordinary vocabulary (default: none, and for BPE <|endoftext|>)."""
    kind, _, size = spec.partition(":")
    specials = list(special_tokens) if special_tokens is not None else None
    if kind == "char" and not size:
        seen = "".join(set().union(*map(set, texts)))  # a text at a time: a Corpus's pieces
        return tokenizer_class("char").from_text(seen, specials or ())
    if kind == "byte" and not size:
        return tokenizer_class("byte")(specials or ())
    if kind == "bpe" and size.isdigit():
        return tokenizer_class("bpe").train(
            texts,
            int(size),
            special_tokens=["<|endoftext|>"] if specials is None else specials,
            progress=progress,
            workers=os.cpu_count() or 1,
        )
    if kind == "bpe":
        raise UserError(
            f"tokenizer {spec!r}: the N of bpe:N is a vocabulary size, a whole number (bpe:4096)"
        )
    raise UserError(f"unknown tokenizer {spec!r}; choose char, byte or bpe:N (N = vocabulary size)")
