"""The dataset catalog: the datasets the configs name, where each file comes from, and the
SHA-256 it must have.

A data spec that starts with a catalog name ("tinyshakespeare/input.txt", "multi30k") resolves
inside data_root(), and `locate` fetches the dataset first when files are missing (download.py:
nothing half-written is ever left behind). Sources are those the datasets' READMEs name: files
at pinned commits of public GitHub repositories, or one zip archive. ATTNLAB_DATA_MIRROR
replaces them all with a server that has the data folder's own layout, {MIRROR}/{dataset}/{path}
(`python -m http.server` run in a data folder is one), or with such a folder's path. Standard
library only: `attnlab data` must start without loading torch or numpy.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from attnlab.data import download
from attnlab.errors import UserError
from attnlab.files import RUN_FILE, RUN_LOCK, env_folder, user_cache


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset, as stored under data_root()/DATASET/."""

    path: str  # relative to the dataset's folder, '/'-separated
    sha256: str  # of the file's bytes as stored
    size: int | None = None  # bytes; for progress bars and `attnlab data list`
    url: str | None = None  # canonical download; None when it comes from the dataset's archive
    # SHA-256 of the decompressed bytes, also accepted: for a .gz whose canonical copy wraps the
    # same data in a different gzip stream (see mnist's train images)
    gunzip_sha256: str | None = None


@dataclass(frozen=True)
class Archive:
    """A dataset whose canonical source is one zip file: file PATH is member PREFIX + PATH."""

    url: str
    member_prefix: str


@dataclass(frozen=True)
class Manifest:
    """The file list of a dataset with too many files to write out here: a `sha256sum` listing
    shipped in this package (`sha256sum -c` checks a copy), pinned by its own SHA-256."""

    resource: str  # file name inside attnlab/data/
    sha256: str  # of the manifest file itself
    count: int  # files it lists
    size: int  # their total size in bytes


@dataclass(frozen=True)
class Dataset:
    name: str  # also the folder name under data_root()
    description: str
    files: tuple[DataFile, ...] = ()
    manifest: Manifest | None = None  # instead of files
    archive: Archive | None = None  # where files without a url come from

    def entries(self) -> tuple[DataFile, ...]:
        """The dataset's files, read from the manifest where there is one."""
        return self.files if self.manifest is None else _manifest_entries(self.manifest)

    @property
    def size(self) -> int:
        return self.manifest.size if self.manifest else sum(f.size or 0 for f in self.files)

    @property
    def count(self) -> int:
        return self.manifest.count if self.manifest else len(self.files)


def github(repo: str, commit: str, path: str) -> str:
    """A file of a public GitHub repository at a pinned commit: its bytes never change."""
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _from_repo(table: str) -> tuple[DataFile, ...]:
    """DataFiles from a table whose first line is "OWNER/REPO COMMIT FOLDER/" and whose other
    lines are "SHA256 SIZE PATH [NAME IN THE REPOSITORY, where it differs]"."""
    header, *rows = table.strip().splitlines()
    repo, commit, folder = (header.split() + [""])[:3]
    files = []
    for digest, size, path, *renamed in (row.split() for row in rows):
        url = github(repo, commit, folder + (renamed or [path])[0])
        files.append(DataFile(path, digest, int(size), url))
    return tuple(files)


