"""`attnlab train vit`, `attnlab evaluate` and `attnlab classify-image` end to end on the
embedded shapes, and bad input (a wrong-size or corrupt image, a bad IDX file, a stray file in an
image folder): one clear line, exit code 2, nothing lost."""

import contextlib
import hashlib
import io
import json
import shutil

import numpy as np
import pytest
from helpers import one_line_error, read_only, run
from PIL import Image
from test_images import idx_bytes, write_mnist, write_png

from attnlab.cli import main
from attnlab.data.images import IDX_IMAGES, IDX_LABELS
from attnlab.data.shapes import draw_shapes
from attnlab.training.checkpoints import load_checkpoint

SMALL = [
    "--embedded-images", "200", "--n-layers", "1", "--d-model", "32", "--batch-size", "16",
    "--eval-iters", "2", "--device", "cpu", "--precision", "fp32",
]  # fmt: skip
ON_FILES = SMALL[2:]  # --embedded-images sizes the embedded shapes only


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ViT trained for a few steps on the embedded shapes."""
    out = tmp_path_factory.mktemp("vit") / "run"
    code, _, err = run_quiet(["train", "vit", "--max-iters", "6", "--eval-interval", "3",
                              "--shift", "1", "--out", str(out), *SMALL])  # fmt: skip
    assert code == 0, err
    return out


def run_quiet(argv):
    """`attnlab ARGV` in-process, outside pytest's capture (for module fixtures)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, None, err.getvalue()


