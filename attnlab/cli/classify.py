"""`attnlab classify CKPT [TEXT ...]`: the label and its probability for each text."""

from __future__ import annotations

import argparse
import itertools

from attnlab.cli import COMMANDS, HelpFormatter
from attnlab.cli.checkpoint import load_for
from attnlab.cli.options import add_device_flag, stdin_lines, user_text
from attnlab.devices import pick_device
from attnlab.errors import UserError
from attnlab.evaluation.predict import classify_batches
from attnlab.models.registry import CLASSIFY


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify",
        help=COMMANDS["classify"][1],
        description="Print label<TAB>probability<TAB>text for each TEXT, or for each line of "
        "stdin when no TEXT is given, with a classifier (attnlab train classifier) checkpoint.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts (default: stdin lines)")
    add_device_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    checkpoint = load_for("classify", CLASSIFY, args.checkpoint, pick_device(args.device))
    texts = [user_text(t) for t in args.texts] or stdin_lines()
    if not any(text.strip() for text in texts):
        raise UserError("no text to classify: give TEXT arguments or lines on stdin")
    names = checkpoint.artifacts["classes"].names if "classes" in checkpoint.artifacts else None
    kept = [text for text in texts if text.strip()]
    batches = classify_batches(checkpoint.model, checkpoint.tokenizer, kept)
    rows = itertools.chain.from_iterable(batches)  # each batch printed as it is scored
    for text in texts:  # a line out for each line in, a blank one for a blank one
        if not text.strip():
            print(flush=True)
            continue
        try:
            row = next(rows)
        except UserError as error:  # a text the tokenizer cannot read: say which
            where = _which(checkpoint.tokenizer, texts, bool(args.texts))
            raise UserError(f"{where}: {error}") from None
        label = int(row.argmax())
        shown = " ".join(text.split())  # one output line per text, its fields split by tabs
        print(f"{names[label] if names else label}\t{row[label]:.4f}\t{shown}", flush=True)
    return 0


def _which(tokenizer, texts: list[str], given: bool) -> str:
    """Which text (argument) or stdin line the tokenizer refuses first."""
    for number, text in enumerate(texts, 1):
        try:
            tokenizer.encode(text)
        except UserError:
            return f"TEXT {number}" if given else f"stdin line {number}"
    return "the texts"
