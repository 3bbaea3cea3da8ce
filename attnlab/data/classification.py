"""Text classification data: labelled sentences or documents, for fine-tuning an encoder.

Dimensions: B batch, T the longest sequence of a batch (at most the model's context).

Two layouts are read:
- TSV, ``sentence<TAB>label`` per line with integer labels from 0 (a header line, such as
  ``sentence<TAB>label``, is skipped):
  one file, or a directory holding ``train.tsv`` and, optionally, ``dev.tsv`` (SST-2's layout);
- a directory with one sub-folder of text files per class (the movie reviews' ``neg/``,
  ``pos/``): the class names are the folder names, in sorted order.
Without a dev file, one fold of the training examples is held out: each class's examples, in
file (or sorted file-name) order, are cut into `folds` contiguous parts and part `fold`
validates. For the movie reviews (cv000-cv999) these are Pang & Lee's cross-validation folds.

An example is encoded as ``[CLS] text [SEP]``. A text longer than the context keeps its head
and its tail (Sun et al. 2019: a review's verdict is often in its last lines), or, with the
classifier's ``long_text = "windows"``, is read whole in windows: each window is a training
sequence with the text's label, and a text is evaluated on all of its windows at once (the
classifier averages their logits).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnlab.config import check_types
from attnlab.data import catalog
from attnlab.data.corpus import hidden, text_lines
from attnlab.data.labels import count_classes
from attnlab.data.masked_lm import CLS, PAD, SEP, bert_tokenizer, encode_sentence
from attnlab.data.text import id_array
from attnlab.errors import ConfigError, UserError
from attnlab.evaluation.metrics import ClassificationMetrics
from attnlab.files import read_text
from attnlab.tokenizers import Tokenizer
from attnlab.tokenizers.char import UnseenCharacters
from attnlab.training.artifacts import ClassNames, check_classes
from attnlab.training.sources import DataRequest, SeededSource, TrainingData

Examples = tuple[list[str], list[int]]  # texts, labels


def read_tsv(path: Path) -> Examples:
    """`sentence<TAB>label` lines; the first (not blank) may be a header of one-word column names
    ("great movie<TAB>positive" is an example, with a wrong label). Errors name file and line."""
    texts, labels = [], []
    lines = text_lines(read_text(path, "TSV file"))
    first = True
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) != 2:
            lone = "\r" in line  # a file of old Macs' line ends (\r) is one line here
            raise UserError(
                f"{path}:{number}: expected 'sentence<TAB>label', found {len(columns)} column(s)"
                + (" (its lines end in a lone \\r: make them \\n)" if lone else "")
            )
        text, label = columns[0].strip(), columns[1].strip()
        names = not re.search(r"\s", text + label) and not re.fullmatch("-?[0-9]+", label)
        header, first = first and names, False
        if header:
            continue  # only the first line that is not blank may be one
        if not re.fullmatch("[0-9]+", label):  # isdigit() would take "²"
            raise UserError(
                f"{path}:{number}: label {label!r} is not an integer >= 0 (a TSV's labels are "
                "class numbers 0, 1, ...; train's --label-names gives their names)"
            )
        texts.append(text)
        labels.append(int(label))
    if not texts:
        raise UserError(f"{path} holds no examples")
    return texts, labels


def read_class_folders(root: Path, log: Callable[[str], None]) -> tuple[Examples, list[str]]:
    """Every text file in each sub-folder of `root`, labelled by its folder (hidden files and
    folders left out; an empty or not UTF-8 file skipped, with a warning); and the classes."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not hidden(p, root))
    if not classes:
        raise UserError(f"{root} has no class folders (one sub-folder of text files per class)")
    texts, labels = [], []
    for label, name in enumerate(classes):
        folder, count = root / name, len(texts)
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and not hidden(p, folder)):
            try:
                text = file.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError:
                log(f"warning: skipping {file}: not UTF-8 text")
                continue
            if not text.strip():
                log(f"warning: skipping {file}: empty")
                continue
            texts.append(text)
        if len(texts) == count:
            raise UserError(f"class folder {folder} has no text files")
        labels += [label] * (len(texts) - count)
    return (texts, labels), classes


def hold_out(examples: Examples, folds: int, fold: int) -> tuple[Examples, Examples]:
    """(train, dev): part `fold` of `folds` contiguous parts of each class's examples is dev."""
    texts, labels = examples
    train, dev = ([], []), ([], [])
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        start, stop = len(members) * fold // folds, len(members) * (fold + 1) // folds
        for position, i in enumerate(members):
            split = dev if start <= position < stop else train
            split[0].append(texts[i])
            split[1].append(label)
    return train, dev


