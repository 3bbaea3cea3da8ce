"""The likelihood of images under an image GPT: negative log-likelihood in nats per image, the
unit of the published tables (binarised MNIST: PixelCNN 81.3, PixelRNN 79.2), and bits per
pixel.

Dimensions: B batch, L tokens per image, V vocabulary (palette tokens and the start token).

An image's NLL is the sum over its tokens of -ln p(token | the tokens before it); the first
token is predicted from the start token alone, so every pixel counts. With G pixels per token a
token's probability is the joint one of its G pixels, so the sum is the same quantity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.layers.contracts import eval_mode
from attnlab.progress import progress_bar


class ImageLikelihood:
    """Accumulates evaluation batches: update(logits (B, L, V), batch), whose last tensor holds
    the targets (B, L); compute() -> {"nats_per_image", "bits_per_pixel"}."""

    def __init__(self, pixels_per_image: int):
        self.pixels_per_image = pixels_per_image
        self.nats, self.images = 0.0, 0

    def update(self, logits: torch.Tensor, batch) -> None:
        targets = batch[-1]
        self.nats += F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), reduction="sum"
        ).item()
        self.images += targets.size(0)

    def compute(self) -> dict[str, float]:
        nats = self.nats / max(self.images, 1)
        bits = nats / self.pixels_per_image / math.log(2)
        return {"nats_per_image": nats, "bits_per_pixel": bits}


@torch.no_grad()
def evaluate_image_model(
    model: nn.Module, palette, images: torch.Tensor, batch_size: int, progress: bool = False
) -> dict:
    """NLL of uint8 images (N, C, S, S) under `model`, read through `palette` (data/palette.py):
    {"nats_per_image", "bits_per_pixel", "images"}, in full precision; progress: a bar on stderr
    when it is a terminal."""
    device = next(model.parameters()).device
    scores = ImageLikelihood(images.size(-1) * images.size(-2))
    bar = progress_bar(progress, total=len(images), desc="scoring", unit=" images")
    with eval_mode(model), bar:
        for chunk in images.split(batch_size):
            inputs, targets = palette.sequences(chunk)
            logits, _ = model(inputs.to(device))
            scores.update(logits, (targets.to(device),))
            bar.update(len(chunk))
    return {**scores.compute(), "images": len(images)}
