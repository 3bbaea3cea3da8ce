"""Images as token sequences, for image GPT: a small palette of colours, and raster order.

Dimensions: N images, C channels, H height, W width (H = W = S), K palette colours, G pixels per
token, L tokens per image (S·S / G).

Each pixel becomes the index of its nearest palette colour (squared distance over the
channels); the indices are read in raster order (row by row, left to right) and each G
horizontally adjacent pixels make one token, their indices as the digits of a base-K number, so
a token takes one of K^G values. G = 1 is one token per pixel (Chen et al. 2020, "Generative
Pretraining from Pixels"); a larger G shortens the sequence G-fold and the model still gives
the exact likelihood of every pixel (the softmax over K^G values is their joint distribution).

Palettes, by name:
- "binary": black and white, so a pixel > 127 is 1 (binarised MNIST);
- "grey:N": N evenly spaced grey levels, 0 to 255;
- "kmeans:N": N colours found by k-means (Lloyd's algorithm) on training pixels, as image GPT's
  9-bit colour palette.

A model's palette is saved in its checkpoint (palette.json), so samples are drawn in the
colours it was trained on and new images are read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.errors import ConfigError, UserError
from attnlab.training.artifacts import register_artifact

KMEANS_PIXELS, KMEANS_ROUNDS, KMEANS_SEED = 100_000, 25, 0
GREY_LEVELS = 256  # the levels of 8-bit pixels: grey:N for a larger N would repeat some
MAX_TOKEN_VALUES = 2**15
PALETTE_HELP = "binary (a pixel > 127 is 1) | grey:N (N levels) | kmeans:N (N colours)"
CHUNK = 1024  # images quantised at once: bounds the (pixels, K) distance table


@dataclass(frozen=True)
class Palette:
    colours: tuple[tuple[int, ...], ...]  # K colours, each C channel values in 0..255
    pixels_per_token: int = 1  # G: horizontally adjacent pixels in one token

    def __post_init__(self):
        # ConfigError is a ValueError too: from_dict's callers report a bad palette.json
        sizes = {len(c) for c in self.colours}
        if len(self.colours) < 2 or len(sizes) != 1 or sizes == {0}:
            raise ConfigError("a palette needs at least 2 colours of the same number of channels")
        if not all(0 <= v <= 255 for c in self.colours for v in c):
            raise ConfigError("palette colour values must be in 0..255")
        k, g = len(self.colours), self.pixels_per_token
        if g < 1:
            raise ConfigError(f"pixels_per_token must be >= 1, got {g}")
        if k**g > MAX_TOKEN_VALUES:
            raise ConfigError(
                f"{g} pixels per token of {k} colours make {k**g:,} token values, more than "
                f"{MAX_TOKEN_VALUES:,}: give fewer pixels per token or colours"
            )

    @property
    def channels(self) -> int:
        return len(self.colours[0])

    @property
    def vocab_size(self) -> int:
        """Values a token takes: K^G."""
        return len(self.colours) ** self.pixels_per_token

    @property
    def start_token(self) -> int:
        """The id in front of every sequence, so that the first pixels are predicted too."""
        return self.vocab_size

    def tokens_per_image(self, side: int) -> int:
        return side * side // self.pixels_per_token

    # ------------------------------------------------------------------ pixels <-> tokens
    def indices(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) -> the nearest colour's index of each pixel (N, H, W)."""
        if images.dim() != 4 or images.size(1) != self.channels:
            raise UserError(
                f"the palette reads images of {self.channels} channel(s), "
                f"got shape {tuple(images.shape)}"
            )
        colours = torch.tensor(self.colours, dtype=torch.float32)  # (K, C)
        parts = []
        for chunk in images.split(CHUNK):
            pixels = chunk.float().permute(0, 2, 3, 1)  # (n, H, W, C)
            distances = ((pixels[..., None, :] - colours) ** 2).sum(-1)  # (n, H, W, K)
            parts.append(distances.argmin(-1))
        return torch.cat(parts)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, S, S) -> tokens (N, L) in raster order."""
        _, _, height, width = images.shape
        if width % self.pixels_per_token:
            raise UserError(
                f"images {width} pixels wide cannot be cut into tokens of "
                f"{self.pixels_per_token} pixels"
            )
        groups = self.indices(images).flatten(1).unflatten(1, (-1, self.pixels_per_token))
        return (groups * self._place_values()).sum(-1)  # (N, L)

    def decode(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        """Tokens (N, L) -> uint8 images (N, C, S, S) in the palette's colours."""
        digits = tokens[..., None] // self._place_values() % len(self.colours)  # (N, L, G)
        colours = torch.tensor(self.colours, dtype=torch.uint8)  # (K, C)
        pixels = colours[digits.flatten(1)]  # (N, S·S, C)
        return pixels.unflatten(1, (side, side)).permute(0, 3, 1, 2).contiguous()

    def sequences(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N, C, S, S) -> model inputs and targets, both (N, L): the targets are
        the image's tokens, the inputs the start token and all but the last of them."""
        targets = self.encode(images)
        start = torch.full_like(targets[:, :1], self.start_token)
        return torch.cat([start, targets[:, :-1]], dim=1), targets

    def _place_values(self) -> torch.Tensor:
        """K^(G-1), ..., K, 1: the first pixel of a token is its most significant digit."""
        k, g = len(self.colours), self.pixels_per_token
        return torch.tensor([k ** (g - 1 - j) for j in range(g)])

    # ------------------------------------------------------------------ making and saving
    @classmethod
    def named(cls, spec: str, images: torch.Tensor, pixels_per_token: int = 1) -> Palette:
        """The palette `spec` names (see the module), for uint8 images (N, C, H, W); k-means
        colours are fitted to a seeded sample of their pixels."""
        channels = images.size(1)
        name, _, count = spec.partition(":")
        if name == "binary" and not count:
            return cls(((0,) * channels, (255,) * channels), pixels_per_token)
        if name == "kmeans" and count.isdigit() and int(count) >= 2:
            return cls(kmeans_colours(images, int(count)), pixels_per_token)
        if name in ("grey", "gray") and count.isdigit():
            n = int(count)
            if not 2 <= n <= GREY_LEVELS:  # 8-bit pixels have no more levels than 256
                raise UserError(f"palette {spec!r}: give from 2 to {GREY_LEVELS} grey levels")
            levels = [round(255 * i / (n - 1)) for i in range(n)]
            return cls(tuple((v,) * channels for v in levels), pixels_per_token)
        raise UserError(f"unknown palette {spec!r}; give {PALETTE_HELP}, N >= 2")

    def to_dict(self) -> dict:
        colours = [list(c) for c in self.colours]
        return {"colours": colours, "pixels_per_token": self.pixels_per_token}

    def misfit(self, config: dict) -> str | None:
        vocab, channels = config.get("vocab_size"), config.get("channels")
        if vocab is not None and vocab != self.vocab_size + 1:
            return f"makes {self.vocab_size} token values and a start token; the model, {vocab}"
        if channels is not None and channels != self.channels:
            return f"holds colours of {self.channels} channels, the model's images have {channels}"
        return None

    @classmethod
    def from_dict(cls, data: dict) -> Palette:
        colours = data["colours"]
        if not isinstance(colours, list) or not all(isinstance(c, list) for c in colours):
            raise ValueError("'colours' must be a list of colours, each a list of channel values")
        return cls(tuple(tuple(int(v) for v in c) for c in colours), int(data["pixels_per_token"]))


