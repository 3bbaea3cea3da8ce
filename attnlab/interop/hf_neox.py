"""Hugging Face's byte-level BPE tokenizers (GPT-2's, GPT-NeoX's) as attnlab's BPETokenizer, and
Mamba folders (MambaForCausalLM with GPT-NeoX's tokenizer, as state-spaces/mamba-130m-hf is
saved) as attnlab gpt checkpoints: what `attnlab convert` reads for them (read_causal_lm, which
Llama folders share: hf_llama_folders).

GPT-NeoX's tokenizer is GPT-2's kind of byte-level BPE with four differences, each of which
attnlab's BPETokenizer holds: it puts text in Unicode NFC first; it has *added tokens*, runs of 2
to 24 spaces cut out of the text before the BPE (see attnlab.tokenizers.added_tokens); it has no
tokens for the 13 bytes no UTF-8 text holds (bpe.NOT_UTF8); and its ids come in another order,
its special tokens (<|endoftext|>, <|padding|>) first. attnlab numbers the bytes, then the
merges' tokens, then the added tokens, then the special tokens, so our id i is Hugging Face's id
order[i], and the model's token rows (embedding, head) move to match, as BERT's do
(hf_bert_folders): the ids differ, the outputs do not. As for GPT-2, the
tokenizer crosses only once both libraries are seen to give the same ids (hf_folders.same_ids),
and a special token's name in a text is plain text to attnlab.

How a byte-level BPE cuts text into pre-tokens is read from its pre_tokenizer, three forms of
which attnlab's BPETokenizer holds: ByteLevel with its regex (GPT-2's pattern: GPT-2,
GPT-NeoX); Digits(individual_digits) then that ByteLevel (split_digits: SmolLM2's); and a
Split on a regex, isolating its matches, then ByteLevel without its own (that regex as the
pattern, where attnlab runs it: Llama 3's is GPT-4's). Any other is refused, by name.

Mamba's vocabulary is padded: mamba-130m has 50,280 token rows for its tokenizer's 50,277
tokens. Rows no token has are left out (the command says how many), so a checkpoint's vocabulary
is its tokenizer's and sampling never draws an id it cannot decode. The logits of every token
are Hugging Face's; its log-probabilities are Hugging Face's conditioned on a real token:
log p(t) - log(1 - p(padding rows)), the softmax taken over the real tokens' logits alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.errors import UserError
from attnlab.interop.hf_folders import check_weights, loaded, same_ids
from attnlab.interop.huggingface import from_hf
from attnlab.tokenizers.added_tokens import NORMALIZATIONS
from attnlab.tokenizers.bpe import (
    NOT_UTF8,
    BPETokenizer,
    printable_bytes,
    resolve_pattern,
    text_to_token,
)

MAMBA = "MambaForCausalLM"


def is_mamba(config: dict[str, Any]) -> bool:
    """Whether a model config is a Mamba's (Mamba-2's differs: model_type mamba2)."""
    return config.get("model_type") == "mamba" or MAMBA in (config.get("architectures") or [])


def pre_tokenization(state: dict[str, Any], unlike: str) -> tuple[str, bool]:
    """The pattern and split_digits of attnlab's BPETokenizer that cut text as a Hugging Face
    tokenizer's pre_tokenizer (in its JSON `state`) does; else a UserError, `unlike` and why."""
    pre = state.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    steps = steps if isinstance(steps, list) and all(isinstance(x, dict) for x in steps) else []
    kinds = [step.get("type") for step in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else {}
    regex_on = byte_level.get("use_regex", True)  # older files lack it: on
    if byte_level.get("add_prefix_space") is False:
        if kinds == ["ByteLevel"] and regex_on:
            return "gpt2", False
        digits = steps[0].get("individual_digits") is True
        if kinds == ["Digits", "ByteLevel"] and digits and regex_on:
            return "gpt2", True
        split = steps[0]
        isolated = (split.get("behavior"), split.get("invert")) == ("Isolated", False)
        pattern = (split.get("pattern") or {}).get("Regex")
        if (
            kinds == ["Split", "ByteLevel"]
            and isolated
            and isinstance(pattern, str)
            and not regex_on
        ):
            try:
                return resolve_pattern(pattern), False
            except UserError:
                raise UserError(
                    f"{unlike}: its pre-tokenizer splits on a regex that attnlab's BPE does not "
                    f"run ({pattern[:60]!r}{'...' if len(pattern) > 60 else ''})"
                ) from None
    shown = " then ".join(map(str, kinds)) or "none"
    raise UserError(
        f"{unlike}: its pre-tokenizer ({shown}; {json.dumps(pre)[:80]}) is not one attnlab's "
        "BPE holds (ByteLevel; Digits then ByteLevel; a Split regex then ByteLevel)"
    )


def byte_level_from_hf(hf_tokenizer, source: str) -> tuple[BPETokenizer, list[int]]:
    """attnlab's BPETokenizer of a Hugging Face byte-level BPE tokenizer and the order of its ids
    (our id i is its id order[i]), checked to give the same ids as it (a UserError where it
    does not)."""
    state = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    model, normalizer = state.get("model") or {}, state.get("normalizer") or {}
    unlike = f"the tokenizer of {source} is no byte-level BPE of GPT-2's or GPT-NeoX's kind"
    if model.get("type") != "BPE":
        raise UserError(f"{unlike} (a {model.get('type')} model)")
    normalization = normalizer.get("type")
    if normalization not in (None, *NORMALIZATIONS):
        raise UserError(f"{unlike}: its normalizer is {normalization}, not NFC or none")
    pattern, split_digits = pre_tokenization(state, unlike)
    added = sorted(state.get("added_tokens") or [], key=lambda token: token["id"])
    specials = [t for t in added if t.get("special")]
    ordinary = [t for t in added if not t.get("special")]
    if [t for t in added if t.get("lstrip") or t.get("rstrip") or t.get("single_word")] or (
        normalization and [t for t in ordinary if not t.get("normalized")]
    ):
        raise UserError(f"{unlike}: it strips or matches its added tokens otherwise")
    vocab, halves = model.get("vocab") or {}, model.get("merges") or []
    halves = [m.split(" ") if isinstance(m, str) else m for m in halves]
    try:
        present = [b for b in range(256) if printable_bytes()[b] in vocab or b not in NOT_UTF8]
        byte_order = sorted(present, key=lambda b: vocab[printable_bytes()[b]])
        order = [vocab[printable_bytes()[b]] for b in byte_order]
        order += [vocab[left + right] for left, right in halves]
        ours = BPETokenizer(
            [(text_to_token(left), text_to_token(right)) for left, right in halves],
            pattern,
            [t["content"] for t in specials],
            byte_order,
            [t["content"] for t in ordinary],
            normalization,
            split_digits,
        )
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{unlike} ({error})") from None
    order += [t["id"] for t in ordinary] + [t["id"] for t in specials]
    theirs = set(vocab.values()) | {t["id"] for t in added}
    if len(set(order)) < len(order) or set(order) != theirs:
        raise UserError(
            f"{unlike}: its vocabulary is not its bytes, its merges' tokens, its added tokens "
            "and its special tokens, each its own id"
        )
    if not same_ids(hf_tokenizer, ours, order):
        raise UserError(f"{unlike}: it encodes text to other ids than attnlab's rule gives")
    return ours, order


def read_hf_mamba(
    source: str,
    config: dict[str, Any],
    options: dict[str, Any],
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """attnlab's GPT of Mamba blocks and its checkpoint's artefacts (its tokenizer) from a
    Hugging Face MambaForCausalLM folder or hub name whose `config` and from_pretrained
    `options` hf_folders read; `log` says how many padding rows are left out."""
    missing = "; save the tokenizer beside the model (tokenizer.save_pretrained)"
    return read_causal_lm(MAMBA, source, config, options, log, missing)


def read_causal_lm(
    class_name: str,
    source: str,
    config: dict[str, Any],
    options: dict[str, Any],
    log: Callable[[str], None],
    no_tokenizer: str,
    check_tokenizer: Callable[[Any, str], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """attnlab's GPT of a Hugging Face causal language model (transformers' class_name) with a
    byte-level BPE in tokenizer.json, and its checkpoint's artefacts (the tokenizer): the
    weights in float32, whatever the folder holds, their token rows in the tokenizer's order
    (byte_level_from_hf), a note (`log`) on the padded ones left out. no_tokenizer: what the
    refusal of a folder without tokenizer.json adds; check_tokenizer(hf_tokenizer, source): a
    UserError for a tokenizer the class's conversion does not take."""
    import transformers

    name = (config.get("architectures") or [class_name])[0]
    if name != class_name:
        raise UserError(f"{source} holds a {name}: such folders convert from {class_name}")
    if Path(source).exists():
        check_weights(Path(source))
        if not (Path(source) / "tokenizer.json").is_file():
            raise UserError(f"{source} lacks its tokenizer: no tokenizer.json{no_tokenizer}")
    hf_tokenizer = loaded(transformers.PreTrainedTokenizerFast, source, options)
    tokenizer, order = byte_level_from_hf(hf_tokenizer, source)
    if check_tokenizer is not None:
        check_tokenizer(hf_tokenizer, source)
    hf, report = loaded(
        getattr(transformers, class_name), source, options, output_loading_info=True,
        dtype=torch.float32,
    )  # fmt: skip
    if missing := report["missing_keys"]:  # else transformers would start them at random
        raise UserError(
            f"{source} lacks weights a {class_name} has ({', '.join(sorted(missing)[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): it holds another model than its config says"
        )
    rows = hf.config.vocab_size
    if max(order) >= rows:
        raise UserError(
            f"{source}: its tokenizer has ids up to {max(order)}, the model {rows} token rows: "
            "the tokenizer does not belong to these weights"
        )
    try:
        model = from_hf(hf, token_order=order)
    except ValueError as error:  # a variant attnlab's GPT does not compute
        raise UserError(f"{source}: {error}") from None
    if padding := rows - len(order):
        log(
            f"note: {padding} of the model's {rows} token rows stand for no token of its "
            f"tokenizer (padding): left out, so the checkpoint's vocabulary is its "
            f"{len(order)} tokens"
        )
    return model, {"tokenizer": tokenizer}
