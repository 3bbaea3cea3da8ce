"""Errors that mean "the input was bad", as opposed to bugs.

The CLI turns any :class:`UserError` into one line on stderr and exit code 2; every other
exception is a bug and keeps its traceback.
"""

import os
import re
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: a missing file, a bad option, a corrupt checkpoint."""


class ConfigError(UserError, ValueError):
    """A configuration field has a bad value. The message names the field and what is allowed."""


class TokenIdError(UserError, ValueError):
    """A token id outside the model's vocabulary (given through the Python API)."""


class NotRegistered(ConfigError):
    """A token mixer or model kind by a name that nothing in this process registered (a
    plugin's, say, whose file was not loaded)."""

    def __init__(self, what: str, name: str, known: list[str]):
        self.what, self.name, self.known = what, name, f"known {what}s: {', '.join(known)}"
        super().__init__(f"unknown {what} {name!r}; {self.known}")


class OutputError(OSError):
    """Standard output could not be written (a full disk behind `> FILE`, `ulimit -f`): an
    OSError still, which no `except UserError` takes for the input's."""


def os_error_line(error: OSError) -> str:
    """An OSError of the user's files and folders (missing, read-only, a full disk) as the line
    they read: what went wrong, and where. A folder to be made under a file names the file."""
    if isinstance(error, OutputError):
        return f"cannot write standard output: {error.strerror or error}"
    if isinstance(error, FileExistsError | NotADirectoryError):
        path = Path(error.filename or "")
        if file := next((p for p in (path, *path.parents) if p.is_file()), None):
            return f"{file} is a file, not a folder"
        if path.is_symlink() and not path.exists():  # else "File exists", of a link to nothing
            return dangling_link(path)
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror or error}{where}{_in_cache(error.filename)}"


def _in_cache(filename) -> str:
    """Where a file of the cache (a token array filling the disk, say) is named, what sets the
    cache's folder: another disk's may take it."""
    from attnlab.files import cache_note  # files imports this module

    try:
        return cache_note(Path(filename)) if isinstance(filename, str) else ""
    except UserError:  # no cache folder to name (no home folder): none of its files, either
        return ""


def hugging_face_hint(folder: Path, config: object) -> str:
    """Where a folder's config.json is transformers' (it names architectures or a model_type),
    how to make the folder an attnlab checkpoint; else nothing."""
    if not isinstance(config, dict) or not ({"architectures", "model_type"} & config.keys()):
        return ""
    return f": a Hugging Face model's folder, which `attnlab convert {folder} --out DIR` converts"


def dangling_link(path: Path) -> str:
    """What a link at `path` that leads to nothing is, for an error line."""
    return f"{path} is a link that leads nowhere, or around in a loop (to {os.readlink(path)})"


def memory_error_line(error: BaseException) -> str | None:
    """The one line of a command that asked for more memory than there is (Python's MemoryError,
    torch's CPU allocator or a GPU's out-of-memory error, with the size it asked for); None for
    any other error."""
    text = str(error)
    if not (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in text
    ):
        return None
    in_bytes = re.search(r"allocate (\d+) bytes", text)  # the CPU's; a GPU's gives "20.00 GiB"
    asked = re.search(r"allocate ([\d.]+ [KMGT]iB)", text)
    asked = f"{int(in_bytes.group(1)) / 1e9:,.1f} GB" if in_bytes else asked and asked.group(1)
    size = f" (it asked for {asked} at once)" if asked else ""
    return (
        f"out of memory{size}: ask for less at once, a smaller --batch-size, --beam-size, "
        "model or context"
    )
