"""`attnlab fill-mask CKPT TEXT`: the likeliest tokens for each [MASK] of a text."""

from __future__ import annotations

import argparse

from attnlab.cli import COMMANDS, HelpFormatter
from attnlab.cli.checkpoint import load_for
from attnlab.cli.options import add_device_flag, user_text
from attnlab.devices import pick_device
from attnlab.errors import UserError
from attnlab.evaluation.predict import fill_mask
from attnlab.models.registry import FILL_MASK


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fill-mask",
        help=COMMANDS["fill-mask"][1],
        description="Print the top-k fillers of each [MASK] in TEXT, with probabilities, for "
        'a masked-LM (attnlab train bert) checkpoint. Example: "the movie was [MASK] good ."',
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory")
    parser.add_argument("text", metavar="TEXT", help="text holding one or more [MASK]")
    parser.add_argument("--top-k", type=int, default=5, help="fillers shown per mask")
    add_device_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    checkpoint = load_for("fill-mask", FILL_MASK, args.checkpoint, pick_device(args.device))
    results = fill_mask(checkpoint.model, checkpoint.tokenizer, user_text(args.text), args.top_k)
    for number, fillers in enumerate(results, 1):
        if len(results) > 1:
            print(f"[MASK] {number}:")
        for token, probability in fillers:
            print(f"{probability:8.4f}  {token}")
    return 0
