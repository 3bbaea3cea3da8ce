"""Downloading a dataset's files: each into a temporary file beside its target, checked against
its pinned SHA-256, then renamed into place (the catalog, catalog.py, says what and from where).
ATTNLAB_DATA_MIRROR replaces every source with a server, or a folder, laid out as the data folder.
Standard library only (tqdm aside): `attnlab data` starts without loading torch or numpy.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from attnlab.errors import UserError, os_error_line
from attnlab.files import FULL, naming, parent_folders, remove_stale, temporary_file
from attnlab.signals import sigterm_as_interrupt

if TYPE_CHECKING:
    from attnlab.data.catalog import DataFile, Dataset

TIMEOUT_S = 60  # seconds a connection may stay silent before the download counts as failed
CHUNK = 1 << 20
USER_AGENT = "attnlab-data/0.1 (python urllib)"


class Failure(Exception):
    """A download gone wrong: args are (why, the URL tried); `get` makes it a UserError."""


class Unwritten(Exception):
    """The OSError of writing a download (a full disk), apart from the network's: args[0]."""


def fetch(dataset: Dataset, folder: Path, missing: list[DataFile], progress: bool) -> None:
    """Download the missing files: each from ATTNLAB_DATA_MIRROR when it is set, else from its
    own URL, and those that have none from the dataset's archive, in one pass."""
    mirror = os.environ.get("ATTNLAB_DATA_MIRROR", "").rstrip("/")
    if mirror and "://" not in mirror:  # a folder laid out as the data folder: a file:// URL
        mirror = Path(mirror).expanduser().absolute().as_uri()
    direct = [entry for entry in missing if mirror or entry.url]
    from_archive = [entry for entry in missing if not (mirror or entry.url)]
    sizes = [entry.size for entry in missing]
    if from_archive:
        total = None  # the archive's size, once its response gives it
    elif None in sizes:  # a manifest's files have no sizes: the dataset's, if all are missing
        total = dataset.size if len(missing) == dataset.count else None
    else:
        total = sum(sizes)
    _check_room(folder, dataset.size if from_archive and len(missing) == dataset.count else total)
    from attnlab.progress import progress_bar

    options = {"total": total, "desc": dataset.name, "unit": "B", "unit_scale": True}
    with sigterm_as_interrupt(), progress_bar(progress, **options) as bar:
        for entry in direct:
            url = entry.url
            if mirror:
                url = f"{mirror}/{urllib.parse.quote(f'{dataset.name}/{entry.path}')}"
            target = folder / entry.path
            with _staged(target) as (out, temporary):
                _commit(out, temporary, target, entry, _download(url, out, bar), url)
        if from_archive:
            _fetch_from_archive(dataset, folder, from_archive, bar)


def _check_room(folder: Path, need: int | None) -> None:
    """Refuse at once a download whose size is known and that the disk has no room for."""
    free = shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free
    if need is not None and need > free:
        why = f"it needs {human_size(need)} and the disk has {human_size(free)} free"
        raise OSError(errno.ENOSPC, why, str(folder))


def human_size(size: float) -> str:
    """Bytes in decimal units, as the datasets' READMEs give them (1.1 MB)."""
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def unwritten(dataset: Dataset, error: OSError) -> UserError:
    """What went wrong on the local disk, and what to do: the file that could not be written
    (or the folder with no room for the download), or the file that stands where a folder was
    to be made (the dataset's own, or one above it)."""
    elsewhere = "or set ATTNLAB_DATA to another folder"
    if isinstance(error, FileExistsError | NotADirectoryError):
        why = f"{os_error_line(error)}; move that file, {elsewhere}"
    else:
        where = f" {error.filename}" if error.filename else ""
        fix = "free space there" if error.errno in FULL else "make it writable"
        why = f"cannot write{where}: {error.strerror or error}; {fix}, {elsewhere}"
    return UserError(f"cannot get dataset '{dataset.name}': {why}")


def remove_stale_parts(dataset: Dataset, folder: Path) -> None:
    """Delete the temporary files that a killed download of the dataset left in `folder`
    (`.NAME.*.part` beside each of its files, `..archive.*.part`), once untouched for a while:
    a download under way, in another process, writes its own more often than that."""
    for target in [folder / ".archive", *(folder / entry.path for entry in dataset.entries())]:
        remove_stale(target.parent, target.name, ".part")


