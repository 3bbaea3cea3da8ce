"""An image classifier's data: its settings, training batches, and the kind's data builder.

Dimensions: B batch, C channels, H height, W width.

Images stay in memory as uint8 (MNIST's 60,000 take 47 MB) and are normalised batch by batch,
so batching costs little next to a training step even on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from attnlab.config import check_positive, check_types
from attnlab.data import catalog
from attnlab.data.images import (
    ImageDataset,
    ImageSet,
    Normalization,
    is_idx_folder,
    load_idx_folder,
    load_image_folder,
)
from attnlab.data.shapes import embedded_shapes
from attnlab.errors import ConfigError, UserError
from attnlab.evaluation.metrics import ClassificationMetrics
from attnlab.training.artifacts import ClassNames, check_classes
from attnlab.training.sources import DataRequest, TrainingData


@dataclass(frozen=True)
class ImageDataConfig:
    data: str = "shapes"  # shapes (embedded), mnist, a folder of IDX files, or DIR/<class>/*.png
    shift: int = 0  # augmentation: move each training image by up to N pixels (zero-padded)
    embedded_images: int = 10000  # training images of the embedded shapes (+ 2000 to test)

    def __post_init__(self):
        check_types(self)
        check_positive("ImageDataConfig", embedded_images=self.embedded_images)
        if self.shift < 0:
            raise ConfigError(f"ImageDataConfig.shift must be >= 0, got {self.shift}")


def check_embedded_images(request: DataRequest) -> None:
    """Refuse --embedded-images given for other data than the embedded shapes, which it sizes
    (in training: a checkpoint scored on other data keeps its run's setting)."""
    settings = request.settings
    default = type(settings).embedded_images
    if not request.evaluate and settings.data != "shapes" and settings.embedded_images != default:
        raise UserError(
            f"--embedded-images sizes the embedded shapes: with --data {settings.data} it is unused"
        )


def load_image_data(
    settings: ImageDataConfig, image_size: int, log: Callable[[str], None] = print, channels=0
) -> ImageDataset:
    """The dataset `settings.data` names; folders of image files are resized to image_size (and
    converted to `channels`, a model's, when given)."""
    if image_size < 1:  # checked before any image is drawn or read, as the model would
        raise UserError(f"image_size must be at least 1 pixel, got {image_size}")
    if settings.data == "shapes":
        return embedded_shapes(settings.embedded_images, image_size)
    path = Path(catalog.resolve(settings.data, log))
    if not path.is_dir():
        raise UserError(
            f"image data {settings.data!r}: not a folder (give 'shapes', 'mnist', a folder of "
            "IDX files, or a folder with one sub-folder of images per class)"
        )
    log(f"reading {path} ...")
    if is_idx_folder(path):
        return load_idx_folder(path)
    return load_image_folder(path, image_size, log, channels)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator):
    """Each image (B, C, H, W) moved by up to max_shift pixels each way, the uncovered border
    filled with zeros (the background of MNIST-like images)."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4).permute(0, 2, 3, 1)  # (B, H + 2s, W + 2s, C)
    offsets = torch.randint(2 * max_shift + 1, (2, batch), generator=generator)
    rows = offsets[0, :, None] + torch.arange(height)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(width)  # (B, W)
    index = torch.arange(batch)[:, None, None]
    return padded[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, H, W)


class ImageBatches:
    """Training batches of (images (B, C, H, W) float, labels (B,)): each epoch a fresh random
    order, the last incomplete batch dropped; shifted at random when asked.

    Two generators: one orders the epochs (its state at the epoch's start and the position in
    the epoch are saved), one draws the shifts (saved as it is), so a resumed run draws exactly
    the batches the uninterrupted one would have.
    """

    unit = "image"

    def __init__(
        self, data: ImageSet, normalize: Normalization, batch_size: int, seed: int, shift: int = 0
    ):
        if len(data) < batch_size:
            raise UserError(f"{len(data)} training images cannot fill a batch of {batch_size}")
        self.data, self.normalize, self.batch_size, self.shift = data, normalize, batch_size, shift
        self.order_generator = torch.Generator().manual_seed(seed)
        self.shift_generator = torch.Generator().manual_seed(seed + 1)
        self._start_epoch()

    def _start_epoch(self) -> None:
        self.epoch_state = self.order_generator.get_state()
        self.order = torch.randperm(len(self.data), generator=self.order_generator)
        self.cursor = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.draw()
        return self.normalize(images), labels

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch as stored: uint8 images (B, C, H, W), shifted when asked, and labels."""
        if self.cursor + self.batch_size > len(self.data):
            self._start_epoch()
        rows = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        images = self.data.images[rows]
        if self.shift:
            images = random_shift(images, self.shift, self.shift_generator)
        return images, self.data.labels[rows]

    def state_dict(self) -> dict[str, torch.Tensor]:
        # Checkpoints store data state as raw bytes (uint8 tensors): the cursor goes as bytes too.
        cursor = torch.frombuffer(bytearray(self.cursor.to_bytes(8, "little")), dtype=torch.uint8)
        return {
            "epoch_state": self.epoch_state,
            "cursor": cursor,
            "shift_state": self.shift_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.order_generator.set_state(state["epoch_state"])
        self._start_epoch()  # the same order again, from the same state
        self.cursor = int.from_bytes(bytes(state["cursor"].tolist()), "little")
        self.shift_generator.set_state(state["shift_state"])


EVAL_SEED = 0  # the same held-out images at every evaluation, in every run and on resume


def evaluation_images(data: ImageSet, count: int) -> ImageSet:
    """`count` of the held-out images (all when there are no more), drawn with a fixed seed:
    a test folder is stored class by class, so its first images may all be of one class."""
    if count >= len(data):
        return data
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(EVAL_SEED))
    chosen = chosen[:count].sort().values  # in stored order
    return ImageSet(data.images[chosen], data.labels[chosen])


