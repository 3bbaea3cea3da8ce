"""`attnlab train gpt`: train a GPT on a text corpus (the embedded default: Python's stdlib)."""

from __future__ import annotations

import argparse
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
from attnlab.data.corpus import read_corpus
from attnlab.data.text import (
    DOCUMENT_SEPARATOR,
    TextSplits,
    language_model_data,
    tokenize_cached,
    tokenizer_cached,
)
from attnlab.errors import UserError
from attnlab.files import atomic_write_json, read_json
from attnlab.models.gpt import GPT, PRESETS, GPTConfig
from attnlab.tokenizers import load_tokenizer
from attnlab.training.checkpoints import load_weights
from attnlab.training.trainer import TrainConfig, Trainer

RUN_FILE = "run.json"  # data and tokenizer specs, so --resume needs no repeated flags
TOML_SECTIONS = {"data": str, "tokenizer": str, "out": str, "model": dict, "training": dict}


def register(subparsers) -> None:
    from attnlab.cli import HelpFormatter

    train = subparsers.add_parser("train", help="train a model", formatter_class=HelpFormatter)
    models = train.add_subparsers(dest="model", metavar="MODEL", required=True)
    gpt = models.add_parser(
        "gpt",
        formatter_class=HelpFormatter,
        help="a decoder-only language model on a text corpus",
        description="Train a GPT. Settings come from the defaults (the 'tiny' preset), then "
        "--config, then flags.\nexample: attnlab train gpt --data input.txt --max-iters 500",
    )
    gpt.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with data, tokenizer, out, [model] and [training] (default: none)",
    )
    gpt.add_argument(
        "--data",
        metavar="PATH",
        help="text file, directory, DIR:GLOB or 'stdlib' "
        "(default: stdlib, the Python standard library's sources)",
    )
    gpt.add_argument("--tokenizer", metavar="KIND", help="char, byte or bpe:N (default: char)")
    gpt.add_argument("--out", metavar="DIR", help="run directory (default: runs/gpt)")
    gpt.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_config_flags(gpt, GPTConfig, "model (GPTConfig)", preset_defaults(PRESETS["tiny"]))
    add_config_flags(gpt, TrainConfig, "training (TrainConfig)")
    gpt.set_defaults(handler=train_gpt)
    from attnlab.cli.train_translation import register as register_translation

    register_translation(models)


def train_gpt(args: argparse.Namespace) -> int:
    toml = read_toml(args.config)
    check_sections(toml, TOML_SECTIONS, args.config or "config")
    out = Path(args.out or toml.get("out", "runs/gpt"))
    if args.resume:
        run = read_json(out / RUN_FILE, "run description (nothing to resume?)")
        data, tokenizer_spec = args.data or run["data"], run["tokenizer"]
    else:
        refuse_existing_checkpoint(out)
        data = args.data or toml.get("data", "stdlib")
        tokenizer_spec = args.tokenizer or toml.get("tokenizer", "char")
    data = resolve_data_path(data)

    note(f"reading {data} ...")
    texts = read_corpus(data)
    tokenizer = (
        load_tokenizer(out / "tokenizer.json")
        if args.resume
        else tokenizer_cached(tokenizer_spec, texts)
    )
    tokens = tokenize_cached(DOCUMENT_SEPARATOR.join(texts), tokenizer)
    model_config, train_config = _configs(args, toml, out, tokenizer.vocab_size)
    splits = TextSplits.from_tokens(tokens)
    train_data, eval_data = language_model_data(
        splits,
        train_config.batch_size,
        model_config.context_length,
        train_config.seed,
        train_config.eval_iters,
    )

    model = GPT(model_config)
    if args.resume:
        load_weights(model, out / "model.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_FILE, {"data": data, "tokenizer": tokenizer_spec})
    trainer = Trainer(model, train_config, train_data, eval_data, tokenizer=tokenizer, out_dir=out)
    summary = (
        f"{len(tokens):,} tokens ({len(splits.train):,} train, {len(splits.val):,} val), "
        f"vocab {tokenizer.vocab_size}; model {model.num_parameters() / 1e6:.2f}M parameters"
    )
    return fit_and_report(
        trainer,
        out,
        command="train gpt",
        resume=args.resume,
        summary=summary,
        next_step=f"sample it:  attnlab sample {out}",
    )


def _configs(args, toml, out: Path, vocab_size: int) -> tuple[GPTConfig, TrainConfig]:
    model_flags, train_flags = flag_values(args, GPTConfig), flag_values(args, TrainConfig)
    if args.resume:
        if model_flags:
            raise UserError(f"cannot change the model ({', '.join(model_flags)}) when resuming")
        saved = read_json(out / "config.json", "checkpoint config")["config"]
        state = read_json(out / "trainer_state.json", "trainer state")
        model = config_from_dict(GPTConfig, saved, source=str(out / "config.json"))
        train = build_config(TrainConfig, state["train_config"], train_flags, source="--resume")
        return model, train
    base = {**config_to_dict(PRESETS["tiny"]), "vocab_size": vocab_size}
    model = build_config(
        GPTConfig,
        base,
        toml.get("model", {}),
        model_flags,
        source=f"{args.config or 'flags'} [model]",
    )
    if model.vocab_size != vocab_size:
        raise UserError(
            f"vocab_size={model.vocab_size} does not match the tokenizer's "
            f"{vocab_size}; leave vocab_size unset"
        )
    train = build_config(
        TrainConfig,
        toml.get("training", {}),
        train_flags,
        source=f"{args.config or 'flags'} [training]",
    )
    return model, train
