"""What a byte-level BPE may do to a text before its pre-tokenizer, as Hugging Face's tokenizers
do for GPT-NeoX's tokenizer (Pythia's, Mamba's): Unicode normalization and added tokens.

Normalization ("NFC", "NFD", "NFKC" or "NFKD") rewrites the text in that Unicode form first:
under NFC, "e" followed by the combining acute accent U+0301 becomes the one character "é",
so both spellings encode alike (and decode as "é").

An *added token* is ordinary text with an id of its own, outside the merges: GPT-NeoX's are runs
of 2 to 24 spaces. The normalized text is cut at them, leftmost first and, of those starting
there, the longest (as Hugging Face's added vocabulary matches its tokens marked normalized); the
stretches between are pre-tokenized and merged as usual, each on its own, so no pre-token spans
an added token: "a    b" is "a", "    ", "b" where GPT-2's splitting makes "a", "   ", " b".

With split_digits, each character of Unicode's number classes (\\p{N}: the digits 0-9, "²",
"½", ...) is cut out too, a stretch of its own, as Hugging Face's Digits(individual_digits)
pre-tokenizer does before SmolLM2's byte-level one: "a  12" is "a", "  ", "1", "2" (the
pattern then runs on each stretch alone, so "  " stays whole where it would give " " to a
following word). The added tokens are cut out first.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

import regex

from attnlab.tokenizers.base import fix_surrogates

NORMALIZATIONS = ("NFC", "NFD", "NFKC", "NFKD")
_DIGIT = regex.compile(r"(\p{N})")


class TextSplitter:
    """A text normalized and cut at the added tokens: segments(text) gives (stretch, None) for
    each stretch to pre-tokenize and (token, id) for each added token, in order. The added tokens'
    ids are first_id, first_id + 1, ... in the order given; split_digits: each number character a
    stretch of its own. cuts: whether it cuts a text at all."""

    def __init__(
        self,
        added_tokens: Iterable[str],
        normalization: str | None,
        first_id: int,
        split_digits: bool = False,
    ) -> None:
        if isinstance(added_tokens, str):
            raise ValueError(f"added tokens must be a list of strings, not {added_tokens!r}")
        self.tokens = list(added_tokens)
        if bad := [
            t for t in self.tokens if not isinstance(t, str) or fix_surrogates(t) != t or not t
        ]:
            raise ValueError(f"an added token must be non-empty UTF-8 text, got {bad[0]!r}")
        if len(set(self.tokens)) < len(self.tokens):
            raise ValueError("an added token is given more than once")
        if normalization not in (None, *NORMALIZATIONS):
            raise ValueError(
                f"unknown normalization {normalization!r}: one of {', '.join(NORMALIZATIONS)}"
            )
        if not isinstance(split_digits, bool):
            raise ValueError(f"split_digits must be true or false, got {split_digits!r}")
        self.normalization, self.split_digits = normalization, split_digits
        self.cuts = bool(self.tokens) or split_digits
        if normalization and (bad := [t for t in self.tokens if self.normalized(t) != t]):
            raise ValueError(f"added token {bad[0]!r} is not in {normalization}: it never matches")
        self.ids = {token: first_id + i for i, token in enumerate(self.tokens)}
        longest_first = sorted(self.tokens, key=len, reverse=True)  # a regex takes the first
        self._pattern = regex.compile("|".join(map(regex.escape, longest_first)))

    def normalized(self, text: str) -> str:
        """`text` in the normal form (as it is without one); lone surrogates as encode sees them."""
        if self.normalization is None:
            return text
        return unicodedata.normalize(self.normalization, fix_surrogates(text))

    def segments(self, text: str) -> list[tuple[str, int | None]]:
        """The normalized `text` as stretches to pre-tokenize (id None) and added tokens (their
        ids), in order; a text without either cut is one stretch, itself (if empty too). Its
        surrogates are joined first, as encode sees them: a pair may make a digit (U+1D7CE)."""
        text = self.normalized(text) if self.normalization else fix_surrogates(text)
        if not self.cuts:
            return [(text, None)]
        segments: list[tuple[str, int | None]] = []
        start = 0
        for match in self._pattern.finditer(text) if self.tokens else ():
            segments += self._stretches(text[start : match.start()])
            segments.append((match.group(), self.ids[match.group()]))
            start = match.end()
        segments += self._stretches(text[start:])
        return segments or [("", None)]

    def _stretches(self, text: str) -> list[tuple[str, None]]:
        """A stretch between added tokens, its number characters cut out with split_digits
        (none for an empty one)."""
        parts = _DIGIT.split(text) if self.split_digits else [text]
        return [(part, None) for part in parts if part]