# The source each shared dataset's README names (a repository at a commit, copied byte for byte),
# then `sha256sum` and `stat -c %s` of each file in the shared folder; the READMEs publish most
# of these sums too.
_TINYSHAKESPEARE = _from_repo("""
karpathy/char-rnn 6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e data/tinyshakespeare/
86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed 1115394 input.txt
""")
_MULTI30K = _from_repo("""
multi30k/dataset a3d2e0d26b56f3846f66a952536ffed4e401d05a data/task1/raw/
726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6  637044 train.de.gz
d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f  568929 train.en.gz
f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a   24681 val.de.gz
14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28   21650 val.en.gz
9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8   22890 test_2016_flickr.de.gz
611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9   21077 test_2016_flickr.en.gz
""")
_MNIST = _from_repo("""
pmallari/MNIST cffbed29f2a5bd3b662ffe9cea7c07129fdad5d2
3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c   28881 train-labels-idx1-ubyte.gz
8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6 1648877 t10k-images-idx3-ubyte.gz
f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6    4542 t10k-labels-idx1-ubyte.gz
""")
_SST2 = _from_repo("""
eyalbd2/Reproducing-AutoPrompt 6288fb5bec9c572f2492875ae0111df5b6daed11 glue_data/SST-2/
48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1 3806081 train.tsv train_full.tsv
54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0   94931 dev.tsv
69a938605609b3e6663b4487918fe1565eb293734e6e520d0366d1d412fd2a13  197335 test.tsv
""")
_GPT2_BPE = _from_repo("""
mchen610/minbpe b4fb8b709d8ab1f504006844a263d6ab9f772345
1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5  456318 vocab.bpe
b06c21e4d2e11dc30fa7cb20baae48b883e724d0a6a1dc63886a175d55827fd9 1100125 encoder.json
""")
# The shared train images were rebuilt losslessly from ConvNetJS's PNG batches (mnist's README),
# so their gzip stream is not LeCun's. The repository holds LeCun's own file: the same bytes once
# decompressed, accepted by their SHA-256, which the README publishes.
_MNIST_TRAIN_IMAGES = DataFile(
    "train-images-idx3-ubyte.gz",
    "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    9_719_438,
    github(
        "pmallari/MNIST", "898500a9c856f6f06dd33363e9b012da267368b0", "train-images-idx3-ubyte.gz"
    ),
    gunzip_sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
)
# movie_reviews' 2,000 files are listed in movie_reviews.sha256 beside this module (its SHA-256
# here). They come from NLTK's data package, which the README names; index.xml at this commit of
# nltk_data lists the zip.
_MOVIE_REVIEWS = Manifest(
    "movie_reviews.sha256",
    "ec027a1aca6869cbd47c215bb590d072a988eab62c5f12262659c57a1a9f2cdb",
    count=2000,
    size=7_786_004,
)
_NLTK_MOVIE_REVIEWS = Archive(
    github(
        "nltk/nltk_data",
        "005569f5d91002697c5dfd5bced624209af0b3bb",
        "packages/corpora/movie_reviews.zip",
    ),
    member_prefix="movie_reviews/",
)

DATASETS = (
    Dataset(
        "tinyshakespeare",
        "Shakespeare, 40,000 lines of plain text (char-rnn); character-level GPT",
        _TINYSHAKESPEARE,
    ),
    Dataset(
        "multi30k",
        "German-English image captions, 29,000/1,014/1,000 pairs (task 1); translation",
        _MULTI30K,
    ),
    Dataset(
        "mnist",
        "handwritten digits, 60,000 + 10,000 28x28 images (IDX, gzip); ViT, image-GPT",
        (_MNIST_TRAIN_IMAGES, *_MNIST),
    ),
    Dataset(
        "sst2",
        "GLUE SST-2, 67,349/872/1,821 movie-review sentences, positive or negative; classification",
        _SST2,
    ),
    Dataset(
        "movie_reviews",
        "Pang & Lee polarity v2.0, 2,000 reviews in pos/ and neg/; MLM pre-training, classifying",
        manifest=_MOVIE_REVIEWS,
        archive=_NLTK_MOVIE_REVIEWS,
    ),
    Dataset(
        "gpt2-bpe",
        "GPT-2's byte-level BPE vocabulary (vocab.bpe, encoder.json); tokenizer parity",
        _GPT2_BPE,
    ),
)
CATALOG: dict[str, Dataset] = {d.name: d for d in DATASETS}


def data_root() -> Path:
    """Where datasets live: $ATTNLAB_DATA, else ~/.cache/attnlab/data (in $XDG_CACHE_HOME where
    set; a cache: whatever is deleted there is fetched again when a command needs it)."""
    return env_folder("ATTNLAB_DATA", user_cache("attnlab", "data"))


def lookup(name: str) -> Dataset:
    """The catalog entry called `name` (a folder's trailing / allowed, as a shell completes
    it), or a UserError that lists the names there are."""
    if name.rstrip("/") not in CATALOG:
        raise UserError(f"unknown dataset {name!r}; the catalog has: {', '.join(CATALOG)}")
    return CATALOG[name.rstrip("/")]


