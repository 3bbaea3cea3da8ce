"""`attnlab evaluate CKPT --data PATH`: loss, perplexity and bits per byte of a checkpoint;
`attnlab evaluate CKPT --src FILE --ref FILE`: BLEU and chrF of a translation checkpoint;
`attnlab evaluate CKPT [--data SPEC]`: accuracy and a confusion matrix of an image classifier,
or the negative log-likelihood (nats per image) of an image GPT's test images; any other model
(a text classifier, BERT, a synthetic task's model) as its training evaluated it. Without
--data, the data the run trained on (its run.json).

Which evaluation a checkpoint gets follows what its kind can do (its capabilities), never its
name."""

from __future__ import annotations

import argparse

from attnlab.cli.checkpoint import load_for, widened
from attnlab.cli.classify_image import evaluate_classifier_command, evaluated_split
from attnlab.cli.options import (
    add_device_flag,
    given_flags,
    print_json,
    refuse_empty,
    resolve_data_path,
)
from attnlab.cli.runs import (
    check_fits_data,
    note,
    outside_a_run,
    run_data,
    run_data_settings,
    run_description,
    run_train_config,
    unseen_data,
)
from attnlab.cli.sample_images import evaluate_image_model_command
from attnlab.cli.translate import add_decoding_flags, evaluate_translation_command
from attnlab.config import config_from_dict, config_to_dict
from attnlab.data.corpus import Corpus
from attnlab.data.text import TextSplits, tokenize_cached
from attnlab.devices import pick_device
from attnlab.errors import UserError
from attnlab.evaluation.bleu import BLEU_TOKENIZERS
from attnlab.evaluation.evaluate import evaluate_language_model
from attnlab.models.registry import (
    CLASSIFY_IMAGE,
    GENERATE,
    GENERATE_IMAGE,
    TRANSLATE,
    get_kind,
)
from attnlab.training.checkpoints import checkpoint_description, load_checkpoint

SPLITS = ("val", "train", "all")


