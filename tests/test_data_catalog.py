"""The dataset catalog and `attnlab data`: downloads from a local HTTP server on 127.0.0.1, never
the network. A small fake dataset, registered for the test, stands in for the real ones; the
shared data folder, where it exists, is served as a mirror for one real fetch."""

import functools
import gzip
import hashlib
import http.server
import io
import os
import signal
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest

from attnlab.cli import main
from attnlab.cli.options import data_root, resolve_data_path
from attnlab.data import catalog, download
from attnlab.data.catalog import Archive, DataFile, Dataset
from attnlab.errors import UserError
from attnlab.files import RUN_FILE

FILES = {"a.txt": b"alpha\n" * 100, "sub/b.txt": b"beta\n" * 3000}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server(http.server.ThreadingHTTPServer):
    """Serves `routes` (URL path -> bytes) and records each path asked for. A path in `cut`
    announces its full length but sends half, then hangs up: a dropped connection."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes, self.requests, self.cut = {}, [], set()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in self.server.cut else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """`python -m http.server` in a data folder: the mirror layout, DATASET/FILE."""

    def log_message(self, *args):
        pass


def serve(server):
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return thread


@pytest.fixture
def server():
    server = Server()
    thread = serve(server)
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def fake(server, monkeypatch, tmp_path):
    """A two-file dataset 'fake' in the catalog, served at SERVER/canon/, and an empty data
    folder; no mirror."""
    for path, body in FILES.items():
        server.routes[f"/canon/{path}"] = body
    files = tuple(
        DataFile(path, sha256(body), len(body), f"{server.url}/canon/{path}")
        for path, body in FILES.items()
    )
    dataset = Dataset("fake", "a test dataset", files)
    monkeypatch.setitem(catalog.CATALOG, "fake", dataset)
    monkeypatch.setattr(catalog, "DATASETS", (*catalog.DATASETS, dataset))
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("ATTNLAB_DATA_MIRROR", raising=False)
    return dataset


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, hidden temporaries included."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(argv, capsys):
    """`attnlab ARGV` in-process, through the real entry point and its error handling:
    (exit code, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_get_downloads_verifies_and_then_downloads_nothing(fake, server, tmp_path):
    folder = catalog.get("fake", progress=False)
    assert folder == tmp_path / "data" / "fake"
    assert contents(folder) == FILES
    assert sorted(server.requests) == ["/canon/a.txt", "/canon/sub/b.txt"]
    assert catalog.dataset_present("fake")
    catalog.get("fake", progress=False)
    assert len(server.requests) == 2


def test_a_checksum_mismatch_leaves_nothing_behind(fake, server, tmp_path):
    server.routes["/canon/sub/b.txt"] = b"tampered\n"
    with pytest.raises(UserError) as error:
        catalog.get("fake", progress=False)
    message = str(error.value)
    assert "'fake'" in message and "sub/b.txt has SHA-256" in message and "\n" not in message
    assert f"tried {server.url}/canon/sub/b.txt" in message
    assert "sub/b.txt" not in contents(tmp_path / "data" / "fake")  # a.txt, verified, may stay
    assert not [p for p in (tmp_path / "data").rglob("*") if p.name.startswith(".")]


def test_a_dropped_connection_leaves_nothing_behind(fake, server, tmp_path):
    server.cut.add("/canon/a.txt")
    with pytest.raises(UserError, match=r"dropped after 300 of 600 bytes") as error:
        catalog.get("fake", progress=False)
    assert f"(looked in {tmp_path / 'data' / 'fake'}; tried {server.url}" in str(error.value)
    assert not list((tmp_path / "data").rglob("*"))  # no file, and no empty folder


def test_a_file_already_there_with_another_checksum_is_reported_not_replaced(fake, tmp_path):
    folder = tmp_path / "data" / "fake"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"my own edits\n")
    with pytest.raises(UserError, match="a.txt has SHA-256 .*; delete it to download it again"):
        catalog.get("fake", progress=False)
    assert (folder / "a.txt").read_bytes() == b"my own edits\n"


