"""`attnlab translate CKPT [TEXT]`: translate with an encoder–decoder checkpoint.

Also the translation mode of `attnlab evaluate CKPT --src FILE --ref FILE` (BLEU and chrF),
whose options and handler live here so both commands decode the same way.
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys

from attnlab.cli.options import (
    add_device_flag,
    check_beam_flags,
    check_output,
    print_json,
    resolve_data_path,
    stdin_lines,
    user_text,
    write_text,
)
from attnlab.devices import pick_device
from attnlab.errors import UserError
from attnlab.models.registry import TRANSLATE

DESCRIPTION = """\
Translate text with an encoder-decoder checkpoint (from `attnlab train translation`).

With TEXT, translate it. Without, read one source sentence per line from stdin and write one
detokenized translation per line to stdout, in order (lines are batched by length internally);
on a terminal, as with `sample`, control characters (\\x1b) are shown escaped.
Decoding is beam search with GNMT's length penalty ((5 + |Y|) / 6)^alpha; --beam-size 1 is
greedy. At most factor x source tokens + offset tokens are generated.

examples:
  attnlab translate runs/multi30k "Ein Mann fährt Fahrrad."
  attnlab translate runs/multi30k < test.de > test.hyp.en
"""


def register(subparsers) -> None:
    from attnlab.cli import COMMANDS, HelpFormatter

    parser = subparsers.add_parser(
        "translate",
        help=COMMANDS["translate"][1],
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory")
    parser.add_argument(
        "text", nargs="?", metavar="TEXT", help="sentence to translate (default: read stdin)"
    )
    add_decoding_flags(parser)
    add_device_flag(parser)
    parser.set_defaults(handler=translate_command)


def add_decoding_flags(parser: argparse.ArgumentParser, batch_size: bool = True) -> None:
    """Beam size, length penalty, length limit and (unless the parser has its own) batch size:
    shared with `evaluate`."""
    parser.add_argument(
        "--beam-size",
        type=int,
        default=4,
        help="hypotheses kept (at most half the vocabulary); 1 = greedy",
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=0.6,
        help="GNMT alpha (0 = none, > 0 longer); ranks the hypotheses of beams of 2 or more",
    )
    if batch_size:
        parser.add_argument("--batch-size", type=int, default=32, help="sentences decoded together")
    parser.add_argument(
        "--max-length-factor", type=float, default=1.0, help="length limit: factor x source..."
    )
    parser.add_argument("--max-length-offset", type=int, default=50, help="... + offset tokens")


def decoding_options(args: argparse.Namespace) -> dict:
    check_beam_flags(args)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.max_length_factor < math.inf or args.max_length_offset < 0:
        raise UserError("--max-length-factor and --max-length-offset must be numbers >= 0")
    if args.max_length_factor == 0 == args.max_length_offset:
        raise UserError("--max-length-factor 0 and --max-length-offset 0 leave no room for words")
    return {
        "beam_size": args.beam_size,
        "length_penalty": args.length_penalty,
        "batch_size": args.batch_size,
        "max_length_factor": args.max_length_factor,
        "max_length_offset": args.max_length_offset,
    }


def load_translation_model(path: str, device: str, command: str = "translate"):
    """Model and tokenizer of a checkpoint that translates; another kind is a UserError."""
    from attnlab.cli.checkpoint import load_for

    checkpoint = load_for(command, TRANSLATE, path, pick_device(device))
    return checkpoint.model, checkpoint.tokenizer


def note_cut(sentences: list[str], model, tokenizer) -> None:
    """Say how many sentences are too long for the model: it reads their first part only."""
    from attnlab.cli.runs import note

    room = model.config.max_length - 1  # and </s>
    cut = sum(len(tokenizer.encode(sentence)) > room for sentence in sentences)
    if cut:
        note(f"note: {cut} sentence(s) over the model's {room} tokens are read cut to that length")


def translate_command(args: argparse.Namespace) -> int:
    from attnlab.generation.beam_search import translate

    options = decoding_options(args)
    model, tokenizer = load_translation_model(args.checkpoint, args.device)
    lines = [user_text(args.text)] if args.text is not None else stdin_lines()
    lines = [line.strip() for line in lines]
    if not any(lines):
        raise UserError("no text to translate: give TEXT or lines on stdin")
    note_cut(lines, model, tokenizer)
    for translation in translate(
        model, tokenizer, lines, progress=True, **options
    ):  # a blank line: blank
        write_text(translation + "\n")
    sys.stdout.flush()
    return 0


def evaluate_translation_command(args: argparse.Namespace) -> int:
    """`attnlab evaluate CKPT --src FILE --ref FILE`: BLEU and chrF of the translations."""
    from attnlab.cli.runs import note
    from attnlab.data.translation import read_lines
    from attnlab.evaluation.bleu import bleu_metric, evaluate_translation
    from attnlab.files import atomic_write_bytes

    if not (args.src and args.ref):
        raise UserError("translation evaluation needs both --src and --ref")
    options = decoding_options(args)
    src, ref = resolve_data_path(args.src), resolve_data_path(args.ref)
    if args.hypotheses:
        check_output(
            "--hypotheses", args.hypotheses, args.checkpoint, inputs={"--src": src, "--ref": ref}
        )
    sources, references = read_lines(src), read_lines(ref)
    if len(sources) != len(references):
        raise UserError(
            f"{src} has {len(sources)} lines but {ref} has {len(references)}: "
            "line i of one must translate line i of the other"
        )
    bleu_metric(args.bleu_tokenize, references)  # a missing package: said before translating
    model, tokenizer = load_translation_model(args.checkpoint, args.device, "evaluate --src")
    note_cut(sources, model, tokenizer)
    scores, hypotheses = evaluate_translation(
        model, tokenizer, sources, references, args.bleu_tokenize, progress=True, **options
    )
    if scores["bleu_note"]:
        note(f"note: {scores['bleu_note']} (--bleu-tokenize to choose)")
    if args.hypotheses:  # gzip-compressed where named so, as --src and --ref are read
        text = "".join(h + "\n" for h in hypotheses).encode()
        gz = str(args.hypotheses).endswith(".gz")
        atomic_write_bytes(args.hypotheses, gzip.compress(text, mtime=0) if gz else text)
    if args.json:
        print_json(scores)
    else:
        print(f"{'BLEU':>10}  {scores['bleu']:.2f}   ({scores['bleu_detail']})")
        print(f"{'chrF':>10}  {scores['chrf']:.2f}")
        print(f"{'exact':>10}  {scores['exact_match']:.2f}%")
        print(f"{'sentences':>10}  {scores['sentences']:,}")
        print(f"{'signature':>10}  BLEU {scores['bleu_signature']}")
        print(f"{'':>10}  chrF {scores['chrf_signature']}")
    return 0
