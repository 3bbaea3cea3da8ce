"""A progress bar on stderr for long work (tqdm), drawn only when asked for and someone watches
it live: stderr a terminal, or a Jupyter notebook's cell (which redraws a line at each \\r as a
terminal does). A log, a pipe or a test gets none, nor a process whose stderr is closed (`2>&-`)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(show: bool, **options: Any):
    """tqdm(**options): a bar when `show` and stderr is watched live, else one drawing nothing."""
    from tqdm import tqdm

    return tqdm(disable=not (show and stderr_is_live()), **options)


def stderr_is_live() -> bool:
    """Whether stderr is an open terminal or a notebook's cell output: None (Python's stderr
    when fd 2 was closed at its start) and a closed stream are not."""
    try:
        return sys.stderr is not None and (sys.stderr.isatty() or _in_notebook())
    except (ValueError, OSError):  # closed
        return False


def _in_notebook() -> bool:
    """Whether this is a Jupyter kernel (a notebook's, or VS Code's or Colab's), not a terminal's
    IPython: the kernel module is loaded only there, and IPython is then imported already."""
    if "ipykernel" not in sys.modules:
        return False
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"