def test_the_mirror_replaces_the_sources(fake, server, monkeypatch, tmp_path):
    for path, body in FILES.items():
        server.routes[f"/mirror/fake/{path}"] = body
    monkeypatch.setenv("ATTNLAB_DATA_MIRROR", server.url + "/mirror/")
    assert contents(catalog.get("fake", progress=False)) == FILES
    assert sorted(server.requests) == ["/mirror/fake/a.txt", "/mirror/fake/sub/b.txt"]


@pytest.mark.parametrize(
    "mirror, reason",
    [(None, "Connection refused"), ("nothing://here", "unknown url type"), ("http://[::1", "IPv6")],
)
def test_an_unreachable_mirror_is_one_line_and_exit_code_2(
    fake, capsys, monkeypatch, tmp_path, mirror, reason
):
    mirror = mirror or f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("ATTNLAB_DATA_MIRROR", mirror)
    code, out, err = run_cli(["data", "get", "fake"], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("attnlab: error: cannot get dataset 'fake': ") and reason in line
    assert f"tried {mirror}/fake/a.txt)" in line and str(tmp_path / "data" / "fake") in line
    assert not list((tmp_path / "data").rglob("*"))  # no file, and no empty folder


def test_locate_fetches_on_demand(fake, server, tmp_path):
    root, announced = tmp_path / "data", []
    spec = catalog.locate("fake/sub/b.txt", on_fetch=lambda d, f: announced.append((d.name, f)))
    assert (
        spec == str(root / "fake" / "sub" / "b.txt")
        and Path(spec).read_bytes() == FILES["sub/b.txt"]
    )
    assert announced == [("fake", root / "fake")]
    assert catalog.locate("fake:**/*.txt", on_fetch=announced.append) == f"{root / 'fake'}:**/*.txt"
    assert len(announced) == 1 and len(server.requests) == 2  # present: nothing fetched again
    assert catalog.locate("not-in-the-catalog/x.txt") == "not-in-the-catalog/x.txt"
    (root / "mine.txt").write_text("text")  # not a catalog name, but found in the data folder
    assert catalog.locate("mine.txt") == str(root / "mine.txt")


def test_resolve_data_path_keeps_local_paths_and_fetches_catalog_names(fake, tmp_path, capsys):
    local = tmp_path / "corpus.txt"
    local.write_text("hello")
    assert resolve_data_path(str(local)) == str(local)
    assert resolve_data_path("stdlib") == "stdlib"
    assert resolve_data_path("fake/a.txt") == str(tmp_path / "data" / "fake" / "a.txt")
    assert "getting dataset 'fake'" in capsys.readouterr().err
    assert data_root() == tmp_path / "data"


def test_data_root_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTNLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert catalog.data_root() == tmp_path / ".cache" / "attnlab" / "data"


def test_an_archive_source_extracts_and_verifies_each_member(fake, server, monkeypatch, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, body in FILES.items():
            archive.writestr(f"fake-1.0/{path}", body)
        archive.writestr("fake-1.0/README", b"not part of the dataset")
    server.routes["/fake.zip"] = buffer.getvalue()
    files = tuple(DataFile(path, sha256(body)) for path, body in FILES.items())
    archived = Dataset(
        "fake", "zipped", files, archive=Archive(f"{server.url}/fake.zip", "fake-1.0/")
    )
    monkeypatch.setitem(catalog.CATALOG, "fake", archived)
    assert contents(catalog.get("fake", progress=False)) == FILES
    tampered = Dataset(
        "fake", "zipped", (DataFile("a.txt", sha256(b"other")),), archive=archived.archive
    )
    monkeypatch.setitem(catalog.CATALOG, "fake", tampered)
    (tmp_path / "data" / "fake" / "a.txt").unlink()
    with pytest.raises(UserError, match=r"a.txt has SHA-256 .*tried .*/fake.zip\)"):
        catalog.get("fake", progress=False)
    assert contents(tmp_path / "data" / "fake") == {"sub/b.txt": FILES["sub/b.txt"]}


def test_a_gz_file_is_also_accepted_by_the_sha256_of_its_contents(fake, server, monkeypatch):
    data = b"the same images\n" * 100
    ours, theirs = gzip.compress(data, mtime=0), gzip.compress(data, compresslevel=1, mtime=1)
    assert ours != theirs
    server.routes["/images.gz"] = theirs
    url = f"{server.url}/images.gz"
    entry = DataFile("images.gz", sha256(ours), url=url, gunzip_sha256=sha256(data))
    monkeypatch.setitem(catalog.CATALOG, "fake", Dataset("fake", "gzip", (entry,)))
    assert gzip.decompress((catalog.get("fake", progress=False) / "images.gz").read_bytes()) == data


def test_data_list_and_data_get_through_the_cli(fake, server, capsys, monkeypatch, tmp_path):
    code, out, _ = run_cli(["data", "list"], capsys)
    assert code == 0 and f"data folder: {tmp_path / 'data'}" in out
    row = next(line for line in out.splitlines() if line.startswith("fake "))
    assert row.split()[1:5] == ["15.6", "kB", "2", "no"] and row.endswith("a test dataset")
    assert {line.split()[0] for line in out.splitlines()[2:]} >= set(catalog.CATALOG)
    code, out, err = run_cli(["data", "get", "fake"], capsys)
    assert code == 0 and out == f"{tmp_path / 'data' / 'fake'}\n"
    assert "getting fake: 2 of 2 files" in err and "SHA-256 verified" in err
    code, out, _ = run_cli(["data", "list"], capsys)
    assert next(line for line in out.splitlines() if line.startswith("fake ")).split()[4] == "yes"
    code, _, err = run_cli(["data", "get", "no-such-set"], capsys)
    assert code == 2 and "unknown dataset 'no-such-set'; the catalog has: tinyshakespeare" in err
    code, _, err = run_cli(["data", "get"], capsys)
    assert code == 2 and "--all" in err


def test_the_catalog_is_well_formed():
    assert [d.name for d in catalog.DATASETS] == list(catalog.CATALOG)
    for dataset in catalog.DATASETS:
        entries = dataset.entries()
        assert len(entries) == dataset.count and len({e.path for e in entries}) == len(entries)
        for entry in entries:
            assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
            assert not entry.path.startswith("/") and ".." not in entry.path.split("/")
            url = entry.url or dataset.archive.url
            assert url.startswith("https://raw.githubusercontent.com/"), url
            commit = url.split("/")[5]
            assert len(commit) == 40 and int(commit, 16) >= 0, url  # a pinned commit
    assert catalog.lookup("sst2").files[0].url.endswith("/glue_data/SST-2/train_full.tsv")
    assert catalog.lookup("movie_reviews").entries()[0].path == "neg/cv000_29416.txt"
    assert catalog.lookup("movie_reviews/") is catalog.lookup("movie_reviews")  # as completed


def test_the_shared_data_folder_matches_the_catalog(shared_data, monkeypatch):
    monkeypatch.setenv("ATTNLAB_DATA_MIRROR", f"http://127.0.0.1:{closed_port()}")  # hermetic
    for dataset in catalog.DATASETS:
        if catalog.dataset_present(dataset.name, shared_data):
            assert catalog.get(dataset.name, shared_data, progress=False)


SHIPPED_CONFIG = str(Path(__file__).resolve().parent.parent / "configs/gpt_shakespeare_char.toml")
QUICK = ["--max-iters", "2", "--eval-iters", "1", "--no-compile", "--device", "cpu"]


def test_training_the_shipped_config_fetches_its_dataset(
    shared_data, monkeypatch, tmp_path, capsys
):
    """On a machine without the data folder, `attnlab train gpt --config
    configs/gpt_shakespeare_char.toml` gets tiny Shakespeare (here from the shared folder served
    as a mirror) and trains."""
    if not catalog.dataset_present("tinyshakespeare", shared_data):
        pytest.skip(f"tinyshakespeare not found in {shared_data}")
    handler = functools.partial(QuietFiles, directory=str(shared_data))
    mirror = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = serve(mirror)
    try:
        monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path / "data"))
        monkeypatch.setenv("ATTNLAB_DATA_MIRROR", f"http://127.0.0.1:{mirror.server_address[1]}")
        argv = ["train", "gpt", "--config", SHIPPED_CONFIG, "--out", str(tmp_path / "run")]
        code, _, err = run_cli([*argv, *QUICK], capsys)
    finally:
        mirror.shutdown()
        mirror.server_close()
        thread.join()
    assert code == 0, err
    assert "getting dataset 'tinyshakespeare'" in err
    path = tmp_path / "data" / "tinyshakespeare" / "input.txt"
    assert sha256(path.read_bytes()) == catalog.lookup("tinyshakespeare").files[0].sha256
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_training_without_data_or_network_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ATTNLAB_DATA_MIRROR", f"http://127.0.0.1:{closed_port()}")
    argv = ["train", "gpt", "--config", SHIPPED_CONFIG, "--out", str(tmp_path / "run"), *QUICK]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("attnlab: error: cannot get dataset 'tinyshakespeare'")
    assert str(tmp_path / "data" / "tinyshakespeare") in line
    assert contents(tmp_path / "data") == {} and not (tmp_path / "run").exists()


