"""`attnlab evaluate CKPT --data PATH`: loss, perplexity and bits per byte of a checkpoint;
`attnlab evaluate CKPT --src FILE --ref FILE`: BLEU and chrF of a translation checkpoint;
`attnlab evaluate CKPT [--data SPEC]`: accuracy and a confusion matrix of an image classifier,
or the negative log-likelihood (nats per image) of an image GPT's test images.

Which evaluation a checkpoint gets follows what its kind can do (its capabilities), never its
name."""

from __future__ import annotations

import argparse
import json

from attnlab.cli.checkpoint import load_for
from attnlab.cli.classify_image import evaluate_classifier_command
from attnlab.cli.options import resolve_data_path
from attnlab.cli.sample_images import evaluate_image_model_command
from attnlab.cli.translate import add_decoding_flags, evaluate_translation_command
from attnlab.data.corpus import Corpus
from attnlab.data.text import TextSplits, tokenize_cached
from attnlab.devices import pick_device
from attnlab.errors import UserError
from attnlab.evaluation.evaluate import evaluate_language_model
from attnlab.models.registry import CLASSIFY_IMAGE, GENERATE, GENERATE_IMAGE, get_kind
from attnlab.training.checkpoints import checkpoint_description

SPLITS = ("val", "train", "all")


def register(subparsers) -> None:
    from attnlab.cli import HelpFormatter

    parser = subparsers.add_parser(
        "evaluate",
        formatter_class=HelpFormatter,
        help="score a checkpoint on data",
        description="Loss (nats/token), perplexity and bits per byte of a language model over "
        "every window of a split; or, with --src and --ref, sacreBLEU's BLEU and chrF of a "
        "translation model's detokenized output; or an image classifier's accuracy, with a "
        "confusion-matrix PNG; or an image GPT's negative log-likelihood in nats per image (both "
        "on the data the model trained on unless --data says otherwise)."
        "\nexamples:\n  attnlab evaluate runs/gpt --data input.txt\n  attnlab evaluate "
        "runs/multi30k --src test.de.gz --ref test.en.gz\n  attnlab evaluate runs/vit_mnist",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory")
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="text file, directory, DIR:GLOB or 'stdlib' (language model); shapes, mnist or an "
        "image folder (image classifier)",
    )
    parser.add_argument("--src", metavar="FILE", help="source sentences, one a line (translation)")
    parser.add_argument("--ref", metavar="FILE", help="reference translations, aligned with --src")
    parser.add_argument("--hypotheses", metavar="FILE", help="also write the translations here")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="val",
        help="which part: the last 10%% (val), the first 90%% (train), or all; for an image "
        "classifier val is the test images",
    )
    parser.add_argument(
        "--confusion",
        metavar="FILE",
        help="image classifier: the confusion-matrix PNG (default: CKPT/confusion_SPLIT.png)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="windows or sentences per forward pass"
    )
    add_decoding_flags(parser, batch_size=False)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    if args.src or args.ref:
        return evaluate_translation_command(args)
    capabilities = get_kind(checkpoint_description(args.checkpoint)["kind"]).capabilities
    if CLASSIFY_IMAGE in capabilities:
        return evaluate_classifier_command(args)
    if GENERATE_IMAGE in capabilities:
        return evaluate_image_model_command(args)
    if args.data is None:
        raise UserError("give --data (a language model) or --src and --ref (a translation model)")
    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    checkpoint = load_for("evaluate --data", GENERATE, args.checkpoint, pick_device(args.device))
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    tokens = tokenize_cached(Corpus(resolve_data_path(args.data)), tokenizer)
    splits = TextSplits.from_tokens(tokens)
    chosen = {"val": splits.val, "train": splits.train, "all": tokens}[args.split]
    if len(chosen) <= model.config.context_length:
        raise UserError(
            f"the {args.split} split has {len(chosen)} tokens, fewer than one "
            f"window of {model.config.context_length + 1}"
        )
    result = evaluate_language_model(model, chosen, tokenizer, args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("loss", "perplexity", "bits_per_byte"):
            print(f"{key:>14}  {result[key]:.4f}")
        print(f"{'tokens':>14}  {result['tokens']:,}\n{'bytes':>14}  {result['bytes']:,}")
    return 0
