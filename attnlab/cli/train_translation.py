"""`attnlab train translation`: train an encoder–decoder on a parallel corpus.

With --data DIR it reads DIR/train.SRC[.gz], DIR/train.TGT[.gz] and DIR/val.* (line-aligned);
without it, the embedded task (English number words -> digits). Registered under `train` by
attnlab.cli.train.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from attnlab.cli.options import (
    add_config_flags,
    build_config,
    check_sections,
    flag_values,
    preset_defaults,
    read_toml,
    resolve_data_path,
)
from attnlab.cli.runs import fit_and_report, note, refuse_existing_checkpoint
from attnlab.config import config_from_dict, config_to_dict
from attnlab.data.translation import (
    TokenBatches,
    TranslationDataConfig,
    embedded_pairs,
    encode_pairs,
    fixed_batches,
    load_split,
    special_ids,
    train_joint_tokenizer,
)
from attnlab.devices import seed_everything
from attnlab.errors import UserError
from attnlab.files import atomic_write_json, read_json
from attnlab.models.encoder_decoder import PRESETS, EncoderDecoder, EncoderDecoderConfig
from attnlab.tokenizers import load_tokenizer
from attnlab.training.checkpoints import load_weights
from attnlab.training.trainer import TrainConfig, Trainer

RUN_FILE = "run.json"  # data, languages, preset and data options, so --resume needs no flags
TOML_SECTIONS = {
    "data": str,
    "src": str,
    "tgt": str,
    "out": str,
    "preset": str,
    "model": dict,
    "training": dict,
    "translation": dict,
}
EMBEDDED_VAL_PAIRS = 500

DESCRIPTION = """\
Train an encoder-decoder transformer for translation. Settings come from the preset (--preset,
default 'tiny'), then --config (TOML: data, src, tgt, out, preset, [model], [training],
[translation]), then flags. Batches hold whole sentence pairs of similar length up to
--max-batch-tokens (sentences x longest side), so --batch-size is not used.

examples:
  attnlab train translation                      # the embedded task: number words -> digits
  attnlab train translation --data multi30k --src de --tgt en --out runs/multi30k \\
      --preset small --lr-schedule inverse_sqrt --learning-rate 1.0 --warmup-iters 4000
