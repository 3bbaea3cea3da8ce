"""What an inspection feeds a checkpoint: a text (or an image) as the model's inputs, with a
label for every position. How a text becomes inputs follows what the checkpoint's kind can do
(its capabilities, models/registry.py), the way the commands that serve it encode text.

A text longer than the model reads is cut to fit (``Inputs.dropped`` says how many tokens went),
so that any text can be looked at; the CLI says so on stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnlab.errors import UserError
from attnlab.interpretability.capture import AttentionLayer
from attnlab.models.registry import (
    CLASSIFY,
    CLASSIFY_IMAGE,
    FILL_MASK,
    GENERATE,
    KINDS,
    TRANSLATE,
)
from attnlab.training.checkpoints import Checkpoint

TEXT = "text"


@dataclass
class Inputs:
    args: tuple[torch.Tensor, ...]  # model(*args) is one forward pass (batch of one)
    sequences: dict[str, list[str]]  # name -> a label per position ("text", "source", ...)
    sides: Callable[[AttentionLayer], tuple[str, str]]  # a layer's (query, key) sequences
    dropped: int = 0  # tokens cut off the end to fit the model


def _one_sequence(layer: AttentionLayer) -> tuple[str, str]:
    return TEXT, TEXT


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Each token's own text (special tokens by name)."""
    return [tokenizer.decode([i]) for i in ids]


def _fit(ids: list[int], limit: int, keep_last: int = 0) -> tuple[list[int], int]:
    """ids cut to `limit`, keeping their last `keep_last` (an end marker); and how many went."""
    if len(ids) <= limit:
        return ids, 0
    return ids[: limit - keep_last] + ids[len(ids) - keep_last :], len(ids) - limit


def _tensor(ids: list[int], device) -> torch.Tensor:
    return torch.tensor([ids], dtype=torch.long, device=device)


def _language_model(checkpoint: Checkpoint, text: str, **_) -> Inputs:
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    ids = tokenizer.encode(text)
    ids, dropped = _fit(ids, getattr(model.config, "context_length", len(ids)))
    device = next(model.parameters()).device
    return Inputs(
        (_tensor(ids, device),), {TEXT: token_labels(tokenizer, ids)}, _one_sequence, dropped
    )


def _encoder(checkpoint: Checkpoint, text: str, **_) -> Inputs:
    """[CLS] text [SEP], as fill-mask and classify read a text; [MASK] in it is the mask."""
    from attnlab.data.masked_lm import CLS, MASK, SEP, encode_sentence
    from attnlab.evaluation.predict import masked_ids

    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    specials = tokenizer.special_tokens
    if MASK in text:
        ids = masked_ids(tokenizer, text)
    else:
        ids = [specials[CLS], *encode_sentence(tokenizer, text), specials[SEP]]
    ids, dropped = _fit(ids, model.config.context_length, keep_last=1)
    device = next(model.parameters()).device
    return Inputs(
        (_tensor(ids, device),), {TEXT: token_labels(tokenizer, ids)}, _one_sequence, dropped
    )


def _translation(checkpoint: Checkpoint, text: str, target: str | None = None, **_) -> Inputs:
    """The source with </s>; the target (given, else the model's greedy translation) as the
    decoder reads it, after <s>."""
    from attnlab.generation.beam_search import translate

    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    c = model.config
    if target is None:
        target = translate(model, tokenizer, [text], beam_size=1)[0]
    src, dropped = _fit([*tokenizer.encode(text), c.eos_id], c.max_length, keep_last=1)
    tgt, dropped_target = _fit([c.bos_id, *tokenizer.encode(target)], c.max_length)
    device = next(model.parameters()).device
    sequences = {"source": token_labels(tokenizer, src), "target": token_labels(tokenizer, tgt)}

    def sides(layer: AttentionLayer) -> tuple[str, str]:
        # the source passes through the encoder's (bidirectional) self-attention; the target
        # through the decoder's causal self-attention and its cross attention over the source
        if layer.cross:
            return "target", "source"
        return ("target", "target") if layer.causal else ("source", "source")

    args = (_tensor(src, device), _tensor(tgt, device))
    return Inputs(args, sequences, sides, dropped + dropped_target)


def _image(checkpoint: Checkpoint, text: str | None = None, image: str | None = None, **_):
    """An image file, read as classify-image reads it (an image of another size is refused:
    scaled, it would not be the image asked about); positions are the class token and the
    patches (row, column)."""

    from attnlab.data.images import image_array, open_image

    if image is None:
        raise UserError(f"{checkpoint.path} classifies images: give --image FILE, not --text")
    model, c = checkpoint.model, checkpoint.model.config
    if "normalization" not in checkpoint.artifacts:
        raise UserError(f"{checkpoint.path} lacks normalization.json: it cannot read images")
    picture, side = open_image(image), c.image_size
    if picture.size != (side, side):
        width, height = picture.size
        raise UserError(
            f"{image} is {width}x{height} pixels; this model reads {side}x{side} images "
            "(scale it first)"
        )
    array = image_array(picture, c.channels)[None]  # (1, C, S, S)
    pixels = torch.tensor(array, device=next(model.parameters()).device)  # a copy: writable
    grid = c.image_size // c.patch_size  # patches per row and per column
    labels = [f"r{r}c{col}" for r in range(grid) for col in range(grid)]
    if c.n_positions > len(labels):
        labels = ["[CLS]", *labels]
    images = checkpoint.artifacts["normalization"](pixels)
    return Inputs((images,), {TEXT: labels}, _one_sequence)


BUILDERS = {
    GENERATE: _language_model,
    FILL_MASK: _encoder,
    CLASSIFY: _encoder,
    TRANSLATE: _translation,
    CLASSIFY_IMAGE: _image,
}


def model_inputs(
    checkpoint: Checkpoint, text: str | None, *, target: str | None = None, image: str | None = None
) -> Inputs:
    """The inputs of one forward pass over `text` (or `image`), as the checkpoint's kind reads
    them. target: for a translation model, the target text (default: its own translation)."""
    builder = next(
        (BUILDERS[c] for c in sorted(checkpoint.kind.capabilities) if c in BUILDERS), None
    )
    if builder is None:
        readable = [k.name for k in KINDS.values() if k.capabilities & BUILDERS.keys()]
        raise UserError(
            f"{checkpoint.path} holds a {checkpoint.kind.name!r} model, which inspection cannot "
            f"feed; it reads {', '.join(readable)} checkpoints (--text, or --image for images)"
        )
    if builder is not _image and (text is None or not text.strip()):
        raise UserError("give a non-empty --text to look at")
    inputs = builder(checkpoint, text, target=target, image=image)
    if any(not labels for labels in inputs.sequences.values()):
        raise UserError("the text encodes to no tokens")
    return inputs
