"""Image GPT: a GPT over the pixels of images (Chen et al. 2020, "Generative Pretraining from
Pixels").

Dimensions: B batch, T positions, V vocabulary (palette tokens and the start token), S image
side.

An image is quantised to a small palette and read in raster order as tokens (data/palette.py);
a start token goes in front, so the model predicts every pixel, the first one included, and an
image's negative log-likelihood is the sum of its tokens' cross-entropies
(evaluation/image_likelihood.py). The network is the GPT (models/gpt.py) unchanged; its head
never predicts the start token, whose logit is -inf, so samples are always pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.config import check_positive
from attnlab.data.image_sequences import PixelDataConfig, image_gpt_training_data
from attnlab.errors import ConfigError
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.registry import GENERATE_IMAGE, ModelKind, register_kind


@dataclass(frozen=True)
class ImageGPTConfig(GPTConfig):
    # vocab_size (palette tokens + the start token), context_length (tokens per image),
    # image_size and channels come from the data and its palette.
    image_size: int = 28  # side of the square images, in pixels
    channels: int = 1  # colour channels of the images: 1 grayscale, 3 RGB
    # Untied: a pixel's input vector and its prediction are different things, tying saves only
    # V x D weights, and a tied head starts out favouring the token it was just fed.
    tie_weights: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_positive("ImageGPTConfig", image_size=self.image_size, channels=self.channels)
        pixels = self.image_size**2
        if pixels % self.context_length or self.vocab_size < 3:
            raise ConfigError(
                f"ImageGPTConfig: context_length ({self.context_length}) must be the tokens of "
                f"one {self.image_size}x{self.image_size} image, a divisor of {pixels}, and "
                f"vocab_size ({self.vocab_size}) a palette's tokens and the start token"
            )


def _shape(n_layers: int, d_model: int, image_size: int, context_length: int) -> ImageGPTConfig:
    return ImageGPTConfig(
        vocab_size=3,  # binary pixels and the start token, until the data says otherwise
        context_length=context_length,
        n_layers=n_layers,
        n_heads=4,
        d_model=d_model,
        image_size=image_size,
    )


PRESETS: dict[str, ImageGPTConfig] = {
    # 28 x 28 digits (binarised MNIST), 0.8M parameters: trains in under an hour on 2 CPU cores.
    "mnist": _shape(4, 128, 28, 784),
    # The embedded shapes at 16 x 16: a run of a few steps takes seconds.
    "tiny": _shape(2, 64, 16, 256),
}


class ImageGPT(GPT):
    """A GPT whose last token, the start token, is never predicted."""

    config: ImageGPTConfig

    def __init__(self, config: ImageGPTConfig):
        super().__init__(config)
        never = torch.zeros(config.vocab_size, dtype=torch.bool)
        never[-1] = True
        self.register_buffer("never_predicted", never, persistent=False)

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        return super().readout(x).masked_fill(self.never_predicted, float("-inf"))


register_kind(
    ModelKind(
        name="igpt",
        config=ImageGPTConfig,
        model=ImageGPT,
        presets=PRESETS,
        data_config=PixelDataConfig,
        build_data=image_gpt_training_data,
        data_fields={"vocab_size", "context_length", "channels"},  # image_size: as for vit
        capabilities={GENERATE_IMAGE},
        description="an image GPT generating pixels (default: embedded shapes, binary)",
    )
)
