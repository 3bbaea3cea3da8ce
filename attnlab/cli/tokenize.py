"""`attnlab tokenize`: train a byte-level BPE tokenizer, encode, decode, and show token boundaries.

    attnlab tokenize train --data stdlib --vocab-size 4096 --out tok.json
    attnlab tokenize encode --tokenizer tok.json "def main():"
    attnlab tokenize decode --tokenizer tok.json 4 200 11
    attnlab tokenize show --tokenizer gpt2 "Tokenization is fun."

--tokenizer takes a saved tokenizer file, a run directory (its tokenizer.json), ``byte`` (the
256 bytes), or ``gpt2``: GPT-2's vocabulary from vocab.bpe and encoder.json in
$ATTNLAB_DATA/gpt2-bpe/. decode writes the text exactly to a file or a pipe (on a terminal, as
`sample` and `translate` do, with control characters other than newlines and tabs escaped and a
newline at the end), so a file read by encode and given back to decode comes back unchanged
(but for a leading UTF-8 byte-order mark, which encode, as every reader of text here, leaves
out).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from attnlab.cli import COMMANDS, HelpFormatter
from attnlab.cli.options import read_stdin, resolve_data_path, user_text, write_text
from attnlab.cli.reports import note
from attnlab.data.corpus import Corpus
from attnlab.data.saved_tokenizers import TOKENIZER_FILES, open_tokenizer
from attnlab.errors import UserError
from attnlab.files import RUN_FILE, check_writable
from attnlab.progress import stderr_is_live
from attnlab.tokenizers.base import check_special_tokens, load_tokenizer, visible
from attnlab.tokenizers.bpe import PATTERNS, BPETokenizer

# Pastel 256-colour backgrounds with black text: neighbouring tokens always differ.
_COLOURS = (
    "\x1b[30;48;5;153m",
    "\x1b[30;48;5;229m",
    "\x1b[30;48;5;194m",
    "\x1b[30;48;5;218m",
    "\x1b[30;48;5;223m",
    "\x1b[30;48;5;189m",
)
_RESET = "\x1b[0m"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenize",
        help=COMMANDS["tokenize"][1],
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="tokenize_command", metavar="SUBCOMMAND", required=True)

    train = commands.add_parser(
        "train", help="train a byte-level BPE tokenizer on a corpus", formatter_class=HelpFormatter
    )
    train.add_argument(
        "--data",
        default="stdlib",
        help="corpus: a text file, a directory, DIR:GLOB, 'stdlib', or a dataset's file "
        "('tinyshakespeare/input.txt', fetched on first use)",
    )
    train.add_argument(
        "--vocab-size", type=int, default=4096, help="vocabulary size, special tokens included"
    )
    train.add_argument("--out", default="tokenizer.json", help="where to save the tokenizer")
    train.add_argument(
        "--pattern",
        default="gpt2",
        help=f"pre-tokenization regex: {' or '.join(PATTERNS)}, or your own",
    )
    train.add_argument(
        "--special",
        nargs="+",
        action="extend",
        default=[],
        metavar="TOKEN",
        help="special tokens, e.g. '<|endoftext|>' '<pad>'",
    )
    train.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="processes that count pre-tokens (default: the CPU cores, at most 8)",
    )
    train.set_defaults(handler=run_train)

    encode = commands.add_parser(
        "encode", help="print the token ids of a text", formatter_class=HelpFormatter
    )
    _add_tokenizer_option(encode)
    encode.add_argument("text", nargs="?", metavar="TEXT", help="text to encode; none: stdin")
    encode.set_defaults(handler=run_encode)

    decode = commands.add_parser(
        "decode", help="print the text of token ids, exactly", formatter_class=HelpFormatter
    )
    _add_tokenizer_option(decode)
    decode.add_argument("ids", nargs="*", metavar="IDS", help="token ids; none: read stdin")
    decode.set_defaults(handler=run_decode)

    show = commands.add_parser(
        "show", help="show a text's token boundaries and compression", formatter_class=HelpFormatter
    )
    _add_tokenizer_option(show)
    show.add_argument("text", metavar="TEXT", help="text to tokenize")
    show.add_argument(
        "--no-color",
        action="store_true",
        help="separate tokens with '|' instead of colours (also when not a tty, with NO_COLOR "
        "set or TERM=dumb); with "
        f"{', then '.join(map(repr, BARS[1:]))} where the text holds one",
    )
    show.set_defaults(handler=run_show)


def _add_tokenizer_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer",
        default="gpt2",
        help=f"{TOKENIZER_FILES} or 'byte'",
    )


def check_out(out: Path) -> None:
    """--out now, not after training: a folder, a file in a run's folder or a file that is not
    a tokenizer (the user's own, never overwritten) is refused; so is a folder that cannot take
    the file."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file, e.g. {out / 'tokenizer.json'}")
    if any((out.parent / name).is_file() for name in (RUN_FILE, "model.safetensors")):
        raise UserError(
            f"--out {out} is in the run folder {out.parent}, whose tokenizer belongs to its "
            "weights: name a file elsewhere"
        )
    if out.exists():
        try:
            load_tokenizer(out)
        except UserError:
            raise UserError(f"--out {out} exists and is not a tokenizer: left as it is") from None
    check_writable(out.parent)