def fixed_batches(data: ImageSet, normalize: Normalization, batch_size: int):
    """Every image of `data` in batches, in order, normalised."""
    return [
        (normalize(data.images[i : i + batch_size]), data.labels[i : i + batch_size])
        for i in range(0, len(data), batch_size)
    ]


def image_training_data(request: DataRequest) -> TrainingData:
    """A classifier's data: the images (normalised by the training images' statistics, or the
    checkpoint's when resuming), random batches to train, a fixed sample of eval_iters batches
    of the test images to evaluate (evaluation_images), and accuracy beside the loss."""
    settings, train = request.settings, request.train
    check_embedded_images(request)
    if 0 < request.model["image_size"] <= settings.shift:  # before any image is read
        raise UserError(
            f"--shift {settings.shift} would move images of {request.model['image_size']} "
            "pixels out of the frame: give less than their size"
        )
    dataset = load_image_data(settings, request.model["image_size"], request.log)
    saved = request.artifacts or {}
    classes = ClassNames(dataset.classes)
    check_classes(saved, classes, dataset.name)
    normalize = saved.get("normalization") or Normalization.of(dataset.train.images)
    batches = ImageBatches(dataset.train, normalize, train.batch_size, train.seed, settings.shift)
    held_out = evaluation_images(dataset.test, train.eval_iters * train.batch_size)
    val = fixed_batches(held_out, normalize, train.batch_size)
    _, channels, height, width = dataset.train.images.shape
    if height != width:
        raise UserError(f"{dataset.name}: images are {height}x{width}; the model reads squares")
    return TrainingData(
        batches,
        {"val": lambda: val},
        model_fields={"n_classes": len(classes.names), "channels": channels, "image_size": height},
        artifacts={"classes": classes, "normalization": normalize},
        summary=f"{dataset.name}: {len(dataset.train):,} train and {len(dataset.test):,} test "
        f"images, {channels}x{height}x{width}, {len(classes.names)} classes",
        metrics=ClassificationMetrics,
    )
