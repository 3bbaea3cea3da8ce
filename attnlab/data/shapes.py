"""The embedded "shapes" images: eight kinds of shape drawn at random places, sizes and
brightness over faint noise, deterministic for a seed, so that `attnlab train vit` runs with no
files at all."""

from __future__ import annotations

import numpy as np
import torch

from attnlab.data.images import ImageDataset, ImageSet
from attnlab.errors import UserError

SHAPES = ("circle", "ring", "square", "diamond", "cross", "triangle", "bar", "pillar")
EMBEDDED_TEST_IMAGES = 2000
MIN_SHAPE_SIZE = 8  # pixels a side: room for a shape of radius 0.3 side and its margins
SHAPES_AT_ONCE = 64
TRAIN_SEED, TEST_SEED = 0, 1  # fixed, so evaluation redraws the very same test images


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Pixels inside `shape` of radius r, at offsets (dx, dy) from its centre; (n, H, W)."""
    w = np.maximum(0.25 * r, 1.0)  # stroke width
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.hypot(dx, dy) <= r
    if shape == "ring":
        return np.abs(np.hypot(dx, dy) - 0.8 * r) <= 0.6 * w
    if shape == "square":
        return np.maximum(ax, ay) <= 0.8 * r
    if shape == "diamond":
        return ax + ay <= r
    if shape == "cross":
        return ((ax <= w) & (ay <= r)) | ((ay <= w) & (ax <= r))
    if shape == "triangle":  # apex up: half-width grows from 0 at the top to 0.9 r at the base
        return (dy >= -r) & (dy <= 0.8 * r) & (ax <= 0.5 * (dy + r))
    if shape == "bar":
        return (ay <= w) & (ax <= r)
    return (ax <= w) & (ay <= r)  # pillar


def draw_shapes(count: int, size: int, seed: int) -> ImageSet:
    """`count` grayscale size x size images of SHAPES (label = index), each at a random place,
    size and brightness over faint noise; the same images for the same seed. Drawn some
    SHAPES_AT_ONCE images at a time, so that large images need little more memory than
    their uint8 pixels."""
    if size < MIN_SHAPE_SIZE:
        raise UserError(
            f"the embedded shapes need images of {MIN_SHAPE_SIZE} pixels or more, got {size}"
        )
    rng = np.random.default_rng(seed)
    labels = rng.integers(len(SHAPES), size=count)
    r = rng.uniform(0.18, 0.3, count) * size
    cx, cy = (rng.uniform(r + 1, size - r - 1) for _ in range(2))
    brightness = rng.uniform(150, 255, count)
    y, x = np.mgrid[:size, :size] + 0.5
    images = np.empty((count, 1, size, size), dtype=np.uint8)
    for start in range(0, count, SHAPES_AT_ONCE):
        part = slice(start, start + SHAPES_AT_ONCE)
        dx, dy = x[None] - cx[part, None, None], y[None] - cy[part, None, None]  # (n, H, W)
        inside = np.zeros(dx.shape, dtype=bool)
        for k, shape in enumerate(SHAPES):
            rows = labels[part] == k
            inside[rows] = _shape_mask(shape, dx[rows], dy[rows], r[part][rows, None, None])
        pixels = inside * brightness[part, None, None] + rng.normal(0, 12, inside.shape)
        images[part, 0] = np.clip(pixels, 0, 255)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


def embedded_shapes(count: int, size: int) -> ImageDataset:
    train = draw_shapes(count, size, TRAIN_SEED)
    test = draw_shapes(EMBEDDED_TEST_IMAGES, size, TEST_SEED)
    return ImageDataset(train, test, SHAPES, "shapes")
