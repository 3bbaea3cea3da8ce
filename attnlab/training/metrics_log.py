"""metrics.jsonl: one JSON record per optimizer step, appended as training goes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, BinaryIO

from attnlab.files import atomic_write_bytes


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the records logged after `step`, the checkpoint a run resumes from: the resumed run
    logs those steps again. A damaged log (a line that is not a record with a step) is cut at
    the last good record before it, with a warning: the checkpoint, not the log, is what
    resuming needs. A record is good when it has a train_loss and a step after the one before,
    and its values are numbers."""
    if not path.is_file():
        return
    kept, last = [], 0
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None or record["step"] <= last or "train_loss" not in record:
            warnings.warn(
                f"{path}: line {number} is not a metrics record; the log is cut there",
                RuntimeWarning,
                stacklevel=3,
            )
            break
        if record["step"] <= step:
            kept.append(line)
        last = record["step"]
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


def append_record(log: BinaryIO, record: dict[str, Any]) -> None:
    """Append a record to the log, an unbuffered file: whole, or (a full disk) not at all. A
    write may take part of the line and return; the rest is written after it, and a write that
    fails takes the part back, so that no half record is left for the next line to follow."""
    line, start = (json.dumps(record) + "\n").encode(), log.tell()
    try:
        while line:
            line = line[log.write(line) :]
    except OSError:
        log.truncate(start)
        raise


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, in order; a line that is not one, of a step and its
    train_loss (a log cut mid-line by a crash, a note of the user's), is left out."""
    records = map(_record, path.read_text(errors="replace").splitlines())
    return [r for r in records if r is not None and "train_loss" in r]


def _record(line: str) -> dict[str, Any] | None:
    """A metrics line as a record with an integer step and numbers for values (the plot draws
    them: a string would be a category, or a traceback), or None."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: arrays nested a thousand deep
        return None
    ok = isinstance(record, dict) and type(record.get("step")) is int
    return record if ok and all(type(v) in (int, float) for v in record.values()) else None
