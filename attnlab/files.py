"""File helpers: atomic writes and reads that fail with one clear line."""

from __future__ import annotations

import codecs
import contextlib
import errno
import glob
import itertools
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from attnlab.errors import UserError, dangling_link

RUN_LOCK = ".attnlab.lock"  # in a run directory while a process writes it: "PID HOST"
RUN_FILE = "run.json"  # kind, preset and data settings of a run: --resume needs no flags again
BEST_DIR = "best"  # in a run: the checkpoint of the best evaluation, when a score is kept


def env_folder(variable: str, default: str) -> Path:
    """The folder an environment variable names, else (unset or empty) `default`: a leading ~
    expanded as a shell would (a quoted "~/data" too, not a folder "~" here), made absolute
    (the same folder wherever a command runs)."""
    path = os.environ.get(variable) or default
    try:
        return Path(path).expanduser().absolute()
    except RuntimeError:  # ~name of no user here, or no home folder at all
        raise UserError(f"no home folder for {path} ({variable}): give a full path") from None


def user_cache(*parts: str) -> str:
    """A path in the user's cache folder: $XDG_CACHE_HOME where it is absolute, else ~/.cache."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return os.path.join(xdg if os.path.isabs(xdg) else "~/.cache", *parts)


def cache_dir() -> Path:
    """Where derived files are kept between runs (token arrays, built kernels): $ATTNLAB_CACHE,
    else ~/.cache/attnlab (in $XDG_CACHE_HOME where set)."""
    return env_folder("ATTNLAB_CACHE", user_cache("attnlab"))


# Native code is loaded only from a folder no one else can write to, and only from files of
# ours no one else can write to: anything else in the cache could run as us once loaded.
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def private_folder(folder: Path) -> None:
    """Create a cache folder of native code (built kernels, compiled decoding steps), or refuse
    (RuntimeError) one that is someone else's; one of ours that others may write to is closed
    to them first."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise RuntimeError(f"{folder} belongs to another user: its native code is not loaded")
    if folder.stat().st_mode & _WRITABLE_BY_OTHERS:
        os.chmod(folder, 0o700)


def private_file(path: Path) -> bool:
    """Whether the file at `path` is ours and writable by no one else (see private_folder)."""
    info = path.stat()
    return info.st_uid == os.getuid() and not info.st_mode & _WRITABLE_BY_OTHERS


def make_private(path: str | os.PathLike) -> None:
    """Close a file of native code we wrote to others' writes, so that private_file trusts it:
    under a umask of 002 (a user's own group, as Ubuntu gives) a new file is group-writable,
    and would be distrusted, built again, at every start."""
    os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~_WRITABLE_BY_OTHERS)


def check_writable(folder: str | os.PathLike) -> None:
    """Write (then remove) a file in `folder`, or in the nearest folder above it that exists,
    where the missing ones would be made: a read-only destination ends in one line naming
    `folder` (a UserError) before the work whose result it would receive, not after. Nothing is
    left behind."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.exists():  # a link: no folder could be made there
        raise UserError(f"{dangling_link(existing)}{cache_note(folder)}")
    if not existing.is_dir():
        raise UserError(f"{existing} is a file, not a folder{cache_note(folder)}")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".probe.", suffix=".tmp")
    except OSError as error:
        reason = error.strerror or error
        raise UserError(f"cannot write to {folder}{cache_note(folder)}: {reason}") from None
    os.close(fd)
    os.unlink(probe)


def cache_note(folder: Path) -> str:
    """What an error about `folder` adds where it is in the cache: where that is set."""
    inside = cache_dir() in (folder, *folder.parents)
    return " (the cache; ATTNLAB_CACHE sets it)" if inside else ""


@contextmanager
def parent_folders(path: Path) -> Iterator[None]:
    """`path`'s missing folders, made for the block and removed again (those still empty) if it
    raises: a failed write leaves no empty folders behind."""
    missing = list(itertools.takewhile(lambda p: not p.exists(), path.parents))  # nearest first
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in missing:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a temporary file beside `path`, then rename it over: readers never see half a file."""
    with atomic_writer(path) as f:
        f.write(data)


