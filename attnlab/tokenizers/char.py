"""Character-level tokenizer: one id per distinct character of a training text."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any

import numpy as np

from attnlab.errors import UserError
from attnlab.tokenizers.base import Tokenizer, fix_surrogates

_SLICE = 1 << 22  # characters encoded at a time by encode_array


def _shown(char: str) -> str:
    """A character quoted, escaped where it would not show alone: a combining mark (which
    would sit on the quote) as well as what repr escapes."""
    return ascii(char) if unicodedata.category(char).startswith("M") else repr(char)


class UnseenCharacters(UserError):
    """Text with characters a char tokenizer never saw: `unseen` the first (shown), `hint`
    a way to write the text in known ones, where there is one (else "")."""

    def __init__(self, unseen: list[str], hint: str):
        self.unseen = f"{len(unseen)} character(s) the tokenizer never saw: " + " ".join(
            _shown(c) for c in unseen[:20]
        )
        self.hint = hint
        super().__init__(
            f"text has {self.unseen}"
            + (
                hint
                or " (a char tokenizer knows its training text's characters only: leave these "
                "out, or use a model trained with --tokenizer byte or bpe:N, which read any text)"
            )
        )


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: Iterable[str], special_tokens: Iterable[str] = ()):
        self.chars = list(chars)
        if not self.chars or not all(isinstance(c, str) and len(c) == 1 for c in self.chars):
            raise ValueError("the vocabulary must be one or more single characters")
        if bad := [c for c in self.chars if fix_surrogates(c) != c]:  # its file could not be saved
            raise ValueError(f"the vocabulary holds {bad[0]!r}, which UTF-8 cannot encode")
        if len(set(self.chars)) < len(self.chars):
            raise ValueError("the vocabulary holds a character more than once")
        super().__init__(len(self.chars), special_tokens)
        self._ids = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str, special_tokens: Iterable[str] = ()) -> CharTokenizer:
        """The vocabulary is the sorted set of characters in `text`."""
        if not text:
            raise UserError("cannot build a character tokenizer from empty text")
        return cls(sorted(set(text)), special_tokens)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            unseen = sorted({c for c in text if c not in self._ids})
            raise UnseenCharacters(unseen, self._normal_form_hint(text)) from None

    def _normal_form_hint(self, text: str) -> str:
        """How to write `text` in characters the tokenizer knows, where the same text in
        another Unicode form has them all (é as e and a combining accent, where the training
        text has é: text typed or pasted on macOS); else ""."""
        for form in ("NFC", "NFD", "NFKC"):
            if all(c in self._ids for c in unicodedata.normalize(form, text)):
                return (
                    f"; in Unicode's {form} form the text has only characters it knows: give "
                    f"it so (in Python: unicodedata.normalize({form!r}, text))"
                )
        return ""

    def encode_array(self, text: str) -> np.ndarray:
        """One slice of the text at a time, each its own list: one id per character, so the
        slices' ids are the text's."""
        slices = range(0, len(text), _SLICE)
        return np.concatenate(
            [np.asarray(self.encode(text[i : i + _SLICE]), dtype=np.uint32) for i in slices]
            or [np.zeros(0, dtype=np.uint32)]
        )

    def _decode_ordinary(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        return cls(data["chars"], data.get("special_tokens", ()))
