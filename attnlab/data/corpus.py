"""Corpora: where training text comes from.

A corpus spec is a text file, a directory (every file matching a glob, default ``**/*.txt``),
``DIR:GLOB`` for another glob, or the built-in name ``stdlib``: the ``.py`` sources of the
Python standard library this interpreter runs on, test suites left out. Every Python install
carries it, so it is the embedded default that needs no download.
"""

from __future__ import annotations

import codecs
import difflib
import itertools
import re
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

from attnlab.data.catalog import CATALOG, split_glob
from attnlab.errors import UserError

STDLIB = "stdlib"
DOCUMENT_SEPARATOR = "\n\n"  # between the files of a multi-file corpus
CHUNK = 1 << 22  # characters read, counted and tokenized at a time
SNIFF = 1 << 16  # bytes read from the start of each file to tell text from what is not
MAX_NOT_TEXT = 0.05  # share of those that may be NULs or not UTF-8: past it, a file is refused
STRAY_BYTES = 4  # ... unless they are this few: a short file with a stray byte is only warned of
GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_GLOB = "**/*.[tT][xX][tT]"  # a folder's .txt files, .TXT too (a Windows folder's names)
GUESSED_NAMES = 1000  # a folder's names compared with data not found there, at most
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def hidden(path: Path, root: Path) -> bool:
    """Whether `path` in `root` is left out of a folder read as data: hidden files and folders
    (.git, .ipynb_checkpoints, macOS's ._ files) and the __MACOSX folder of a zip made on macOS."""
    return any(part[0] == "." or part == "__MACOSX" for part in path.relative_to(root).parts)


def corpus_files(spec: str) -> list[Path]:
    """The files of a corpus spec, sorted so every run reads them in the same order: a file, a
    folder's .txt files (.TXT too) or DIR:GLOB (hidden ones left out, unless the glob names
    them)."""
    if spec == STDLIB:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = [
            p for p in root.rglob("*.py") if not _STDLIB_SKIP & set(p.relative_to(root).parts[:-1])
        ]
        return sorted(files)
    path, pattern = split_glob(spec) if not Path(spec).exists() else (spec, "")
    path = Path(path)
    if pattern and path.is_file() or Path(pattern).is_absolute():
        raise UserError(f"{spec}: a glob follows a folder, and is relative to it (DIR:GLOB)")
    if path.is_file():
        return [path]
    if path.is_dir():
        named = hidden(Path(pattern), Path())  # asked for by name
        files = sorted(
            p
            for p in path.glob(pattern or DEFAULT_GLOB)
            if p.is_file() and (named or not hidden(p, path))
        )
        if not files:
            raise UserError(f"no files match {pattern or '**/*.txt'!r} in directory {path}")
        return files
    if path.exists():  # a pipe (bash's <(...)) gives its text once; a corpus is read many times
        raise UserError(f"{spec} is not a file or a folder (a pipe?): save the text to a file")
    raise UserError(
        f"data not found: {spec} (give a text file, a directory, DIR:GLOB, a dataset, "
        f"'stdlib' or task:NAME){_close_to(path)}"
    )


def _close_to(path: Path) -> str:
    """'; did you mean X?' for a name one typo from a file beside it or a dataset's name."""
    try:  # a folder of more names is not guessed in: listing and comparing take seconds
        names = [p.name for p in itertools.islice(path.parent.iterdir(), GUESSED_NAMES + 1)]
    except OSError:  # no such folder, or one that cannot be listed
        names = []
    if len(names) > GUESSED_NAMES:
        names = []
    if not path.is_absolute() and len(path.parts) == 1:
        names += list(CATALOG)
    close = difflib.get_close_matches(path.name, names, n=1)
    return f"; did you mean {path.with_name(close[0])}?" if close else ""