def register(subparsers) -> None:
    from attnlab.cli import COMMANDS, HelpFormatter

    parser = subparsers.add_parser(
        "evaluate",
        formatter_class=HelpFormatter,
        help=COMMANDS["evaluate"][1],
        description="Loss (nats/token), perplexity and bits per byte of a language model over "
        "every window of a split; or, with --src and --ref, sacreBLEU's BLEU and chrF of a "
        "translation model's detokenized output; or an image classifier's accuracy and loss (plain "
        "cross-entropy: the training log's val_loss is label-smoothed where training smoothed "
        "it), with a confusion-matrix PNG; or an image GPT's negative log-likelihood in nats "
        "per image; or "
        "any other model (a text classifier, BERT, a task's, a translation model without --src) "
        "as its training evaluated it, on every held-out example (a task: its evaluation "
        "sequences): loss (label-smoothed where "
        "training smoothed it), accuracy, F1. Without --data, on the data the run trained on. "
        "The model runs in fp32, whatever precision its training took (the training log's "
        "figures are in that precision)."
        "\nexamples:\n  attnlab evaluate runs/gpt --data input.txt\n  attnlab evaluate "
        "runs/multi30k --src test.de.gz --ref test.en.gz\n  attnlab evaluate runs/vit_mnist",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory")
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="text file, folder (its *.txt), DIR:GLOB or 'stdlib' (language model); shapes, "
        "mnist or an image folder (image models); a TSV, class folders or a folder with "
        "train.tsv and dev.tsv, whose dev.tsv is scored (text classifier) (default: the run's "
        "own data)",
    )
    parser.add_argument("--src", metavar="FILE", help="source sentences, one a line (translation)")
    parser.add_argument("--ref", metavar="FILE", help="reference translations, aligned with --src")
    parser.add_argument(
        "--hypotheses",
        metavar="FILE",
        help="also write the translations here (gzip-compressed if it ends in .gz)",
    )
    parser.add_argument(
        "--bleu-tokenize",
        choices=BLEU_TOKENIZERS,
        default="auto",
        help="sacreBLEU's word splitting for BLEU: auto = zh for Chinese references, ja-mecab "
        "(else char) for Japanese, char for Thai, Lao, Khmer, Burmese, else 13a",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        help="which part: the last 10%% (val), the first 90%% (train), or all; for an image "
        "model val is its held-out images (a test set, a folder's test/ or val/, else a tenth) "
        "(default: val; --data of other data than its run's: all)",
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
    add_device_flag(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=evaluate)


DECODING = {"beam_size", "length_penalty", "max_length_factor", "max_length_offset"}
USED = {  # what each way of scoring reads, beyond the checkpoint, --device and --json
    "a translation model with --src": {
        *("src", "ref", "hypotheses", "batch_size", "bleu_tokenize", *DECODING)
    },
    "an image classifier": {"data", "split", "confusion", "batch_size"},
    "an image GPT": {"data", "split", "batch_size"},
    "this model": {"data", "split"},  # as its training evaluated it
    "a language model": {"data", "split", "batch_size"},
}


def _only(args: argparse.Namespace, what: str) -> None:
    """Refuse, in one line, the flags given that scoring `what` would not read."""
    if unused := given_flags(args, args.given - USED[what] - {"device", "json"}):
        raise UserError(f"{', '.join(unused)}: not used in scoring {what}")


def evaluate(args: argparse.Namespace) -> int:
    refuse_empty(args, ["data", "src", "ref", "hypotheses", "confusion"])
    if args.src or args.ref:
        _only(args, "a translation model with --src")
        return evaluate_translation_command(args)
    capabilities = get_kind(checkpoint_description(args.checkpoint)["kind"]).capabilities
    if CLASSIFY_IMAGE in capabilities:
        _only(args, "an image classifier")
        return evaluate_classifier_command(args)
    if GENERATE_IMAGE in capabilities:
        _only(args, "an image GPT")
        return evaluate_image_model_command(args)
    if TRANSLATE in capabilities and args.data:  # its --data would be a folder of pairs
        raise UserError(
            f"{args.checkpoint} holds a 'translation' model: score it with --src FILE --ref FILE "
            "(BLEU, chrF), or without --data (its validation loss)"
        )
    data = run_data(args.checkpoint, args.data)
    if GENERATE not in capabilities or str(data).startswith("task:"):
        _only(args, "this model")
        return evaluate_as_trained(args)
    _only(args, "a language model")
    if data is None:  # said after unused flags
        raise outside_a_run(args.checkpoint)
    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    checkpoint = load_for("evaluate", GENERATE, args.checkpoint, pick_device(args.device))
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    tokens = tokenize_cached(Corpus(resolve_data_path(data), note), tokenizer)
    splits = TextSplits.from_tokens(tokens)
    split = evaluated_split(args)  # all of a text the model never saw, as for other kinds
    chosen = {"val": splits.val, "train": splits.train, "all": tokens}[split]
    if len(chosen) < 2:  # a text shorter than the context is one shorter window
        raise UserError(f"the {split} split has {len(chosen)} token(s): nothing to predict")
    result = evaluate_language_model(model, chosen, tokenizer, args.batch_size, progress=True)
    if args.json:
        print_json(result)
    else:
        for key in ("loss", "perplexity", "bits_per_byte"):
            print(f"{key:>14}  {result[key]:.4f}")
        print(f"{'tokens':>14}  {result['tokens']:,}\n{'bytes':>14}  {result['bytes']:,}")
    return 0


def evaluate_as_trained(args: argparse.Namespace) -> int:
    """Any other model (a text classifier, BERT, a translation model without --src, a model of
    a synthetic task): the evaluation its training ran, on every held-out example of its run's
    data, or on all of --data (data it never trained on) read with the run's settings: the loss
    and the data's scores (accuracy, F1), in fp32 whatever precision the training took."""
    from attnlab.training.sources import IGNORE_INDEX, DataRequest
    from attnlab.training.trainer import TrainConfig, Trainer

    if args.split not in (None, "val"):
        raise UserError(
            f"--split {args.split}: this model is scored on its run's validation data, or on "
            "all of other --data (a file, such as a folder's train.tsv)"
        )
    found = run_description(args.checkpoint)  # None: weights saved outside a run (imported)
    checkpoint = widened(load_checkpoint(args.checkpoint, pick_device(args.device)))
    settings = run_data_settings(args, checkpoint.kind)
    if hasattr(settings, "tokenizer") and "tokenizer" not in checkpoint.artifacts:
        raise UserError(
            f"{args.checkpoint} holds no tokenizer: the ids its weights read are unknown"
        )
    saved = run_train_config(args.checkpoint)
    # eager and in full precision: figures that do not depend on the processor scoring them
    eager = dict(compile=False, compile_by_block=False, device=args.device, precision="fp32")
    train = config_from_dict(TrainConfig, {**saved, **eager})
    model = config_to_dict(checkpoint.model.config)
    unseen = unseen_data(args)
    data = checkpoint.kind.build_data(  # every held-out example; all of data it never saw
        DataRequest(
            settings, model, train, checkpoint.artifacts, note, "all" if unseen else "held_out"
        )
    )
    check_fits_data(args.checkpoint, model, data.model_fields)
    folder = found[1] if found else args.checkpoint
    trainer = Trainer(
        checkpoint.model, train, data.train, data.eval, out_dir=folder, metrics=data.metrics
    )
    result = trainer.evaluate()
    scored = {  # what the scores are over: examples for a classifier, tokens for the others
        f"{split}_targets": sum(int((b[-1] != IGNORE_INDEX).sum()) for b in batches())
        for split, batches in data.eval.items()
    }
    if args.json:
        print_json({**result, **scored})
    else:
        for key, value in result.items():
            print(f"{key:>14}  {value:.4f}")
        for key, value in scored.items():
            print(f"{key:>14}  {value:,}")
    return 0