def temporary_file(directory: Path, name: str, suffix: str = ".tmp") -> tuple[int, str]:
    """A new temporary file in `directory` for the file `name`: (descriptor, path). It gets the
    permissions any new file would (mkstemp's are owner-only), as it will stand for one."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=suffix)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


STALE_S = 600  # a temporary file untouched this long is a killed process's: a live one writes


def remove_stale(directory: Path, name: str, suffix: str = ".tmp") -> None:
    """Delete the temporary files of `name` (`.NAME.RANDOM{suffix}`, temporary_file's) that a
    killed process left in `directory`, once untouched for STALE_S: a process writing one under
    way, another run's, writes it more often than that."""
    for temporary in directory.glob(f".{glob.escape(name)}.*{suffix}"):
        with contextlib.suppress(OSError):  # gone already: another process removed it
            if time.time() - temporary.stat().st_mtime > STALE_S:
                temporary.unlink()


# a full disk, a spent quota, a file past its limit (FAT32's 4 GiB, ulimit -f): raised by
# writes, which name no file
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError about a temporary file, or a full disk's while writing one (which names no
    file), names the file it stands for."""
    try:
        yield
    except OSError as error:
        ours = str(error.filename or "").endswith((".tmp", ".part"))  # temporary_file's
        if not (ours or (error.filename is None and error.errno in FULL)):
            raise
        raise type(error)(error.errno, error.strerror, str(path)) from None


def written_in_place(path: str | os.PathLike) -> bool:
    """Whether an output at `path` is written into where it is, not replaced by a renamed
    temporary file: a link to what exists (/dev/stdout, a shell's >(...) as /dev/fd/N, a link
    the user keeps to a file of theirs) or what is no plain file (a pipe, /dev/null)."""
    path = Path(path)
    return path.exists() and not path.is_dir() and (path.is_symlink() or not path.is_file())


def _is_stdout(path: Path) -> bool:
    """Whether `path` is this process's stdout (/dev/stdout, /dev/fd/1, the file it goes to)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):  # no such file; a stdout without a descriptor
        return False


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write in parts, renamed to `path` once the block ends without an error
    (removed if it raises): readers never see half a file. A link, pipe or device (see
    written_in_place) is written through instead, as any program writes it."""
    path = Path(path)
    if _is_stdout(path):  # /dev/stdout: after what was printed, not over it (`> file`)
        sys.stdout.flush()
        with naming(path):  # a full disk's error names the file
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        return
    if written_in_place(path):
        with naming(path), os.fdopen(os.open(path, os.O_WRONLY | os.O_TRUNC), "wb") as f:
            yield f
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name)
    with naming(path):
        fd, tmp = temporary_file(path.parent, path.name)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            sync_folder(path.parent)
        finally:
            Path(tmp).unlink(missing_ok=True)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries to the disk, its renames made durable: a power cut after a save
    leaves the new files, not the old names (as the files' own fsync leaves their contents)."""
    with contextlib.suppress(OSError):  # Windows opens no folder; some file systems sync none
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_files(
    directory: str | os.PathLike, files: dict[str, bytes], journal: str | None = None
) -> None:
    """Write several files into `directory`: all to temporary names first, then rename them in
    order. A crash while writing leaves the old files untouched.

    With `journal` (a file name), the set switches as a whole: once every file is written, the
    journal records the renames, the renames run, and the journal goes. A crash before the
    journal leaves the old set and temporary files that finish_writes removes; a crash after
    it leaves a journal from which finish_writes completes the new set. Never a mix."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    temporary, journaled = {}, False
    try:
        for name, data in files.items():
            with naming(directory / name):
                fd, temporary[name] = temporary_file(directory, name)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if journal is not None:
            renames = {name: Path(tmp).name for name, tmp in temporary.items()}
            atomic_write_bytes(directory / journal, json.dumps(renames).encode())
            journaled = True
        for name, tmp in temporary.items():
            os.replace(tmp, directory / name)
        sync_folder(directory)  # the renames on the disk before the journal that redoes them goes
        if journal is not None:
            (directory / journal).unlink()
    finally:
        if not journaled:  # past the journal, what is left is finish_writes's to complete
            for tmp in temporary.values():
                Path(tmp).unlink(missing_ok=True)


def finish_writes(directory: str | os.PathLike, journal: str) -> bool:
    """Complete the renames of an interrupted atomic_write_files(..., journal), and remove the
    temporary files of one interrupted before its journal. Only for the directory's one writer
    (see DirectoryLock). Returns whether anything was left to finish."""
    directory = Path(directory)
    path, finished = directory / journal, False
    if path.is_file():
        try:
            renames = json.loads(path.read_text())
        except (ValueError, RecursionError):  # written atomically: unreadable only if damaged
            renames = {}
        renames = renames if isinstance(renames, dict) else {}
        if not all(_ours(str(name), str(tmp)) for name, tmp in renames.items()):
            raise UserError(  # a rename elsewhere (../x, /home/...) would write over any file
                f"{path} is no journal of attnlab's: it renames files out of {directory} "
                "(a run someone else made?); delete it"
            )
        for name, tmp in renames.items():
            if (directory / tmp).is_file():
                os.replace(directory / tmp, directory / name)
        sync_folder(directory)
        path.unlink()
        finished = True
    for stray in directory.glob(".*.tmp"):
        stray.unlink(missing_ok=True)
        finished = True
    return finished


def _ours(name: str, tmp: str) -> bool:
    """Whether a journal's rename is one atomic_write_files records: a file of the folder from
    its temporary_file (.NAME.RANDOM.tmp) beside it, no path leading elsewhere."""
    plain = all(n and os.path.basename(n) == n and n not in (".", "..") for n in (name, tmp))
    return plain and tmp.startswith(f".{name}.") and tmp.endswith(".tmp")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def readable(path: str | os.PathLike, what: str = "file") -> Path:
    """`path`, when it names something to read once: a file, or a pipe (bash's <(...), a FIFO),
    read as the file it stands for; else a UserError naming it: a folder, a missing file, a
    link that leads nowhere (or around in a loop), an empty one (Path("") is the folder ".")."""
    if not str(path):
        raise UserError(f"an empty path: give a {what}")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder: give a {what}")
    if not path.exists():
        nowhere = " (a link that leads nowhere, or around in a loop)" if path.is_symlink() else ""
        raise UserError(f"{what} not found: {path}{nowhere}")
    if path.is_char_device() or path.is_block_device():  # /dev/zero would be read for ever
        raise UserError(f"{path} is a device, not a {what}")
    return path


def decode_utf8(data: bytes) -> str:
    """UTF-8 bytes as text, a byte-order mark left out (as Windows' Notepad writes one); a
    UnicodeDecodeError's offsets count from the first byte, the mark's too ("utf-8-sig"
    counts from after it)."""
    mark = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return str(memoryview(data)[mark:], "utf-8")
    except UnicodeDecodeError as error:
        start, end = error.start + mark, error.end + mark
        raise UnicodeDecodeError("utf-8", data, start, end, error.reason) from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The text of a UTF-8 file the user names (see readable), a byte-order mark left out;
    bytes that are not UTF-8 are a UserError naming the file and where they are."""
    try:
        return decode_utf8(readable(path, what).read_bytes())
    except UnicodeDecodeError as error:
        if error.object[:2] == b"\x1f\x8b":  # gzip's magic number: no text to convert
            raise UserError(f"{what} {path} is gzip-compressed: decompress it (gunzip)") from None
        raise UserError(
            f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start:,}): "
            "convert it to UTF-8"
        ) from None


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file, turning a missing or malformed file into a UserError."""
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as error:
        raise UserError(f"{what} {path} is not valid JSON: {error}") from None
    except RecursionError:  # arrays in arrays a thousand deep: no file of ours
        raise UserError(f"{what} {path} is not valid JSON: nested too deep") from None
