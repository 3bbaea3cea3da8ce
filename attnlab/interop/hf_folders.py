"""Hugging Face model folders, as ``save_pretrained`` writes them, to and from attnlab's GPT
with its tokenizer: the files `attnlab convert` reads and writes (BERT folders: hf_bert_folders.py,
Mamba folders: hf_neox.py, Llama folders: hf_llama_folders.py, with the helpers here).

GPT-2's tokenizer is a byte-level BPE, which attnlab's BPETokenizer holds exactly (vocab.json and
merges.txt are GPT-2's encoder.json and vocab.bpe under other names; hf_neox reads it). A
tokenizer crosses only where both libraries give the same ids: checked on a sample text and on
each token's own text (GPT-2's 50,257 tokens in about half a second), never assumed. Both sides
read a special token's name in a text differently (Hugging Face as the token, attnlab as plain
text), so the check text leaves them out. ``transformers`` is imported lazily: only the
conversions need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from attnlab.errors import UserError
from attnlab.files import read_json
from attnlab.interop.huggingface import from_hf, to_hf
from attnlab.models.gpt import GPT
from attnlab.tokenizers import Tokenizer
from attnlab.tokenizers.bpe import PATTERNS, BPETokenizer, printable_bytes
from attnlab.tokenizers.byte import ByteTokenizer

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
           "pytorch_model.bin.index.json")  # fmt: skip
END = "<|endoftext|>"  # GPT-2's one special token: its bos, eos and unk
SAMPLE = (
    "Hello, World! It's 2024: naïve café, Ünïcödé, 東京の夜, emoji 🙂👍🏽 and   spaces\n\n"
    "\tdon't, I'll, we've... 12345 + 6.7e-8 = x; <html> #tags @you 'quoted' \"words\"\r\n  "
    "cafe\u0301 A\u030a \ufb01ne\n        indented  two\t\t tabs      six \u3000wide x  \n"
)


def read_hf(source: str, log: Callable[[str], None] = print) -> tuple[nn.Module, dict[str, Any]]:
    """attnlab's model and its checkpoint's artefacts (the tokenizer; a classifier's class names)
    from a Hugging Face folder or hub name: from transformers' cache where it is there, else
    downloaded (`log` says so first). GPT-2 here (a GPT2LMHeadModel with vocab.json and
    merges.txt, or tokenizer.json), BERT in hf_bert_folders, Mamba in hf_neox, Llama in
    hf_llama_folders."""
    from attnlab.interop.hf_llama_folders import is_llama, read_hf_llama  # they import this
    from attnlab.interop.hf_neox import is_mamba, read_hf_mamba  # module

    config, options = _source_config(source, log)
    if is_bert(config):
        from attnlab.interop.hf_bert_folders import read_hf_bert

        return read_hf_bert(source, config, options)
    if is_mamba(config):
        return read_hf_mamba(source, config, options, log)
    if is_llama(config):
        return read_hf_llama(source, config, options, log)
    model, tokenizer = _read_gpt2(source, config, options)
    return model, {"tokenizer": tokenizer}


def _source_config(source: str, log: Callable[[str], None]) -> tuple[dict[str, Any], dict]:
    """The model config of a folder or hub name, and from_pretrained's options for it."""
    from transformers import AutoConfig

    if Path(source).exists():
        return _folder_config(Path(source)), {}
    options = _hub_options(source, log)
    return loaded(AutoConfig, source, options).to_dict(), options


def is_bert(config: dict[str, Any]) -> bool:
    """Whether a model config is a BERT's (whose folder hf_bert_folders reads)."""
    names = config.get("architectures") or []
    return config.get("model_type") == "bert" or any(str(n).startswith("Bert") for n in names)


def _read_gpt2(
    source: str, config: dict[str, Any], options: dict[str, Any]
) -> tuple[GPT, BPETokenizer]:
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    _check_gpt2(source, config)
    if Path(source).exists():
        check_weights(Path(source))
        _check_gpt2_files(Path(source))
    tokenizer = tokenizer_from_hf(loaded(GPT2TokenizerFast, source, options), source)
    try:
        model = from_hf(loaded(GPT2LMHeadModel, source, options))
    except ValueError as error:  # a GPT-2 variant attnlab's GPT does not compute
        raise UserError(f"{source}: {error}") from None
    return model, tokenizer


def _folder_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise UserError(f"{folder} is a file: give a Hugging Face model's folder")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder: it has no config.json")
    config = read_json(folder / "config.json", "model config")
    if not isinstance(config, dict):
        raise UserError(f"{folder / 'config.json'} is not a model config (a JSON object)")
    return config


def _hub_options(name: str, log: Callable[[str], None]) -> dict[str, Any]:
    """from_pretrained's options for a hub name: its cache alone where the model is there (no
    network call); else a download, said first (without a network it fails after retries)."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a hub name either ("a/b/c", "../x")
        raise UserError(f"no folder {name}: give a Hugging Face model's folder") from None
    if isinstance(cached, str):
        return {"local_files_only": True}
    if constants.HF_HUB_OFFLINE:
        raise UserError(
            f"no folder {name}, nor in transformers' cache (HF_HUB_OFFLINE: no download)"
        )
    log(f"note: {name} is no folder, nor in transformers' cache: looking for it on the hub")
    return {}


def _check_gpt2(source: str, config: dict[str, Any]) -> None:
    """A GPT-2 language model's config, else one line saying what the folder holds."""
    if isinstance(config.get("kind"), str) and isinstance(config.get("config"), dict):
        raise UserError(
            f"{source} is an attnlab checkpoint: add --to hf to write it as a Hugging Face folder"
        )
    names = config.get("architectures") or [config.get("model_type") or "unknown"]
    if "GPT2LMHeadModel" in names or names == ["gpt2"]:
        return
    raise UserError(
        f"{source} holds a {names[0]} model: convert reads GPT-2, Llama, Mamba and BERT folders, "
        "whose tokenizers (byte-level BPEs, BERT's WordPiece) are attnlab's; from_hf in Python "
        "(attnlab.interop.huggingface) converts Mistral weights, without their tokenizers"
    )


def check_weights(folder: Path) -> None:
    """Weights in a model's folder, else a UserError."""
    if not any((folder / name).is_file() for name in WEIGHTS):
        raise UserError(f"{folder} holds no weights (model.safetensors or pytorch_model.bin)")


def _check_gpt2_files(folder: Path) -> None:
    """GPT-2's tokenizer files in a model's folder: else which are missing."""
    pair = ("vocab.json", "merges.txt")
    missing = [name for name in pair if not (folder / name).is_file()]
    if missing and not (folder / "tokenizer.json").is_file():
        raise UserError(
            f"{folder} lacks GPT-2's tokenizer files: no {' and no '.join(missing)} (nor a "
            "tokenizer.json); save the tokenizer beside the model (tokenizer.save_pretrained)"
        )


def loaded(cls, source: str, options: dict[str, Any], **more: Any):
    """cls.from_pretrained(source, **options, **more); a UserError where it fails. options: a
    hub name's (_hub_options: none where it downloads)."""
    downloads = not Path(source).exists() and not options  # its progress bars shown
    try:
        with quiet(download=downloads):
            return cls.from_pretrained(source, **options, **more)
    except Exception as error:  # not found; damaged files, of which libraries raise many types
        if downloads:
            raise UserError(
                f"no folder {source}, and transformers cannot load a model of that hub name "
                "(the hub is out of reach, or has no such model)"
            ) from None
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise UserError(f"transformers cannot load {source} ({cls.__name__}): {reason}") from None


def tokenizer_from_hf(hf_tokenizer, source: str) -> BPETokenizer:
    """attnlab's BPETokenizer of a Hugging Face byte-level BPE tokenizer of GPT-2's id order,
    checked to give the same ids as it (a UserError where it does not)."""
    from attnlab.interop.hf_neox import byte_level_from_hf  # it imports this module

    ours, order = byte_level_from_hf(hf_tokenizer, source)
    if order != list(range(len(order))):
        raise UserError(
            f"the tokenizer of {source} is no byte-level BPE of GPT-2's kind: its ids are not "
            "its bytes', then its merges', then its added and special tokens'"
        )
    return ours


def same_ids(hf_tokenizer, ours: Tokenizer, order: Sequence[int] | None = None) -> bool:
    """Whether a Hugging Face tokenizer encodes as ours does: a sample text and every ordinary
    token's own text, one a line, special tokens' names left out. order: our id i is its id
    order[i] (None: the same ids)."""
    ordinary = ours.vocab_size - len(ours.special_tokens)
    tokens = (ours.token_bytes(i).decode("utf-8", "ignore") for i in range(ordinary))
    text = SAMPLE + "\n".join(tokens)
    for name in ours.special_tokens:
        text = text.replace(name, "")
    theirs, ids = hf_tokenizer(text, add_special_tokens=False, verbose=False), ours.encode(text)
    return theirs["input_ids"] == (ids if order is None else [order[i] for i in ids])


def write_hf(model: nn.Module, artifacts: dict[str, Any], out: Path) -> str | None:
    """Write a checkpoint's `model` (a GPT, or a BERT: hf_bert_folders) as a Hugging Face folder
    `out` (new, or empty) with save_pretrained, a classifier's class names (artifacts "classes")
    as its id2label, and its tokenizer where transformers' encodes as it does. The folder appears
    whole or not at all. Returns why the tokenizer was left out (None: written, or none to
    write)."""
    try:
        hf = to_hf(model, classes=artifacts.get("classes"))
    except ValueError as error:
        raise UserError(f"--to hf: {error}") from None
    left_out, tokenizer = None, artifacts.get("tokenizer")
    with _new_folder(out) as folder:
        if tokenizer is not None and isinstance(model, GPT):
            left_out = _write_gpt2_tokenizer(hf, tokenizer, folder)
        elif tokenizer is not None:
            from attnlab.interop.hf_bert_folders import write_wordpiece  # it imports this module

            left_out = write_wordpiece(tokenizer, folder, model.config.context_length)
        with quiet():
            hf.save_pretrained(folder)
    return left_out


def _write_gpt2_tokenizer(hf: nn.Module, tokenizer: Tokenizer, folder: Path) -> str | None:
    """vocab.json, merges.txt and transformers' own tokenizer files in `folder`, if they encode
    as `tokenizer` does (<|endoftext|> then `hf`'s bos and eos, as GPT-2's); else none of them,
    and the reason."""
    from transformers import GPT2TokenizerFast

    if isinstance(tokenizer, BPETokenizer) and (tokenizer.added_tokens or tokenizer.normalization):
        return (
            "its tokenizer normalizes text or has added tokens (GPT-NeoX's kind), which "
            "GPT-2's vocab.json and merges.txt do not hold"
        )
    if (files := gpt2_files(tokenizer)) is None:
        return f"its {tokenizer.kind} tokenizer is no byte-level BPE with GPT-2's text splitting"
    vocab, merges = files
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    ends = {} if END in vocab else dict(bos_token=None, eos_token=None, unk_token=None)
    GPT2TokenizerFast.from_pretrained(folder, **ends).save_pretrained(folder)
    left_out = written_tokenizer(folder, GPT2TokenizerFast, tokenizer, vocab)
    if left_out is None and END in tokenizer.special_tokens:  # GPT-2's own use of it
        for config in (hf.config, hf.generation_config):
            config.bos_token_id = config.eos_token_id = tokenizer.special_tokens[END]
    return left_out


def written_tokenizer(folder: Path, cls, ours: Tokenizer, vocab: dict[str, int]) -> str | None:
    """None where transformers' tokenizer class `cls`, loaded from the files just written in
    `folder` (nothing else yet), has the vocabulary `vocab` and encodes text as `ours` does
    (same_ids); else those files removed, and why."""
    theirs = cls.from_pretrained(folder)
    if theirs.get_vocab() == vocab and same_ids(theirs, ours):
        return None
    for file in folder.iterdir():
        file.unlink()
    return f"{cls.__name__} encodes text to other ids than its tokenizer"


def gpt2_files(tokenizer: Tokenizer) -> tuple[dict[str, int], str] | None:
    """vocab.json's mapping and merges.txt's lines of a byte-level tokenizer (a byte one is a BPE
    without merges); None for another kind, or a BPE that splits text otherwise than GPT-2."""
    if isinstance(tokenizer, ByteTokenizer):
        vocab, merges = dict(zip(printable_bytes(), range(256), strict=True)), []
    elif (
        isinstance(tokenizer, BPETokenizer)
        and tokenizer.pattern == PATTERNS["gpt2"]
        and not (tokenizer.added_tokens or tokenizer.normalization or tokenizer.split_digits)
        and len(tokenizer.byte_order) == 256
    ):
        saved = tokenizer.to_dict()
        vocab, merges = dict(zip(saved["byte_order"], range(256), strict=True)), saved["merges"]
        vocab |= {"".join(merge.split(" ")): 256 + i for i, merge in enumerate(merges)}
    else:
        return None
    return {**vocab, **tokenizer.special_tokens}, "".join(line + "\n" for line in merges)


@contextlib.contextmanager
def quiet(download: bool = False) -> Iterator[None]:
    """transformers' warnings held back while it loads or saves (such as its report of weights a
    class leaves out: the callers check what they need), and unless it downloads (`download`),
    its progress bars and the hub's retry messages too (the command says what it did, in its own
    lines); then as they were: a notebook's own settings stay."""
    from transformers.utils import logging as transformers_logging

    hub = logging.getLogger("huggingface_hub")
    shown, level = transformers_logging.is_progress_bar_enabled(), hub.level
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    if not download:
        transformers_logging.disable_progress_bar()
        hub.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub.setLevel(level)
        transformers_logging.set_verbosity(verbosity)
        if shown:
            transformers_logging.enable_progress_bar()


@contextlib.contextmanager
def _new_folder(out: Path) -> Iterator[Path]:
    """A temporary folder that becomes `out` once written: beside a new `out`, renamed to it; in
    an empty one, its files moved in, so that `out` stays the folder it is (a shell's working
    folder, a link's target). On a failure they go, and `out` is as it was."""
    existing = out.is_dir()
    if not existing:
        out.parent.mkdir(parents=True, exist_ok=True)
    folder = (out if existing else out.parent) / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    folder.mkdir()  # as the umask allows, as `out` would be (mkdtemp's are private)
    moved: list[Path] = []
    try:
        yield folder
        if not existing:
            os.replace(folder, out)
            return
        for file in sorted(folder.iterdir()):
            moved.append(out / file.name)
            os.replace(file, moved[-1])
        folder.rmdir()
    except BaseException:
        for file in moved:
            file.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        raise
