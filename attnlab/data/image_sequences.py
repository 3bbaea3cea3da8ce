"""An image GPT's data: its settings, batches of pixel-token sequences, and the kind's builder.

Dimensions: B batch, C channels, S image side, L tokens per image.

The images are those an image classifier reads (data/images.py: MNIST's IDX files, folders of
images, the embedded shapes), kept in memory as uint8 and turned into tokens batch by batch
through the palette (data/palette.py), which is fitted to the training images once and saved
with the checkpoint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from attnlab.config import check_positive, check_types
from attnlab.data.image_classification import (
    ImageBatches,
    check_embedded_images,
    evaluation_images,
    load_image_data,
)
from attnlab.data.images import ImageSet
from attnlab.data.palette import PALETTE_HELP, Palette
from attnlab.errors import ConfigError, UserError
from attnlab.evaluation.image_likelihood import ImageLikelihood
from attnlab.training.sources import DataRequest, TrainingData


@dataclass(frozen=True)
class PixelDataConfig:
    data: str = "shapes"  # shapes (embedded), mnist, a folder of IDX files, or DIR/<class>/*.png
    palette: str = "binary"  # binary (a pixel > 127 is 1) | grey:N (levels) | kmeans:N (colours)
    pixels_per_token: int = 1  # horizontally adjacent pixels in one token (K^G token values)
    shift: int = 0  # augmentation: move each training image by up to N pixels (zero-padded)
    embedded_images: int = 10000  # training images of the embedded shapes (+ 2000 to test)

    def __post_init__(self):
        check_types(self)
        check_positive(
            "PixelDataConfig",
            pixels_per_token=self.pixels_per_token,
            embedded_images=self.embedded_images,
        )
        if self.shift < 0:
            raise ConfigError(f"PixelDataConfig.shift must be >= 0, got {self.shift}")
        if not self.palette:
            raise ConfigError(f"PixelDataConfig.palette: give {PALETTE_HELP}")


class PixelBatches(ImageBatches):
    """Training batches (inputs (B, L), targets (B, L)) of the images' tokens: the order, the
    shifts and the saved state are ImageBatches'."""

    unit = "token"

    def __init__(self, data: ImageSet, palette: Palette, batch_size: int, seed: int, shift: int):
        super().__init__(data, None, batch_size, seed, shift)
        self.palette = palette

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, _ = self.draw()
        return self.palette.sequences(images)


def image_gpt_training_data(request: DataRequest) -> TrainingData:
    """An image GPT's data: the palette (the checkpoint's when resuming or starting from one,
    else fitted to the training images), random batches of token sequences, a fixed sample of
    the test images to evaluate, scored in nats per image."""
    settings, train = request.settings, request.train
    check_embedded_images(request)
    dataset = load_image_data(settings, request.model["image_size"], request.log)
    _, channels, height, width = dataset.train.images.shape
    if height != width:
        raise UserError(f"{dataset.name}: images are {height}x{width}; the model reads squares")
    palette = (request.artifacts or {}).get("palette") or Palette.named(
        settings.palette, dataset.train.images, settings.pixels_per_token
    )
    if palette.channels != channels:
        raise UserError(
            f"{dataset.name} has {channels}-channel images; the palette has "
            f"{palette.channels}-channel colours"
        )
    if width % palette.pixels_per_token:
        raise UserError(
            f"pixels_per_token={palette.pixels_per_token} does not divide the image width {width}"
        )
    batches = PixelBatches(dataset.train, palette, train.batch_size, train.seed, settings.shift)
    test = evaluation_images(dataset.test, train.eval_iters * train.batch_size).images
    val = [palette.sequences(chunk) for chunk in test.split(train.batch_size)]
    length = palette.tokens_per_image(height)
    return TrainingData(
        batches,
        {"val": lambda: val},
        model_fields={
            "vocab_size": palette.vocab_size + 1,  # and the start token
            "context_length": length,
            "image_size": height,
            "channels": channels,
        },
        artifacts={"palette": palette},
        summary=f"{dataset.name}: {len(dataset.train):,} train and {len(dataset.test):,} test "
        f"images, {channels}x{height}x{width}, a palette of {len(palette.colours)} colours, "
        f"{length} tokens of {palette.pixels_per_token} pixel(s) each",
        metrics=functools.partial(ImageLikelihood, height * width),
    )
