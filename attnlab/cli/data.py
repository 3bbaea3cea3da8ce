"""`attnlab data list` and `attnlab data get NAME...`: the datasets the configs use, by name;
`attnlab data cache`: what the cache of derived files holds, and clearing it.

Notes go to stderr and the dataset folders to stdout, so `cd "$(attnlab data get mnist)"` works.
Nothing here imports torch or numpy: listing and downloading start at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import stat
import sys
import time
from pathlib import Path

from attnlab.data import catalog, download
from attnlab.errors import UserError
from attnlab.files import STALE_S, cache_dir

WHERE = "$ATTNLAB_DATA, else ~/.cache/attnlab/data"
# The folders of $ATTNLAB_CACHE, each made again as commands need it (the cost: time)
CACHED = {
    "tokens": "encoded corpora: token ids for training and evaluation",
    "lines": "encoded sentences for BERT's data",
    "tokenizers": "tokenizers learned for runs",
    "kernels": "built CPU kernels",
    "decoding": "compiled decoding steps (the 32 newest are kept)",
}
# the names attnlab gives them (a hash; temporary ones hidden), so that a cache folder given
# wrongly (ATTNLAB_CACHE=~) has none of its other files counted or deleted
CACHE_FILE = re.compile(r"\.?(cpu_kernels-)?[0-9a-f]{24,}\..*|\.build\.lock")


def register(subparsers) -> None:
    from attnlab.cli import COMMANDS, HelpFormatter

    parser = subparsers.add_parser(
        "data",
        formatter_class=HelpFormatter,
        help=COMMANDS["data"][1],
        description="The datasets the configs name, by name: which are present, and a download "
        "that checks every file's SHA-256.\n"
        f"They live in {WHERE}. A data path that starts with a dataset's name "
        "(tinyshakespeare/input.txt, multi30k) resolves there, and is downloaded on first use.\n"
        "ATTNLAB_DATA_MIRROR=URL downloads from a server (or copies from a folder) laid out "
        "like the data folder, URL/DATASET/FILE, instead of each dataset's source.\n"
        "`data cache` shows (and --clear frees) the files derived from them, in $ATTNLAB_CACHE.\n"
        "examples:\n  attnlab data list\n  attnlab data get tinyshakespeare multi30k\n"
        "  ATTNLAB_DATA=~/data attnlab data get --all",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        formatter_class=HelpFormatter,
        help="the catalog: sizes, file counts, which datasets are present",
        description=f"A table of the catalog's datasets and whether each is present in {WHERE}.",
    )
    listing.set_defaults(handler=list_datasets)
    getting = actions.add_parser(
        "get",
        formatter_class=HelpFormatter,
        help="download datasets and verify their checksums",
        description="Download the missing files of each dataset named, check every file's "
        "SHA-256 (those already present too), and print each dataset's folder.",
    )
    getting.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="datasets, as `data list` names them (default: none)",
    )
    getting.add_argument("--all", action="store_true", help="every dataset in the catalog")
    getting.set_defaults(handler=get_datasets)
    caching = actions.add_parser(
        "cache",
        formatter_class=HelpFormatter,
        help="what the cache of derived files holds; --clear empties parts of it",
        description="The files attnlab derives and keeps between runs, in $ATTNLAB_CACHE (else "
        "~/.cache/attnlab), by kind: encoded corpora, learned tokenizers, built kernels. "
        "Each is made again when a command needs it. The datasets (`data list`) are not part "
        "of it.\nexamples:\n  attnlab data cache\n  attnlab data cache --clear tokens,lines",
    )
    caching.add_argument(
        "--clear",
        metavar="KINDS",
        help=f"comma-separated kinds to delete ({', '.join(CACHED)}) or all; what a running "
        "command is writing is left to it",
    )
    caching.set_defaults(handler=cache_command)


def data_folder() -> Path:
    """catalog.data_root(), refused in one line when it is a file: every dataset would seem
    absent, and none could be fetched."""
    root = catalog.data_root()
    if root.exists() and not root.is_dir():
        where = " (ATTNLAB_DATA)" if os.environ.get("ATTNLAB_DATA") else ""
        raise UserError(f"the data folder {root}{where} is a file, not a folder")
    return root


def list_datasets(args: argparse.Namespace) -> int:
    root = data_folder()
    rows = [("NAME", "SIZE", "FILES", "PRESENT", "DESCRIPTION")]
    for dataset in catalog.DATASETS:
        missing = len(catalog.missing_files(dataset.name, root))
        present = "yes" if not missing else f"{dataset.count - missing} of {dataset.count}"
        present = "no" if missing == dataset.count else present
        size, count = download.human_size(dataset.size), str(dataset.count)
        rows.append((dataset.name, size, count, present, dataset.description))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"data folder: {root}")
    for name, size, count, present, description in rows:
        print(
            f"{name:<{widths[0]}}  {size:>{widths[1]}}  {count:>{widths[2]}}  "
            f"{present:<{widths[3]}}  {description}"
        )
    return 0


def get_datasets(args: argparse.Namespace) -> int:
    if args.all and args.names:
        raise UserError("give dataset names or --all, not both")
    names = list(catalog.CATALOG) if args.all else list(dict.fromkeys(args.names))
    if not names:
        raise UserError("name the datasets to get (`attnlab data list` shows them) or give --all")
    datasets = [catalog.lookup(name) for name in names]  # a typo fails before any download
    root = data_folder()
    mirror = os.environ.get("ATTNLAB_DATA_MIRROR")
    for dataset in datasets:
        missing = catalog.missing_files(dataset.name, root)
        if missing:
            source = f"from {mirror}" if mirror else "from its source"
            print(
                f"attnlab: getting {dataset.name}: {len(missing)} of {files(dataset.count)} "
                f"{source} into {root / dataset.name}",
                file=sys.stderr,
                flush=True,
            )
        folder = catalog.get(dataset.name, root)
        print(f"attnlab: {dataset.name}: {files(dataset.count)}, SHA-256 verified", file=sys.stderr)
        print(folder, flush=True)
    return 0


def files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def cache_command(args: argparse.Namespace) -> int:
    root = cache_dir()
    if root.exists() and not root.is_dir():
        raise UserError(f"the cache folder {root} (ATTNLAB_CACHE) is a file, not a folder")
    if args.clear is not None:
        kinds = [k for name in args.clear.split(",") for k in (CACHED if name == "all" else [name])]
        if unknown := [kind for kind in kinds if kind not in CACHED]:
            raise UserError(
                f"--clear: unknown kind(s) {', '.join(map(repr, unknown))}; known: "
                f"{', '.join(CACHED)}, or all"
            )
        for kind in dict.fromkeys(kinds):
            found = {f: i for f, i in _cache_files(root / kind).items() if not _written(f, i)}
            for file in found:
                file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a command wrote a file there meanwhile
                if (root / kind).is_dir() and not any((root / kind).iterdir()):
                    (root / kind).rmdir()
            size = download.human_size(sum(info.st_size for info in found.values()))
            note = f"attnlab: cleared {kind}: {files(len(found))}, {size}"
            print(note, file=sys.stderr)
    print(f"cache folder: {root}")
    rows = []
    for kind, what in CACHED.items():
        found = _cache_files(root / kind)
        rows.append((kind, len(found), sum(info.st_size for info in found.values()), what))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows), ""))
    table = [("KIND", "FILES", "SIZE", "WHAT")]
    table += [(kind, str(n), download.human_size(size), what) for kind, n, size, what in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for kind, count, size, what in table:
        print(f"{kind:<{widths[0]}}  {count:>{widths[1]}}  {size:>{widths[2]}}  {what}".rstrip())
    return 0


def _written(file: Path, info: os.stat_result) -> bool:
    """Whether a temporary file (a hidden one) is being written: touched in the last STALE_S.
    Deleted, it would fail the command writing it, at its rename."""
    return file.name.startswith(".") and time.time() - info.st_mtime < STALE_S


def _cache_files(folder: Path) -> dict[Path, os.stat_result]:
    """attnlab's files in a folder of the cache, with their sizes and times: none where it does
    not exist; none that another command renamed or deleted while they were listed."""
    found = {}
    for file in folder.iterdir() if folder.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            info = file.lstat()
            if CACHE_FILE.fullmatch(file.name) and not stat.S_ISDIR(info.st_mode):
                found[file] = info
    return found