def read_examples(
    spec: str, folds: int, fold: int, log: Callable[[str], None] = print, evaluate: str = ""
) -> tuple[Examples, Examples, list[str]]:
    """Train and dev examples of a data spec, and the class names (None: numbered). evaluate
    (DataRequest's): "all" for data only to score, all of it dev where it has no dev file; a
    folder's dev.tsv, scored, is named in a note (its train.tsv, given as the spec, is read
    whole)."""
    unseen = evaluate == "all"
    if unseen:
        folds, fold = 1, 0  # one part, held out
    path = Path(spec)
    if not path.exists():
        raise UserError(f"data not found: {spec} (give a TSV file or a directory)")
    if not path.is_dir():  # a file, or a pipe (bash's <(...))
        train, dev = hold_out(read_tsv(path), folds, fold)
        return train, dev, None
    if (path / "train.tsv").is_file():
        train = read_tsv(path / "train.tsv")
        if (path / "dev.tsv").is_file():
            default = ClassificationDataConfig()
            if (folds, fold) != (default.folds, default.fold) and not unseen:  # asked for
                log(f"note: {spec} has a dev.tsv, which validates: --folds and --fold are unused")
            if evaluate:  # the file scored, and how to score the other
                log(f"note: scoring {path / 'dev.tsv'}; --data {path / 'train.tsv'} scores it")
            return train, read_tsv(path / "dev.tsv"), None
        return (*hold_out(train, folds, fold), None)
    if (path / "dev.tsv").is_file():  # SST-2's layout, missing its training file
        raise UserError(f"no train.tsv in {spec} beside its dev.tsv")
    examples, classes = read_class_folders(path, log)
    return (*hold_out(examples, folds, fold), classes)


def encode_example(
    tokenizer: Tokenizer, text: str, length: int, long_text: str = "head_tail"
) -> list[list[int]]:
    """A text as ``[CLS] ... [SEP]`` sequences of at most `length` tokens: one, unless the text
    is longer. Then head_tail keeps its head and its tail in one, and windows cuts all of it
    into sequences of the same size, the last ending at the text's end."""
    ids = encode_sentence(tokenizer, text)
    room = length - 2
    if len(ids) <= room:
        pieces = [ids]
    elif long_text == "windows":
        pieces = [ids[s : s + room] for s in [*range(0, len(ids) - room, room), len(ids) - room]]
    else:
        head = room // 2
        pieces = [ids[:head] + ids[len(ids) - (room - head) :]]
    specials = tokenizer.special_tokens
    return [[specials[CLS], *piece, specials[SEP]] for piece in pieces]


def pad_batch(texts: list[list[Sequence[int]]], pad_id: int) -> torch.Tensor:
    """The sequences of each text (encode_example) as ids (B, T), padded to the longest, or as
    (B, W, T) when a text has several: W windows, a text with fewer padded with empty ones."""
    windows = max(map(len, texts))
    longest = max(len(sequence) for text in texts for sequence in text)
    batch = torch.full((len(texts), windows, longest), pad_id, dtype=torch.long)
    for row, text in enumerate(texts):
        for window, ids in enumerate(text):
            batch[row, window, : len(ids)] = torch.as_tensor(ids)
    return batch[:, 0] if windows == 1 else batch


class LabelledBatches(SeededSource):
    """Training batches of sequences drawn at random: ids (B, T) and labels (B,)."""

    unit = "sequence"

    def __init__(self, sequences, labels, batch_size: int, pad_id: int, seed: int):
        self.sequences, self.labels = sequences, torch.tensor(labels)
        self.batch_size, self.pad_id = batch_size, pad_id
        super().__init__(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self.sequences), (self.batch_size,), generator=self.generator)
        ids = pad_batch([[self.sequences[i]] for i in index.tolist()], self.pad_id)
        return ids, self.labels[index]


FIELD = "ClassificationDataConfig."  # a field named in a message (the CLI names its flag)


@dataclass(frozen=True)
class ClassificationDataConfig:
    data: str = "sst2"  # TSV file, directory with train.tsv (+ dev.tsv), or class folders
    tokenizer: str = "bpe:8192"  # learned on the training texts; --init brings its own
    folds: int = 10  # without a dev file: the training examples' parts ...
    fold: int = 0  # ... and the one held out for evaluation
    label_names: str = ""  # names of integer labels, comma-separated (default: the numbers)

    def __post_init__(self):
        check_types(self)
        if self.folds < 2:
            raise ConfigError(f"{FIELD}folds must be >= 2 (one part is held out), got {self.folds}")
        if not 0 <= self.fold < self.folds:
            raise ConfigError(f"{FIELD}fold must be in 0..{self.folds - 1}, got {self.fold}")


