"""Images for classification: where they come from, and what travels with a classifier.

Dimensions: N images, C channels, H height, W width (pixels), K classes.

Three sources, each giving uint8 arrays (N, C, H, W) and int64 labels (N,), held in memory:

- **IDX files** (LeCun's MNIST format), plain or gzip-compressed: a big-endian header (magic
  number 2051 for images, 2049 for labels, then the dimensions) and raw uint8 data. The magic
  number and the length the header promises are checked. Named as LeCun's site names them
  (train-images-idx3-ubyte) or as Kaggle's copy does (train-images.idx3-ubyte).
- **A folder of images**, one sub-folder per class (DIR/cat/*.png, DIR/dog/*.jpg); or DIR/train/
  and DIR/test/ (or DIR/val/) of that shape. Without a test folder (DIR/train/ alone, or the
  classes in DIR itself), a seeded 10% of the training images is held out. A class folder with
  no readable image is refused, and so is a test/ (or val/) of class folders without train/.
  Images are resized to the model's size (bilinear) as each is read, grayscale when every
  image is, else RGB; transparent pixels read as white, as a viewer shows them.
  A file that is not a readable image (a README, a damaged PNG, floating-point pixels) is
  skipped with a warning that names it, so one stray file does not stop a run.
- **"shapes"**, embedded (shapes.py): eight kinds of shape drawn at random places and sizes,
  deterministic for a seed, so `attnlab train vit` runs with no files at all.

A classifier's checkpoint carries two artefacts: its class names and the pixel normalisation
(per-channel mean and std of the training images), so that `attnlab classify-image` reads a
new image exactly as training did.
"""

from __future__ import annotations

import gzip
import math
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnlab.data.corpus import GZIP_MAGIC, hidden
from attnlab.data.labels import count_classes
from attnlab.errors import UserError
from attnlab.files import readable
from attnlab.training.artifacts import register_artifact

IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers: uint8 data with 3 and 1 dimensions
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOLDOUT, HOLDOUT_SEED = 0.1, 0  # share of a folder's images held out when it has no test folder


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageDataset:
    train: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    name: str  # for messages: "mnist", "shapes", a folder
    held_out: str = "test"  # what `test` is: test images, a folder's val/, or a held-out tenth


