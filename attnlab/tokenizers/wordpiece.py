"""WordPiece, BERT's tokenizer (Devlin et al. 2019; Wu et al. 2016, section 4.1): a vocabulary
of words and word pieces, the pieces that continue a word written with a ``##`` prefix.

Encoding is two steps, as Google's BERT and Hugging Face's BertTokenizer do them:

1. the basic step: control characters (and U+0000, U+FFFD) are dropped and whitespace becomes a
   space; CJK ideographs get a space on each side (Chinese has no spaces between words, so each
   character is a word); where the vocabulary is uncased the text is lowercased and its accents
   stripped (decomposed, NFD, and the non-spacing marks dropped); the text is split at
   whitespace, and every punctuation character becomes a word of its own;
2. each word is cut into pieces greedily, longest match first: the longest prefix that is a
   token, then the longest token ``##rest`` of what remains, and so on. A word no pieces cover,
   or longer than 100 characters, is one ``[UNK]``.

Where Hugging Face's two BertTokenizers differ, this one gives the ids of the fast one (Rust,
the `tokenizers` library): it keeps unassigned code points (the Python one drops them as
controls), lowercases one character at a time (a word-final capital sigma becomes σ, not
str.lower's ς), and leaves U+2B820-U+2B91F (CJK extension E) out of the ideographs. Both use
tables of Unicode categories: where those tables' versions differ (a few hundred marks and
punctuation characters added in later versions), so may the words.

Speed: most text is ASCII, where the basic step is plain: ``words`` lowercases such text
whole and splits it with one regular expression into runs of letters and digits and single
punctuation characters (ASCII's controls dropped first). Only the whitespace-separated chunks
that hold a non-ASCII character take the per-character path, ``words_reference``; a chunk's words
do not depend on the text around it, so the two paths give the same words (tests hold them to it).

Decoding joins the tokens with spaces and glues each ``##`` piece to the one before (Hugging
Face's decode without its English clean-up of spaces before punctuation): text comes back
lowercased, unaccented and spaced as the basic step left it.

Ids. attnlab's tokenizers put their special tokens after the ordinary ones, and the code relies
on it (masking draws random words below the first special id; fill-mask and the checks of a
tokenizer count the ordinary tokens as vocab_size minus the specials). BERT's vocab.txt has
``[PAD]`` at 0 and ``[UNK]`` ``[CLS]`` ``[SEP]`` ``[MASK]`` at 100-103, among ``[unusedN]``
rows. Rather than teach every such place another rule, ``from_vocab`` renumbers: the ordinary
tokens keep vocab.txt's order, the five special tokens come last, and it returns the order, so
that a converter moves the weights' vocabulary rows (embeddings, output bias) to match; the
model then computes the same function on the new ids. Within attnlab the new ids are the only
ones.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

from attnlab.tokenizers.base import Tokenizer

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
CONTINUATION = "##"  # the prefix of a piece that continues a word
MAX_WORD_CHARS = 100  # a longer word is [UNK] at once (BertTokenizer's limit)
CACHE_LIMIT = 1 << 16  # words remembered with their pieces before the cache starts over

# CJK Unified Ideographs and their extensions and compatibility blocks: the characters the basic
# step makes words of their own (Japanese kana and Korean hangul are not among them, as in BERT;
# extension E starts at 0x2B920, not 0x2B820, as in Hugging Face's fast tokenizer)
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip


# the fast path: ASCII's controls (dropped), its words and punctuation, and the chunks between
# ASCII whitespace that hold a non-ASCII character (matched from a chunk's start only, so that
# the search stays linear in the text)
ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
ASCII_WORD = re.compile(r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]")
NON_ASCII_CHUNK = re.compile(r"(?<![^ \t\n\r])([^ \t\n\r\x80-\U0010ffff]*[^\x00-\x7f][^ \t\n\r]*)")


def _is_cjk(char: str) -> bool:
    return any(low <= ord(char) <= high for low, high in CJK_RANGES)


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    """Dropped by the basic step: Unicode's "other" characters (controls, formats, private use),
    but tab and line breaks, which are whitespace, and unassigned code points, which the fast
    tokenizer keeps."""
    return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs")


@lru_cache(maxsize=CACHE_LIMIT)
def _is_punctuation(char: str) -> bool:
    """Unicode punctuation, and all of ASCII's non-alphanumeric printable characters ($, +, ^,
    ` are symbols to Unicode, but BERT splits them off too)."""
    code = ord(char)
    ascii_symbol = 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126
    return ascii_symbol or unicodedata.category(char).startswith("P")


@lru_cache(maxsize=CACHE_LIMIT)
def _cleaned(char: str) -> str:
    """What the basic step's first pass makes of one character: nothing (a control), a space
    (whitespace), the character spaced (a CJK ideograph) or the character."""
    if char in "\x00\ufffd" or _is_control(char):
        return ""
    if _is_whitespace(char):
        return " "
    return f" {char} " if _is_cjk(char) else char


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


class WordPieceTokenizer(Tokenizer):
    """BERT's WordPiece over `tokens`, the ordinary vocabulary in id order (pieces that continue
    a word start with ##); the special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` follow them.
    lowercase: the vocabulary is uncased (bert-base-uncased); strip_accents: None follows
    lowercase, as BertTokenizer's does."""

    kind = "wordpiece"

    def __init__(
        self, tokens: Sequence[str], lowercase: bool = True, strip_accents: bool | None = None
    ):
        if isinstance(tokens, str) or not tokens:  # else each character of a string a token
            raise ValueError("the vocabulary must be a list of one or more tokens")
        self.tokens = list(tokens)
        if not all(isinstance(t, str) and t and t == t.strip() for t in self.tokens):
            raise ValueError("the vocabulary must be non-empty tokens without surrounding spaces")
        if set(self.tokens) & set(SPECIALS) or len(set(self.tokens)) < len(self.tokens):
            raise ValueError("the vocabulary holds a token twice, or a special token")
        if not isinstance(lowercase, bool) or strip_accents not in (None, True, False):
            raise ValueError("lowercase must be true or false, strip_accents true, false or null")
        super().__init__(len(self.tokens), SPECIALS)
        self.lowercase, self.strip_accents = lowercase, strip_accents
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self._longest = max(map(len, self.tokens))
        # a corpus repeats its words: each is cut once (a bounded cache: a corpus's rare words);
        # a plain dict, so that the tokenizer pickles (a DataLoader's workers, a process pool)
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_vocab(
        cls, vocab: Sequence[str], lowercase: bool = True, strip_accents: bool | None = None
    ) -> tuple[WordPieceTokenizer, list[int]]:
        """The tokenizer of BERT's vocab.txt tokens (`vocab`, in its order), and the order of its
        ids: order[i] is the vocab.txt row of id i (the ordinary tokens in their order, then
        the special tokens: see the module docstring). ValueError if a special is missing."""
        rows = {token: row for row, token in enumerate(vocab)}
        if missing := [t for t in SPECIALS if t not in rows]:
            raise ValueError(f"the vocabulary lacks {', '.join(missing)}")
        ordinary = [row for row, token in enumerate(vocab) if token not in SPECIALS]
        tokenizer = cls([vocab[row] for row in ordinary], lowercase, strip_accents)
        return tokenizer, ordinary + [rows[t] for t in SPECIALS]

    def words(self, text: str) -> list[str]:
        """The basic step: `text` as words, before they are cut into pieces (the fast path of
        the module docstring)."""
        if text.isascii():
            return self._ascii_words(text)
        words = []
        # split with the group kept: ASCII text, then a chunk with non-ASCII, then ASCII ...
        for n, part in enumerate(NON_ASCII_CHUNK.split(text)):
            words += self.words_reference(part) if n % 2 else self._ascii_words(part)
        return words

    def _ascii_words(self, text: str) -> list[str]:
        if ASCII_CONTROL.search(text):
            text = ASCII_CONTROL.sub("", text)
        return ASCII_WORD.findall(text.lower() if self.lowercase else text)

    def words_reference(self, text: str) -> list[str]:
        """The basic step one character at a time, as BERT writes it: `words` takes this path
        for the chunks of text that hold a non-ASCII character, and tests hold it to the other."""
        words = []
        for word in "".join(map(_cleaned, text)).split():
            if self.lowercase:  # per character: no final sigma (ς), as the fast tokenizer
                word = word.replace("\u03a3", "\u03c3").lower()
            if self.strip_accents or (self.strip_accents is None and self.lowercase):
                word = _strip_accents(word)
            words += self._split_punctuation(word)
        return words

    @staticmethod
    def _split_punctuation(word: str) -> list[str]:
        pieces, current = [], ""
        for char in word:
            if _is_punctuation(char):
                pieces += [current, char] if current else [char]
                current = ""
            else:
                current += char
        return pieces + [current] if current else pieces

    def _cut(self, word: str) -> tuple[int, ...]:
        """Greedy longest-match-first pieces of one word; ``[UNK]`` where they do not cover it."""
        unknown = (self.special_tokens[UNK],)
        if len(word) > MAX_WORD_CHARS:
            return unknown
        ids, start = [], 0
        while start < len(word):
            prefix = CONTINUATION if start else ""
            for end in range(min(len(word), start + self._longest), start, -1):
                if (found := self._ids.get(prefix + word[start:end])) is not None:
                    ids.append(found)
                    start = end
                    break
            else:
                return unknown
        return tuple(ids)

    def encode(self, text: str) -> list[int]:
        return self._pieces(self.words(text))

    def encode_reference(self, text: str) -> list[int]:
        """`encode` through words_reference alone: the slow path, for tests and benchmarks."""
        return self._pieces(self.words_reference(text))

    def _pieces(self, words: list[str]) -> list[int]:
        ids, cache = [], self._cache
        for word in words:
            if (pieces := cache.get(word)) is None:
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                pieces = cache[word] = self._cut(word)
            ids += pieces
        return ids

    def _token(self, token_id: int) -> str:
        if 0 <= token_id < len(self.tokens):
            return self.tokens[token_id]
        if token_id in self._special_by_id:
            return self._special_by_id[token_id]
        raise self._unknown(token_id)

    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Each token's text in turn: a space before every token but the first and the ##
        pieces, which lose their prefix. Special tokens appear as their names."""
        for n, token_id in enumerate(ids):
            token = self._token(int(token_id))
            if n == 0:
                yield token
            else:
                yield token[len(CONTINUATION) :] if token.startswith(CONTINUATION) else " " + token

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.decode_stream(ids))

    def _decode_ordinary(self, ids: list[int]) -> str:
        return self.decode(ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
            "tokens": self.tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordPieceTokenizer:
        if list(data.get("special_tokens", ())) != list(SPECIALS):
            raise ValueError(f"a wordpiece tokenizer's special tokens are {', '.join(SPECIALS)}")
        return cls(data["tokens"], data["lowercase"], data.get("strip_accents"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WordPieceTokenizer):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # equal by value, so not usable as a dict key

    def __repr__(self) -> str:
        return f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase})"
