"""Predictions of an encoder: the likeliest fillers of [MASK] positions, and class labels."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from attnlab.data.classification import encode_example, pad_batch
from attnlab.data.masked_lm import CLS, MASK, PAD, SEP, encode_sentence
from attnlab.errors import UserError
from attnlab.layers.contracts import eval_mode
from attnlab.tokenizers import Tokenizer
from attnlab.tokenizers.base import visible


def masked_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """[CLS] text [SEP] with each "[MASK]" in the text as the mask token. Where tokens hold a
    word with the space before it (BPE's " good"), a mask stands for both, as the words of
    pre-training were encoded; a character or byte vocabulary keeps the space as its own."""
    pieces = text.split(MASK)
    if len(pieces) == 1:
        raise UserError(f"the text has no {MASK} to fill: {text!r}")
    specials = tokenizer.special_tokens
    spaced = _spaced_words(tokenizer)
    ids = [specials[CLS]]
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        words = piece if last else piece.rstrip()
        space = "" if last or spaced else piece[len(words) :]  # before the mask: its own tokens
        if words.strip():
            ids += encode_sentence(tokenizer, words) if i == 0 else tokenizer.encode(words)
        elif i == 0 and not spaced:
            space = " "  # a sentence reads as if it followed a space (encode_sentence)
        ids += tokenizer.encode(space) if space else []
        if not last:
            ids.append(specials[MASK])
    return [*ids, specials[SEP]]


def _spaced_words(tokenizer: Tokenizer) -> bool:
    """Whether some token is a space and more: a word with the space before it."""
    ordinary = range(tokenizer.vocab_size - len(tokenizer.special_tokens))
    return any(len(b) > 1 and b[:1] == b" " for b in map(tokenizer.token_bytes, ordinary))


def _filler(text: str) -> str:
    """A filler as shown: the word without its space; a filler that is only whitespace made
    visible (a space as ␣, a line break as \\n) rather than an empty column."""
    return visible(text.strip() or text).replace(" ", "␣")


@torch.no_grad()
def fill_mask(
    model: nn.Module, tokenizer: Tokenizer, text: str, top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """For each [MASK] of `text`, in order: the top_k fillers (token text, probability)."""
    ids = masked_ids(tokenizer, text)
    _check_length(model, len(ids))
    device = next(model.parameters()).device
    with eval_mode(model):
        logits, _ = model(torch.tensor([ids], device=device))
    logits = logits[0].float()
    logits[:, list(tokenizer.special_tokens.values())] = float("-inf")  # fillers are words
    probabilities = logits.softmax(-1)
    positions = [p for p, i in enumerate(ids) if i == tokenizer.special_tokens[MASK]]
    results = []
    words = probabilities.size(-1) - len(tokenizer.special_tokens)  # the most there are
    for position in positions:
        top = probabilities[position].topk(min(top_k, words))
        results.append(
            [
                (_filler(tokenizer.token_text(i)), p)  # part of a character as \xNN
                for i, p in zip(top.indices.tolist(), top.values.tolist(), strict=True)
            ]
        )
    return results


def classify(
    model: nn.Module, tokenizer: Tokenizer, texts: list[str], batch_size: int = 32
) -> torch.Tensor:
    """Class probabilities (N, C) of each text (a long text read as the model's long_text says:
    its head and tail, or all of it in windows)."""
    out = list(classify_batches(model, tokenizer, texts, batch_size))
    return torch.cat(out) if out else torch.empty(0, model.config.n_classes)


@torch.no_grad()
def classify_batches(
    model: nn.Module, tokenizer: Tokenizer, texts: list[str], batch_size: int = 32
) -> Iterator[torch.Tensor]:
    """`classify`, a batch at a time: the probabilities (n, C) of each batch_size texts in turn,
    each yielded as soon as it is scored."""
    length, long_text = model.config.context_length, model.config.long_text
    device = next(model.parameters()).device
    pad = tokenizer.special_tokens[PAD]
    for start in range(0, len(texts), batch_size):
        encoded = [
            encode_example(tokenizer, t, length, long_text)
            for t in texts[start : start + batch_size]
        ]
        with eval_mode(model):
            logits, _ = model(pad_batch(encoded, pad).to(device))
        yield logits.float().softmax(-1).cpu()


def _check_length(model: nn.Module, n_tokens: int) -> None:
    limit = model.config.context_length
    if n_tokens > limit:
        raise UserError(
            f"the text is {n_tokens} tokens with [CLS] and [SEP]; the model reads {limit}"
        )
