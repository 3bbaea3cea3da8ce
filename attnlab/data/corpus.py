"""Corpora: where training text comes from.

A corpus spec is a text file, a directory (every file matching a glob, default ``**/*.txt``),
``DIR:GLOB`` for another glob, or the built-in name ``stdlib``: the ``.py`` sources of the
Python standard library this interpreter runs on, test suites left out. Every Python install
carries it, so it is the embedded default that needs no download.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from attnlab.errors import UserError

STDLIB = "stdlib"
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def corpus_files(spec: str) -> list[Path]:
    """The files of a corpus spec, sorted so every run reads them in the same order."""
    if spec == STDLIB:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = [
            p for p in root.rglob("*.py") if not _STDLIB_SKIP & set(p.relative_to(root).parts[:-1])
        ]
        return sorted(files)
    path, _, pattern = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.glob(pattern or "**/*.txt") if p.is_file())
        if not files:
            raise UserError(f"no files match {pattern or '**/*.txt'!r} in directory {path}")
        return files
    raise UserError(f"data not found: {spec} (give a text file, a directory, DIR:GLOB or 'stdlib')")


def read_corpus(spec: str) -> list[str]:
    """The texts of a corpus, one string per file (undecodable bytes become U+FFFD)."""
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in corpus_files(spec)]
    if not any(texts):
        raise UserError(f"corpus {spec} is empty")
    return texts
