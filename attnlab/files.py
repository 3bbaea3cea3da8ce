"""File helpers: atomic writes and reads that fail with one clear line."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from attnlab.errors import UserError


def cache_dir() -> Path:
    """Where derived files are kept between runs (token arrays, built kernels): $ATTNLAB_CACHE,
    else ~/.cache/attnlab."""
    return Path(os.environ.get("ATTNLAB_CACHE", Path.home() / ".cache" / "attnlab"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a temporary file beside `path`, then rename it over: readers never see half a file."""
    path = Path(path)
    atomic_write_files(path.parent, {path.name: data})


def atomic_write_files(directory: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Write several files into `directory`: all to temporary names first, then rename them in
    order. A crash while writing leaves the old files untouched; the renames take microseconds."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    temporary = {}
    try:
        for name, data in files.items():
            fd, temporary[name] = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for name, tmp in temporary.items():
            os.replace(tmp, directory / name)
    finally:
        for tmp in temporary.values():
            Path(tmp).unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file, turning a missing or malformed file into a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{what} {path} is not valid JSON: {error}") from None
