"""A run folder's run.json, read in the shape this attnlab writes: {"kind", "preset", "data":
{the kind's data settings}}.

Runs of an attnlab before model kinds were registered (2026-12-03) kept their data settings at
the top level and no kind: `train gpt` wrote {"data", "tokenizer"}, `train translation`
{"data", "src", "tgt", "preset", "translation": {its data options}}. They are read as the run
would be written now, so such a run resumes (and then keeps the new shape), and evaluate,
inspect, compare and --init find its data and kind, as its own attnlab did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attnlab.files import RUN_FILE, read_json

TRANSLATION_RUN = {"data", "src", "tgt", "preset", "translation"}  # before 2026-12-03


def read_run(folder: str | os.PathLike, what: str = "run description") -> Any:
    """run.json of `folder`, an older run's in today's shape; anything else as it is, for the
    caller to check."""
    return upgraded(read_json(Path(folder) / RUN_FILE, what))


def upgraded(run: Any) -> Any:
    """An older run's description in today's shape; any other value unchanged."""
    if not isinstance(run, dict) or "kind" in run or not isinstance(run.get("data"), str | None):
        return run
    if run.keys() == {"data", "tokenizer"}:
        return {"kind": "gpt", "data": dict(run)}
    if run.keys() == TRANSLATION_RUN and isinstance(run["translation"], dict):
        data = {"data": run["data"], "src": run["src"], "tgt": run["tgt"], **run["translation"]}
        return {"kind": "translation", "preset": run["preset"], "data": data}
    return run