def run_train(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    try:
        check_special_tokens(args.special)
    except ValueError as error:
        raise UserError(f"--special: {error}") from None
    if not args.out:  # not the current folder
        raise UserError("--out is empty: give a file, e.g. tokenizer.json")
    check_out(Path(args.out))
    texts = Corpus(resolve_data_path(args.data), note)
    corpus_bytes = sum(len(t.encode("utf-8", "replace")) for t in texts)
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(
        texts,
        args.vocab_size,
        pattern=args.pattern,
        special_tokens=args.special,
        progress=stderr_is_live(),
        workers=args.workers,
    )
    seconds = time.perf_counter() - start
    tokenizer.save(args.out)
    n_tokens = sum(len(tokenizer.encode_array(t)) for t in texts)
    print(f"trained in {seconds:.1f} s on {corpus_bytes / 1e6:.1f} MB ({len(texts.files)} file(s))")
    print(
        f"vocab {tokenizer.vocab_size}: 256 bytes + {len(tokenizer.merges)} merges "
        f"+ {len(tokenizer.special_tokens)} special token(s)"
    )
    if tokenizer.vocab_size < args.vocab_size:
        print(f"the corpus ran out of pairs to merge before vocab {args.vocab_size}")
    print(f"compression {corpus_bytes / max(n_tokens, 1):.2f} bytes/token on the corpus")
    print(f"saved {args.out}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    tokenizer = open_tokenizer(args.tokenizer, note)
    text = read_stdin() if args.text is None else user_text(args.text)
    print(" ".join(map(str, tokenizer.encode(text))))
    return 0


def run_decode(args: argparse.Namespace) -> int:
    tokenizer = open_tokenizer(args.tokenizer, note)
    words = args.ids if args.ids else read_stdin().split()
    ids = []
    for word in words:
        if not re.fullmatch("[0-9]+", word):  # int() would take "1_0", " 12" and "١٢"
            raise UserError(f"not a token id: {word!r} (ids are whole numbers from 0)")
        ids.append(int(word))
    try:
        text = tokenizer.decode(ids)
    except ValueError as error:
        raise UserError(str(error)) from None
    # the text as encoded, so that a file goes through encode and decode unchanged; on a
    # terminal, a line of its own
    write_text(text + "\n" * (sys.stdout.isatty() and not text.endswith("\n")))
    return 0


BARS = ("|", "¦", "‖", "│")  # token separators without colours, the first the text lacks


def run_show(args: argparse.Namespace) -> int:
    tokenizer = open_tokenizer(args.tokenizer, note)
    text = user_text(args.text)
    ids = tokenizer.encode(text)
    pieces = [visible(tokenizer.token_text(i)) for i in ids]
    if not _colours(args.no_color):  # a bar the text has not: no token looks cut
        print(next((bar for bar in BARS if bar not in text), BARS[0]).join(pieces))
    else:
        print("".join(f"{_COLOURS[k % len(_COLOURS)]}{p}{_RESET}" for k, p in enumerate(pieces)))
    n_bytes = len(text.encode("utf-8"))
    ratio = f": {n_bytes / len(ids):.2f} bytes/token" if ids else ""  # none: no 0/0 to show
    print(f"{len(ids)} token{'s' * (len(ids) != 1)}, {n_bytes} byte{'s' * (n_bytes != 1)}{ratio}")
    return 0


def _colours(no_color: bool) -> bool:
    """Whether `show` colours its tokens: on a terminal that draws colours (TERM=dumb does not),
    unless --no-color or NO_COLOR (set to anything but empty, as no-color.org has it) says no."""
    asked_not = no_color or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb"
    return not asked_not and sys.stdout.isatty()
