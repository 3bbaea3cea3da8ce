"""`attnlab data get` on a disk with no room: refused before a byte is fetched where the
catalog knows the sizes, and a write that fails names the file, not the source."""

import errno
import hashlib
import io
import os

import pytest

from attnlab.data import catalog, download
from attnlab.data.catalog import DataFile, Dataset
from attnlab.errors import UserError

FILES = {"a.txt": b"alpha\n" * 100, "sub/b.txt": b"beta\n" * 3000}


@pytest.fixture
def mirrored(monkeypatch, tmp_path):
    """A dataset 'fake' in the catalog, its files in a mirror folder; an empty data folder."""
    for path, body in FILES.items():
        (tmp_path / "mirror" / "fake" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mirror" / "fake" / path).write_bytes(body)
    files = tuple(
        DataFile(path, hashlib.sha256(body).hexdigest(), len(body)) for path, body in FILES.items()
    )
    monkeypatch.setitem(catalog.CATALOG, "fake", Dataset("fake", "a test dataset", files))
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ATTNLAB_DATA_MIRROR", str(tmp_path / "mirror"))
    return tmp_path / "data"


def test_a_download_the_disk_has_no_room_for_is_refused_at_once(mirrored, monkeypatch):
    usage = download.shutil.disk_usage(mirrored.parent)
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage._replace(free=999))
    with pytest.raises(UserError) as raised:
        catalog.get("fake", progress=False)
    need = catalog.human_size(sum(map(len, FILES.values())))
    assert str(raised.value) == (
        f"cannot get dataset 'fake': it needs {need} and the disk has 999 B free "
        f"(looked in {mirrored / 'fake'})"
    )
    assert not mirrored.exists()


class FullFile(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write gives it: no name


def test_a_write_that_fails_names_the_file_and_blames_no_source(mirrored, monkeypatch):
    monkeypatch.setattr(download.os, "fdopen", lambda fd, mode: FullFile(fd, mode))
    with pytest.raises(UserError) as raised:
        catalog.get("fake", progress=False)
    folder = mirrored / "fake"
    assert str(raised.value) == (
        f"cannot get dataset 'fake': cannot write {folder / 'a.txt'}: No space left on device "
        f"(looked in {folder})"
    )
    assert not [p for p in mirrored.rglob("*") if p.is_file()]
