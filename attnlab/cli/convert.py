"""`attnlab convert SRC --out DIR`: a Hugging Face GPT-2, Llama, Mamba or BERT folder (or a hub
name in transformers' cache) as an attnlab checkpoint, and with --to hf an attnlab GPT or BERT
checkpoint as a Hugging Face folder. The conversions are attnlab.interop's; this module checks
the folders and says what it wrote. torch and transformers are imported once the command runs,
not for --help."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from attnlab.cli import COMMANDS, HelpFormatter
from attnlab.cli.reports import note
from attnlab.errors import UserError, dangling_link

DESCRIPTION = """\
Convert weights between Hugging Face `transformers` and attnlab (transformers installed).

SRC is a folder that save_pretrained wrote for a GPT2LMHeadModel (config.json and
model.safetensors or pytorch_model.bin) with GPT-2's tokenizer beside it (vocab.json and
merges.txt, or tokenizer.json), or a hub name such as gpt2 that transformers finds in its local
cache (or downloads). DIR becomes an attnlab checkpoint of kind gpt with that tokenizer, for
sample, inspect and train gpt --init; it is in no run, so evaluate and inspect layers and heads
take --data.

SRC may also hold a BERT with its WordPiece tokenizer (vocab.txt, or tokenizer.json; lowercased
as its tokenizer_config.json says): a BertForMaskedLM or BertForPreTraining (such as
bert-base-uncased) becomes a bert checkpoint, for fill-mask and train classifier --init; a
BertForSequenceClassification a classifier checkpoint, for classify, its class names from
id2label. A BertModel, without a masked-LM head, is refused. attnlab numbers BERT's special
tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) after the others, the weights' rows moved to match: the
ids differ from Hugging Face's, the outputs do not.

SRC may also hold a MambaForCausalLM (such as state-spaces/mamba-130m-hf) with its GPT-NeoX
tokenizer (tokenizer.json): a byte-level BPE that puts text in NFC and cuts runs of spaces out
as tokens of their own, which attnlab's BPE does too. It becomes a gpt checkpoint, for sample and
inspect; its special tokens (<|endoftext|>, <|padding|>) are numbered last, as BERT's, and the
model's token rows that no token has (its vocabulary padded: 50,280 rows for 50,277 tokens) are
left out, with a note: a token's logit is Hugging Face's, its probability renormalized over the
real tokens.

SRC may also hold a LlamaForCausalLM (such as HuggingFaceTB/SmolLM2-135M) with a byte-level BPE
in tokenizer.json. It becomes a Llama-shaped gpt checkpoint in float32, for sample and inspect;
its special tokens are numbered last, as Mamba's. The tokenizer's pre-tokenizer must be one
attnlab's BPE holds: GPT-2's regex, SmolLM2's (each digit cut out first, then GPT-2's regex),
or a Split on a regex attnlab runs (Llama 3's, GPT-4's pattern). Refused, in one line: any other
pre-tokenizer (Llama 2's and Mistral's SentencePiece ones), and a tokenizer that adds tokens to
every text (Llama 3's <|begin_of_text|>, which sample does not put first).

With --to hf, SRC is an attnlab gpt checkpoint of GPT-2's shape (learned positions, LayerNorm;
or Llama's: RoPE, RMSNorm, SwiGLU, no biases; or Mamba's: mixer mamba, d_ff 0, RMSNorm, no
positions), and DIR a folder that transformers' from_pretrained loads. Its tokenizer goes along
(vocab.json, merges.txt and transformers' own files) once GPT2TokenizerFast is seen to give the
same ids on a sample text and on every token: a byte tokenizer, GPT-2's own vocabulary
(`--tokenizer gpt2`), a `bpe:N` one as a rule; else (a converted Mamba's or SmolLM2's) it is
left out, with a note. The name of a special token (<|endoftext|>) in a text is that token to
transformers, and plain text to attnlab.

With --to hf, SRC may also be a bert checkpoint, which becomes a BertForMaskedLM folder, or a
classifier one, a BertForSequenceClassification with its class names as id2label; BERT-shaped
(post-norm, learned positions, a classifier pooling [CLS]), else refused. Its WordPiece
tokenizer goes along as vocab.txt in attnlab's order (the special tokens last: the ids and
pad_token_id are attnlab's, so the weights' rows stay) with transformers' own files
(do_lower_case and strip_accents as it has them), once BertTokenizerFast is seen to give the
same ids; another tokenizer (char, byte, bpe) is left out, with a note.

