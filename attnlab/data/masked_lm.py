"""Masked-language-model data (BERT): sentences packed into sequences, a fresh mask each batch.

Dimensions: N packed sequences, B batch, L sequence length (the model's context).

Every line of the corpus is a sentence (or a paragraph). Sentences are encoded once (cached),
then packed in order, whole, into sequences ``[CLS] s1 s2 ... [SEP] [PAD]...`` of at most L
tokens; a sentence longer than L - 2 tokens is cut into pieces. The last tenth of the sequences
validates. Each batch draws sequences at random and masks them afresh (Devlin et al. 2019,
section 3.1): 15% of the ordinary tokens are selected (never [CLS], [SEP] or padding); a selected
token becomes [MASK] 80% of the time, a random ordinary token 10%, and stays itself 10%; the
loss is on the selected positions only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from attnlab.config import check_range, check_types
from attnlab.data import catalog
from attnlab.data.corpus import Corpus
from attnlab.data.text import KeyedTexts, content_key, tokenizer_cached, tokenizer_key
from attnlab.errors import ConfigError, UserError
from attnlab.files import atomic_writer, cache_dir, check_writable
from attnlab.tokenizers import Tokenizer
from attnlab.training.sources import IGNORE_INDEX, DataRequest, SeededSource, TrainingData

PAD, CLS, SEP, MASK = "[PAD]", "[CLS]", "[SEP]", "[MASK]"
SPECIALS = (PAD, CLS, SEP, MASK)


def check_specials(tokenizer: Tokenizer, source: str) -> None:
    missing = [t for t in SPECIALS if t not in tokenizer.special_tokens]
    if missing:
        raise UserError(f"{source}'s tokenizer lacks BERT's special tokens {', '.join(missing)}")


def encode_sentence(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of one sentence, read as if it followed a space: every word then starts with the same
    (space-prefixed) tokens wherever it stands, in pre-training, fine-tuning and fill-mask."""
    return tokenizer.encode(" " + text.strip())


def encode_lines_cached(
    texts: Iterable[str], tokenizer: Tokenizer
) -> tuple[np.ndarray, np.ndarray]:
    """The non-empty lines of `texts` (a Corpus's pieces), encoded: (tokens, starts), line i
    being tokens[starts[i]:starts[i + 1]]. Lines end at line feeds (\\n, \\r\\n) or at a
    lone \\r (old Macs' files: else one line), and a line two pieces share is one line.
    Encoded at most once per corpus and tokenizer."""
    tags = (tokenizer_key(tokenizer), "lines at \\n, \\r\\n or \\r, across pieces")
    key = content_key(texts, *tags)
    path = cache_dir() / "lines" / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as saved:
                tokens, starts = saved["tokens"], saved["starts"]
            if starts[-1] == len(tokens) and (tokens < tokenizer.vocab_size).all():
                return tokens, starts
        except Exception:  # noqa: BLE001 - a damaged file (cut short, overwritten): encoded again
            pass
    check_writable(path.parent)  # a read-only cache: one line now, not after encoding
    read = KeyedTexts(texts, *tags)
    tokens, lengths, rest = [], [], ""
    for text in itertools.chain(read, ["\n"]):  # a piece at a time: only the ids are kept
        # the last line, unfinished, waits for the next piece; \r\n leaves an empty line
        *lines, rest = (rest + text).replace("\r", "\n").split("\n")
        lines = [line for line in lines if line.strip()]
        encoded = [encode_sentence(tokenizer, line) for line in lines]
        lengths.extend(map(len, encoded))
        tokens.append(np.fromiter(itertools.chain.from_iterable(encoded), np.int32))
    read.check(key)
    starts = np.cumsum([0, *lengths])
    tokens = np.concatenate([np.zeros(0, np.int32), *tokens])
    with atomic_writer(path) as f:  # straight to the file: no copy of the ids in memory
        np.savez(f, tokens=tokens, starts=starts)
    return tokens, starts


def pack_sentences(
    tokens: np.ndarray, starts: np.ndarray, length: int, cls: int, sep: int, pad: int
) -> np.ndarray:
    """Sentences packed whole, in order, into (N, length) rows `[CLS] ... [SEP] [PAD]...`: the
    rows are counted first, then filled, so nothing but the result is as large as the corpus."""
    rows = 1 + max((row for *_, row, _ in _placed(starts, length - 2)), default=-1)
    packed = np.full((rows, length), pad, dtype=np.int64)
    packed[:, 0] = cls
    for first, stop, row, column in _placed(starts, length - 2):
        packed[row, 1 + column : 1 + column + stop - first] = tokens[first:stop]
        packed[row, 1 + column + stop - first] = sep  # until the row's next piece covers it
    return packed


def _placed(starts: np.ndarray, room: int) -> Iterator[tuple[int, int, int, int]]:
    """(first, stop, row, column) of each piece of each sentence (a sentence longer than
    `room` in pieces of `room`): a piece goes on the row before while it fits in `room`."""
    row, used = -1, room
    for first, stop in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        for piece in range(first, stop, room):
            size = min(room, stop - piece)
            if used + size > room:
                row, used = row + 1, 0
            yield piece, piece + size, row, used
            used += size


