"""Byte-level byte-pair encoding (BPE), GPT-2 compatible.

The vocabulary starts as the 256 byte values; each merge adds the token ``left + right``
(training: :mod:`attnlab.tokenizers.bpe_training`). Text is first cut into pre-tokens by a regex
(GPT-2's or GPT-4's pattern, or your own), and merges never cross a pre-token boundary.

Every token is a byte string, and its id doubles as its merge *rank*: a lower id merges first.
Encoding a pre-token (tiktoken's rule, followed exactly by both encoders here):

- if the whole pre-token is a token, that token;
- else start from single bytes and repeatedly merge the adjacent pair whose concatenation is the
  token of lowest rank (the leftmost one on a tie), until no adjacent pair is a token.

``encode`` hands the same ranks to tiktoken (fast, Rust); ``encode_reference`` is the readable
Python version of the rule above. Both give the same ids on any text but for letters and digits
of recent Unicode versions (U+A7CE, CJK Extension J): `regex` classes them as letters and digits,
tiktoken's engine, of older Unicode tables, does not, so the two cut them into pre-tokens
differently (training counts its pre-tokens with `regex`). (A custom pattern must mean
the same to both regex engines, Python's `regex` and tiktoken's; the built-in ones are tested. A
pattern that skips some characters drops them from the encoding; training refuses one that skips
characters of its corpus. A custom pattern may not use what only a backtracking engine runs,
look-around or back-references: see resolve_pattern.)

Trained tokenizers give byte b the id b. GPT-2 permutes the 256 bytes (its printable bytes come
first), so the tokenizer keeps an explicit ``byte_order``: the byte value of the first ids. It
may leave out the 13 bytes no UTF-8 text holds (0xC0, 0xC1, 0xF5-0xFF), as GPT-NeoX's does.

Before its pattern, a tokenizer may normalize the text (Unicode NFC, say), cut out *added
tokens*, texts with ids of their own after the merges' (GPT-NeoX's runs of spaces), and cut out
each digit (split_digits, SmolLM2's): see :mod:`attnlab.tokenizers.added_tokens`. Trained ones
do none of these.

Saved JSON (type "bpe", version 1; version 2 where it has added tokens or a normalization, or
leaves out bytes; version 3 with split_digits, which the readers of version 2 would drop)::

    {"type": "bpe", "version": 1, "pattern": "<regex>",
     "byte_order": "<the 256 base tokens, in id order>",
     "merges": ["Ġ t", "Ġ a", ...],      # merge i makes token id 256 + i (bytes all there)
     "added_tokens": ["  ", ...],        # version 2 only, as text: ids after the merges'
     "normalization": "NFC",             # version 2 only, where it has one
     "split_digits": true,               # version 3 only, where it has it
     "special_tokens": ["<|endoftext|>"]}

Token bytes are written in GPT-2's printable form (as in its vocab.bpe; see
:mod:`attnlab.tokenizers.byte_table`), so " the" reads "Ġthe" and a newline "Ċ".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import regex
import tiktoken

from attnlab.errors import UserError
from attnlab.tokenizers.added_tokens import TextSplitter
from attnlab.tokenizers.base import (
    Tokenizer,
    check_special_tokens,
    fix_surrogates,
    load_tokenizer,
)
from attnlab.tokenizers.bpe_training import count_words, pieces, train_merges
from attnlab.tokenizers.byte_table import (
    gpt2_specials,
    parse_merge,
    printable_bytes,
    text_to_token,
    token_to_text,
)

# Pre-tokenization patterns. GPT-2's keeps English contractions, runs of letters, of digits and
# of other symbols apart, each with an optional leading space; whitespace before a word is left
# to that word. GPT-4's (cl100k) also caps number runs at three digits and keeps newlines apart.
PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "gpt4": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
FORMAT_VERSION = 1  # 2 for added tokens, a normalization or bytes left out, which 1 lacks
NOT_UTF8 = frozenset([0xC0, 0xC1, *range(0xF5, 0x100)])  # bytes that no UTF-8 text holds
_CACHE_LIMIT = 200_000  # pre-tokens remembered by the reference encoder before it starts over
_NO_MERGE = float("inf")
# tiktoken's regex engine gives up on a whitespace run of about a million characters (the
# patterns' look-ahead backtracks through it), so longer runs are cut every this many
# characters and the parts encoded one after another, by both encoders alike.
SPACE_RUN = 100_000


# What only a backtracking engine runs: back-references, \G, \K, look-around, atomic groups,
# conditionals, recursion, possessive quantifiers (with escaped characters blanked out first).
_BACKTRACKING = regex.compile(r"\\[1-9gkKG]|\(\?<?[=!]|\(\?[>(&]|\(\?(?:P[>=]|R\)|\d)|[*+?}]\+")


def resolve_pattern(pattern: str) -> str:
    """A built-in pattern's regex by name, or `pattern` itself once checked to compile.

    A pattern of your own may not need backtracking (see _BACKTRACKING): tiktoken hands such
    constructs to a backtracking engine that gives up, with a Rust panic, on text that makes it
    backtrack too long; without them it runs in time linear in the text, whatever the text.
    The built-in patterns use a look-ahead that is known to be safe."""
    pattern = PATTERNS.get(pattern, pattern)
    # escaped characters and \p{..} classes stand for themselves: \p{L}+ is no possessive }+
    plain = regex.sub(r"\\[pPN]\{[^}]*\}|\\[^1-9gkKG]", "__", pattern)
    if pattern not in PATTERNS.values() and (found := _BACKTRACKING.search(plain)):
        raise UserError(
            f"pre-tokenization pattern {pattern!r} uses {found.group()!r}, which needs a "
            "backtracking regex engine (look-around, back-references, atomic groups, possessive "
            "quantifiers): only the built-in gpt2 and gpt4 patterns may"
        )
    try:
        compiled = regex.compile(pattern)
    except regex.error as error:
        raise UserError(f"invalid pre-tokenization pattern {pattern!r}: {error}") from None
    if compiled.fullmatch(""):
        raise UserError(f"pre-tokenization pattern {pattern!r} matches the empty string")
    try:  # tiktoken's Rust regex engine must accept it too (checked now, not after training)
        tiktoken.Encoding(
            "check",
            pat_str=pattern,
            special_tokens={},
            mergeable_ranks={bytes([b]): b for b in range(256)},
        )
    except ValueError as error:
        raise UserError(f"tiktoken cannot use pattern {pattern!r}: {error}") from None
    return pattern


class BPETokenizer(Tokenizer):
    """Byte-level BPE: a pattern, a byte order and an ordered list of merges.

    Ids: the bytes first (in `byte_order`: all 256, or all but some of NOT_UTF8, which no text
    needs), then merge i, then the added tokens, then the special tokens. normalization: a
    Unicode form text is put in first (None: as it is); split_digits: each digit (\\p{N}) is a
    pre-token of its own, the pattern run on the text between.
    """

    kind = "bpe"

    def __init__(
        self,
        merges: Sequence[tuple[bytes, bytes]],
        pattern: str = "gpt2",
        special_tokens: Iterable[str] = (),
        byte_order: Sequence[int] | None = None,
        added_tokens: Iterable[str] = (),
        normalization: str | None = None,
        split_digits: bool = False,
    ):
        self.pattern = resolve_pattern(pattern)
        self.byte_order = list(range(256) if byte_order is None else byte_order)
        if len(set(self.byte_order)) < len(self.byte_order) or not (
            set(range(256)) - NOT_UTF8 <= set(self.byte_order) <= set(range(256))
        ):
            raise ValueError(
                "byte_order must list each byte value once, all 256 but at most those no UTF-8 "
                "text holds (0xC0, 0xC1, 0xF5-0xFF)"
            )
        self.merges = [(bytes(left), bytes(right)) for left, right in merges]
        self._token_bytes = [bytes([b]) for b in self.byte_order]
        self._ranks = {token: i for i, token in enumerate(self._token_bytes)}
        for i, (left, right) in enumerate(self.merges):
            if left not in self._ranks or right not in self._ranks:
                raise ValueError(f"merge {i} uses a token that no earlier merge made")
            if left + right in self._ranks:
                raise ValueError(f"merge {i} makes {left + right!r}, which is already a token")
            self._ranks[left + right] = len(self._token_bytes)
            self._token_bytes.append(left + right)
        first = len(self._token_bytes)
        self._splitter = TextSplitter(added_tokens, normalization, first, split_digits)
        self.added_tokens, self.normalization = self._splitter.tokens, normalization
        self.split_digits = split_digits
        self._token_bytes += [token.encode("utf-8") for token in self.added_tokens]
        super().__init__(len(self._token_bytes), special_tokens)
        if both := sorted(set(self.added_tokens) & set(self.special_tokens)):
            raise ValueError(f"{both[0]!r} is both an added token and a special token")
        self._pre_tokenizer = regex.compile(self.pattern)
        self._cache: dict[str, list[int]] = {}
        # Specials stay out: encode() reads text as plain text, never producing them.
        self._fast = tiktoken.Encoding(
            "attnlab-bpe", pat_str=self.pattern, mergeable_ranks=self._ranks, special_tokens={}
        )

    # ---- training and loading ----

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        pattern: str = "gpt2",
        special_tokens: Iterable[str] = (),
        progress: bool = False,
        workers: int = 1,
    ) -> BPETokenizer:
        """Learn merges from `texts` (or one text) until the vocabulary (specials included) has
        `vocab_size`.

        Ties between equally frequent pairs go to the smallest (left id, right id); see
        :mod:`attnlab.tokenizers.bpe_training`. Training stops early, with a smaller
        vocabulary, if the corpus runs out of pairs. `workers` processes count pre-tokens.
        """
        special_tokens = check_special_tokens(special_tokens)  # before the counting, not after
        texts = [texts] if isinstance(texts, str) else texts  # not one text per character
        if vocab_size < 256 + len(special_tokens):
            minimum = 256 + len(special_tokens)
            raise UserError(
                f"vocab size {vocab_size} is too small: need at least {minimum} "
                f"(256 bytes + {len(special_tokens)} special token(s))"
            )
        pattern = resolve_pattern(pattern)
        counts = count_words(texts, pattern, special_tokens, workers=workers, progress=progress)
        merges = train_merges(counts, vocab_size - 256 - len(special_tokens), progress=progress)
        return cls(merges, pattern, special_tokens)

    @classmethod
    def from_gpt2_files(
        cls, vocab_bpe_path: str | os.PathLike, encoder_json_path: str | os.PathLike
    ) -> BPETokenizer:
        """GPT-2's vocabulary from its ``vocab.bpe`` (merges) and ``encoder.json`` (ids)."""
        for path in (vocab_bpe_path, encoder_json_path):
            if not Path(path).is_file():
                raise UserError(f"GPT-2 vocabulary file not found: {path}")
        try:
            lines = Path(vocab_bpe_path).read_text(encoding="utf-8").splitlines()
            if lines and lines[0].startswith("#version"):
                lines = lines[1:]  # only the header: "#" itself is a byte that merges can use
            merges = [parse_merge(line) for line in lines if line]
            encoder = json.loads(Path(encoder_json_path).read_text(encoding="utf-8"))
            if not isinstance(encoder, dict):
                raise ValueError("encoder.json is not a JSON object")
            byte_order = sorted(range(256), key=lambda b: encoder[printable_bytes()[b]])
            tokenizer = cls(merges, "gpt2", gpt2_specials(encoder, 256 + len(merges)), byte_order)
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"{vocab_bpe_path} and {encoder_json_path} are not GPT-2's "
                f"vocab.bpe and encoder.json: {error}"
            ) from None
        # tiktoken's rule needs each token's id to equal its merge rank; check encoder.json agrees.
        expected = {token_to_text(t): i for i, t in enumerate(tokenizer._token_bytes)}
        if encoder != {**expected, **tokenizer.special_tokens}:
            raise UserError(
                f"{encoder_json_path} does not give the ids that {vocab_bpe_path} "
                "implies (token id = 256 + merge number)"
            )
        return tokenizer

    # ---- encoding and decoding ----

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, by tiktoken running our merges (between the added tokens)."""
        pieces = (
            list(self._pieces(text))
            if self._splitter.cuts
            else _parts(self._splitter.normalized(text))
        )
        if len(pieces) == 1 and isinstance(pieces[0], str):
            return self._fast.encode_ordinary(pieces[0])
        ids: list[int] = []
        for piece in pieces:
            ids += [piece] if isinstance(piece, int) else self._fast.encode_ordinary(piece)
        return ids

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of `text` as tiktoken's uint32 array: the same ids as encode, 4 bytes each (where
        added tokens or digits cut the text into many short pieces, encode's list, converted)."""
        if self._splitter.cuts:  # an array a piece would cost 3x encode
            return np.array(self.encode(fix_surrogates(text)), np.uint32)
        arrays = [self._fast.encode_to_numpy(p) for p in self._pieces(fix_surrogates(text))]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def _pieces(self, text: str) -> Iterator[str | int]:
        """`text` normalized, as the ids of its added tokens and the stretches between them,
        each cut as _parts cuts it."""
        for stretch, added in self._splitter.segments(text):
            yield from (_parts(stretch) if added is None else [added])

    def encode_reference(self, text: str) -> list[int]:
        """Ids of `text`, in plain Python: same result as :meth:`encode`, slower."""
        ids: list[int] = []
        cache = self._cache
        for part in self._pieces(fix_surrogates(text)):
            if isinstance(part, int):  # an added token
                ids.append(part)
                continue
            for piece in self.pre_tokenize(part):
                piece_ids = cache.get(piece)
                if piece_ids is None:
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    piece_ids = cache[piece] = self._encode_piece(piece.encode("utf-8"))
                ids.extend(piece_ids)
        return ids

    def pre_tokenize(self, text: str) -> list[str]:
        """The pre-tokens of `text`: every match of the pattern, in order."""
        return pieces(self._pre_tokenizer, text)

    def _encode_piece(self, piece: bytes) -> list[int]:
        ranks = self._ranks
        if piece in ranks:
            return [ranks[piece]]
        parts = [piece[i : i + 1] for i in range(len(piece))]
        # pair_ranks[i]: rank of the token parts[i] + parts[i + 1], or _NO_MERGE if none.
        pair_ranks = [ranks.get(a + b, _NO_MERGE) for a, b in zip(parts, parts[1:], strict=False)]
        while pair_ranks:
            best = min(pair_ranks)
            if best == _NO_MERGE:
                break
            i = pair_ranks.index(best)  # leftmost of the lowest rank
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
            del pair_ranks[i]
            # Only the two pairs touching the merged part changed.
            if i > 0:
                pair_ranks[i - 1] = ranks.get(parts[i - 1] + parts[i], _NO_MERGE)
            if i < len(pair_ranks):
                pair_ranks[i] = ranks.get(parts[i] + parts[i + 1], _NO_MERGE)
        return [ranks[p] for p in parts]

    def _decode_ordinary(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of ordinary token ids (a token may hold part of a character)."""
        table = self._token_bytes
        return b"".join(table[i] for i in ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self._token_bytes[token_id]

    # ---- saving ----

    def to_dict(self) -> dict[str, Any]:
        more = {"added_tokens": self.added_tokens} if self.added_tokens else {}
        more |= {"normalization": self.normalization} if self.normalization else {}
        more |= {"split_digits": True} if self.split_digits else {}
        version = 2 if more or len(self.byte_order) < 256 else FORMAT_VERSION
        version = 3 if self.split_digits else version
        return {
            "type": self.kind,
            "version": version,  # older attnlab refuses what it would miss
            "pattern": self.pattern,
            "byte_order": token_to_text(bytes(self.byte_order)),
            "merges": [f"{token_to_text(a)} {token_to_text(b)}" for a, b in self.merges],
            **more,
            "special_tokens": list(self.special_tokens),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        if data.get("version") not in (FORMAT_VERSION, 2, 3):
            raise ValueError(f"unsupported bpe format version {data.get('version')!r}")
        merges = [parse_merge(line) for line in data["merges"]]
        if not isinstance(data["byte_order"], str):
            raise ValueError(f"byte_order must be a string, got {data['byte_order']!r}")
        byte_order = list(text_to_token(data["byte_order"]))
        more = data.get("added_tokens", ()), data.get("normalization")
        more += (data.get("split_digits", False),)
        return cls(merges, data["pattern"], data.get("special_tokens", ()), byte_order, *more)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, cls):
            raise UserError(f"{path} holds a {tokenizer.kind!r} tokenizer, not a BPE one")
        return tokenizer

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BPETokenizer):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # equal by value, so not usable as a dict key

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"


def _parts(text: str) -> list[str]:
    """`text` cut inside whitespace runs longer than SPACE_RUN, every SPACE_RUN characters
    (ordinary text: itself, whole)."""
    if len(text) <= SPACE_RUN:  # no room for a run to cut: the search costs more than encoding
        return [text]
    cuts = [
        cut
        for run in _long_space(SPACE_RUN).finditer(text)
        for cut in range(run.start() + SPACE_RUN, run.end(), SPACE_RUN)
    ]
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@cache
def _long_space(limit: int) -> regex.Pattern:
    return regex.compile(rf"(?<!\s)\s{{{limit + 1},}}")  # only from a run's start: linear