def classification_training_data(request: DataRequest) -> TrainingData:
    settings, train = request.settings, request.train
    spec = catalog.resolve(settings.data, request.log)
    train_examples, dev_examples, classes = read_examples(
        spec, settings.folds, settings.fold, request.log, request.evaluate
    )
    train_examples, dev_examples, classes = _with_classes(
        request, spec, train_examples, dev_examples, classes
    )
    n_classes = len(classes)
    tokenizer = bert_tokenizer(settings.tokenizer, train_examples[0], request)
    pad_id = tokenizer.special_tokens[PAD]
    length, long_text = request.model["context_length"], request.model["long_text"]

    def encode(texts: list[str]) -> list[list[np.ndarray]]:
        return [
            [id_array(ids) for ids in encode_example(tokenizer, text, length, long_text)]
            for text in texts
        ]

    train_texts = encode(train_examples[0])
    try:
        dev_texts = encode(dev_examples[0])
    except UnseenCharacters as error:  # a character tokenizer learned on the training texts
        raise UserError(
            f"{spec}: a text held out for evaluation has {error.unseen} (learned on the "
            "training texts, it knows theirs only)"
            + (error.hint or "; train with --tokenizer byte or bpe:N, which read any text")
        ) from None
    # training draws sequences: each window of a long text is one, labelled as the text
    sequences = [ids for text in train_texts for ids in text]
    labels = [y for text, y in zip(train_texts, train_examples[1], strict=True) for _ in text]
    batches = LabelledBatches(sequences, labels, train.batch_size, pad_id, train.seed)

    def dev_batches():  # every dev example, in order (its windows all read at once), padded
        size = train.batch_size  # as read: not all at once
        for i in range(0, len(dev_texts), size):
            yield (
                pad_batch(dev_texts[i : i + size], pad_id),
                torch.tensor(dev_examples[1][i : i + size]),
            )

    counts = ", ".join(f"{name} {train_examples[1].count(i):,}" for i, name in enumerate(classes))
    return TrainingData(
        batches,
        {"val": dev_batches},
        model_fields={"vocab_size": tokenizer.vocab_size, "pad_id": pad_id, "n_classes": n_classes},
        artifacts={"tokenizer": tokenizer, "classes": ClassNames(tuple(classes))},
        summary=f"{len(train_texts):,} training examples ({counts}), {len(dev_texts):,} dev"
        + (f"; {len(sequences):,} training windows" if len(sequences) > len(train_texts) else ""),
        metrics=ClassificationMetrics,
        best="val_accuracy",
    )


def _with_classes(
    request: DataRequest, spec: str, train_examples: Examples, dev_examples: Examples, classes
) -> tuple[Examples, Examples, list[str]]:
    """The examples labelled as the checkpoint being resumed or scored numbers its classes (some
    of them, say), and every class's name: the folders', the checkpoint's, or --label-names'."""
    settings = request.settings
    saved = (request.artifacts or {}).get("classes")  # resuming or evaluating a checkpoint
    if saved and classes and set(classes) <= set(saved.names):  # some of its classes, say
        number = [saved.names.index(name) for name in classes]  # as the checkpoint numbers them
        train_examples, dev_examples = (
            (texts, [number[y] for y in labels]) for texts, labels in (train_examples, dev_examples)
        )
        classes = list(saved.names)
    # names of integer labels, given to train; a checkpoint being scored has its own classes
    label_names = "" if request.evaluate else settings.label_names
    if classes and label_names:
        raise UserError(
            f"{spec}: --label-names names integer labels; these classes are named by their "
            "folders already"
        )
    if not dev_examples[0]:
        raise UserError(f"{spec}: {_empty_fold(train_examples[1], classes, settings.folds)}")
    seen = sorted(set(train_examples[1]))
    if len(seen) < 2 and not request.evaluate:
        raise UserError(
            f"{spec}: the training examples hold {len(seen)} class(es): give two or more"
        )
    labels = train_examples[1] + dev_examples[1]
    fits = saved and max(labels) < len(saved.names)  # the checkpoint's classes, not all seen
    n_classes = len(saved.names) if fits else count_classes(labels, spec)
    if (missing := sorted(set(range(n_classes)) - set(seen))) and not request.evaluate:
        request.log(f"note: no training examples of label(s) {', '.join(map(str, missing))}")
    if not classes and not label_names and saved and n_classes <= len(saved.names):
        classes = list(saved.names)  # numbered labels: the checkpoint's classes, in order
    classes = classes or _label_names(label_names, n_classes)
    check_classes(request.artifacts, ClassNames(tuple(classes)), spec)
    return train_examples, dev_examples, classes


def _empty_fold(labels: list[int], classes: list[str] | None, folds: int) -> str:
    """Why the held-out fold is empty: each class is too small to give one example in each of
    `folds` parts (a class of `folds` examples or more would)."""
    largest = max(sorted(set(labels)), key=labels.count)
    name = repr(classes[largest]) if classes else f"label {largest}"
    return (
        f"no examples are left to evaluate on: the largest class, {name}, has "
        f"{labels.count(largest)} example(s), and holding out one of folds={folds} parts needs "
        f"{folds} or more (give more examples, a dev file, or fewer folds)"
    )


def _label_names(given: str, n_classes: int) -> list[str]:
    names = [n.strip() for n in given.split(",")] if given else [str(i) for i in range(n_classes)]
    if len(names) != n_classes:
        raise UserError(f"{FIELD}label_names gives {len(names)} names for {n_classes} classes")
    if bad := [n for n in names if not n or not n.isprintable()]:  # classify's fields: tabs
        raise UserError(
            f"{FIELD}label_names: {bad[0]!r} cannot name a class: give each a name, without tabs "
            "or line breaks"
        )
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise UserError(
            f"{FIELD}label_names names {', '.join(map(repr, twice))} twice: one per class"
        )
    return names
