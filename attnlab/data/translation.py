"""Parallel text for translation: sentence pairs, a joint BPE vocabulary, length filtering, and
batches bucketed by length under a token budget.

Dimensions: B sentences in a batch, S source positions, T target positions.

A corpus is two line-aligned files (plain or .gz): line i of one translates line i of the other.
``load_split(DIR, "train", "de", "en")`` reads ``DIR/train.de[.gz]`` and ``DIR/train.en[.gz]``.
Without files there is an embedded task, numbers written in English words <-> digits ("four
hundred twelve" <-> "412"), so training and every test work without any download.

Token layout (one joint vocabulary, special tokens after the BPE ones):
    source  x1 .. xm </s>
    tgt_in  <s> y1 .. yn          tgt_out  y1 .. yn </s>
Batches are right-padded with `<pad>`, so padding never moves a real token's position.
"""

from __future__ import annotations

import gzip
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnlab.config import check_positive, check_types
from attnlab.data import catalog
from attnlab.data.corpus import GZIP_MAGIC, text_lines
from attnlab.data.text import id_array, tokenizer_cached
from attnlab.errors import UserError
from attnlab.files import decode_utf8, readable
from attnlab.tokenizers.bpe import BPETokenizer
from attnlab.training.sources import IGNORE_INDEX, DataRequest, TrainingData

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
EMBEDDED_LANGUAGES = ("words", "digits")
EMBEDDED_VAL_PAIRS = 500
EMBEDDED_SEED = 1337  # the embedded task's pairs, whatever a run's --seed: runs compare on one task
EMBEDDED_NUMBERS = 10**6  # the numbers the embedded task writes: those below a million
Pair = tuple[str, str]
# source ids (ending in </s>), target ids (no specials), as int32 arrays (id_array)
Example = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TranslationDataConfig:
    data: str | None = None  # dir or dataset (multi30k): train/val.SRC/.TGT; unset = embedded task
    src: str | None = None  # source file suffix, e.g. de (embedded task: words)
    tgt: str | None = None  # target file suffix, e.g. en (embedded task: digits)
    bpe_vocab_size: int | None = None  # joint BPE vocabulary (default: the preset's vocab_size)
    max_sentence_tokens: int = 128  # pairs with a longer side (</s> included) are dropped
    max_batch_tokens: int = 4096  # batch budget: sentences x longest side, padding included
    embedded_pairs: int = 20000  # training pairs of the embedded task (used without --data)

    def __post_init__(self):
        check_types(self)
        check_positive(
            "TranslationDataConfig",
            bpe_vocab_size=self.bpe_vocab_size,  # None: the preset's
            max_sentence_tokens=self.max_sentence_tokens,
            max_batch_tokens=self.max_batch_tokens,
            embedded_pairs=self.embedded_pairs,
        )
        if self.data and not (self.src and self.tgt):
            raise UserError("--data needs --src and --tgt (the file suffixes, e.g. de and en)")
        if self.data and self.embedded_pairs != type(self).embedded_pairs:
            raise UserError("--embedded-pairs sizes the embedded task: with --data it is unused")
        if self.embedded_pairs + EMBEDDED_VAL_PAIRS > EMBEDDED_NUMBERS:  # drawn until distinct
            raise UserError(
                f"--embedded-pairs {self.embedded_pairs:,} and the {EMBEDDED_VAL_PAIRS} validation "
                f"pairs need more numbers than the embedded task's {EMBEDDED_NUMBERS:,} (0 to "
                f"999,999): give at most {EMBEDDED_NUMBERS - EMBEDDED_VAL_PAIRS:,}"
            )

    @property
    def languages(self) -> tuple[str, str]:
        return self.src or EMBEDDED_LANGUAGES[0], self.tgt or EMBEDDED_LANGUAGES[1]


