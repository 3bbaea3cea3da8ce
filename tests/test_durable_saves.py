"""Saves that a power cut cannot undo: each rename is followed by a sync of its folder, the
journal's before the renames it records and theirs before the journal goes."""

import os
import stat

from attnlab import files


def recording(monkeypatch):
    """Log of the renames (the name made) and folder syncs the file helpers do."""
    events, replace, fsync = [], os.replace, os.fsync

    def logged_replace(source, target):
        replace(source, target)
        events.append(os.path.basename(target))

    def logged_fsync(fd):
        fsync(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append("sync")

    monkeypatch.setattr(files.os, "replace", logged_replace)
    monkeypatch.setattr(files.os, "fsync", logged_fsync)
    return events


def test_a_journaled_save_syncs_its_folder_after_each_step(tmp_path, monkeypatch):
    events = recording(monkeypatch)
    files.atomic_write_files(tmp_path, {"a": b"1", "b": b"2"}, journal="j")
    assert events == ["j", "sync", "a", "b", "sync"]
    assert not (tmp_path / "j").exists() and (tmp_path / "b").read_bytes() == b"2"
    events.clear()
    files.atomic_write_bytes(tmp_path / "c", b"3")
    assert events == ["c", "sync"]


def test_a_save_completed_after_a_crash_syncs_before_its_journal_goes(tmp_path, monkeypatch):
    (tmp_path / ".a.x.tmp").write_bytes(b"new")
    (tmp_path / "j").write_text('{"a": ".a.x.tmp"}')
    events = recording(monkeypatch)
    monkeypatch.setattr(files.Path, "unlink", lambda path, **_: events.append(f"-{path.name}"))
    assert files.finish_writes(tmp_path, "j")
    assert events[:3] == ["a", "sync", "-j"]