def fingerprint(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture
def shape_png(tmp_path):
    """A 32 x 32 image of the embedded shapes' first test kind."""
    data = draw_shapes(1, 32, seed=5)
    path = tmp_path / "shape.png"
    Image.fromarray(data.images[0, 0].numpy()).save(path)
    return path


def test_training_reports_accuracy_and_saves_the_classes(trained):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert "images_per_s" in records[0] and 0 <= records[-1]["val_accuracy"] <= 1
    checkpoint = load_checkpoint(trained)
    assert checkpoint.artifacts["classes"].names[0] == "circle"
    assert checkpoint.model.config.n_classes == 8 and checkpoint.model.config.image_size == 32


def test_evaluate_gives_accuracy_and_a_confusion_matrix(trained, capsys):
    png = trained.parent / "confusion.png"
    code, out, err = run(["evaluate", str(trained), "--json", "--confusion", str(png)], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["images"] == 2000 and 0 <= result["accuracy"] <= 1
    assert sum(map(sum, result["confusion"])) == 2000
    assert png.is_file() and Image.open(png).size[0] > 100


@pytest.mark.parametrize("flag", ["--confusion", "--data"])
def test_evaluate_refuses_an_empty_option_not_taking_it_for_the_default(trained, capsys, flag):
    before = fingerprint(trained)
    code, out, err = run(["evaluate", str(trained), flag, ""], capsys)
    assert f"{flag} is empty" in one_line_error(code, err) and out == ""
    assert fingerprint(trained) == before  # no confusion_val.png written into the run


def test_the_default_confusion_plot_is_never_written_through_a_link_in_the_run(
    trained, tmp_path, capsys
):
    """CKPT/confusion_val.png, in a run someone shared (readable, not writable), may be a link
    to any file of the user's: written through, it was a PNG over that file."""
    shared, victim = tmp_path / "shared", tmp_path / "victim"
    shutil.copytree(trained, shared)
    victim.write_text("mine")
    (shared / "confusion_val.png").unlink(missing_ok=True)
    (shared / "confusion_val.png").symlink_to(victim)
    code, out, err = run(["evaluate", str(shared)], capsys)
    line = one_line_error(code, err)
    assert f"{shared / 'confusion_val.png'} is a link (to {victim}): a command writes" in line
    assert "name the file with --confusion" in line and out == ""
    assert victim.read_text() == "mine"


def test_a_run_shared_read_only_is_refused_before_the_images_are_scored(
    trained, tmp_path, capsys, monkeypatch
):
    """Its default confusion plot cannot be written: one line at once, naming --confusion,
    not a write error once every image is scored, the figures lost."""
    shared = tmp_path / "shared"
    shutil.copytree(trained, shared)
    read_only(monkeypatch, shared)
    monkeypatch.setattr(
        "attnlab.evaluation.classification.evaluate_classifier",
        lambda *args: pytest.fail("the images were scored before the plot's folder was checked"),
    )
    code, out, err = run(["evaluate", str(shared)], capsys)
    line = one_line_error(code, err)
    assert f"cannot write to {shared}" in line and "elsewhere with --confusion FILE" in line
    assert out == ""


def test_classify_image_prints_the_top_classes(trained, shape_png, capsys):
    code, out, err = run(["classify-image", str(trained), str(shape_png), "--top-k", "3"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == str(shape_png) and len(lines) == 4
    probabilities = [float(line.split()[0]) for line in lines[1:]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001


def test_classify_image_refuses_bad_images_in_one_line(trained, shape_png, tmp_path, capsys):
    before = fingerprint(trained)
    small = tmp_path / "small.png"
    write_png(small, size=20)
    code, _, err = run(["classify-image", str(trained), str(small)], capsys)
    assert "is 20x20 pixels; this model reads 32x32 images" in one_line_error(code, err)
    code, out, err = run(["classify-image", str(trained), str(small), "--resize"], capsys)
    assert code == 0 and out.startswith(str(small)), err
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(shape_png.read_bytes()[:60])
    code, out, err = run(["classify-image", str(trained), str(shape_png), str(corrupt)], capsys)
    assert "corrupt.png is not a readable image" in one_line_error(code, err) and out == ""
    code, _, err = run(["classify-image", str(trained), str(tmp_path / "none.png")], capsys)
    assert "image not found" in one_line_error(code, err)
    code, _, err = run(["classify-image", str(trained), str(tmp_path)], capsys)
    assert "is a folder: give image files" in one_line_error(code, err)
    assert fingerprint(trained) == before


def test_a_resumed_run_repeats_the_uninterrupted_one(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    args = ["train", "vit", "--shift", "2", "--eval-interval", "2", *SMALL]
    assert run_quiet([*args, "--max-iters", "4", "--out", str(whole)])[0] == 0
    assert run_quiet([*args, "--max-iters", "2", "--out", str(part)])[0] == 0
    assert run_quiet(["train", "vit", "--out", str(part), "--resume", "--max-iters", "4"])[0] == 0

    def losses(out):
        return [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").open()]

    assert losses(part) == losses(whole)


def test_training_on_a_bad_idx_file_is_one_line(tmp_path, capsys):
    data = tmp_path / "digits"
    write_mnist(data, compress=False)
    (data / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros(6, np.uint8), IDX_LABELS))
    out = tmp_path / "run"
    code, _, err = run(["train", "vit", "--data", str(data), "--out", str(out), *ON_FILES], capsys)
    assert "not an IDX image file: magic number 2049" in one_line_error(code, err)
    assert not (out / "model.safetensors").exists()


def test_a_shift_past_the_images_size_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["train", "vit", "--shift", "100", "--out", str(out), *SMALL], capsys)
    assert "--shift 100 would move images of 32 pixels out of the frame" in one_line_error(
        code, err
    )
    assert not (out / "model.safetensors").exists()


def test_training_on_a_folder_warns_of_a_stray_file(tmp_path, capsys):
    data = tmp_path / "pictures"
    for name in ("light", "dark"):
        for i in range(12):
            write_png(
                data / name / f"{i}.png", size=12, value=250 - 20 * i if name == "light" else 5 * i
            )
    (data / "light" / "README.md").write_text("# my pictures")
    out = tmp_path / "run"
    argv = ["train", "vit", "--data", str(data), "--patch-size", "8", "--image-size", "16",
            "--max-iters", "2", "--batch-size", "8", "--eval-iters", "1", "--device", "cpu",
            "--n-layers", "1", "--d-model", "16", "--out", str(out)]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert f"attnlab: warning: skipping {data / 'light' / 'README.md'}" in err
    assert load_checkpoint(out).artifacts["classes"].names == ("dark", "light")


def test_digits_the_patches_do_not_tile_say_what_to_give(tmp_path, capsys):
    data = tmp_path / "digits"
    data.mkdir()
    for split, n in (("train", 16), ("t10k", 4)):
        (data / f"{split}-images-idx3-ubyte").write_bytes(
            idx_bytes(np.zeros((n, 28, 28), np.uint8), IDX_IMAGES)
        )
        labels = (np.arange(n) % 2).astype(np.uint8)
        (data / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(labels, IDX_LABELS))
    out = tmp_path / "run"
    code, _, err = run(["train", "vit", "--data", str(data), "--out", str(out), *ON_FILES], capsys)
    line = one_line_error(code, err)
    assert "28x28 pixels, which 8x8 patches do not tile" in line
    assert "--preset mnist" in line and "--patch-size that divides 28 (2, 4, 7, 14)" in line
    assert not out.exists()


def test_inspect_attention_reads_an_image_of_the_models_size_only(trained, shape_png, tmp_path,
                                                                  capsys):  # fmt: skip
    page = tmp_path / "view.html"
    argv = ["inspect", "attention", str(trained), "--out", str(page)]
    code, _, err = run([*argv, "--image", str(shape_png)], capsys)
    assert code == 0 and "r3c3" in page.read_text(), err
    small = tmp_path / "small.png"
    write_png(small, size=20)
    page.unlink()
    code, _, err = run([*argv, "--image", str(small)], capsys)
    assert "is 20x20 pixels; this model reads 32x32 images" in one_line_error(code, err)
    assert not page.exists()


def test_an_image_page_too_large_to_open_is_refused_with_advice_for_images(
    trained, shape_png, tmp_path, capsys, monkeypatch
):
    from attnlab.interpretability import viewer

    monkeypatch.setattr(viewer, "MAX_WEIGHTS", 1000)  # 1 layer of 4 heads over 17 positions: 1156
    page = tmp_path / "view.html"
    argv = ["inspect", "attention", str(trained), "--image", str(shape_png), "--out", str(page)]
    line = one_line_error(*run(argv, capsys)[::2])
    assert "would hold 1,156 attention weights, more than a browser opens (1,000)" in line
    assert "reads every image as 17 positions" in line and "text" not in line
    assert not page.exists()


def test_a_resumed_run_refuses_classes_it_was_not_trained_on(tmp_path, capsys):
    data = tmp_path / "pictures"
    for k, name in enumerate(("dark", "light")):
        for i in range(6):
            write_png(data / name / f"{i}.png", size=16, value=200 * k + i)
    out = tmp_path / "run"
    argv = ["train", "vit", "--data", str(data), "--patch-size", "8", "--image-size", "16",
            "--max-iters", "1", "--batch-size", "4", "--eval-iters", "1", "--device", "cpu",
            "--n-layers", "1", "--d-model", "16", "--out", str(out)]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    (data / "light").rename(data / "pale")
    before = fingerprint(out)
    code, _, err = run(["train", "vit", "--out", str(out), "--resume", "--max-iters", "2"], capsys)
    assert "are not those the checkpoint was trained on (dark, light)" in one_line_error(code, err)
    assert fingerprint(out) == before


def test_init_from_a_run_of_other_classes_starts_a_new_head(trained, tmp_path, capsys):
    data = tmp_path / "pictures"
    for k, name in enumerate(("dark", "light", "mid")):
        for i in range(6):
            write_png(data / name / f"{i}.png", size=32, value=100 * k + i)
    out = tmp_path / "run2"
    argv = ["train", "vit", "--init", str(trained), "--data", str(data), "--out", str(out)]
    argv += ["--max-iters", "1", "--batch-size", "8", "--eval-iters", "1", "--device", "cpu"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert "new: head.bias, head.weight" in err
    checkpoint = load_checkpoint(out)
    assert checkpoint.artifacts["classes"].names == ("dark", "light", "mid")
    assert checkpoint.model.config.n_classes == 3


@pytest.mark.parametrize(
    "kind, flags, message",
    [
        ("vit", ["--image-size", "0"], "--image-size must be a positive number, got 0"),
        ("vit", ["--image-size", "4", "--patch-size", "2"], "shapes need images of 8 pixels"),
        ("vit", ["--patch-size", "0"], "--patch-size must be a positive number, got 0"),
        ("igpt", ["--image-size", "-8"], "--image-size must be a positive number, got -8"),
        ("vit", ["--data", "mnist"], "--embedded-images sizes the embedded shapes: with --data"),
        ("igpt", ["--data", "mnist"], "--embedded-images sizes the embedded shapes: with --data"),
    ],
)
def test_bad_image_settings_and_unused_ones_are_one_line(tmp_path, capsys, kind, flags, message):
    out = tmp_path / "run"
    argv = ["train", kind, *flags, "--embedded-images", "50", "--max-iters", "1", "--out", str(out)]
    assert message in one_line_error(*run(argv, capsys)[::2])
    assert not out.exists()


@pytest.mark.parametrize("some", [False, True])
def test_evaluate_reads_folders_of_the_models_classes_in_any_order(trained, tmp_path, capsys,
                                                                   some):  # fmt: skip
    """Class folders come sorted by name; the model numbers its classes as it learned them. Their
    images are read as the model reads them (colour ones as grey), as classify-image does. A
    folder of some of the classes (some=True: all but the first) is scored on what it holds."""
    names = load_checkpoint(trained).artifacts["classes"].names
    assert list(names) != sorted(names)  # the shapes are not in name order
    drawn = draw_shapes(80, 32, seed=3)
    for i, (image, label) in enumerate(zip(drawn.images, drawn.labels, strict=True)):
        if some and label == 0:
            continue
        folder = tmp_path / "shapes" / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image[0].numpy())
        (picture.convert("RGB") if i % 2 else picture).save(folder / f"{i}.png")  # read as grey
    code, out, err = run(["evaluate", str(trained), "--data", str(tmp_path / "shapes"),
                          "--json", "--split", "all"], capsys)  # fmt: skip
    assert code == 0, err
    files = sorted((tmp_path / "shapes").glob("*/*.png"))
    code, top, err = run(["classify-image", str(trained), *map(str, files), "--top-k", "1"], capsys)
    assert code == 0, err
    predicted = [line.split()[-1] for line in top.splitlines()[1::2]]  # a file, then its class
    right = sum(f.parent.name == name for f, name in zip(files, predicted, strict=True))
    assert json.loads(out)["accuracy"] == pytest.approx(right / len(files))


def test_evaluate_scores_all_of_a_folder_it_never_trained_on(trained, tmp_path, capsys):
    """--data of new images: every one of them, not the tenth a training run would hold out
    (--split val still asks for that tenth); a folder of other classes is one line."""
    names = load_checkpoint(trained).artifacts["classes"].names
    for i in range(40):
        write_png(tmp_path / "new" / names[i % len(names)] / f"{i}.png", size=32, value=6 * i)
    scored = {}
    for flags in ([], ["--split", "val"]):
        code, out, err = run(["evaluate", str(trained), "--data", str(tmp_path / "new"), "--json",
                              *flags], capsys)  # fmt: skip
        assert code == 0, err
        scored[tuple(flags)] = json.loads(out)["images"]
    assert scored == {(): 40, ("--split", "val"): 4}
    (tmp_path / "new" / names[0]).rename(tmp_path / "new" / "unicorn")
    code, _, err = run(["evaluate", str(trained), "--data", str(tmp_path / "new")], capsys)
    assert "unicorn" in one_line_error(code, err)


def test_the_confusion_plot_names_the_split_scored(trained, tmp_path, capsys, monkeypatch):
    """A folder's val/ images, or the tenth held out of a folder without one, are not called
    test images."""
    titles = []
    monkeypatch.setattr("attnlab.cli.reports.plot_confusion", lambda *args: titles.append(args[3]))
    names = load_checkpoint(trained).artifacts["classes"].names
    for i in range(20):
        for where in ("split/train", "split/val", "flat"):
            write_png(tmp_path / where / names[i % len(names)] / f"{i}.png", size=32, value=6 * i)
    for data, split, scored in (("split", "val", "20 val"), ("flat", "val", "2 held-out"),
                                ("split", "train", "20 train")):  # fmt: skip
        code, _, err = run(["evaluate", str(trained), "--data", str(tmp_path / data), "--split",
                            split, "--confusion", str(tmp_path / "c.png")], capsys)  # fmt: skip
        assert code == 0, err
        assert titles.pop().endswith(f" on {scored} images")
    assert run(["evaluate", str(trained)], capsys)[0] == 0  # the shapes' own test images
    assert titles.pop().endswith(" test images")
    assert run(["evaluate", str(trained), "--data", str(tmp_path / "flat")], capsys)[0] == 0
    assert titles.pop().endswith(" on 20 images")  # all of unseen data
