"""Text data for language modelling: a corpus, tokenized once into a cached array, split into
train and validation, and served as random windows.

Dimensions: B batch, T window length (the model's context).

The token cache lives in ``$ATTNLAB_CACHE`` (default ``~/.cache/attnlab``) under a key hashed
from the corpus contents and the tokenizer, so changing either re-tokenizes and nothing stale is
ever read. The split is by position: the first 90% of tokens train, the rest validate. The
split is of tokens, so a learned tokenizer (char's alphabet, bpe:N's merges) is learned on the
whole text first, the validation part included (as nanoGPT's character vocabulary is).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnlab.data import catalog
from attnlab.data.corpus import Corpus
from attnlab.data.saved_tokenizers import TOKENIZER_FILES, open_tokenizer
from attnlab.errors import UserError
from attnlab.files import atomic_writer, cache_dir, check_writable
from attnlab.progress import stderr_is_live
from attnlab.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from attnlab.training.sources import DataRequest, SeededSource, TrainingData


def content_key(texts: Iterable[str], *tags: str) -> str:
    """A cache file's name: a hash of the tags and of the texts (read once more, a piece at a
    time), so changing either gives another name and nothing stale is ever read."""
    return KeyedTexts(texts, *tags).read()


class KeyedTexts:
    """The texts, hashed as the work that fills a cache file reads them: `check(key)` then
    tells whether they are the texts the file is named for. A file that changed between the
    two readings (written to while a run started) would otherwise leave the tokens of one text
    under the name of another, read by every later run."""

    def __init__(self, texts: Iterable[str], *tags: str):
        if isinstance(texts, str):  # a str is an iterable of characters, each its own text
            raise TypeError("give the texts as a list of strings or a Corpus, not one str")
        self.texts, self.hash = texts, hashlib.sha256(json.dumps(tags).encode())
        self.characters = 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.hash.update(text.encode("utf-8", errors="surrogatepass"))
            self.characters += len(text)
            yield text

    def read(self) -> str:
        """The key of all the texts, read through."""
        for _ in self:
            pass
        return self.key

    @property
    def key(self) -> str:
        return self.hash.hexdigest()[:32]

    def check(self, key: str) -> None:
        if self.key != key:
            raise UserError(
                "the data changed while it was read (a file still being written?): nothing "
                "was cached; run again once it is complete"
            )


def tokenizer_key(tokenizer: Tokenizer) -> str:
    return json.dumps(tokenizer.to_dict(), sort_keys=True)


def tokenizer_cached(
    spec: str,
    texts: Iterable[str],
    special_tokens: Iterable[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> Tokenizer:
    """build_tokenizer(spec, texts, special_tokens=...), reusing a learned tokenizer (bpe:N)
    trained before on the same texts instead of training it again; or one that exists
    (open_tokenizer: "gpt2", a file, a run's), which must hold the special tokens. `log` hears
    of a BPE vocabulary that came out smaller than asked (the text ran out of pairs to merge)."""
    if spec not in ("char", "byte") and not spec.startswith("bpe:"):
        if not (spec == "gpt2" or spec and Path(spec).exists()):
            raise UserError(
                f"unknown tokenizer {spec!r}; choose char, byte, bpe:N (N = vocabulary size, "
                f"learned on the data), or {TOKENIZER_FILES}"
            )
        tokenizer = open_tokenizer(spec, log)
        if missing := [t for t in special_tokens or () if t not in tokenizer.special_tokens]:
            raise UserError(
                f"tokenizer {spec} lacks the special tokens {', '.join(missing)} this model "
                "needs: give char, byte or bpe:N, learned with them"
            )
        return tokenizer
    if not spec.startswith("bpe:"):
        return build_tokenizer(spec, texts, special_tokens=special_tokens)
    specials = json.dumps(None if special_tokens is None else list(special_tokens))
    path = cache_dir() / "tokenizers" / f"{content_key(texts, spec, specials)}.json"
    try:
        tokenizer = load_tokenizer(path) if path.is_file() else None
    except UserError:  # damaged (a disk fault, an edit): learned again, as token caches are encoded
        tokenizer = None
    if tokenizer is None:
        check_writable(path.parent)  # a read-only cache: one line now, not after training
        progress = stderr_is_live()  # no bar to leave half drawn in a log
        tokenizer = build_tokenizer(spec, texts, progress=progress, special_tokens=special_tokens)
        tokenizer.save(path)
    if log is not None and spec[4:].isdigit() and tokenizer.vocab_size < int(spec[4:]):
        log(
            f"note: the text ran out of pairs to merge: a vocabulary of "
            f"{tokenizer.vocab_size:,}, not {int(spec[4:]):,}"
        )
    return tokenizer


def id_array(ids: list[int]) -> np.ndarray:
    """Token ids as an int32 array, as encoded examples are held: a list of Python ints takes
    20 times the memory (2.7 GB for the 800,000 pairs of a 120 MB corpus)."""
    return np.array(ids, np.int32)


# The tokens file's layout, in its key: a file of another layout is never read as this one
TOKENS_FORMAT = "ids, then their CRC-32 (4 bytes, little-endian)"
CHECK_BYTES = 4


def tokenize_cached(texts: Iterable[str], tokenizer: Tokenizer) -> np.ndarray:
    """Token ids of the texts one after the other (a Corpus's pieces), as a read-only
    memory-mapped array, tokenized at most once and a piece at a time."""
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
    tag = tokenizer_key(tokenizer)
    key = content_key(texts, tag, TOKENS_FORMAT)
    path = cache_dir() / "tokens" / f"{key}.{dtype.name}"
    tokens = _read_tokens(path, dtype)
    if tokens is None:  # none yet, or damaged (written to by hand, a disk fault): encoded again
        check_writable(path.parent)
        # hashed again as encoded: the file holds what it names
        read, check = KeyedTexts(texts, tag, TOKENS_FORMAT), 0
        with atomic_writer(path) as f:
            for text in read:
                ids = tokenizer.encode_array(text).astype(dtype, copy=False)
                f.write(ids)
                check = zlib.crc32(ids, check)
            read.check(key)
            f.write(check.to_bytes(CHECK_BYTES, "little"))
        tokens = _read_tokens(path, dtype)
    if tokens is None:  # deleted (`data cache --clear`) or replaced by a damaged file at once
        raise UserError(f"the token cache {path} changed as it was written: run again")
    return tokens


def _read_tokens(path: Path, dtype: np.dtype) -> np.ndarray | None:
    """The ids of a cached tokens file, memory-mapped; None where there is none, or where it
    is not whole as written: cut short, or changed (one pass over the file, a fraction of a
    second per GB against minutes of encoding). Opened once: a file deleted or replaced by
    another process meanwhile is read as it was, or not at all."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size - CHECK_BYTES
            if size < 0 or size % dtype.itemsize:
                return None
            shape = (size // dtype.itemsize,)  # np.memmap cannot map an empty file
            tokens = np.memmap(f, dtype, mode="r", shape=shape) if size else np.zeros(0, dtype)
            f.seek(size)
            check = int.from_bytes(f.read(CHECK_BYTES), "little")
    except FileNotFoundError:
        return None
    return tokens if zlib.crc32(tokens) == check else None


@dataclass
class TextSplits:
    train: np.ndarray
    val: np.ndarray

    @classmethod
    def from_tokens(cls, tokens: np.ndarray, val_fraction: float = 0.1) -> TextSplits:
        cut = int(len(tokens) * (1 - val_fraction))
        return cls(tokens[:cut], tokens[cut:])

    def check_length(self, context_length: int) -> None:
        for name, tokens in (("train", self.train), ("val", self.val)):
            if len(tokens) <= context_length:
                raise UserError(
                    f"the {name} split has {len(tokens)} token(s), but windows of "
                    f"context_length + 1 = {context_length + 1} are needed: give more data "
                    "or a shorter context"
                )


class RandomWindows(SeededSource):
    """Batches of random windows for next-token prediction: inputs and targets shifted by one.

    With `repeat`, each window of text ends with its own beginning again: a quarter to a half
    of the window, so the distance between the two copies varies and only reading the content
    finds the earlier one. Copying it rewards induction heads from the first steps (the phase
    change of Olsson et al. 2022, on text, within a short run).
    """

    unit = "token"

    def __init__(
        self, tokens: np.ndarray, batch_size: int, length: int, seed: int, repeat: bool = False
    ):
        if len(tokens) <= length:
            raise UserError(f"{len(tokens)} token(s) cannot fill a window of {length + 1}")
        self.tokens, self.batch_size, self.length = tokens, batch_size, length
        self.repeat = repeat
        super().__init__(seed)
        self._offsets = np.arange(length + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (B, T) and targets (B, T), int64, on the CPU."""
        high = len(self.tokens) - self.length
        starts = torch.randint(high, (self.batch_size,), generator=self.generator).numpy()
        offsets = self._offsets[None, :]
        if self.repeat:  # from `cut` on, the window's first tokens again
            n = self.length + 1
            cut = n - torch.randint(
                n // 4, n // 2 + 1, (self.batch_size, 1), generator=self.generator
            )
            offsets = offsets - (offsets >= cut.numpy()) * cut.numpy()
        windows = torch.from_numpy(self.tokens[starts[:, None] + offsets].astype(np.int64))
        return windows[:, :-1], windows[:, 1:]  # (B, T), (B, T)


def sequential_windows(tokens: np.ndarray, length: int, batch_size: int):
    """Non-overlapping windows covering `tokens` once, in order: (inputs, targets) batches, in
    which every token but the first is a target once. The tokens left after the last full
    window make a shorter one, a batch of its own."""
    n_windows = (len(tokens) - 1) // length
    for first in range(0, n_windows, batch_size):
        rows = range(first, min(first + batch_size, n_windows))
        windows = np.stack([tokens[r * length : r * length + length + 1] for r in rows])
        windows = torch.from_numpy(windows.astype(np.int64))
        yield windows[:, :-1], windows[:, 1:]
    if len(tokens) - n_windows * length > 1:  # the rest: at least one target
        window = torch.from_numpy(tokens[n_windows * length :].astype(np.int64))[None]
        yield window[:, :-1], window[:, 1:]


def language_model_data(
    splits: TextSplits,
    batch_size: int,
    context_length: int,
    seed: int,
    eval_iters: int,
    repeat: bool = False,
):
    """The trainer's data for next-token prediction: random train windows, and the same
    `eval_iters` validation batches at every evaluation (repeated windows: RandomWindows)."""
    splits.check_length(context_length)
    train = RandomWindows(splits.train, batch_size, context_length, seed, repeat)

    def validation_batches():
        windows = RandomWindows(splits.val, batch_size, context_length, seed + 1, repeat)
        return [windows.next() for _ in range(eval_iters)]

    return train, {"val": validation_batches}


@dataclass(frozen=True)
class TextDataConfig:
    data: str = "stdlib"  # text file, folder (its *.txt), DIR:GLOB, dataset, stdlib, task:NAME
    tokenizer: str = "char"  # char, byte, bpe:N (learned on all, val too), gpt2, a file, a run
    repeat: bool = False  # each window ends with its own beginning again (see induction heads)


def text_training_data(request: DataRequest) -> TrainingData:
    """A GPT's data: the corpus tokenized (the tokenizer learned on it, or the checkpoint's when
    resuming), split 90/10, served as random windows of the model's context."""
    settings, train = request.settings, request.train
    if settings.data.startswith("task:"):  # a synthetic task (tasks.py)
        from attnlab.data.tasks import task_training_data

        if settings.tokenizer != "char":
            raise UserError(
                f"a task is read character by character: leave --tokenizer {settings.tokenizer} out"
            )
        if settings.repeat:
            raise UserError("--repeat repeats text windows; a task makes its own sequences")
        return task_training_data(request)
    spec = catalog.resolve(settings.data, request.log)
    request.log(f"reading {spec} ...")
    corpus = Corpus(spec, request.log)
    tokenizer = (request.artifacts or {}).get("tokenizer") or tokenizer_cached(
        settings.tokenizer, corpus, log=request.log
    )
    tokens = tokenize_cached(corpus, tokenizer)
    splits = TextSplits.from_tokens(tokens)
    batches, evaluation = language_model_data(
        splits,
        train.batch_size,
        request.model["context_length"],
        train.seed,
        train.eval_iters,
        settings.repeat,
    )
    return TrainingData(
        batches,
        evaluation,
        model_fields={"vocab_size": tokenizer.vocab_size},
        artifacts={"tokenizer": tokenizer},
        summary=f"{len(tokens):,} tokens ({len(splits.train):,} train, {len(splits.val):,} val), "
        f"vocab {tokenizer.vocab_size}",
    )