def text_lines(text: str) -> list[str]:
    """A text's lines, split at line feeds (\\n, \\r\\n) only, as a file's lines are counted
    (wc -l): not at the form feeds, U+0085 or U+2028 that str.splitlines also splits at, which
    would move every line after one out of step with its partner or its label."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the end of the last line
    return [line.removesuffix("\r") for line in lines]


def _replace_counting(error: UnicodeDecodeError) -> tuple[str, int]:
    """The "replace" error handler, counting the bytes it replaces in _REPLACED (reset by the
    reader of each file)."""
    _REPLACED[0] += error.end - error.start
    return "\ufffd", error.end


_REPLACED = [0]
codecs.register_error("attnlab-replace", _replace_counting)


class Corpus:
    """A corpus's text, streamed: each iteration reads the files again and yields the text (files
    joined by DOCUMENT_SEPARATOR, undecodable bytes as U+FFFD, a file's byte-order mark left
    out) in pieces of about CHUNK characters, so no file is ever held whole. A file that is not
    text (gzip, binary, UTF-16: _check_text) is refused at once; `log` hears, once a file, of
    one with a few bytes that do not decode or NUL characters.

    A piece ends where neither built-in pre-tokenization pattern (gpt2, gpt4) has a pre-token
    across (_last_safe_cut), so pieces tokenized one by one give the ids of the whole text: at a
    line break, so that lines stay whole, where the text has a line ending in a letter or digit.
    Text with no such place (a long line without spaces) is read on until one, or the end.
    Line breaks are kept as they are in the files (\\r\\n too)."""

    def __init__(self, spec: str, log: Callable[[str], None] | None = None):
        self.spec, self.files, self.log = spec, corpus_files(spec), log
        holds_text = [_check_text(path) for path in self.files]  # every file checked
        if not any(holds_text):
            raise UserError(f"corpus {spec} is empty")
        self._told: set[Path] = set()

    def __iter__(self) -> Iterator[str]:
        pending: list[str] = []
        size = searched = 0  # characters pending, and how many of them hold no safe cut
        for block in self._blocks():
            pending.append(block)
            size += len(block)
            if size >= CHUNK:
                text = "".join(pending)
                if cut := _last_safe_cut(text, searched):  # else all of it waits for more
                    yield text[:cut]
                pending, size = [text[cut:]], len(text) - cut
                searched = 0 if cut else size  # a search that found nothing is not repeated
        if size:
            yield "".join(pending)

    def _blocks(self) -> Iterator[str]:
        for i, path in enumerate(self.files):
            if i:
                yield DOCUMENT_SEPARATOR
            _REPLACED[0], nul = 0, False  # files are read one at a time
            with open(path, encoding="utf-8-sig", errors="attnlab-replace", newline="") as f:
                while block := f.read(CHUNK):
                    nul = nul or "\0" in block
                    yield block
            self._warn(path, _REPLACED[0], nul)

    def _warn(self, path: Path, replaced: int, nul: bool) -> None:
        """Tell `log`, once, of a file that is not UTF-8 text (another encoding, UTF-16)."""
        if not (replaced or nul) or self.log is None or path in self._told:
            return
        self._told.add(path)
        found = [f"{replaced:,} byte(s) that are not UTF-8 (read as U+FFFD)"] if replaced else []
        found += ["NUL characters"] if nul else []
        self.log(f"warning: {path} holds {' and '.join(found)}; text is read as UTF-8")


def _check_text(path: Path) -> bool:
    """Whether the file holds any text (a byte-order mark alone is none), judged by its first
    SNIFF bytes; a UserError naming it when it is gzip-compressed, or when more than
    MAX_NOT_TEXT of those bytes (and more than STRAY_BYTES) are NULs or not UTF-8: a binary
    file, UTF-16."""
    with open(path, "rb") as f:
        head = f.read(SNIFF)
    if head.startswith(GZIP_MAGIC):
        raise UserError(f"{path} is gzip-compressed, not text: decompress it first (gunzip)")
    # an undecodable byte becomes one surrogate U+DC80..U+DCFF; a character cut at the end waits
    decoder = codecs.getincrementaldecoder("utf-8-sig")("surrogateescape")
    text = decoder.decode(head, final=len(head) < SNIFF)
    bad = text.count("\0") + len(re.findall("[\udc80-\udcff]", text))
    if bad > max(MAX_NOT_TEXT * len(head), STRAY_BYTES):
        raise UserError(
            f"{path} is not UTF-8 text: {bad:,} of its first {len(head):,} bytes are NULs or "
            "do not decode (a binary file, or another encoding: convert it to UTF-8)"
        )
    return bool(text)


def _last_safe_cut(text: str, start: int = 0) -> int:
    """Where a piece may end: before the last line break (\\n or \\r\\n) that follows a letter
    or digit, so lines stay whole; else before the last space that follows a non-space character;
    else nowhere (0). Only breaks and spaces from `start` on are looked at: the text before it
    was searched already."""
    i = len(text)
    while (i := text.rfind("\n", start, i)) > 0:
        cut = i - 1 if text[i - 1] == "\r" else i
        if cut > 0 and text[cut - 1].isalnum():
            return cut
    i = len(text)
    while (i := text.rfind(" ", start, i)) > 0:
        if not text[i - 1].isspace():
            return i
    return 0
