"""`attnlab sample-images CKPT`: a PNG grid of an image GPT's unconditional samples and of its
completions of the top halves of test images (or of image files given with --complete).

Also the image-GPT mode of `attnlab evaluate CKPT` (test NLL in nats per image), whose handler
lives here so that both commands read checkpoints and images the same way.
"""

from __future__ import annotations

import argparse
import io

from attnlab.cli.options import (
    add_device_flag,
    check_output,
    check_sampling_flags,
    check_top_k,
    default_output,
    given_flags,
    print_json,
    refuse_empty,
)
from attnlab.devices import pick_device
from attnlab.errors import UserError
from attnlab.models.registry import GENERATE_IMAGE

DESCRIPTION = """\
Draw images with an image GPT checkpoint (from `attnlab train igpt`) and write them as one PNG
grid: first --samples unconditional samples, then, --columns at a time, a row of test images, a
row of their top halves (the hidden half grey) and a row of the model's completions. The test
images are the first of the data the model trained on (or of --data), or the files given with
--complete, which must be the model's size unless --resize scales them. Pixels are drawn in the
palette saved with the checkpoint; sampling uses the KV cache, one token per step.

examples:
  attnlab sample-images runs/igpt_mnist
  attnlab sample-images runs/igpt_mnist --out grid.png --samples 32 --completions 16 --seed 1
  attnlab sample-images runs/igpt_mnist --complete digit.png three.png --samples 0
"""
HIDDEN, SEPARATOR, GAP = (128, 128, 128), (70, 90, 160), 2  # grey halves, blue lines, pixels
MAX_DRAWN = 2048  # pixels across one drawn image: --scale beyond that makes gigapixel grids