DIR must be new or empty; it appears whole or not at all.

examples:
  attnlab convert gpt2 --out runs/gpt2                # GPT-2 small: the hub, or its cache
  attnlab sample runs/gpt2 --prompt "The meaning of life is" --temperature 0
  attnlab train gpt --init runs/gpt2 --data tinyshakespeare --context-length 256 \\
      --out runs/gpt2_shakespeare                     # fine-tune, a quarter of its context
  attnlab convert runs/gpt2_shakespeare --to hf --out hf/gpt2_shakespeare
  attnlab convert bert-base-uncased --out runs/bert-base
  attnlab fill-mask runs/bert-base "the capital of france is [MASK] ."
  attnlab train classifier --init runs/bert-base --data sst2 --context-length 128 \\
      --out runs/bert_sst2
  attnlab convert runs/bert_sst2 --to hf --out hf/bert_sst2
  attnlab convert state-spaces/mamba-130m-hf --out runs/mamba-130m
  attnlab sample runs/mamba-130m --prompt "Mamba is a" --temperature 0
  attnlab convert HuggingFaceTB/SmolLM2-135M --out runs/smollm2
  attnlab inspect lens runs/smollm2 --text "The capital of France is"
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help=COMMANDS["convert"][1],
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "source",
        metavar="SRC",
        help="a Hugging Face folder or hub name; with --to hf, a checkpoint",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    parser.add_argument(
        "--to",
        choices=("attnlab", "hf"),
        default="attnlab",
        help="what DIR becomes: an attnlab checkpoint, or a Hugging Face folder",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        import transformers  # noqa: F401 - only a dev dependency of attnlab
    except ImportError:
        raise UserError(
            "attnlab convert needs Hugging Face transformers: pip install transformers"
        ) from None
    from attnlab.interop.hf_folders import read_hf, write_hf
    from attnlab.models.registry import model_kind

    out, started = Path(args.out), time.perf_counter()
    check_out(out)
    if args.to == "hf":
        checkpoint = _checkpoint(args.source)
        model, left_out = checkpoint.model, write_hf(checkpoint.model, checkpoint.artifacts, out)
        if left_out:
            note(f"note: the tokenizer is left out of {out}: {left_out}")
    else:
        from attnlab.training.checkpoints import save_checkpoint

        model, artifacts = read_hf(args.source, note)
        check_out(out)  # again: loading took a while
        save_checkpoint(out, model, artifacts)
    parameters = sum(p.numel() for p in model.parameters())
    what = "a Hugging Face folder" if args.to == "hf" else f"a {model_kind(model)} checkpoint"
    print(
        f"wrote {out}: {what} of {parameters / 1e6:.2f}M parameters from {args.source} in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


def check_out(out: Path) -> None:
    """DIR new or empty: a conversion never replaces a checkpoint, nor writes among other files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a new or empty folder")
    if out.is_symlink() and not out.exists():  # else --to hf fails on its temporary folder
        raise UserError(f"--out {dangling_link(out)}: give a new or empty folder")
    if not out.is_dir():
        return
    if (out / "model.safetensors").exists():
        raise UserError(f"{out} already holds a checkpoint: give another --out, or remove it")
    if contents := sorted(p.name for p in out.iterdir()):
        shown = ", ".join(contents[:3]) + (", ..." if len(contents) > 3 else "")
        raise UserError(f"--out {out} holds files ({shown}): give a new or empty folder")


def _checkpoint(path: str):
    """The checkpoint of a kind --to hf writes: gpt, bert or classifier."""
    from attnlab.files import read_json
    from attnlab.models.registry import a_kind
    from attnlab.training.checkpoints import checkpoint_description, load_checkpoint

    config = Path(path) / "config.json"
    if config.is_file() and "model_type" in (read_json(config, "checkpoint config") or {}):
        raise UserError(f"{path} is a Hugging Face model folder: leave --to hf out to convert it")
    kind = checkpoint_description(path)["kind"]
    if kind not in ("gpt", "bert", "classifier"):
        raise UserError(
            f"{path} holds {a_kind(kind)} model: --to hf writes gpt, bert and classifier "
            "checkpoints (to_hf in attnlab.interop.huggingface converts ViT models in Python)"
        )
    return load_checkpoint(path)
