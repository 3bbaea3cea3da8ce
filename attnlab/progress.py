"""A progress bar on stderr for long work (tqdm), drawn only when asked for and stderr is a
terminal: a log, a pipe or a test gets none, nor a process whose stderr is closed (`2>&-`)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(show: bool, **options: Any):
    """tqdm(**options): a bar when `show` and stderr is a terminal, else one that draws nothing."""
    from tqdm import tqdm

    return tqdm(disable=not (show and stderr_is_terminal()), **options)


def stderr_is_terminal() -> bool:
    """Whether stderr is an open terminal: None (Python's stderr when fd 2 was closed at its
    start) and a closed stream are not."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (ValueError, OSError):  # closed
        return False
