"""`attnlab sample CKPT`: generate text from a checkpoint, streamed to the terminal."""

from __future__ import annotations

import argparse
import sys
import time

from attnlab.cli import COMMANDS, HelpFormatter
from attnlab.cli.checkpoint import load_for
from attnlab.cli.options import (
    add_device_flag,
    check_beam_flags,
    check_sampling_flags,
    check_top_k,
    given_flags,
    user_text,
    write_text,
)
from attnlab.devices import pick_device
from attnlab.errors import UserError
from attnlab.generation import beam_text, make_generator, stream_text
from attnlab.generation.decoding import check_crop_to
from attnlab.models.registry import GENERATE

SEPARATOR = "---------------"

DESCRIPTION = """\
Generate text from a checkpoint directory (model.safetensors, config.json, tokenizer.json).

stdout holds only text: each sample is the prompt followed by its continuation, streamed as the
tokens are produced, then a newline; with --num-samples > 1 a line of dashes separates samples.
A sample ends at the tokenizer's "<|endoftext|>" when it has one (or at a --stop text). An empty
prompt starts from "<|endoftext|>" too, else from a newline; that start token is not printed.
On a terminal, control characters other than newlines and tabs are shown escaped (\\x1b, \\r);
a file or a pipe gets the text exactly. Notes go to stderr.

Past the model's context length the window slides. With relative positions (RoPE, ALiBi) the
KV cache slides by default: each new token attends to the last context_length cached positions
(sliding-window attention), one cheap step per token. With learned positions every step
re-runs the last context_length tokens (as nanoGPT's sampler; exact, but the cache stops saving
work there); so does --no-cache for any model. --crop-to N keeps only the last N tokens when the
context fills, then decodes with the cache until it fills again (the model sees between N and
context_length tokens).

--beam-size N decodes by beam search instead of sampling (deterministic: no --temperature,
--top-k, --top-p, --repetition-penalty, --seed, --num-samples or --compile): N continuations
grow together, the KV cache or recurrent state reordered per beam, and the most likely one found
is printed when the search ends, not streamed. A continuation ends at "<|endoftext|>" (ranked
then by GNMT's length penalty, --length-penalty) or after --max-new-tokens; --stop cuts the text
printed. --beam-size 1 is greedy, as --temperature 0. Beam search decodes encoder-decoders too:
see `attnlab translate`.

examples:
  attnlab sample runs/shakespeare_char --prompt "ROMEO:" --temperature 0   # greedy
  attnlab sample runs/shakespeare_char --top-k 40 --top-p 0.9 --num-samples 3
  attnlab sample runs/shakespeare_char --prompt "ROMEO:" --beam-size 4 --max-new-tokens 100
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help=COMMANDS["sample"][1],
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory")
    parser.add_argument(
        "--prompt", default="", help="text to continue (default: '', the start of a text)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=500, help="tokens per sample")
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="0 = greedy; < 1 sharper, > 1 flatter"
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=200,
        help="keep the k most likely tokens (0 = off; the default keeps all of a smaller "
        "vocabulary, a k given must be smaller than it)",
    )
    parser.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus probability mass (1.0 = off)"
    )
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats"
    )
    parser.add_argument("--num-samples", type=int, default=1, help="samples to draw")
    parser.add_argument("--seed", type=int, default=1337, help="random seed (same seed, same text)")
    add_device_flag(parser)
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="STR",
        help="end a sample before this text, looked for in the new text only (repeatable)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="recompute every step without the KV cache"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the decoding step for faster tokens: on a CPU ahead of time, 15-30 s "
        "the first time for a model shape and sampling settings, then loaded from "
        "$ATTNLAB_CACHE; on a GPU as CUDA graphs",
    )
    parser.add_argument(
        "--crop-to",
        type=int,
        default=None,
        metavar="N",
        help="tokens kept when the context fills (default: slide the window one token at a "
        "time, as described above)",
    )
    parser.add_argument(
        "--beam-size",
        type=int,
        default=None,
        metavar="N",
        help="beam search with N hypotheses instead of sampling (1 = greedy)",
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=0.6,
        help="GNMT alpha for --beam-size (0 = none, > 0 longer): ranks continuations that end",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    _check_counts(args)
    user_text(args.prompt)
    device = pick_device(args.device)
    checkpoint = load_for("sample", GENERATE, args.checkpoint, device)
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    check_crop_to(model, args.crop_to, "--crop-to")
    check_top_k(args, min(tokenizer.vocab_size, model.config.vocab_size), "tokens")
    if args.beam_size is not None:
        return _beam(args, model, tokenizer, device)
    generator = make_generator(model, args.seed)  # one stream of randomness for all samples
    options = dict(
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        generator=generator,
        use_cache=not args.no_cache,
        crop_to=args.crop_to,
        compile=args.compile,
        stop=args.stop,
    )
    # without the cache, only whole-context windows compile, once generation gets that far
    if args.compile and device.type == "cpu" and not args.no_cache:
        print(
            "attnlab: compiling the decoding step (15-30 s the first time, then cached)",
            file=sys.stderr,
        )
    out = sys.stdout
    started = time.perf_counter()
    for index in range(args.num_samples):
        # Build the stream before printing anything, so a bad prompt fails with stdout empty.
        pieces = stream_text(model, tokenizer, args.prompt, args.max_new_tokens, **options)
        if index:
            out.write(SEPARATOR + "\n")
        write_text(args.prompt)
        for piece in pieces:
            write_text(piece)
            out.flush()
        out.write("\n")
        out.flush()
    return _timed(f"{args.num_samples} sample(s) of", args, device, started)


def _beam(args: argparse.Namespace, model, tokenizer, device) -> int:
    started = time.perf_counter()
    text = beam_text(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        beam_size=args.beam_size,
        length_penalty=args.length_penalty,
        use_cache=not args.no_cache,
        crop_to=args.crop_to,
        stop=args.stop,
    )
    write_text(args.prompt)
    write_text(text)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return _timed(f"beam search of {args.beam_size} for", args, device, started)


def _timed(what: str, args: argparse.Namespace, device, started: float) -> int:
    """Say on stderr what was decoded, and in how long; 0, the command's exit status."""
    elapsed = time.perf_counter() - started
    print(
        f"attnlab: {what} up to {args.max_new_tokens} tokens on {device} in {elapsed:.2f} s",
        file=sys.stderr,
    )
    return 0


def _check_beam(args: argparse.Namespace) -> None:
    """--beam-size and --length-penalty, and no sampling flag with them."""
    if args.beam_size is None:
        if given_flags(args, ["length_penalty"]):
            raise UserError("--length-penalty ranks beam search's continuations: give --beam-size")
        return
    check_beam_flags(args)
    sampling = ("temperature", "top_k", "top_p", "repetition_penalty", "seed", "num_samples")
    unused = given_flags(args, [*sampling, "compile"])
    if unused:
        raise UserError(
            f"{' and '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to beam "
            "search (--beam-size: the most likely continuation, neither sampled nor compiled): "
            f"leave {'it' if len(unused) == 1 else 'them'} out, or drop --beam-size"
        )


def _check_counts(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    _check_beam(args)
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    if "" in args.stop:
        raise UserError("--stop '' is empty: give the text a sample ends before")
    check_sampling_flags(
        args,
        ["--num-samples"] if args.num_samples > 1 else [],  # greedy: every sample the same
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
    )