def test_a_run_folder_is_never_taken_for_data(fake, server, monkeypatch, tmp_path):
    """`--out fake` leaves ./fake/run.json: a later run's `--data fake` still reads the dataset;
    a run folder with no dataset of its name is refused."""
    root = catalog.get("fake", progress=False)
    work = tmp_path / "work"
    (work / "fake" / "best").mkdir(parents=True)
    (work / "fake" / RUN_FILE).write_text("{}")
    monkeypatch.chdir(work)
    notes = []
    assert catalog.resolve("fake", notes.append) == str(root)
    assert notes == [f"note: fake is a run folder, not data: reading {root}"]
    assert catalog.resolve("fake:**/*.txt") == f"{root}:**/*.txt"
    assert catalog.here("fake") == "fake" and catalog.where("fake") == str(root)
    (root.parent / "mine").mkdir()  # not a catalog name, but in the data root
    (work / "mine").mkdir()
    (work / "mine" / RUN_FILE).write_text("{}")
    assert catalog.resolve("mine") == str(root.parent / "mine")
    (work / "fake").rename(work / "finished")
    for spec in ("finished", str(work / "finished"), "finished:*.txt"):
        with pytest.raises(UserError, match=r"finished is a run folder \(it holds run.json\)"):
            catalog.resolve(spec)


