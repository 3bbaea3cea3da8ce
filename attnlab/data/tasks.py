"""Synthetic tasks that tell token mixers apart: `attnlab train gpt --data task:NAME`.

Each task draws fresh sequences from a seeded generator (the same ones for every mixer) and
scores only the positions where the answer is determined; elsewhere the target is ignored.
Tokens are characters, so a trained model samples readable text (keys a-z, values A-Z, noise
'.', the copy marker '>'):

- ``associative_recall`` (Poli et al. 2023, Hyena): key-value pairs, each key always with the
  same value within a sequence, then a key seen before; the answer is its value. The paper's
  vocabulary of 30: 15 keys and 15 values. Training also scores every earlier key that was
  seen before (``dense=0``: the query alone); evaluation scores the query alone.
- ``mqar``, multi-query associative recall (Arora et al. 2023, Zoology): `pairs` distinct keys
  with values, then noise in which every key is asked again, once, at random places; each asks
  for its value.
- ``selective_copying`` (Gu & Dao 2023, Mamba): `tokens` data tokens scattered among noise, then
  as many copy markers, at which the data tokens come back in order.

Options follow the name: ``task:mqar:pairs=16,vocab=40``. The sequence length is the model's
context length.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass

import torch

from attnlab.config import config_from_dict
from attnlab.errors import UserError
from attnlab.tokenizers.char import CharTokenizer
from attnlab.training.sources import IGNORE_INDEX, DataRequest, SeededSource, TrainingData

KEYS, VALUES, NOISE, MARK = string.ascii_lowercase, string.ascii_uppercase, ".", ">"
SYMBOLS = KEYS + VALUES + NOISE + MARK  # the tokenizer of every task: ids follow this order
NOISE_ID, MARK_ID = SYMBOLS.index(NOISE), SYMBOLS.index(MARK)


@dataclass(frozen=True)
class TaskOptions:
    # keys and values together (associative recall, mqar), or data tokens (selective copying);
    # None: the task's VOCAB
    vocab: int | None = None
    pairs: int = 8  # mqar: key-value pairs, each asked once
    # associative recall in training: 1 = every key that was seen before is scored too, not only
    # the query at the end (the same recall, 500 times a sequence at length 1024, not once);
    # evaluation scores the query alone
    dense: int = 1
    tokens: int = 16  # selective copying: data tokens to copy


VOCAB = {"associative_recall": 30, "mqar": 30, "selective_copying": 16}  # Hyena's, Mamba's
# the options each task reads, each with its least and most value (None: the context decides);
# a vocab is split into keys and values, at most 26 of each (a-z and A-Z)
OPTIONS = {
    "associative_recall": {"vocab": (2, 2 * len(KEYS)), "dense": (0, 1)},
    "mqar": {"vocab": (2, 2 * len(KEYS)), "pairs": (1, None)},
    "selective_copying": {"vocab": (1, len(KEYS)), "tokens": (1, None)},
}


def _symbols(count: int, alphabet: str, what: str) -> torch.Tensor:
    if not 1 <= count <= len(alphabet):
        raise UserError(f"a task's {what} must be between 1 and {len(alphabet)}, got {count}")
    return torch.tensor([SYMBOLS.index(c) for c in alphabet[:count]])


def _keys_and_values(o: TaskOptions) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = o.vocab or VOCAB["mqar"]
    return _symbols(vocab // 2, KEYS, "keys"), _symbols(vocab - vocab // 2, VALUES, "values")


def associative_recall(g: torch.Generator, n: int, length: int, o: TaskOptions):
    keys, values = _keys_and_values(o)
    if length < 3:
        raise UserError("associative recall needs a context of at least 3 tokens")
    table = values[torch.randint(len(values), (n, len(keys)), generator=g)]  # key -> its value
    pairs = (length - 1) // 2
    asked = torch.randint(len(keys), (n, pairs), generator=g)
    sequence = torch.stack([keys[asked], table.gather(1, asked)], 2).flatten(1)  # k v k v ...
    query = asked.gather(1, torch.randint(pairs, (n, 1), generator=g))  # a key seen before
    filler = torch.full((n, length - 1 - 2 * pairs), NOISE_ID)
    inputs = torch.cat([filler, sequence, keys[query]], 1)
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, -1] = table.gather(1, query)[:, 0]
    if o.dense:  # each key that appeared before, where it stands: its value is known
        index = torch.arange(pairs).expand(n, pairs)
        first = torch.full((n, len(keys)), pairs).scatter_reduce(1, asked, index, "amin")
        again = index > first.gather(1, asked)
        answers = torch.where(again, table.gather(1, asked), IGNORE_INDEX)
        targets.scatter_(1, filler.size(1) + 2 * index, answers)
    return inputs, targets


def mqar(g: torch.Generator, n: int, length: int, o: TaskOptions):
    keys, values = _keys_and_values(o)
    p = o.pairs
    if p > len(keys) or length < 3 * p:
        raise UserError(
            f"mqar: {p} pairs need {p} keys (vocab {o.vocab or VOCAB['mqar']} gives "
            f"{len(keys)}) and a context of at least {3 * p} tokens"
        )
    chosen = torch.rand(n, len(keys), generator=g).argsort(1)[:, :p]  # distinct keys per row
    answers = values[torch.randint(len(values), (n, p), generator=g)]
    pairs = torch.stack([keys[chosen], answers], 2).flatten(1)  # (n, 2p)
    rest = length - 2 * p
    inputs = torch.cat([pairs, torch.full((n, rest), NOISE_ID)], 1)
    targets = torch.full_like(inputs, IGNORE_INDEX)
    places = 2 * p + torch.rand(n, rest, generator=g).argsort(1)[:, :p]  # where keys are asked
    order = torch.rand(n, p, generator=g).argsort(1)  # which key is asked where
    inputs.scatter_(1, places, keys[chosen.gather(1, order)])
    targets.scatter_(1, places, answers.gather(1, order))
    return inputs, targets


def selective_copying(g: torch.Generator, n: int, length: int, o: TaskOptions):
    data = _symbols(o.vocab or VOCAB["selective_copying"], KEYS, "data tokens")
    k = o.tokens
    if length < 2 * k + 1:
        raise UserError(f"selective copying of {k} tokens needs a context of at least {2 * k + 1}")
    spread = length - k  # the part with the data tokens among noise
    inputs = torch.full((n, length), NOISE_ID)
    places = torch.rand(n, spread, generator=g).argsort(1)[:, :k].sort(1).values
    tokens = data[torch.randint(len(data), (n, k), generator=g)]
    inputs.scatter_(1, places, tokens)
    inputs[:, spread:] = MARK_ID
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, spread:] = tokens  # at the i-th marker, the i-th data token
    return inputs, targets


TASKS = {
    "associative_recall": associative_recall,
    "mqar": mqar,
    "selective_copying": selective_copying,
}


def parse_task(spec: str) -> tuple[str, TaskOptions]:
    """'task:NAME' or 'task:NAME:key=value,...' -> (name, options)."""
    _, name, *rest = spec.split(":", 2)
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    fields = {}
    for item in filter(None, (rest[0] if rest else "").split(",")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not (value.isascii() and value.isdigit()):
            example = f"task:{name}:vocab={VOCAB[name]}"  # every task has a vocab
            raise UserError(f"task option {item!r}: give KEY=NUMBER, e.g. {example}")
        if key in fields:
            raise UserError(f"task option {key} is given twice in {spec!r}")
        fields[key] = int(value)
    if unknown := sorted(fields.keys() - set(OPTIONS[name])):
        raise UserError(
            f"task {name} has no option {', '.join(unknown)}: {', '.join(OPTIONS[name])}"
        )
    for key, value in fields.items():
        least, most = OPTIONS[name][key]
        if value < least or (most is not None and value > most):
            allowed = f"at least {least}" if most is None else f"{least} to {most}"
            raise UserError(f"task {name}: {key} must be {allowed}, got {value}")
    return name, config_from_dict(TaskOptions, {"vocab": VOCAB[name], **fields}, source=spec)


class TaskBatches(SeededSource):
    """Training batches of a task, drawn without end from a seeded generator."""

    unit = "token"

    def __init__(self, task, options: TaskOptions, batch_size: int, length: int, seed: int):
        self.task, self.options, self.batch_size, self.length = task, options, batch_size, length
        super().__init__(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.task(self.generator, self.batch_size, self.length, self.options)


class TaskAccuracy:
    """The share of scored positions (target not ignored) whose most likely token is right."""

    def __init__(self):
        self.right = self.total = 0

    def update(self, logits: torch.Tensor, batch) -> None:
        targets = batch[-1]
        scored = targets != IGNORE_INDEX
        self.right += int((logits.argmax(-1)[scored] == targets[scored]).sum())
        self.total += int(scored.sum())

    def compute(self) -> dict[str, float]:
        return {"accuracy": self.right / max(self.total, 1)}


def evaluation_batches(spec: str, count: int, batch_size: int, length: int, seed: int) -> list:
    """`count` batches of a task's sequences as asked (for associative recall, the query
    alone), the same for a seed."""
    name, options = parse_task(spec)
    asked = dataclasses.replace(options, dense=0)
    fixed = TaskBatches(TASKS[name], asked, batch_size, length, seed)
    return [fixed.next() for _ in range(count)]


def task_training_data(request: DataRequest) -> TrainingData:
    """A synthetic task's data for the GPT kind: fresh training sequences at every step, and the
    same evaluation sequences every time."""
    name, options = parse_task(request.settings.data)
    train, length = request.train, request.model["context_length"]
    task = TASKS[name]
    task(torch.Generator().manual_seed(0), 1, length, options)  # bad options: before training
    batches = TaskBatches(task, options, train.batch_size, length, train.seed)

    def evaluation():
        return evaluation_batches(request.settings.data, train.eval_iters, train.batch_size,
                                  length, train.seed + 1)  # fmt: skip

    tokenizer = CharTokenizer(SYMBOLS)
    return TrainingData(
        batches,
        {"val": evaluation},
        model_fields={"vocab_size": tokenizer.vocab_size},
        artifacts={"tokenizer": tokenizer},
        summary=f"task {name} ({', '.join(f'{k}={getattr(options, k)}' for k in OPTIONS[name])}), "
        f"sequences of {length}",
        metrics=TaskAccuracy,
    )
