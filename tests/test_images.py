"""Image data: IDX files checked by magic number and length, class folders that skip what is
not an image (and refuse a class with none), 16-bit images, the embedded shapes, shifts, and
batches that resume exactly."""

import gzip
import struct
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.data import images
from attnlab.data.image_classification import (
    ImageBatches,
    ImageDataConfig,
    evaluation_images,
    image_training_data,
    random_shift,
)
from attnlab.data.image_sequences import PixelDataConfig, image_gpt_training_data
from attnlab.data.images import (
    GRAY_MODES,
    IDX_IMAGES,
    IDX_LABELS,
    Normalization,
    image_array,
    load_idx_folder,
    load_image_folder,
    open_image,
    read_idx,
)
from attnlab.data.shapes import draw_shapes
from attnlab.errors import UserError
from attnlab.training.config import TrainConfig
from attnlab.training.sources import DataRequest


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(folder, n_train=12, n_test=6, compress=True):
    """A tiny MNIST-layout folder of IDX files; returns the training images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train = None
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 6, 6), dtype=np.uint8)
        labels = (np.arange(n) % 3).astype(np.uint8)
        train = images if split == "train" else train
        for stem, data in (
            (f"{split}-images-idx3-ubyte", idx_bytes(images, IDX_IMAGES)),
            (f"{split}-labels-idx1-ubyte", idx_bytes(labels, IDX_LABELS)),
        ):
            if compress:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)
    return train


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_reads_plain_and_gzip(tmp_path, compress):
    train = write_mnist(tmp_path, compress=compress)
    data = load_idx_folder(tmp_path)
    assert data.train.images.shape == (12, 1, 6, 6) and data.test.images.shape == (6, 1, 6, 6)
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(train))
    assert data.classes == ("0", "1", "2") and data.train.labels.tolist()[:4] == [0, 1, 2, 0]


def test_idx_files_are_read_as_their_bytes_say_not_as_their_names_say(tmp_path):
    train = write_mnist(tmp_path, compress=False)
    for path in tmp_path.glob("train-*"):  # unpacked by the browser that got them, still .gz
        path.rename(path.with_name(path.name + ".gz"))
    for path in tmp_path.glob("t10k-*"):  # gzip bytes under the plain name
        path.write_bytes(gzip.compress(path.read_bytes()))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"stale")  # the plain file is read
    data = load_idx_folder(tmp_path)
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(train))
    assert data.test.images.shape == (6, 1, 6, 6) and data.test.labels.tolist()[:3] == [0, 1, 2]
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty is not an IDX label file: magic number none \(0"):
        read_idx(tmp_path / "empty", IDX_LABELS)


def test_idx_with_a_wrong_magic_number_is_refused(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8), IDX_LABELS))
    with pytest.raises(UserError, match="not an IDX image file: magic number 2049, expected 2051"):
        read_idx(path, IDX_IMAGES)
    path.write_bytes(b"\x89PNG")
    with pytest.raises(UserError, match="magic number"):
        read_idx(path, IDX_LABELS)


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "images.gz"
    data = idx_bytes(np.zeros((3, 4, 4), np.uint8), IDX_IMAGES)
    path.write_bytes(gzip.compress(data[:-5]))
    with pytest.raises(UserError, match=r"is truncated: 59 bytes, but its header .* needs 64"):
        read_idx(path, IDX_IMAGES)
    path.write_bytes(gzip.compress(data)[:-12])  # a cut gzip stream
    with pytest.raises(UserError, match="cannot read"):
        read_idx(path, IDX_IMAGES)
    path.write_bytes(gzip.compress(data)[:10] + b"\xff" * 8)  # a corrupt gzip stream
    with pytest.raises(UserError, match="cannot read .*images.gz: "):
        read_idx(path, IDX_IMAGES)
    path.write_bytes(struct.pack(">I", IDX_LABELS))  # its magic number and nothing after
    with pytest.raises(UserError, match="is truncated: 4 bytes, in its 8-byte header"):
        read_idx(path, IDX_LABELS)


def test_idx_folders_of_no_images_or_of_two_sizes_are_one_line(tmp_path):
    write_mnist(tmp_path, compress=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
        idx_bytes(np.zeros((6, 4, 4), np.uint8), IDX_IMAGES)
    )
    with pytest.raises(UserError, match="training images are 6 x 6, test images 4 x 4"):
        load_idx_folder(tmp_path)
    for stem, array in (("images-idx3", np.zeros((0, 6, 6))), ("labels-idx1", np.zeros(0))):
        magic = IDX_IMAGES if stem.startswith("images") else IDX_LABELS
        (tmp_path / f"t10k-{stem}-ubyte").write_bytes(idx_bytes(array.astype(np.uint8), magic))
    with pytest.raises(UserError, match="holds 0 x 6 x 6 pixels: give one or more 2-D images"):
        load_idx_folder(tmp_path)
    (tmp_path / "short").write_bytes(struct.pack(">I", IDX_IMAGES) + b"\0\0")
    with pytest.raises(UserError, match="is truncated: 6 bytes, in its 16-byte header"):
        read_idx(tmp_path / "short", IDX_IMAGES)


def test_a_photo_is_read_turned_as_its_exif_orientation_says(tmp_path):
    from attnlab.data.images import open_image

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; a viewer rotates the picture
    Image.new("L", (20, 10)).save(tmp_path / "photo.jpg", exif=exif)
    assert open_image(tmp_path / "photo.jpg").size == (10, 20)


def write_png(path, size=8, value=200, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value, 0, 0)).save(path)


def test_image_folder_skips_what_is_not_an_image_and_names_it(tmp_path):
    for name in ("cat", "dog"):
        for i in range(5):
            write_png(tmp_path / name / f"{i}.png", size=10 + i, value=40 * i)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    Image.new("F", (8, 8), 0.9).save(tmp_path / "dog" / "float.tif")  # 0..1? 0..255? refused
    write_png(tmp_path / "dog" / "more" / "5.png")  # a sub-folder's images are the class's too
    write_png(tmp_path / "dog" / ".thumbnails" / "0.png")  # hidden: left out
    write_png(tmp_path / "__MACOSX" / "dog" / "._0.png")  # a zip made on macOS: no class
    warnings = []
    data = load_image_folder(tmp_path, 8, log=warnings.append)
    assert data.classes == ("cat", "dog")
    assert len(data.train) + len(data.test) == 11 and len(data.test) == 1
    assert data.train.images.shape[1:] == (1, 8, 8)  # grayscale, resized
    assert len(warnings) == 3
    assert any("skipping" in w and "float.tif: has floating-point pixels" in w for w in warnings)
    assert any("skipping" in w and "notes.txt" in w for w in warnings)
    assert any("skipping" in w and "broken.png" in w for w in warnings)


def test_image_folder_with_train_and_test_and_colour(tmp_path):
    for split in ("train", "test"):
        for name in ("a", "b"):
            write_png(tmp_path / split / name / "x.png", mode="RGB")
    write_png(tmp_path / "train" / "a" / "y.png")  # one grayscale image among colour ones
    data = load_image_folder(tmp_path, 8, log=lambda m: None)
    assert len(data.train) == 3 and len(data.test) == 2
    assert data.train.images.shape[1:] == (3, 8, 8)


def test_embedded_shapes_are_deterministic():
    a, b = draw_shapes(40, 16, seed=3), draw_shapes(40, 16, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, draw_shapes(40, 16, seed=4).images)
    assert a.images.dtype == torch.uint8 and a.labels.max() < 8


def test_shapes_drawn_a_part_at_a_time_are_those_drawn_at_once(monkeypatch):
    from attnlab.data import shapes

    parts = draw_shapes(150, 16, seed=3)
    monkeypatch.setattr(shapes, "SHAPES_AT_ONCE", 1000)
    whole = draw_shapes(150, 16, seed=3)
    assert torch.equal(parts.images, whole.images) and torch.equal(parts.labels, whole.labels)


def test_random_shift_moves_whole_images():
    images = torch.zeros(50, 1, 9, 9, dtype=torch.uint8)
    images[:, :, 4, 4] = 255
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and (shifted.sum((1, 2, 3)) == 255).all()
    where = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = where // 9, where % 9
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(where.tolist())) > 5


def test_batches_resume_exactly():
    data = draw_shapes(30, 8, seed=0)
    normalize = Normalization.of(data.images)
    first = ImageBatches(data, normalize, batch_size=7, seed=1, shift=1)
    for _ in range(5):  # into the second epoch
        first.next()
    state = first.state_dict()
    second = ImageBatches(data, normalize, batch_size=7, seed=1, shift=1)
    second.load_state_dict(state)
    for _ in range(6):
        for x, y in zip(first.next(), second.next(), strict=True):
            assert torch.equal(x, y)


def test_normalization_gives_unit_scale_and_round_trips():
    data = draw_shapes(200, 8, seed=0)
    normalize = Normalization.of(data.images)
    x = normalize(data.images)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    assert Normalization.from_dict(normalize.to_dict()) == normalize
    colour = torch.randint(0, 256, (30, 3, 5, 5), dtype=torch.uint8)  # as torch computes it
    pixels = colour.double().div(255).transpose(0, 1).flatten(1)
    statistics = Normalization.of(colour)
    assert torch.allclose(torch.tensor(statistics.mean).double(), pixels.mean(1))
    assert torch.allclose(torch.tensor(statistics.std).double(), pixels.std(1))


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    image = Image.open(path)
    assert image.mode == "I;16"
    expected = np.round(ramp / 257).astype(np.uint8)
    assert np.array_equal(image_array(image, 1)[0], expected)
    wide = Image.fromarray(ramp.astype(np.int32))  # mode I: 32-bit integers of a 16-bit image
    assert np.array_equal(image_array(wide, 3)[1], expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_transparent_pixels_read_as_white_whatever_colour_they_hide(mode):
    """A picture on a transparent background reads as on a white page, as image viewers show
    it; the colour stored under alpha 0 (often black, sometimes anything) is not seen."""
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 255)  # an opaque black pixel
    rgba[0, 1] = (0, 0, 0, 0)  # transparent black
    rgba[1, 0] = (255, 0, 0, 0)  # transparent red
    rgba[1, 1] = (0, 0, 0, 128)  # half-transparent black: half grey
    image = Image.fromarray(rgba, "RGBA")
    if mode != "RGBA":
        image = image.convert(mode)
    grey = image_array(image, 1)[0]
    assert grey[0, 0] == 0 and grey[0, 1] == grey[1, 0] == 255 and 120 <= grey[1, 1] <= 135
    assert (image_array(image, 3)[:, 1, 0] == 255).all()


def test_a_palette_images_transparent_entry_reads_as_white():
    image = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    image.putpalette([0, 0, 0, 255, 0, 0])  # entry 0 black, entry 1 red
    image.info["transparency"] = 1
    assert image_array(image, 3)[:, 0].T.tolist() == [[0, 0, 0], [255, 255, 255]]


def test_an_empty_class_folder_is_refused_by_name(tmp_path):
    for i in range(3):
        write_png(tmp_path / "cat" / f"{i}.png")
        write_png(tmp_path / "dog" / f"{i}.png")
    (tmp_path / "bird").mkdir()
    with pytest.raises(UserError, match=f"class folder {tmp_path / 'bird'} has no readable images"):
        load_image_folder(tmp_path, 8, log=lambda m: None)


def test_a_train_folder_without_a_test_folder_holds_out_a_part(tmp_path):
    for name in ("a", "b"):
        for i in range(10):
            write_png(tmp_path / "train" / name / f"{i}.png", value=20 * i)
    data = load_image_folder(tmp_path, 8, log=lambda m: None)
    assert data.classes == ("a", "b")
    assert len(data.train) == 18 and len(data.test) == 2


def write_mixed_folder(root):
    """train/ and test/ of classes a and b: images of several modes and sizes."""
    modes = {"a": ("L", "RGB", "P", "LA"), "b": ("1", "RGBA", "I;16", "L")}
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name, kinds in modes.items():
            for i, mode in enumerate(kinds):
                pixels = rng.integers(0, 256, (13 + 5 * i, 21, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).convert(mode)
                if mode == "I;16":
                    image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
                (root / split / name).mkdir(parents=True, exist_ok=True)
                image.save(root / split / name / f"{i}.png")


def read_whole_images(folder, channels, size):
    """The images of a folder as load_image_folder read them before: every file opened and
    held, then each converted to `channels` and resized."""
    files = sorted(folder.glob("*/*.png"))
    whole = [open_image(file) for file in files]
    channels = channels or (1 if all(im.mode in GRAY_MODES for im in whole) else 3)
    return np.stack([image_array(image, channels, size) for image in whole])


@pytest.mark.parametrize("channels", [0, 1, 3])
def test_image_files_are_read_one_at_a_time_into_the_same_pixels(tmp_path, monkeypatch, channels):
    write_mixed_folder(tmp_path)
    expected = [read_whole_images(tmp_path / split, channels, 8) for split in ("train", "test")]
    opened = []

    def one_at_a_time(path):
        assert all(image() is None for image in opened), "a full-size image is still held"
        image = open_image(path)
        opened.append(weakref.ref(image))
        return image

    monkeypatch.setattr(images, "open_image", one_at_a_time)
    data = load_image_folder(tmp_path, 8, log=lambda m: None, channels=channels)
    assert len(opened) == 16
    assert np.array_equal(data.train.images.numpy(), expected[0])
    assert np.array_equal(data.test.images.numpy(), expected[1])
    assert data.train.images.shape[1] == (channels or 3)


def test_greyscale_images_among_colour_ones_have_the_pixels_of_an_rgb_conversion(tmp_path):
    for name in ("a", "b"):
        write_png(tmp_path / "train" / name / "grey.png", size=11, value=90)
        write_png(tmp_path / "test" / name / "grey.png", size=11, value=90)
    Image.fromarray(np.arange(363, dtype=np.uint8).reshape(11, 11, 3) * 7).save(
        tmp_path / "train" / "a" / "colour.png"
    )
    data = load_image_folder(tmp_path, 8, log=lambda m: None)
    assert np.array_equal(data.test.images.numpy(), read_whole_images(tmp_path / "test", 3, 8))
    assert np.array_equal(data.train.images.numpy(), read_whole_images(tmp_path / "train", 0, 8))


def test_a_test_folder_of_classes_beside_classes_without_train_is_refused(tmp_path):
    for name in ("cat", "dog", "test/cat", "test/dog"):
        write_png(tmp_path / name / "0.png")
    with pytest.raises(UserError, match=f"^{tmp_path / 'test'} holds class folders, but"):
        load_image_folder(tmp_path, 8, log=lambda m: None)
    write_png(tmp_path / "val" / "0.png")  # an image-only folder is a class called val
    write_png(tmp_path / "val" / "__MACOSX" / "._0.png")  # a zip's metadata: not a class
    for name in ("cat", "dog"):
        (tmp_path / "test" / name / "0.png").rename(tmp_path / "test" / f"{name}.png")
        (tmp_path / "test" / name).rmdir()
    assert load_image_folder(tmp_path, 8, log=lambda m: None).classes == (
        "cat",
        "dog",
        "test",
        "val",
    )


def test_idx_labels_that_leave_most_classes_empty_are_refused(tmp_path):
    write_mnist(tmp_path, compress=False)
    labels = (np.arange(6) % 3).astype(np.uint8)
    labels[4] = 200  # one corrupt label
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels, IDX_LABELS))
    with pytest.raises(UserError, match="the labels run to 200, but only 4 of them appear"):
        load_idx_folder(tmp_path)


def class_by_class(root, per_class=8):
    """train/ and test/ of two classes: a all black, b all white."""
    for split in ("train", "test"):
        for name, value in (("a", 0), ("b", 255)):
            for i in range(per_class):
                write_png(root / split / name / f"{i}.png", value=value)


def data_request(settings, **model):
    train = TrainConfig(batch_size=4, eval_iters=2, seed=5)
    return DataRequest(settings, {"image_size": 8, **model}, train)


def test_validation_takes_a_seeded_sample_of_every_class_of_a_test_folder(tmp_path):
    class_by_class(tmp_path)
    request = data_request(ImageDataConfig(data=str(tmp_path)))
    val = image_training_data(request).eval["val"]()
    labels = torch.cat([y for _, y in val])
    assert len(labels) == 8 and set(labels.tolist()) == {0, 1}  # not the first 8: all a's
    again = image_training_data(data_request(ImageDataConfig(data=str(tmp_path))))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(val, again.eval["val"](), strict=True))
    everything = evaluation_images(load_image_folder(tmp_path, 8, lambda m: None).test, 100)
    assert len(everything) == 16


def test_an_image_gpt_validates_on_a_sample_of_every_class_too(tmp_path):
    class_by_class(tmp_path)
    request = data_request(PixelDataConfig(data=str(tmp_path)))
    val = image_gpt_training_data(request).eval["val"]()
    pixels = torch.cat([targets for _, targets in val])  # binary palette: 0 black, 1 white
    assert set(pixels.unique().tolist()) == {0, 1}