def register(subparsers) -> None:
    from attnlab.cli import COMMANDS, HelpFormatter

    parser = subparsers.add_parser(
        "sample-images",
        help=COMMANDS["sample-images"][1],
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory")
    parser.add_argument(
        "--out", metavar="FILE", help="the PNG grid to write (default: CKPT/samples.png)"
    )
    parser.add_argument(
        "--samples", type=int, default=16, help="unconditional samples (1 at --temperature 0)"
    )
    parser.add_argument(
        "--completions", type=int, default=8, help="test images to complete (without --complete)"
    )
    parser.add_argument(
        "--complete", nargs="+", metavar="IMAGE", help="complete these image files (PNG, ...)"
    )
    parser.add_argument(
        "--resize", action="store_true", help="scale --complete images of another size"
    )
    parser.add_argument(
        "--data",
        metavar="SPEC",
        help="test images to complete: shapes, mnist or a folder "
        "(default: the data the model trained on)",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    parser.add_argument(
        "--top-k",
        type=int,
        help="sample from the k most likely tokens only, fewer than the palette's; 0 = off "
        "(default: off, every token)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the samples")
    parser.add_argument("--columns", type=int, default=8, help="images per row of the grid")
    parser.add_argument("--scale", type=int, default=3, help="screen pixels per image pixel")
    add_device_flag(parser)
    parser.set_defaults(handler=sample_images_command, split="val")


def load_image_gpt(path: str, device: str, command: str):
    """A checkpoint that generates images, with its palette."""
    from attnlab.cli.checkpoint import load_for

    checkpoint = load_for(command, GENERATE_IMAGE, path, pick_device(device))
    if "palette" not in checkpoint.artifacts:
        raise UserError(f"{path} lacks palette.json: it cannot read or draw images")
    return checkpoint


def sample_images_command(args: argparse.Namespace) -> int:
    from attnlab.files import atomic_write_bytes
    from attnlab.generation.images import complete_images

    _check_flags(args)
    out = check_output(
        "--out",
        default_output(args.checkpoint, "samples.png", "--out") if args.out is None else args.out,
        args.checkpoint,
        ".png",
        inputs={"--complete": args.complete},
    )
    checkpoint = load_image_gpt(args.checkpoint, args.device, "sample-images")
    # the tokens of the palette: the start token is never chosen
    check_top_k(args, checkpoint.model.config.vocab_size - 1, "palette tokens")
    originals = _images_to_complete(args, checkpoint)  # every file read before any sampling
    if args.samples == 0 and len(originals) == 0:
        raise UserError("nothing to draw: --samples and --completions are both 0")
    model, palette = checkpoint.model, checkpoint.artifacts["palette"]
    side = model.config.image_size
    if side * args.scale > MAX_DRAWN:
        raise UserError(
            f"--scale {args.scale} draws each {side}-pixel image {side * args.scale} pixels "
            f"wide; at most {MAX_DRAWN}"
        )
    rows = []
    sampling = {"temperature": args.temperature, "top_k": args.top_k or None, "seed": args.seed}
    if args.samples:
        samples = complete_images(model, palette, count=args.samples, **sampling)
        rows += _rows(palette.decode(samples, side), args.columns)
    if len(originals):
        tokens = palette.encode(originals)
        top = tokens[:, : (side // 2) * side // palette.pixels_per_token]  # whole rows
        completed = palette.decode(complete_images(model, palette, top, **sampling), side)
        quantised = palette.decode(tokens, side)
        for start in range(0, len(originals), args.columns):
            part = slice(start, start + args.columns)
            rows += [quantised[part], (quantised[part], side // 2), completed[part]]
    atomic_write_bytes(out, _grid_png(rows, args.columns, args.scale, side))
    print(f"{args.samples} samples, {len(originals)} completions: {out}")
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    """The flags that need no checkpoint, checked before it is read; greedy sampling draws one
    image unless --samples asks for more (refused: the same image again and again)."""
    for name in ("samples", "completions", "columns", "scale"):
        least = 1 if name in ("columns", "scale") else 0
        if getattr(args, name) < least:
            raise UserError(f"--{name} must be >= {least}, got {getattr(args, name)}")
    refuse_empty(args, ["data"])
    check_sampling_flags(args, temperature=args.temperature, top_k=args.top_k or None)
    if args.temperature == 0 and args.samples > 1:  # greedy: one image, drawn again and again
        if given_flags(args, ["samples"]):
            raise UserError(
                f"--samples {args.samples} at --temperature 0 (greedy) draws the same image "
                f"{args.samples} times: give --samples 1 (or 0), or a temperature above 0"
            )
        args.samples = 1
    if args.complete and (unused := given_flags(args, ("completions", "data"))):
        raise UserError(
            f"{' and '.join(unused)} would change nothing: --complete gives the images to "
            f"complete; leave {'it' if len(unused) == 1 else 'them'} out"
        )
    if args.resize and not args.complete:
        raise UserError("--resize scales --complete images: without --complete it is unused")


def _images_to_complete(args: argparse.Namespace, checkpoint):
    """uint8 images (N, C, S, S): the --complete files, or the first test images."""
    import torch

    from attnlab.cli.classify_image import checked_split, read_images, run_dataset

    config = checkpoint.model.config
    if args.complete:
        return read_images(args.complete, config, args.resize)
    if args.completions == 0:
        return torch.zeros(0, config.channels, config.image_size, config.image_size)
    dataset = run_dataset(args, checkpoint)
    images = checked_split(dataset, "val", config.channels, config.image_size).images
    return images[: args.completions]


def _rows(images, columns: int) -> list:
    return [images[i : i + columns] for i in range(0, len(images), columns)]


def _grid_png(rows: list, columns: int, scale: int, side: int) -> bytes:
    """PNG bytes of a grid: each row a batch of uint8 images (n, C, S, S), or (images, h) to
    grey out everything from pixel row h down."""
    import numpy as np
    from PIL import Image

    cell = side * scale + GAP
    columns = min(columns, max(len(row[0] if isinstance(row, tuple) else row) for row in rows))
    grid = np.empty((len(rows) * cell + GAP, columns * cell + GAP, 3), dtype=np.uint8)
    grid[:] = SEPARATOR
    for r, row in enumerate(rows):
        images, hidden_from = row if isinstance(row, tuple) else (row, side)
        for c, image in enumerate(images):
            pixels = image.expand(3, -1, -1).permute(1, 2, 0).numpy().copy()  # (S, S, 3)
            pixels[hidden_from:] = HIDDEN
            big = pixels.repeat(scale, 0).repeat(scale, 1)
            y, x = GAP + r * cell, GAP + c * cell
            grid[y : y + side * scale, x : x + side * scale] = big
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return buffer.getvalue()


def evaluate_image_model_command(args: argparse.Namespace) -> int:
    """`attnlab evaluate CKPT [--data SPEC] [--split S]`: the negative log-likelihood of a
    split's images (default: the test images of the data the run trained on)."""
    from attnlab.cli.classify_image import checked_split, evaluated_split, run_dataset
    from attnlab.evaluation.image_likelihood import evaluate_image_model

    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    checkpoint = load_image_gpt(args.checkpoint, args.device, "evaluate")
    model, palette = checkpoint.model, checkpoint.artifacts["palette"]
    dataset = run_dataset(args, checkpoint)
    side = model.config.image_size
    images = checked_split(dataset, evaluated_split(args), palette.channels, side).images
    result = evaluate_image_model(model, palette, images, args.batch_size, progress=True)
    if args.json:
        print_json(result)
    else:
        print(f"{'nats/image':>14}  {result['nats_per_image']:.2f}")
        print(f"{'bits/pixel':>14}  {result['bits_per_pixel']:.4f}")
        print(f"{'images':>14}  {result['images']:,}")
    return 0
