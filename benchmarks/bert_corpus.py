"""The English pre-training text of the BERT recipes, from datasets attnlab's catalog holds:
the movie reviews, the SST-2 *training* sentences without their labels, and Multi30k's English
captions (never SST-2's dev or test sentences). Lower-cased, like SST-2; one sentence per line.

    python benchmarks/bert_corpus.py [OUT_DIR]   (default: $ATTNLAB_CACHE/bert-corpus)
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

from attnlab.data import catalog
from attnlab.data.classification import read_tsv
from attnlab.files import atomic_write_bytes, cache_dir


def build(out: Path) -> Path:
    reviews = Path(catalog.resolve("movie_reviews"))
    sst2 = Path(catalog.resolve("sst2"))
    multi30k = Path(catalog.resolve("multi30k"))
    parts = {
        "movie_reviews.txt": "".join(
            p.read_text(encoding="utf-8", errors="replace") for p in sorted(reviews.rglob("*.txt"))
        ),
        "sst2_train_sentences.txt": "\n".join(read_tsv(sst2 / "train.tsv")[0]),
        "multi30k_en.txt": gzip.decompress((multi30k / "train.en.gz").read_bytes()).decode(),
    }
    for name, text in parts.items():
        atomic_write_bytes(out / name, text.lower().encode())
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out", nargs="?", type=Path, help="folder (default: $ATTNLAB_CACHE/bert-corpus)"
    )
    print(build(parser.parse_args().out or cache_dir() / "bert-corpus"))