# ----------------------------------------------------------------------------- artefacts
@dataclass(frozen=True)
class Normalization:
    """Pixels in [0, 1], then per channel (x - mean) / std: inputs of unit scale."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, images: torch.Tensor) -> Normalization:
        """The per-channel mean and (unbiased) std of uint8 images (N, C, H, W), from each
        channel's histogram of its 256 values: no float copy of the images."""
        values = torch.arange(256, dtype=torch.float64) / 255
        means, stds = [], []
        for channel in images.transpose(0, 1):  # (N, H, W)
            counts = torch.bincount(channel.flatten(), minlength=256).double()
            n, mean = counts.sum(), (counts * values).sum() / counts.sum()
            means.append(float(mean))
            variance = (counts * (values - mean) ** 2).sum() / (n - 1).clamp_min(1)
            stds.append(max(float(variance.sqrt()), 1e-3))
        return cls(tuple(means), tuple(stds))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32 (N, C, H, W), normalised."""
        mean = torch.tensor(self.mean, device=images.device)[:, None, None]
        std = torch.tensor(self.std, device=images.device)[:, None, None]
        return (images.float() / 255 - mean) / std

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    def misfit(self, config: dict) -> str | None:
        channels = config.get("channels")
        if channels is not None and channels != len(self.mean):
            return f"normalises {len(self.mean)} channels, but the model reads {channels}"
        return None

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        mean, std = data["mean"], data["std"]
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise ValueError("'mean' and 'std' must be lists of one number per channel, std > 0")
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))


register_artifact("normalization", Normalization.from_dict)


# ----------------------------------------------------------------------------- IDX files
def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """The array in an IDX file, gzip-compressed or not (as its first bytes say, not its name),
    whose magic number must be `magic` (IDX_IMAGES, IDX_LABELS), its length what its header says."""
    path = Path(path)
    what = "image" if magic == IDX_IMAGES else "label"
    try:
        data = path.read_bytes()
        data = gzip.decompress(data) if data[:2] == GZIP_MAGIC else data
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else f"none ({len(data)} bytes)"
    if found != magic:
        raise UserError(f"{path} is not an IDX {what} file: magic number {found}, expected {magic}")
    n_dims = data[3]
    header = 4 + 4 * n_dims
    if len(data) < header:
        raise UserError(f"{path} is truncated: {len(data)} bytes, in its {header}-byte header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims)]
    expected = header + math.prod(dims)
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has extra bytes"
        raise UserError(
            f"{path} {problem}: {len(data):,} bytes, but its header ({' x '.join(map(str, dims))}"
            f" {what}s) needs {expected:,}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _idx_file(directory: Path, stem: str) -> Path:
    """DIR/stem, or DIR/stem.gz; or as other copies of MNIST name it: "train-images.idx3-ubyte"
    (Kaggle's), also in a folder of its own name (Kaggle's zip holds both). DIR/stem where none
    is there."""
    names = [n for s in (stem, stem.replace("-idx", ".idx")) for n in (s, f"{s}.gz")]
    places = [directory / n for n in names] + [directory / n / n for n in names[::2]]
    return next((p for p in places if p.is_file()), directory / stem)


def is_idx_folder(directory: Path) -> bool:
    return _idx_file(directory, MNIST_FILES["train"][0]).is_file()


def load_idx_split(directory: str | Path, split: str) -> ImageSet:
    """The "train" or "test" split of an MNIST-layout folder of IDX files."""
    image_stem, label_stem = MNIST_FILES[split]
    image_file, label_file = (_idx_file(Path(directory), s) for s in (image_stem, label_stem))
    for file in (image_file, label_file):
        if not file.is_file():
            raise UserError(f"IDX file not found: {file} (or {file.name}.gz)")
    images, labels = read_idx(image_file, IDX_IMAGES), read_idx(label_file, IDX_LABELS)
    if len(images) != len(labels):
        raise UserError(
            f"{image_file} holds {len(images):,} images but {label_file} {len(labels):,} labels"
        )
    if not len(images) or images.ndim != 3:
        shape = " x ".join(map(str, images.shape))
        raise UserError(f"{image_file} holds {shape} pixels: give one or more 2-D images")
    return ImageSet(
        torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))
    )


def load_idx_folder(directory: str | Path) -> ImageDataset:
    train, test = load_idx_split(directory, "train"), load_idx_split(directory, "test")
    if train.images.shape[1:] != test.images.shape[1:]:
        sizes = [" x ".join(map(str, s.images.shape[2:])) for s in (train, test)]
        raise UserError(f"{directory}: training images are {sizes[0]}, test images {sizes[1]}")
    labels = set(train.labels.tolist()) | set(test.labels.tolist())
    n_classes = count_classes(labels, str(directory))
    names = tuple(str(k) for k in range(n_classes))
    return ImageDataset(train, test, names, Path(directory).name)


# ----------------------------------------------------------------------------- image files
def open_image(path: str | Path):
    """A PIL image, fully read; a missing or unreadable file is a UserError naming it."""
    from PIL import Image, ImageOps  # imported when images are read

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder: give image files")
    readable(path, "image")
    try:
        with warnings.catch_warnings():
            # a large image is read as asked (--resize); past PIL's hard limit it is one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # turned as its EXIF orientation says, as a viewer shows a photo
                image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"{path} is not a readable image: {error}") from None
    if image.mode == "F":  # 0..1 or 0..255? Nothing says, and read as the other it is wrong
        raise UserError(f"{path} has floating-point pixels, of no known range: save it in 8 bits")
    return image


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N")
WIDE_MAX = 65535  # integer images (16-bit PNGs and TIFFs, PIL's modes I and I;16) span 0..65535


def _eight_bit(image):
    """An integer greyscale image (mode I or I;16: 16-bit PNGs, TIFFs) scaled from 0..65535 to
    0..255, as mode L; PIL's convert("L") would clip them instead, making them almost white."""
    from PIL import Image

    if not image.mode.startswith("I"):
        return image
    values = np.clip(np.asarray(image, dtype=np.int64), 0, WIDE_MAX)
    scaled = (values * 255 + WIDE_MAX // 2) // WIDE_MAX  # rounded to the nearest level
    return Image.fromarray(scaled.astype(np.uint8))  # (H, W) uint8: mode L


def _on_white(image):
    """An image with transparency (an alpha channel, or a palette's transparent entry) laid on
    a white page, as image viewers show it: the colour stored under transparent pixels (often
    black, sometimes anything) would otherwise be what a model sees."""
    from PIL import Image

    if "A" not in image.getbands() and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)


