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
    GENERATE_IMAGE,
    KINDS,
    TRANSLATE,
    a_kind,
)
from attnlab.training.checkpoints import Checkpoint

TEXT = "text"  # the sequence of a text model's inputs
IMAGE = "image"  # ... and of an image model's: the patches, or the pixel tokens


@dataclass
class Inputs:
    args: tuple[torch.Tensor, ...]  # model(*args) is one forward pass (batch of one)
    sequences: dict[str, list[str]]  # name -> a label per position ("text", "image", "source", ...)
    sides: Callable[[AttentionLayer], tuple[str, str]]  # a layer's (query, key) sequences
    dropped: int = 0  # tokens cut off the end to fit the model


def _one_sequence(name: str) -> Callable[[AttentionLayer], tuple[str, str]]:
    """The sides of inputs of one sequence: every layer's queries and keys are `name`."""
    return lambda layer: (name, name)


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Each token's own text (special tokens by name; part of a character as \\xNN)."""
    return [tokenizer.token_text(i) for i in ids]


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
        (_tensor(ids, device),), {TEXT: token_labels(tokenizer, ids)}, _one_sequence(TEXT), dropped
    )


def _encoder(checkpoint: Checkpoint, text: str, **_) -> Inputs:
    """`[CLS] text [SEP]`, as fill-mask and classify read a text; `[MASK]` in it is the mask."""
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
        (_tensor(ids, device),), {TEXT: token_labels(tokenizer, ids)}, _one_sequence(TEXT), dropped
    )


def _translation(checkpoint: Checkpoint, text: str, target: str | None, **_) -> Inputs:
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


def _read_image(checkpoint: Checkpoint, image: str, artifact: str) -> torch.Tensor:
    """An image file as uint8 (1, C, S, S), read as the commands that serve the model read it
    (an image of another size is refused: scaled, it would not be the image asked about)."""
    from attnlab.data.images import image_array, open_image

    if artifact not in checkpoint.artifacts:
        raise UserError(f"{checkpoint.path} lacks {artifact}.json: it cannot read images")
    c = checkpoint.model.config
    picture, side = open_image(image), c.image_size
    if picture.size != (side, side):
        width, height = picture.size
        raise UserError(
            f"{image} is {width}x{height} pixels; this model reads {side}x{side} images "
            "(scale it first)"
        )
    return torch.tensor(image_array(picture, c.channels)[None])  # a copy: writable


def _image(checkpoint: Checkpoint, image: str, **_) -> Inputs:
    """An image as classify-image reads it; positions are the class token and the patches
    (row, column)."""
    model, c = checkpoint.model, checkpoint.model.config
    pixels = _read_image(checkpoint, image, "normalization").to(next(model.parameters()).device)
    grid = c.image_size // c.patch_size  # patches per row and per column
    labels = [f"r{r}c{col}" for r in range(grid) for col in range(grid)]
    if c.n_positions > len(labels):
        labels = ["[CLS]", *labels]
    images = checkpoint.artifacts["normalization"](pixels)
    return Inputs((images,), {IMAGE: labels}, _one_sequence(IMAGE))


def _pixels(checkpoint: Checkpoint, image: str, **_) -> Inputs:
    """An image as image GPT reads it: the start token, then its palette tokens but the last;
    positions are the start and the pixel (row, column) each token begins at."""
    pixels = _read_image(checkpoint, image, "palette")
    palette, side = checkpoint.artifacts["palette"], checkpoint.model.config.image_size
    tokens, _ = palette.sequences(pixels)  # (1, L)
    starts = [i * palette.pixels_per_token for i in range(tokens.size(1) - 1)]
    labels = ["start", *(f"r{p // side}c{p % side}" for p in starts)]
    device = next(checkpoint.model.parameters()).device
    return Inputs((tokens.to(device),), {IMAGE: labels}, _one_sequence(IMAGE))


BUILDERS = {
    GENERATE: _language_model,
    FILL_MASK: _encoder,
    CLASSIFY: _encoder,
    TRANSLATE: _translation,
    CLASSIFY_IMAGE: _image,
    GENERATE_IMAGE: _pixels,
}
IMAGES = (_image, _pixels)  # the builders that read an image, not a text


def model_inputs(
    checkpoint: Checkpoint, text: str | None, *, target: str | None = None, image: str | None = None
) -> Inputs:
    """The inputs of one forward pass over `text` (or `image`), as the checkpoint's kind reads
    them. target: for a translation model, the target text (default: its own translation)."""
    builder = next(
        (BUILDERS[c] for c in sorted(checkpoint.kind.capabilities) if c in BUILDERS), None
    )
    holds = f"{checkpoint.path} holds {a_kind(checkpoint.kind.name)} model"
    if builder is None:
        readable = [k.name for k in KINDS.values() if k.capabilities & BUILDERS.keys()]
        raise UserError(
            f"{holds}, which inspection cannot feed; it reads {', '.join(readable)} checkpoints"
        )
    if builder in IMAGES:
        if image is None or text is not None:
            instead = ", not --text" if text is not None else ""
            raise UserError(f"{holds}, which reads images: give --image FILE{instead}")
    elif image is not None:
        raise UserError(f"--image is for image models; {holds}: give --text")
    elif text is None or not text.strip():
        raise UserError("give a non-empty --text to look at")
    if target is not None and builder is not _translation:
        raise UserError(f"--target is for translation models; {holds}")
    inputs = builder(checkpoint, text=text, target=target, image=image)
    if any(not labels for labels in inputs.sequences.values()):
        raise UserError("the text encodes to no tokens")
    return inputs