# ----------------------------------------------------------------------------- reading files
def read_lines(path: str | Path) -> list[str]:
    """The stripped lines of a UTF-8 file, gzipped or not (as its first bytes say: a .gz a browser
    unpacked is text), split at line feeds only (text_lines), a byte-order mark left out."""
    path = readable(path)
    try:
        data = path.read_bytes()
        packed = data[:2] == GZIP_MAGIC
        text = decode_utf8(gzip.decompress(data) if packed else data)
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    except UnicodeDecodeError as error:
        where = f"at byte {error.start:,}" + (" of its decompressed text" if packed else "")
        raise UserError(
            f"{path} is not UTF-8 text ({error.reason} {where}): convert it to UTF-8"
        ) from None
    lines = [line.strip() for line in text_lines(text)]
    if not any(lines):
        raise UserError(f"{path} is empty")
    if cr := next((n for n, line in enumerate(lines, 1) if "\r" in line), None):
        raise UserError(f"{path}:{cr}: a lone \\r in the line (old Macs' line ends): end it in \\n")
    return lines


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> list[Pair]:
    """Sentence pairs from two line-aligned files; unequal line counts are an error."""
    sources, targets = read_lines(src_path), read_lines(tgt_path)
    if len(sources) != len(targets):
        raise UserError(
            f"{src_path} has {len(sources)} lines but {tgt_path} has {len(targets)}: "
            "line i of one must translate line i of the other"
        )
    return list(zip(sources, targets, strict=True))


def split_file(directory: str | Path, split: str, language: str) -> Path:
    """DIR/split.language, or its .gz when only that exists (read_lines names a missing one)."""
    plain = Path(directory) / f"{split}.{language}"
    compressed = plain.with_name(plain.name + ".gz")
    return compressed if compressed.is_file() and not plain.is_file() else plain


def load_split(directory: str | Path, split: str, src: str, tgt: str) -> list[Pair]:
    """Pairs of DIR/split.src[.gz] and DIR/split.tgt[.gz]."""
    if not Path(directory).is_dir():
        raise UserError(f"data directory not found: {directory}")
    return read_parallel(split_file(directory, split, src), split_file(directory, split, tgt))


# ----------------------------------------------------------------------------- embedded task
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]  # fmt: skip
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """0 <= n < 10**9 in English words: 412 -> "four hundred twelve", 45 -> "forty-five"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    for size, name in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            head, rest = divmod(n, size)
            words = f"{number_words(head)} {name}"
            return words if rest == 0 else f"{words} {number_words(rest)}"
    raise AssertionError("unreachable")


def embedded_pairs(count: int, seed: int, src: str = "words", tgt: str = "digits") -> list[Pair]:
    """`count` distinct numbers below a million as (words, digits) pairs, or the reverse.

    The number of digits is drawn uniformly from 1..6 (then the number uniformly), so short
    numbers are as common as long ones; duplicates are dropped.
    """
    if {src, tgt} != set(EMBEDDED_LANGUAGES) or src == tgt:
        raise UserError(
            f"the embedded task translates between {' and '.join(EMBEDDED_LANGUAGES)}; got "
            f"--src {src} --tgt {tgt} (give --data DIR for other languages)"
        )
    rng, numbers = random.Random(seed), {}
    while len(numbers) < count:
        digits = rng.randint(1, 6)
        n = rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10**digits)
        numbers.setdefault(n, None)
    pairs = [(number_words(n), f"{n:,}") for n in numbers]
    return pairs if src == "words" else [(b, a) for a, b in pairs]


def embedded_split(
    train: int, val: int, seed: int, src: str = "words", tgt: str = "digits"
) -> tuple[list[Pair], list[Pair]]:
    """The embedded task's training and validation pairs (embedded_pairs). Validation takes
    numbers of 100 and up only: those below, of whose words every longer number is made, are all
    for training (held out, "seven" alone would never be trained on)."""
    pairs = embedded_pairs(train + val, seed, src, tgt)
    digits = 0 if src == "digits" else 1
    held_out = [i for i, pair in enumerate(pairs) if len(pair[digits]) >= 3][:val]
    chosen = set(held_out)
    return [pair for i, pair in enumerate(pairs) if i not in chosen], [pairs[i] for i in held_out]


# ----------------------------------------------------------------------------- vocabulary
def train_joint_tokenizer(pairs: list[Pair], vocab_size: int, log=None) -> BPETokenizer:
    """One BPE vocabulary learned from both sides of the corpus, with `<pad>`, `<s>` and
    `</s>`, once per corpus and size (tokenizer_cached; `log` hears if it came out smaller)."""
    texts = [f"{source}\n{target}\n" for source, target in pairs]  # a line feed is never merged
    return tokenizer_cached(f"bpe:{vocab_size}", texts, SPECIAL_TOKENS, log)


def special_ids(tokenizer) -> dict[str, int]:
    """pad_id, bos_id and eos_id of a translation tokenizer (UserError if it lacks them)."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.special_tokens]
    if missing:
        raise UserError(f"the tokenizer lacks the special token(s) {', '.join(missing)}")
    ids = tokenizer.special_tokens
    return {"pad_id": ids[PAD], "bos_id": ids[BOS], "eos_id": ids[EOS]}


