"""`attnlab data get` on a disk with no room: refused before a byte is fetched where the
catalog knows the sizes, and a write that fails names the file, not the source, and says how
to give the dataset room."""

import errno
import hashlib
import io
import os
import zipfile

import pytest

from attnlab.data import catalog, download
from attnlab.data.catalog import Archive, DataFile, Dataset
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


def free_space(monkeypatch, free: int) -> None:
    """Every disk has `free` bytes free, as shutil.disk_usage tells the downloads."""
    usage = download.shutil.disk_usage(".")
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage._replace(free=free))


def test_a_download_the_disk_has_no_room_for_is_refused_at_once(mirrored, monkeypatch):
    free_space(monkeypatch, 999)
    with pytest.raises(UserError) as raised:
        catalog.get("fake", progress=False)
    need = download.human_size(sum(map(len, FILES.values())))
    assert str(raised.value) == (
        f"cannot get dataset 'fake': cannot write {mirrored / 'fake'}: it needs {need} and the "
        "disk has 999 B free; free space there, or set ATTNLAB_DATA to another folder"
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
        f"cannot get dataset 'fake': cannot write {folder / 'a.txt'}: No space left on device; "
        "free space there, or set ATTNLAB_DATA to another folder"
    )
    assert not [p for p in mirrored.rglob("*") if p.is_file()]


def test_a_temporary_file_that_cannot_be_made_is_named_as_the_file_it_stands_for(
    mirrored, monkeypatch
):
    def denied(directory, name, suffix):  # a read-only folder: mkstemp's error names its file
        part = directory / f".{name}.k3j2h1{suffix}"
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(part))

    monkeypatch.setattr(download, "temporary_file", denied)
    with pytest.raises(UserError) as raised:
        catalog.get("fake", progress=False)
    folder = mirrored / "fake"
    assert str(raised.value) == (
        f"cannot get dataset 'fake': cannot write {folder / 'a.txt'}: Permission denied; "
        "make it writable, or set ATTNLAB_DATA to another folder"
    )


def test_a_file_where_the_datasets_folder_goes_is_named_as_a_file(mirrored):
    mirrored.mkdir()
    (mirrored / "fake").write_text("not a folder\n")
    with pytest.raises(UserError) as raised:
        catalog.get("fake", progress=False)
    folder = mirrored / "fake"
    assert str(raised.value) == (
        f"cannot get dataset 'fake': {folder} is a file, not a folder; move that file, or set "
        "ATTNLAB_DATA to another folder"
    )


def test_a_download_of_unknown_size_or_that_just_fits_is_not_refused(mirrored, monkeypatch):
    need = sum(map(len, FILES.values()))
    free_space(monkeypatch, need)
    assert (catalog.get("fake", progress=False) / "a.txt").read_bytes() == FILES["a.txt"]
    sizeless = tuple(DataFile(entry.path, entry.sha256) for entry in catalog.CATALOG["fake"].files)
    monkeypatch.setitem(catalog.CATALOG, "fake", Dataset("fake", "no sizes", sizeless))
    (mirrored / "fake" / "a.txt").unlink()  # one of two missing: how much it needs is unknown
    free_space(monkeypatch, 0)
    assert (catalog.get("fake", progress=False) / "a.txt").read_bytes() == FILES["a.txt"]


def test_an_archives_size_is_checked_only_when_all_of_it_is_wanted(mirrored, monkeypatch):
    monkeypatch.delenv("ATTNLAB_DATA_MIRROR")
    zipped = mirrored.parent / "fake.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path, body in FILES.items():
            archive.writestr(f"fake-1.0/{path}", body)
    source = Archive(zipped.as_uri(), "fake-1.0/")
    files = catalog.CATALOG["fake"].files  # their sizes known, each from the archive
    monkeypatch.setitem(catalog.CATALOG, "fake", Dataset("fake", "zipped", files, archive=source))
    free_space(monkeypatch, 999)
    need = download.human_size(sum(map(len, FILES.values())))
    with pytest.raises(UserError, match=f"it needs {need} and the disk has 999 B free; free space"):
        catalog.get("fake", progress=False)
    (mirrored / "fake" / "sub").mkdir(parents=True)
    (mirrored / "fake" / "sub" / "b.txt").write_bytes(FILES["sub/b.txt"])  # the rest: its share
    assert (catalog.get("fake", progress=False) / "a.txt").read_bytes() == FILES["a.txt"]
