"""Hugging Face BERT folders as attnlab checkpoints and back: what `attnlab convert` reads and
writes for BERT.

A BertForMaskedLM folder (or a BertForPreTraining one, as Google's checkpoints are: its
next-sentence head stays behind) becomes a "bert" checkpoint, which fill-mask uses and
`train classifier --init` starts from; a BertForSequenceClassification folder becomes a
"classifier" checkpoint, its class names from the config's id2label. A plain BertModel folder is
refused: it has no masked-LM head, and a bert checkpoint with a random one would fill masks with
noise (from_hf in Python makes a BertClassifier of it, its head new).

The tokenizer is BERT's WordPiece (vocab.txt, or tokenizer.json; lowercasing as its
tokenizer_config.json says), read through transformers and checked to give the same ids, as
GPT-2's is (hf_folders.same_ids). attnlab's ids put the five special tokens after the ordinary
ones (WordPieceTokenizer.from_vocab says why); the weights' vocabulary rows move to match.
Written back (`--to hf`), vocab.txt keeps attnlab's order, so the rows stay where they are: the
special tokens last, where BERT's own vocab.txt has them first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from attnlab.errors import UserError
from attnlab.interop.hf_folders import check_weights, loaded, same_ids, written_tokenizer
from attnlab.interop.huggingface import class_names, from_hf
from attnlab.tokenizers import Tokenizer
from attnlab.tokenizers.wordpiece import (
    CONTINUATION,
    MAX_WORD_CHARS,
    PAD,
    UNK,
    WordPieceTokenizer,
)

MASKED_LM = ("BertForMaskedLM", "BertForPreTraining")
CLASSIFIER = "BertForSequenceClassification"


def read_hf_bert(
    source: str, config: dict[str, Any], options: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """attnlab's BertForMaskedLM or BertClassifier, and its checkpoint's artefacts (tokenizer;
    class names, where id2label has more than LABEL_0, LABEL_1, ...), from a Hugging Face BERT
    folder or hub name whose `config` and from_pretrained `options` hf_folders read."""
    from transformers import BertForMaskedLM, BertForSequenceClassification, BertTokenizerFast

    name = (config.get("architectures") or ["BertForMaskedLM"])[0]
    if name not in (*MASKED_LM, CLASSIFIER):
        without = " without a masked-LM head" if name == "BertModel" else ""
        raise UserError(
            f"{source} holds a {name}{without}: BERT folders convert from "
            f"{', '.join(MASKED_LM)} and {CLASSIFIER} (from_hf in Python makes a BertClassifier "
            "with a new head of a BertModel)"
        )
    if Path(source).exists():
        _check_files(Path(source))
    tokenizer, order = wordpiece_from_hf(loaded(BertTokenizerFast, source, options), source)
    cls = BertForSequenceClassification if name == CLASSIFIER else BertForMaskedLM
    hf, report = loaded(cls, source, options, output_loading_info=True)
    if missing := report["missing_keys"]:  # else transformers would start them at random
        raise UserError(
            f"{source} lacks weights a {cls.__name__} has ({', '.join(sorted(missing)[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): it holds another model than its config says"
        )
    if hf.config.vocab_size != tokenizer.vocab_size:
        raise UserError(
            f"{source}: the model has {hf.config.vocab_size} token rows, its vocabulary "
            f"{tokenizer.vocab_size} tokens: the tokenizer does not belong to these weights"
        )
    if hf.config.pad_token_id not in (None, pad := order[tokenizer.special_tokens[PAD]]):
        raise UserError(
            f"{source}: its pad_token_id {hf.config.pad_token_id} is not its {PAD} token ({pad})"
        )
    try:
        model = from_hf(hf, token_order=order)
    except ValueError as error:  # a BERT variant attnlab's does not compute
        raise UserError(f"{source}: {error}") from None
    artifacts: dict[str, Any] = {"tokenizer": tokenizer}
    if name == CLASSIFIER and (classes := class_names(hf)) is not None:
        artifacts["classes"] = classes
    return model, artifacts


def _check_files(folder: Path) -> None:
    check_weights(folder)
    if not any((folder / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
        raise UserError(
            f"{folder} lacks BERT's tokenizer: no vocab.txt (nor a tokenizer.json); save the "
            "tokenizer beside the model (tokenizer.save_pretrained)"
        )


def wordpiece_from_hf(hf_tokenizer, source: str) -> tuple[WordPieceTokenizer, list[int]]:
    """attnlab's WordPieceTokenizer of a Hugging Face BERT tokenizer, and the order of its ids
    (our id i is its id order[i]), checked to give the same ids as it (a UserError where it
    does not)."""
    state = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    model, normal = state.get("model") or {}, state.get("normalizer") or {}
    unlike = f"the tokenizer of {source} is no WordPiece of BERT's kind"
    split = state.get("pre_tokenizer") or {}
    shape = {  # what BERT's tokenizer has: its parts, and the options attnlab's does not vary
        "model": (model.get("type"), "WordPiece"),
        "piece prefix": (model.get("continuing_subword_prefix"), CONTINUATION),
        "unknown token": (model.get("unk_token"), UNK),
        "longest word": (model.get("max_input_chars_per_word"), MAX_WORD_CHARS),
        "normalizer": (normal.get("type"), "BertNormalizer"),
        "clean_text": (normal.get("clean_text"), True),
        "handle_chinese_chars": (normal.get("handle_chinese_chars"), True),
        "splitting": (split.get("type"), "BertPreTokenizer"),
    }
    if differ := [
        f"{what} {got!r}, not {want!r}" for what, (got, want) in shape.items() if got != want
    ]:
        raise UserError(f"{unlike}: its {'; '.join(differ)}")
    vocab = sorted(model.get("vocab", {}).items(), key=lambda entry: entry[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise UserError(f"{unlike}: its vocabulary's ids are not 0, 1, 2, ... in turn")
    if added := [t["content"] for t in state.get("added_tokens", []) if t["id"] >= len(vocab)]:
        raise UserError(f"{unlike}: its vocabulary lacks {', '.join(added)} (added after it)")
    try:
        ours, order = WordPieceTokenizer.from_vocab(
            [token for token, _ in vocab], normal.get("lowercase"), normal.get("strip_accents")
        )
    except ValueError as error:
        raise UserError(f"{unlike} ({error})") from None
    if not same_ids(hf_tokenizer, ours, order):
        raise UserError(f"{unlike}: it encodes text to other ids than BERT's rule gives")
    return ours, order


def write_wordpiece(tokenizer: Tokenizer, folder: Path, context_length: int) -> str | None:
    """vocab.txt in attnlab's id order (so that a model's rows stay) and transformers' own
    tokenizer files in `folder`, if BertTokenizerFast encodes as `tokenizer` does; else none of
    them, and the reason. context_length: the model's, the tokenizer's longest input."""
    from transformers import BertTokenizerFast

    if not isinstance(tokenizer, WordPieceTokenizer):
        return f"its {tokenizer.kind} tokenizer is no WordPiece, BERT's"
    specials = sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get)
    vocab = {token: i for i, token in enumerate([*tokenizer.tokens, *specials])}
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    BertTokenizerFast(
        str(folder / "vocab.txt"),
        do_lower_case=tokenizer.lowercase,
        strip_accents=tokenizer.strip_accents,
        model_max_length=context_length,
    ).save_pretrained(folder)
    return written_tokenizer(folder, BertTokenizerFast, tokenizer, vocab)