@dataclass(frozen=True)
class FilterReport:
    """What length filtering did to a split: pairs read, kept, and dropped by reason."""

    total: int
    kept: int
    too_long: int
    empty: int


def encode_pairs(
    pairs: list[Pair], tokenizer, max_tokens: int
) -> tuple[list[Example], FilterReport]:
    """Token ids of each pair, dropping pairs with an empty side or a side (with `</s>`) longer
    than max_tokens."""
    eos = special_ids(tokenizer)["eos_id"]
    examples, too_long, empty = [], 0, 0
    for source, target in pairs:
        src_ids, tgt_ids = tokenizer.encode(source), tokenizer.encode(target)
        if not src_ids or not tgt_ids:
            empty += 1
        elif max(len(src_ids), len(tgt_ids)) + 1 > max_tokens:
            too_long += 1
        else:
            examples.append((id_array(src_ids + [eos]), id_array(tgt_ids)))
    return examples, FilterReport(len(pairs), len(examples), too_long, empty)


# ----------------------------------------------------------------------------- batching
def collate(
    examples: list[Example], pad_id: int, bos_id: int, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (src (B, S), tgt_in (B, T), tgt_out (B, T)) int64 tensors; tgt_out's padding
    is IGNORE_INDEX, so that it is plain which targets are scored."""
    src_len = max(len(s) for s, _ in examples)
    tgt_len = max(len(t) for _, t in examples) + 1
    src = torch.full((len(examples), src_len), pad_id, dtype=torch.long)  # (B, S)
    tgt_in = torch.full((len(examples), tgt_len), pad_id, dtype=torch.long)  # (B, T)
    tgt_out = torch.full((len(examples), tgt_len), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, (source, target) in enumerate(examples):
        target = torch.as_tensor(target)  # an array (encode_pairs') or a list
        src[row, : len(source)] = torch.as_tensor(source)
        tgt_in[row, 0], tgt_in[row, 1 : len(target) + 1] = bos_id, target
        tgt_out[row, : len(target)], tgt_out[row, len(target)] = target, eos_id
    return src, tgt_in, tgt_out


def bucket(order: np.ndarray, lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Cut `order` (indices, sorted by length) into consecutive batches whose size times their
    longest sequence stays within max_tokens (a longer sentence gets a batch of its own)."""
    batches, start, longest = [], 0, 0
    for i, index in enumerate(order):
        longest_with = max(longest, lengths[index])
        if i > start and (i - start + 1) * longest_with > max_tokens:
            batches.append(order[start:i])
            start, longest_with = i, lengths[index]
        longest = longest_with
    if start < len(order):
        batches.append(order[start:])
    return batches


class TokenBatches:
    """Training batches bucketed by length under a token budget, reshuffled every epoch.

    Each epoch: a random permutation, stably sorted by (source length, target length), so
    sentences of similar length share a batch (little padding) while ties change order; cut into
    batches by `bucket`; the batches shuffled. The generator state at the start of the epoch and
    the position within it make the state, so a resumed run draws exactly the same batches.
    """

    unit = "token"

    def __init__(
        self, examples: list[Example], max_tokens: int, special: dict[str, int], seed: int
    ):
        if not examples:
            raise UserError("no training pairs are left after length filtering")
        self.examples, self.max_tokens, self.special = examples, max_tokens, special
        self.src_lengths = np.array([len(s) for s, _ in examples])
        self.tgt_lengths = np.array([len(t) + 1 for _, t in examples])
        self.lengths = np.maximum(self.src_lengths, self.tgt_lengths)
        self.generator = torch.Generator().manual_seed(seed)
        self._start_epoch()

    def _start_epoch(self) -> None:
        self.epoch_state = self.generator.get_state()
        permutation = torch.randperm(len(self.examples), generator=self.generator).numpy()
        order = permutation[
            np.lexsort((self.tgt_lengths[permutation], self.src_lengths[permutation]))
        ]
        batches = bucket(order, self.lengths, self.max_tokens)
        shuffle = torch.randperm(len(batches), generator=self.generator).tolist()
        self.batches, self.cursor = [batches[i] for i in shuffle], 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(src (B, S), tgt_in (B, T), tgt_out (B, T)); a new epoch starts when one runs out."""
        if self.cursor == len(self.batches):
            self._start_epoch()
        batch = self.batches[self.cursor]
        self.cursor += 1
        return collate([self.examples[i] for i in batch], **self.special)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.batches)

    @staticmethod
    def count(batch: tuple[torch.Tensor, ...]) -> int:
        """The target tokens of a batch (throughput's), its padding left out."""
        return int((batch[-1] != IGNORE_INDEX).sum())

    def state_dict(self) -> dict[str, torch.Tensor]:
        # Checkpoints store data state as raw bytes (uint8 tensors): the cursor goes as bytes too.
        cursor = torch.frombuffer(bytearray(self.cursor.to_bytes(8, "little")), dtype=torch.uint8)
        return {"epoch_state": self.epoch_state, "cursor": cursor}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["epoch_state"])
        self._start_epoch()  # draws the same permutations again from the same state
        self.cursor = int.from_bytes(bytes(state["cursor"].tolist()), "little")


def fixed_batches(
    examples: list[Example],
    max_tokens: int,
    special: dict[str, int],
    limit: int | None = None,
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The same batches every call (for validation): bucketed by length, in a seeded shuffled
    order, at most `limit` of them."""
    if not examples:
        raise UserError("no validation pairs are left after length filtering")
    src_lengths = np.array([len(s) for s, _ in examples])
    tgt_lengths = np.array([len(t) + 1 for _, t in examples])
    order = np.lexsort((tgt_lengths, src_lengths))
    batches = bucket(order, np.maximum(src_lengths, tgt_lengths), max_tokens)
    random.Random(seed).shuffle(batches)
    return [collate([examples[i] for i in b], **special) for b in batches[:limit]]


# ----------------------------------------------------------------------------- the kind's data
def translation_training_data(request: DataRequest) -> TrainingData:
    """An encoder-decoder's data: sentence pairs (files, or the embedded task), a joint BPE
    learned on the training pairs (or the checkpoint's when resuming), batches by token budget."""
    options, train, log = request.settings, request.train, request.log
    src, tgt = options.languages
    if options.data is None:
        train_pairs, val_pairs = embedded_split(
            options.embedded_pairs, EMBEDDED_VAL_PAIRS, EMBEDDED_SEED, src, tgt
        )
    else:
        directory = catalog.resolve(options.data, log)
        log(f"reading {directory} ({src} -> {tgt}) ...")
        train_pairs = load_split(directory, "train", src, tgt)
        val_pairs = load_split(directory, "val", src, tgt)
    tokenizer = (request.artifacts or {}).get("tokenizer")
    if tokenizer is None:
        size = options.bpe_vocab_size or request.model["vocab_size"]  # unset: the preset's
        log(f"learning a joint BPE vocabulary of {size} ...")
        tokenizer = train_joint_tokenizer(train_pairs, size, log)
    special, limit = special_ids(tokenizer), options.max_sentence_tokens
    if request.model["max_length"] < limit:
        raise UserError(
            f"max_length={request.model['max_length']} is shorter than max_sentence_tokens="
            f"{limit}: raise one or lower the other"
        )
    examples = {}
    for name, split in (("train", train_pairs), ("val", val_pairs)):
        examples[name], report = encode_pairs(split, tokenizer, limit)
        log(
            f"{name}: {report.kept:,} of {report.total:,} pairs kept ({report.too_long:,} longer "
            f"than {limit} tokens, {report.empty:,} with an empty side)"
        )
    batches = TokenBatches(examples["train"], options.max_batch_tokens, special, train.seed)
    limit = None if request.evaluate else train.eval_iters
    val = fixed_batches(examples["val"], options.max_batch_tokens, special, limit, train.seed)
    return TrainingData(
        batches,
        {"val": lambda: val},
        model_fields={"vocab_size": tokenizer.vocab_size, **special},
        artifacts={"tokenizer": tokenizer},
        summary=f"{src} -> {tgt}, vocab {tokenizer.vocab_size}; {len(batches)} batches per epoch",
    )