"""


def register(models) -> None:
    from attnlab.cli import HelpFormatter

    parser = models.add_parser(
        "translation",
        formatter_class=HelpFormatter,
        help="an encoder-decoder on a parallel corpus (default: an embedded task)",
        description=DESCRIPTION,
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file (default: none)")
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="directory with train.SRC/.TGT and val.SRC/.TGT, plain or .gz; relative paths are "
        "also looked up in $ATTNLAB_DATA (default: the embedded number task)",
    )
    parser.add_argument("--src", metavar="LANG", help="source suffix, e.g. de (default: words)")
    parser.add_argument("--tgt", metavar="LANG", help="target suffix, e.g. en (default: digits)")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/translation)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="model shape to start from (default: tiny)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="stop (and save) once training steps have taken this long (default: none)",
    )
    model_defaults = preset_defaults(PRESETS["tiny"])
    add_config_flags(parser, EncoderDecoderConfig, "model (EncoderDecoderConfig)", model_defaults)
    add_config_flags(parser, TrainConfig, "training (TrainConfig)")
    add_config_flags(parser, TranslationDataConfig, "data (TranslationDataConfig)")
    parser.set_defaults(handler=train_translation)


def _run_settings(args, toml, out: Path) -> dict:
    """Data, languages, preset and data options: from run.json when resuming, else chosen."""
    data_flags = flag_values(args, TranslationDataConfig)
    if args.resume:
        run = read_json(out / RUN_FILE, "run description (nothing to resume?)")
        if data_flags or args.preset or args.data or args.src or args.tgt:
            raise UserError("cannot change the data, languages or preset when resuming")
        return run
    refuse_existing_checkpoint(out)
    data = args.data or toml.get("data")
    src = args.src or toml.get("src") or (None if data else "words")
    tgt = args.tgt or toml.get("tgt") or (None if data else "digits")
    if data and not (src and tgt):
        raise UserError("--data needs --src and --tgt (the file suffixes, e.g. de and en)")
    options = build_config(
        TranslationDataConfig, toml.get("translation", {}), data_flags, source="[translation]"
    )
    return {
        "data": resolve_data_path(data) if data else None,
        "src": src,
        "tgt": tgt,
        "preset": args.preset or toml.get("preset", "tiny"),
        "translation": config_to_dict(options),
    }


def _pairs(run: dict, options: TranslationDataConfig, seed: int):
    if run["data"] is None:
        pairs = embedded_pairs(
            options.embedded_pairs + EMBEDDED_VAL_PAIRS, seed, run["src"], run["tgt"]
        )
        return pairs[EMBEDDED_VAL_PAIRS:], pairs[:EMBEDDED_VAL_PAIRS]
    train = load_split(run["data"], "train", run["src"], run["tgt"])
    return train, load_split(run["data"], "val", run["src"], run["tgt"])


def train_translation(args: argparse.Namespace) -> int:
    toml = read_toml(args.config)
    check_sections(toml, TOML_SECTIONS, args.config or "config")
    out = Path(args.out or toml.get("out", "runs/translation"))
    run = _run_settings(args, toml, out)
    if run.get("preset") not in PRESETS:
        raise UserError(f"unknown preset {run.get('preset')!r}; choose one of {', '.join(PRESETS)}")
    options = config_from_dict(TranslationDataConfig, run["translation"], source=str(RUN_FILE))
    train_config = _train_config(args, toml, out)
    note(f"reading {run['data'] or 'the embedded task'} ({run['src']} -> {run['tgt']}) ...")
    train_pairs, val_pairs = _pairs(run, options, train_config.seed)
    if args.resume:
        tokenizer = load_tokenizer(out / "tokenizer.json")
    else:
        note(f"learning a joint BPE vocabulary of {options.bpe_vocab_size} ...")
        tokenizer = train_joint_tokenizer(train_pairs, options.bpe_vocab_size, os.cpu_count() or 1)
    special = special_ids(tokenizer)
    train_examples, train_report = encode_pairs(train_pairs, tokenizer, options.max_sentence_tokens)
    val_examples, val_report = encode_pairs(val_pairs, tokenizer, options.max_sentence_tokens)
    for name, report in (("train", train_report), ("val", val_report)):
        note(
            f"{name}: {report.kept:,} of {report.total:,} pairs kept ({report.too_long:,} longer "
            f"than {options.max_sentence_tokens} tokens, {report.empty:,} with an empty side)"
        )
    model_config = _model_config(args, toml, out, run["preset"], tokenizer.vocab_size, special)
    if model_config.max_length < options.max_sentence_tokens:
        raise UserError(
            f"max_length={model_config.max_length} is shorter than max_sentence_tokens="
            f"{options.max_sentence_tokens}: raise one or lower the other"
        )
    train_data = TokenBatches(train_examples, options.max_batch_tokens, special, train_config.seed)
    val_batches = fixed_batches(
        val_examples, options.max_batch_tokens, special, train_config.eval_iters, train_config.seed
    )
    seed_everything(train_config.seed)  # the initial weights too, so a run can be repeated
    model = EncoderDecoder(model_config)
    if args.resume:
        load_weights(model, out / "model.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_FILE, run)
    return _fit(args, model, train_config, train_data, val_batches, tokenizer, out)


def _fit(args, model, train_config, train_data, val_batches, tokenizer, out: Path) -> int:
    trainer = Trainer(
        model,
        train_config,
        train_data,
        {"val": lambda: val_batches},
        tokenizer=tokenizer,
        out_dir=out,
    )
    summary = (
        f"vocab {tokenizer.vocab_size}; {len(train_data)} batches per epoch; model "
        f"{model.num_parameters() / 1e6:.2f}M parameters"
    )
    return fit_and_report(
        trainer,
        out,
        command="train translation",
        resume=args.resume,
        summary=summary,
        next_step=f'translate:  attnlab translate {out} "..."',
        time_limit=args.time_limit,
    )


def _train_config(args, toml, out: Path) -> TrainConfig:
    flags = flag_values(args, TrainConfig)
    if args.resume:
        state = read_json(out / "trainer_state.json", "trainer state")
        return build_config(TrainConfig, state["train_config"], flags, source="--resume")
    source = f"{args.config or 'flags'} [training]"
    return build_config(TrainConfig, toml.get("training", {}), flags, source=source)


def _model_config(args, toml, out, preset, vocab_size, special) -> EncoderDecoderConfig:
    flags = flag_values(args, EncoderDecoderConfig)
    if args.resume:
        if flags:
            raise UserError(f"cannot change the model ({', '.join(flags)}) when resuming")
        saved = read_json(out / "config.json", "checkpoint config")["config"]
        return config_from_dict(EncoderDecoderConfig, saved, source=str(out / "config.json"))
    derived = {"vocab_size": vocab_size, **special}
    given = {**toml.get("model", {}), **flags}
    clashes = [k for k in derived if k in given and given[k] != derived[k]]
    if clashes:
        raise UserError(f"{', '.join(clashes)} come(s) from the tokenizer; leave them unset")
    base = {**config_to_dict(PRESETS[preset]), **derived}
    return build_config(
        EncoderDecoderConfig, base, given, source=f"{args.config or 'flags'} [model]"
    )
