"""The tokenizers a spec names that need no training: 'byte', 'gpt2', a saved tokenizer file or
a run's. Kept out of text.py, which loads torch: `attnlab tokenize` answers without it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from attnlab.data import catalog
from attnlab.errors import UserError
from attnlab.tokenizers import Tokenizer, load_tokenizer
from attnlab.tokenizers.bpe import BPETokenizer
from attnlab.tokenizers.byte import ByteTokenizer

TOKENIZER_FILES = (
    "a saved tokenizer file, a run directory (its tokenizer.json), 'gpt2' (dataset gpt2-bpe, "
    "fetched on first use)"
)


def open_tokenizer(spec: str, log: Callable[[str], None] | None = None) -> Tokenizer:
    """The tokenizer a spec names: 'byte', 'gpt2' (GPT-2's own vocabulary, from the dataset
    gpt2-bpe), a run directory's tokenizer.json, or a saved tokenizer file."""
    if not spec:  # not the folder "." it would become
        raise UserError("an empty tokenizer: give byte, gpt2, a run's folder or a saved file")
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2":
        folder = Path(catalog.resolve("gpt2-bpe", log))  # fetched on first use
        return BPETokenizer.from_gpt2_files(folder / "vocab.bpe", folder / "encoder.json")
    if (Path(spec) / "tokenizer.json").is_file():  # a run directory's (checkpoint artefact)
        return load_tokenizer(Path(spec) / "tokenizer.json")
    if Path(spec).is_dir():
        raise UserError(f"{spec} is a folder without a tokenizer.json (an image model's run?)")
    if (spec == "char" or spec.startswith("bpe:")) and not Path(spec).exists():
        raise UserError(
            f"tokenizer {spec!r} is learned from a corpus by training: give {TOKENIZER_FILES} "
            "or 'byte'"
        )
    return load_tokenizer(spec)