def _fetch_from_archive(dataset: Dataset, folder: Path, missing: list[DataFile], bar) -> None:
    """Download the archive into the folder, extract the missing members one by one, each
    verified before it is renamed into place, then delete the archive. Only members that the
    catalog names are read, so no archive can write outside the folder."""
    url, prefix = dataset.archive.url, dataset.archive.member_prefix
    with _staged(folder / ".archive") as (out, temporary):
        _download(url, out, bar, sized=True)
        out.flush()
        try:
            with zipfile.ZipFile(temporary) as archive:
                names = set(archive.namelist())
                for entry in missing:
                    if prefix + entry.path not in names:
                        raise Failure(f"the archive has no {prefix + entry.path}", url)
                    target = folder / entry.path
                    with _staged(target) as (member_out, member_temporary):
                        with archive.open(prefix + entry.path) as member:
                            digest = _copy(member, member_out)
                        _commit(member_out, member_temporary, target, entry, digest, url)
        except (zipfile.BadZipFile, EOFError, zlib.error) as error:
            raise Failure(f"the archive is not a readable zip file ({error})", url) from None


@contextlib.contextmanager
def _staged(target: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file beside `target` (same folder, so the final rename is atomic), deleted
    on the way out unless it was renamed into place: nothing half-written survives an error."""
    with parent_folders(target), naming(target):  # a full disk's error names the target
        fd, name = temporary_file(target.parent, target.name, ".part")
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    yield out, Path(name)
                except Unwritten as unwritten:
                    raise unwritten.args[0] from None
        finally:
            Path(name).unlink(missing_ok=True)


def _commit(out: IO[bytes], temporary: Path, target: Path, entry: DataFile, digest, url) -> None:
    """Flush the temporary file to disk, check it, and rename it over `target`."""
    out.flush()
    os.fsync(out.fileno())
    if problem := mismatch(temporary, entry, digest):
        raise Failure(problem, url)
    os.replace(temporary, target)


def _download(url: str, out: IO[bytes], bar, sized: bool = False) -> str:
    """Stream `url` into `out`; the SHA-256 of what came. A body shorter than its
    Content-Length is a dropped connection, never a file. sized: the bar's total is the
    response's length (for an archive, whose size is not pinned)."""
    digest, expected = None, None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})  # or ValueError
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length", "")
            expected = int(length) if length.isdigit() else None
            if sized and expected:
                bar.reset(total=expected)
            digest = _copy(response, out, bar)
    except http.client.IncompleteRead:
        pass  # reported below, with the byte counts
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise Failure(_describe(error), url) from None
    received = out.tell()
    if digest is None or received != (expected or received):
        of = f" of {expected:,}" if expected else ""
        raise Failure(f"the connection dropped after {received:,}{of} bytes", url)
    return digest


def _describe(error: BaseException) -> str:
    """One phrase for a network error: no exception class names, no nested reprs."""
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        if not isinstance(error.reason, BaseException):
            return str(error.reason)
        error = error.reason
    if isinstance(error, TimeoutError):
        return f"no answer within {TIMEOUT_S} s"
    return (error.strerror if isinstance(error, OSError) else None) or str(error) or repr(error)


def _copy(source: IO[bytes], out: IO[bytes], bar=None) -> str:
    """Copy `source` to `out` in chunks; the SHA-256 of the bytes copied."""
    digest = hashlib.sha256()
    while chunk := source.read(CHUNK):
        try:
            out.write(chunk)
        except OSError as error:  # the disk's, not the source's (which _download reports)
            raise Unwritten(error) from None
        digest.update(chunk)
        if bar is not None:
            bar.update(len(chunk))
    return digest.hexdigest()


def mismatch(path: Path, entry: DataFile, digest: str) -> str | None:
    """Why the file at `path` is not `entry`, or None when it is."""
    if digest == entry.sha256:
        return None
    if entry.gunzip_sha256:
        try:
            with gzip.open(path, "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() == entry.gunzip_sha256:
                    return None
        except (OSError, EOFError, zlib.error):
            pass  # not gzip at all: the plain mismatch below says enough
    return f"{entry.path} has SHA-256 {digest[:16]}..., expected {entry.sha256[:16]}..."


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