register_artifact("palette", Palette.from_dict)


def kmeans_colours(images: torch.Tensor, k: int) -> tuple[tuple[int, ...], ...]:
    """k colours that cluster the pixels of uint8 images (N, C, H, W): Lloyd's algorithm from k
    distinct pixels of a seeded sample, sorted by brightness."""
    generator = torch.Generator().manual_seed(KMEANS_SEED)
    pixels = images.permute(0, 2, 3, 1).reshape(-1, images.size(1)).float()  # (P, C)
    pixels = pixels[torch.randperm(len(pixels), generator=generator)[:KMEANS_PIXELS]]
    distinct = torch.unique(pixels, dim=0)
    if len(distinct) < k:
        raise UserError(f"the images have {len(distinct)} distinct colours, fewer than k={k}")
    centres = distinct[torch.randperm(len(distinct), generator=generator)[:k]]  # (k, C)
    for _ in range(KMEANS_ROUNDS):
        nearest = torch.cdist(pixels, centres).argmin(1)  # (P,)
        for j in range(k):
            members = pixels[nearest == j]
            if len(members):  # an empty cluster keeps its centre
                centres[j] = members.mean(0)
    centres = centres[centres.sum(1).argsort()].round().clamp(0, 255).int()
    return tuple(tuple(c) for c in centres.tolist())
