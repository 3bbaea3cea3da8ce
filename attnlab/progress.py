"""A progress bar on stderr for long work (tqdm), drawn only when asked for and stderr is a
terminal: a log, a pipe or a test gets none."""

from __future__ import annotations

from typing import Any


def progress_bar(show: bool, **options: Any):
    """tqdm(**options): a bar when `show` and stderr is a terminal, else one that draws nothing."""
    from tqdm import tqdm

    return tqdm(disable=None if show else True, **options)