def test_sigterm_during_a_download_leaves_nothing_behind(fake, monkeypatch, tmp_path):
    """SIGTERM is Ctrl-C while a dataset downloads, so its temporary file goes; the handler
    before is back afterwards."""
    real_copy, told = download._copy, []

    def terminated_midway(source, out, bar=None):
        out.write(source.read(10))
        os.kill(os.getpid(), signal.SIGTERM)
        return real_copy(source, out, bar)

    def tell(*args):
        told.append(args)

    monkeypatch.setattr(download, "_copy", terminated_midway)
    before = signal.signal(signal.SIGTERM, tell)
    try:
        with pytest.raises(KeyboardInterrupt):
            catalog.get("fake", progress=False)
        assert signal.getsignal(signal.SIGTERM) is tell
    finally:
        signal.signal(signal.SIGTERM, before)
    assert told == [] and not list((tmp_path / "data").rglob("*"))


def test_get_removes_what_a_killed_download_left(fake, tmp_path):
    folder = tmp_path / "data" / "fake"
    (folder / "sub").mkdir(parents=True)
    stale = [folder / ".a.txt.k1ll3d_x.part", folder / "sub" / ".b.txt.abc.part"]
    stale.append(folder / "..archive.q9z_w2.part")
    fresh = folder / ".a.txt.running.part"  # another process's download, under way
    others = [folder / ".notes.txt.x1.part", folder / "keep.part"]  # not the dataset's
    old = time.time() - 24 * 3600
    for path in (*stale, fresh, *others):
        path.write_bytes(b"half")
        if path is not fresh:
            os.utime(path, (old, old))
    catalog.get("fake", progress=False)
    assert not any(path.exists() for path in stale)
    assert fresh.exists() and all(path.exists() for path in others)
