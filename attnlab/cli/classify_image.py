"""`attnlab classify-image CKPT IMAGE...`: the most probable classes of images, by an image
classifier checkpoint (from `attnlab train vit`).

Also the classifier mode of `attnlab evaluate CKPT` (accuracy and a confusion-matrix PNG), whose
handler lives here so that both commands read images and checkpoints the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attnlab.cli.options import add_device_flag, check_output, default_output, print_json
from attnlab.devices import pick_device
from attnlab.errors import UserError
from attnlab.models.registry import CLASSIFY_IMAGE

DESCRIPTION = """\
Classify images with an image classifier checkpoint (from `attnlab train vit`): for each image,
the --top-k most probable classes and their probabilities. Images are read as the model was
trained: converted to its channels (grayscale or RGB) and normalised with the statistics saved
in the checkpoint. An image of another size is refused unless --resize scales it.

examples:
  attnlab classify-image runs/vit_mnist digit.png
  attnlab classify-image runs/vit cat.jpg dog.jpg --top-k 3 --resize
"""


def register(subparsers) -> None:
    from attnlab.cli import COMMANDS, HelpFormatter

    parser = subparsers.add_parser(
        "classify-image",
        help=COMMANDS["classify-image"][1],
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image")
    parser.add_argument(
        "--resize", action="store_true", help="scale images of another size to the model's"
    )
    add_device_flag(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.set_defaults(handler=classify_command)


def load_classifier(path: str, device: str, command: str):
    """A checkpoint that classifies images, with its class names and normalisation."""
    from attnlab.cli.checkpoint import load_for

    checkpoint = load_for(command, CLASSIFY_IMAGE, path, pick_device(device))
    missing = [f"{n}.json" for n in ("classes", "normalization") if n not in checkpoint.artifacts]
    if missing:
        raise UserError(f"{path} lacks {' and '.join(missing)}: it cannot read images")
    return checkpoint


def read_images(paths: list[str], config, resize: bool):
    """The images as one uint8 batch (B, C, S, S) in the model's channels; every file is read
    (and refused) before anything is classified."""
    import numpy as np
    import torch

    from attnlab.data.images import image_array, open_image

    side, arrays = config.image_size, []
    for path in paths:
        image = open_image(path)
        if image.size != (side, side) and not resize:
            width, height = image.size
            raise UserError(
                f"{path} is {width}x{height} pixels; this model reads {side}x{side} images "
                "(--resize scales it)"
            )
        arrays.append(image_array(image, config.channels, side))
    return torch.from_numpy(np.stack(arrays))


def classify_command(args: argparse.Namespace) -> int:
    from attnlab.evaluation.classification import top_k

    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    checkpoint = load_classifier(args.checkpoint, args.device, "classify-image")
    model, artifacts = checkpoint.model, checkpoint.artifacts
    images = read_images(args.images, model.config, args.resize)
    device = next(model.parameters()).device
    probabilities, indices = top_k(model, artifacts["normalization"](images.to(device)), args.top_k)
    names = artifacts["classes"].names
    for path, probs, classes in zip(
        args.images, probabilities.tolist(), indices.tolist(), strict=True
    ):
        ranked = [(names[c], p) for c, p in zip(classes, probs, strict=True)]
        if args.json:
            print_json({"image": path, "top": [{"class": n, "probability": p} for n, p in ranked]})
        else:
            print(path)
            for name, probability in ranked:
                print(f"  {probability:7.4f}  {name}")
    return 0


def evaluate_classifier_command(args: argparse.Namespace) -> int:
    """`attnlab evaluate CKPT [--data SPEC]`: accuracy over a split of the data, and the
    confusion matrix as a PNG. The data defaults to what the run trained on (its run.json)."""
    from attnlab.cli.reports import plot_confusion
    from attnlab.evaluation.classification import evaluate_classifier
    from attnlab.figures import plot_format

    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.confusion:
        check_output("--confusion", args.confusion, args.checkpoint)
        plot_format(args.confusion)  # a name matplotlib cannot write: before the work
    checkpoint = load_classifier(args.checkpoint, args.device, "evaluate")
    model, artifacts = checkpoint.model, checkpoint.artifacts
    split = evaluated_split(args)
    png = Path(args.confusion or _default_confusion(args.checkpoint, split))
    data, scored = _evaluation_images(args, checkpoint, split)
    result = evaluate_classifier(model, data, artifacts["normalization"], args.batch_size)
    title = (
        f"{Path(args.checkpoint).name}: accuracy {result['accuracy']:.2%} on "
        f"{result['images']:,} {scored}"
    )
    plot_confusion(result["confusion"], artifacts["classes"].names, png, title)
    if args.json:
        print_json({**result, "confusion": result["confusion"].tolist(), "plot": str(png)})
    else:
        print(f"{'accuracy':>10}  {result['accuracy']:.4f}")
        print(f"{'loss':>10}  {result['loss']:.4f}")
        print(f"{'images':>10}  {result['images']:,}")
        print(f"{'confusion':>10}  {png}")
    return 0


def _default_confusion(checkpoint: str, split: str) -> Path:
    """CKPT/confusion_SPLIT.png, checked before the work as --confusion is: a run shared with
    us read-only is one line at once, naming the way out, not after every image is scored."""
    png = default_output(checkpoint, f"confusion_{split}.png", "--confusion")
    try:
        return check_output("--confusion", png, checkpoint)
    except UserError as error:
        raise UserError(f"{error}; write the plot elsewhere with --confusion FILE") from None


def evaluated_split(args: argparse.Namespace) -> str:
    """--split; else all of --data the run did not train on (a folder of new images is not
    cut to its held-out tenth), else the test images."""
    from attnlab.cli.runs import unseen_data

    return args.split or ("all" if unseen_data(args) else "val")


def _evaluation_images(args: argparse.Namespace, checkpoint, split: str):
    """The split asked for, of --data or of the run's own data, checked against the model: its
    classes or some of them, in any order (labels are renumbered as the model numbers them);
    and what they are, in words: "test images", "val images", "held-out images" (val, as the
    data holds it), "train images" or "images" (all)."""
    import torch

    from attnlab.data.images import ImageSet

    dataset = run_dataset(args, checkpoint)
    names = checkpoint.artifacts["classes"].names
    if unknown := [name for name in dataset.classes if name not in names]:
        raise UserError(
            f"{dataset.name} has class(es) the model was not trained on: {', '.join(unknown)} "
            f"(it knows {', '.join(names)})"
        )
    config = checkpoint.model.config
    chosen = checked_split(dataset, split, config.channels, config.image_size)
    ours = torch.tensor([list(names).index(name) for name in dataset.classes])
    words = {"val": f"{dataset.held_out} images", "all": "images"}.get(split, f"{split} images")
    return ImageSet(chosen.images, ours[chosen.labels]), words


def run_dataset(args: argparse.Namespace, checkpoint):
    """The images of --data, or else those the run trained on (its run.json), read with the
    run's data settings (a kind whose data config names its images in `data`)."""
    from attnlab.cli.runs import note, run_data_settings
    from attnlab.data.image_classification import load_image_data

    settings = run_data_settings(args, checkpoint.kind)
    config = checkpoint.model.config  # folder images read as the model reads them
    return load_image_data(settings, config.image_size, note, config.channels)


def checked_split(dataset, split: str, channels: int, side: int):
    """The images of `split` (val: the test images, train, or all) of `dataset`, which must
    hold channels x side x side images."""
    import torch

    from attnlab.data.images import ImageSet

    shape = tuple(dataset.test.images.shape[1:])
    if shape != (channels, side, side):
        raise UserError(
            f"{dataset.name} holds {'x'.join(map(str, shape))} images; the model "
            f"reads {channels}x{side}x{side}"
        )
    if split == "all":
        return ImageSet(
            torch.cat([dataset.train.images, dataset.test.images]),
            torch.cat([dataset.train.labels, dataset.test.labels]),
        )
    return dataset.test if split == "val" else dataset.train