def missing_files(name: str, root: str | os.PathLike | None = None) -> list[DataFile]:
    """The files of dataset `name` not yet under ROOT/NAME (root: data_root())."""
    dataset = lookup(name)
    folder = _root(root) / dataset.name
    return [entry for entry in dataset.entries() if not (folder / entry.path).is_file()]


def dataset_present(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether every file of the dataset is there. Only an existence check, so that a shared,
    read-only copy is used as it is; `get` verifies the checksums."""
    return not missing_files(name, root)


def get(name: str, root: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Make ROOT/NAME hold every file of the dataset with its pinned SHA-256; return the folder.
    Missing files are downloaded (a tqdm bar on stderr when `progress` and stderr is a
    terminal; SIGTERM stops it as Ctrl-C does, leaving nothing half-written). Files already
    there are verified but never replaced: one that differs may be someone's edited copy, so it
    is an error that names it. Temporary files that a killed download left are removed."""
    dataset = lookup(name)
    folder = _root(root) / dataset.name
    download.remove_stale_parts(dataset, folder)
    missing = []
    for entry in dataset.entries():
        path = folder / entry.path
        if not path.is_file():
            missing.append(entry)
        elif problem := download.mismatch(path, entry, download.sha256_file(path)):
            raise _error(dataset, folder, f"{problem}; delete it to download it again")
    if missing:
        try:
            download.fetch(dataset, folder, missing, progress)
        except download.Failure as failure:
            raise _error(dataset, folder, *failure.args) from None
        except OSError as error:  # network errors are Failures by now: this is the local disk
            raise download.unwritten(dataset, error) from None
    return folder


def locate(
    spec: str,
    root: str | os.PathLike | None = None,
    progress: bool = True,
    on_fetch: Callable[[Dataset, Path], None] | None = None,
) -> str:
    """The absolute path a data spec names inside the data root ("tinyshakespeare/input.txt",
    "multi30k", either with a ":GLOB" after it). A spec that starts with a catalog name is
    fetched first when the dataset is incomplete (`on_fetch(dataset, folder)` is called before,
    so that the caller can say so); another spec found under the root resolves there; a spec
    found nowhere comes back unchanged, for the caller to report."""
    base = _root(root)
    path, pattern = _split(spec, base)
    parts = PurePosixPath(path).parts
    if not parts or Path(path).is_absolute():
        return spec
    if parts[0] in CATALOG:
        if not dataset_present(parts[0], base):
            if on_fetch is not None:
                on_fetch(CATALOG[parts[0]], base / parts[0])
            get(parts[0], base, progress)
    elif not (base / path).exists():
        return spec
    return _join(base / path, pattern)


def _root(root: str | os.PathLike | None) -> Path:
    return data_root() if root is None else Path(root).expanduser().absolute()


def _error(dataset: Dataset, folder: Path, reason: str, url: str | None = None) -> UserError:
    tried = f"; tried {url}" if url else ""
    return UserError(f"cannot get dataset '{dataset.name}': {reason} (looked in {folder}{tried})")


@functools.cache
def _manifest_entries(manifest: Manifest) -> tuple[DataFile, ...]:
    try:
        data = importlib.resources.files("attnlab.data").joinpath(manifest.resource).read_bytes()
    except FileNotFoundError:
        raise UserError(f"attnlab's file list {manifest.resource} is missing: reinstall") from None
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise UserError(f"attnlab's file list {manifest.resource} is corrupt: reinstall")
    rows = (line.split("  ", 1) for line in data.decode("utf-8").splitlines())
    return tuple(DataFile(path, digest) for digest, path in rows)


def resolve(spec: str, log: Callable[[str], None] | None = None) -> str:
    """A data spec as given when it exists on disk (or is 'stdlib'); else its path inside
    data_root() (locate), downloading a named dataset first ("tinyshakespeare/input.txt",
    "multi30k"), with one note through `log`, since a download takes a while. A run folder
    (`--out sst2`) is never data: the data root's dataset of that name is read instead, and
    where there is none the spec is refused."""
    if spec == "stdlib":
        return spec
    if not spec:  # Path("") is the current folder: no one means that by it
        raise UserError("the data is empty: give a file, a folder or a dataset's name")
    run_folder = None
    for path in (Path(spec), Path(split_glob(spec)[0])):
        if _is_run_folder(path):
            run_folder = path
            break
        if path.exists():
            return spec

    def announce(dataset: Dataset, folder: Path) -> None:
        if log is not None:
            log(
                f"{spec} is not here: getting dataset '{dataset.name}' "
                f"({download.human_size(dataset.size)}) into {folder}"
            )

    found = locate(spec, on_fetch=announce)
    if run_folder is not None:
        if found == spec:  # in no data root either
            raise UserError(f"{run_folder} is a run folder (it holds {RUN_FILE}), not data")
        if log is not None:
            log(f"note: {run_folder} is a run folder, not data: reading {found}")
    return found


def _is_run_folder(path: Path) -> bool:
    """Whether `path` is a training run's folder: it holds run.json, or a run is writing it."""
    return (path / RUN_FILE).is_file() or (path / RUN_LOCK).exists()


def _on_disk(path: Path) -> bool:
    """Whether `path` is a file or folder here that may be data: it exists, not a run folder."""
    return path.exists() and not _is_run_folder(path)


def split_glob(spec: str) -> tuple[str, str]:
    """A "DIR:GLOB" spec as (DIR, GLOB), the glob after the last colon, DIR "." where it is
    empty (":*.txt", the current folder's); (spec, "") without one."""
    path, colon, pattern = spec.rpartition(":")
    return (path or ".", pattern) if colon else (spec, "")


def _split(spec: str, folder: Path = Path()) -> tuple[str, str]:
    """split_glob, but a file or folder in `folder` named whole has no glob (a name's colon)."""
    return (spec, "") if _on_disk(folder / spec) else split_glob(spec)


def _join(path: str | os.PathLike, pattern: str) -> str:
    """split_glob's inverse: a path with its ":GLOB" when there is one."""
    return f"{path}:{pattern}" if pattern else str(path)


def here(spec: str) -> str:
    """A spec naming a file or folder on disk here with that path made absolute (so that a run
    resumed from another directory reads it again), or relative to the data root where it lies
    inside (as a name found there is kept: another machine's data root holds it); any other spec
    (a dataset's name, 'stdlib', a task) unchanged."""
    path, pattern = _split(spec)
    if not path or spec == "stdlib" or spec.startswith("task:") or not _on_disk(Path(path)):
        return spec
    full, root = Path(os.path.abspath(path)), data_root()
    if full != root and full.is_relative_to(root):
        full = full.relative_to(root)
    return _join(full.as_posix(), pattern)


def in_root(spec: str | None) -> str | None:
    """A path a run keeps relative (here's) as read: the data root's, made absolute, whatever the
    current folder holds; any other spec (a name (is_name), a path the root lacks (an older
    run's), None) unchanged."""
    named = not isinstance(spec, str) or is_name(spec)
    path, pattern = (".", "") if named else _split(spec, data_root())
    found = data_root() / path  # not the root itself: here keeps that absolute
    return _join(found, pattern) if path != "." and _on_disk(found) else spec


def is_name(spec: str) -> bool:
    """Whether a data spec names rather than locates: a task, a name without a folder, a suffix
    or a glob ("stdlib", "shapes", a dataset's), or a dataset's files."""
    if spec.startswith("task:"):
        return True
    path, pattern = split_glob(spec)
    parts = Path(path).parts or ("",)  # none for ".": ":GLOB", its current folder's files
    return not (pattern or Path(path).suffix or len(parts) > 1) or parts[0] in CATALOG


def where(spec: str) -> str | None:
    """The real path of what a spec reads (with its ":GLOB"), when that is on disk here or
    under the data root, so that two names of one file compare equal; None when it is neither
    (nothing is fetched)."""
    for folder in (Path(), data_root()):
        path, pattern = _split(spec, folder)
        if path and _on_disk(folder / path):
            return _join(os.path.realpath(folder / path), pattern)
    return None
