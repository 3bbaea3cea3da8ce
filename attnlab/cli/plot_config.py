"""Matplotlib's own folder (its font list, its settings) where its default cannot be written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from attnlab.errors import UserError


def matplotlib_folder() -> None:
    """Point MPLCONFIGDIR at the folder `matplotlib` in attnlab's cache when it is unset and the
    folders matplotlib would use cannot be written (a read-only home folder, or none, as a
    service's user has): else matplotlib warns, in several lines, of a temporary folder, and
    builds its font list there again at every command. Call before matplotlib is imported; the
    user's own setting, and a default that works, are left as they are."""
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules:
        return
    try:
        home = Path.home()
    except RuntimeError:  # no home folder at all
        defaults = []
    else:  # as matplotlib chooses them: its settings', then its cache's
        xdg = (("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache"))
        linux = sys.platform.startswith(("linux", "freebsd"))
        bases = [os.environ.get(name) or home / folder for name, folder in xdg]
        defaults = [Path(base, "matplotlib") for base in bases] if linux else [home / ".matplotlib"]
    if defaults and all(map(_can_write, defaults)):
        return
    from attnlab.files import cache_dir  # here: it loads tempfile, and that random

    try:
        folder = cache_dir() / "matplotlib"
    except UserError:  # no cache folder either (no home folder, ATTNLAB_CACHE unset)
        return
    if _can_write(folder):
        os.environ["MPLCONFIGDIR"] = str(folder)


def _can_write(folder: Path) -> bool:
    """Whether `folder` could be made, or is there, and written, as matplotlib tests it: the
    nearest folder of its path that exists is one, and writable (nothing is made here)."""
    try:  # a folder that cannot be searched (another user's home), a name too long: no
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
        return existing.is_dir() and os.access(existing, os.W_OK)
    except OSError:
        return False