@dataclass(frozen=True)
class Masking:
    """BERT's masking rule for one vocabulary (see the module docstring)."""

    mask_id: int
    n_ordinary: int  # ids below this are ordinary tokens (the special tokens come after)
    probability: float = 0.15

    def __call__(
        self, ids: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, L) -> inputs (B, L) with the selected positions replaced, and targets (B, L):
        the original token where selected, IGNORE_INDEX elsewhere."""
        candidates = ids < self.n_ordinary  # never a special token or padding
        selected = (torch.rand(ids.shape, generator=generator) < self.probability) & candidates
        if not selected.any():  # a loss needs at least one position
            selected.view(-1)[candidates.view(-1).nonzero()[:1]] = True
        action = torch.rand(ids.shape, generator=generator)
        random_ids = torch.randint(self.n_ordinary, ids.shape, generator=generator)
        inputs = torch.where(selected & (action < 0.8), self.mask_id, ids)
        inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
        return inputs, torch.where(selected, ids, IGNORE_INDEX)


class MaskedSequences(SeededSource):
    """Training batches: packed sequences drawn at random, masked afresh every time."""

    unit = "token"

    def __init__(self, rows: np.ndarray, batch_size: int, masking: Masking, seed: int, pad: int):
        self.rows, self.batch_size, self.masking = torch.from_numpy(rows), batch_size, masking
        super().__init__(seed)
        self.pad = pad

    def count(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        """The tokens of a batch (throughput's), the padding at the ends of its rows left out."""
        return int((batch[0] != self.pad).sum())

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self.rows), (self.batch_size,), generator=self.generator)
        return self.masking(self.rows[index], self.generator)


@dataclass(frozen=True)
class MaskedLMDataConfig:
    data: str = "stdlib"  # text file, folder (its *.txt), DIR:GLOB, dataset; a sentence a line
    tokenizer: str = "bpe:8192"  # char, byte or bpe:N (learned on all the text, val too), a file
    mask_probability: float = 0.15  # share of ordinary tokens selected for prediction

    def __post_init__(self):
        check_types(self)
        check_range("MaskedLMDataConfig", "mask_probability", self.mask_probability, 0.0, 1.0)
        if self.mask_probability == 0:  # Masking would still select one token a batch
            raise ConfigError(
                "MaskedLMDataConfig.mask_probability must be above 0: 0 selects no token to predict"
            )


def bert_tokenizer(spec: str, texts: Iterable[str], request: DataRequest) -> Tokenizer:
    """The checkpoint's tokenizer when resuming or starting from one, else one learned on
    `texts` with BERT's special tokens."""
    saved = (request.artifacts or {}).get("tokenizer")
    if saved is not None:
        check_specials(saved, "the checkpoint")
        return saved
    if spec == "char":  # encode_sentence puts a space before every sentence
        texts = _AndSpace(texts)
    return tokenizer_cached(spec, texts, special_tokens=SPECIALS, log=request.log)


class _AndSpace:
    """The texts and a space after them: read again at each iteration, as a Corpus is."""

    def __init__(self, texts: Iterable[str]):
        self.texts = texts

    def __iter__(self):
        yield from self.texts
        yield " "


def masked_lm_training_data(request: DataRequest) -> TrainingData:
    settings, train = request.settings, request.train
    spec = catalog.resolve(settings.data, request.log)
    request.log(f"reading {spec} ...")
    texts = Corpus(spec, request.log)
    tokenizer = bert_tokenizer(settings.tokenizer, texts, request)
    ids = tokenizer.special_tokens
    tokens, starts = encode_lines_cached(texts, tokenizer)
    length = request.model["context_length"]
    rows = pack_sentences(tokens, starts, length, ids[CLS], ids[SEP], ids[PAD])
    n_val = len(rows) // 10
    if n_val == 0 and request.evaluate != "all":  # data only to score is scored whole
        raise UserError(
            f"{spec} packs into {len(rows)} sequence(s) of {length} tokens; at least 10 are "
            "needed (one tenth validates): give more text or a shorter context"
        )
    masking = Masking(ids[MASK], min(ids.values()), settings.mask_probability)
    train_rows = rows[: len(rows) - n_val]
    batches = MaskedSequences(train_rows, train.batch_size, masking, train.seed, ids[PAD])

    scored = rows if request.evaluate == "all" else rows[-n_val:]
    limit = len(scored) if request.evaluate else train.eval_iters * train.batch_size

    def validation_batches():  # the same sequences and masks at every evaluation, masked
        generator = torch.Generator().manual_seed(train.seed + 1)  # as read: not all at once
        val = torch.from_numpy(scored)
        for i in range(0, min(len(val), limit), train.batch_size):
            yield masking(val[i : i + train.batch_size], generator)

    return TrainingData(
        batches,
        {"val": validation_batches},
        model_fields={"vocab_size": tokenizer.vocab_size, "pad_id": ids[PAD]},
        artifacts={"tokenizer": tokenizer},
        summary=f"{len(starts) - 1:,} lines, {len(tokens):,} tokens packed into {len(rows):,} "
        f"sequences of {length} ({len(rows) - n_val:,} train, {n_val:,} val), "
        f"vocab {tokenizer.vocab_size}",
    )