def image_array(image, channels: int, size: int | None = None) -> np.ndarray:
    """A PIL image as uint8 (C, H, W), converted to 1 (grayscale) or 3 (RGB) channels and, when
    `size` is given, resized to size x size pixels (bilinear). Transparent pixels read as white
    (_on_white)."""
    from PIL import Image

    image = _on_white(_eight_bit(image)).convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _class_arrays(
    directory: Path, log: Callable[[str], None], channels: int, size: int
) -> dict[str, list[np.ndarray]]:
    """Class name -> the images of `DIR/<class>/`, its sub-folders too (read in name order;
    hidden files and folders left out, as in text class folders), each as uint8 (C, size, size)
    (_small_array); files that are not readable images are skipped with a warning. A class
    folder with no readable image is refused, as text class folders are
    (data/classification.py): it would be a class that nothing teaches."""
    found = {}
    for folder in sorted(p for p in directory.iterdir() if p.is_dir() and not hidden(p, directory)):
        arrays = []
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and not hidden(p, folder)):
            try:
                arrays.append(_small_array(file, channels, size))
            except UserError as error:
                log(f"warning: skipping {file}: {str(error).removeprefix(f'{file} ')}")
        if not arrays:
            raise UserError(f"class folder {folder} has no readable images")
        found[folder.name] = arrays
    return found


def _small_array(file: Path, channels: int, size: int) -> np.ndarray:
    """One image file as uint8 (C, size, size), so that only one full-size image is held at a
    time. channels 0: 1 for a greyscale image, else 3; a greyscale one is later repeated to 3
    channels where others are in colour (_image_set), which gives the pixels that converting
    it to RGB before resizing would."""
    image = open_image(file)
    return image_array(image, channels or (1 if image.mode in GRAY_MODES else 3), size)


def load_image_folder(
    directory: str | Path, size: int, log: Callable[[str], None] = print, channels: int = 0
) -> ImageDataset:
    """`DIR/<class>/*`, or `DIR/train/<class>/*` with or without `DIR/test/` (or `DIR/val/`);
    see the module. The held-out share is drawn with a fixed seed, so evaluation finds the same
    images. channels: 1 or 3 to convert every image to (a model's), else 1 where all are
    greyscale."""
    directory = Path(directory)
    held_out = next((directory / n for n in ("test", "val") if (directory / n).is_dir()), None)
    has_train = _has_class_folders(directory / "train")  # else train/ may be a class of trains
    split = has_train and held_out is not None
    for name in ("test", "val"):  # of class folders, a held-out set, not a class: train/?
        if not has_train and _has_class_folders(directory / name):
            raise UserError(
                f"{directory / name} holds class folders, but {directory} has no train/ of "
                f"them: move the training classes into {directory / 'train'}"
            )
    classes_in = directory / "train" if has_train else directory
    train_arrays = _class_arrays(classes_in, log, channels, size)
    classes = tuple(train_arrays)
    if len(classes) < 2:
        raise UserError(
            f"{classes_in} needs one sub-folder per class (at least two); found {len(classes)}"
        )
    test_arrays = _class_arrays(held_out, log, channels, size) if split else {}
    if unknown := sorted(set(test_arrays) - set(classes)):
        raise UserError(f"{held_out} has class folders that train/ lacks: {', '.join(unknown)}")
    groups = [*train_arrays.values(), *test_arrays.values()]
    channels = max(len(array) for group in groups for array in group)  # 3 where any is in colour
    if split:
        train = _image_set(train_arrays, classes, channels, directory)
        test = _image_set(test_arrays, classes, channels, held_out)
    else:  # a random share held out: the images drawn in that order, test first
        count = sum(map(len, train_arrays.values()))
        order = torch.randperm(count, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
        every = _image_set(train_arrays, classes, channels, directory, order)
        cut = max(1, round(HOLDOUT * count))
        test = ImageSet(every.images[:cut], every.labels[:cut])
        train = ImageSet(every.images[cut:], every.labels[cut:])
    words = held_out.name if split else "held-out"
    return ImageDataset(train, test, classes, str(directory), words)


def _has_class_folders(directory: Path) -> bool:
    return directory.is_dir() and any(
        p.is_dir() and not hidden(p, directory) for p in directory.iterdir()
    )


def _image_set(arrays: dict[str, list[np.ndarray]], classes, channels: int, where, order=None):
    """The arrays of each class, greyscale ones repeated to `channels`, as one ImageSet, in the
    order of `order` (a permutation of them) where given: copied once into place (stacking them,
    then drawing that order, held the pixels three times over)."""
    labels = torch.tensor([classes.index(name) for name in arrays for _ in arrays[name]])
    if not len(labels):
        raise UserError(f"no readable images in {where}")
    size = next(iter(arrays.values()))[0].shape[1:]
    images = torch.empty((len(labels), channels, *size), dtype=torch.uint8)
    rows = torch.arange(len(labels)) if order is None else torch.argsort(order)
    pixels = images.numpy()  # one channel is broadcast to three
    for row, array in zip(rows.tolist(), (a for g in arrays.values() for a in g), strict=True):
        pixels[row] = array
    return ImageSet(images, labels if order is None else labels[order])
