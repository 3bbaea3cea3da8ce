"""Tokenizer speed: our BPE trainer vs Hugging Face `tokenizers`, our encoders vs tiktoken.

    python benchmarks/tokenizer_speed.py [--corpus stdlib|stdlib-all|SPEC] [--vocab-size 4096]
    python benchmarks/tokenizer_speed.py --wordpiece --corpus movie_reviews [--bert-vocab TXT]

Training: attnlab's `BPETokenizer.train` and Hugging Face's byte-level BPE trainer, both with
GPT-2's pre-tokenization, the same vocabulary size, the same corpus and --workers cores (HF via
RAYON_NUM_THREADS), timed from a list of strings in memory to a finished vocabulary.

Encoding (one thread, the whole corpus, one file per call, fastest of --repeats runs): our fast
path (`encode`: tiktoken running our merges behind our wrapper), tiktoken called directly with
the same ranks, our reference encoder (pure Python, from a cold cache, on the first
--reference-mb MB), and the same three on GPT-2's vocabulary when $ATTNLAB_DATA/gpt2-bpe/ has it.

--corpus stdlib is attnlab's built-in corpus (standard library sources, tests left out);
stdlib-all keeps the tests (the corpus the issue measured Hugging Face on).

--wordpiece times BERT's WordPiece encoding instead, one line of the corpus per call (a
classifier's examples) from a cold cache: attnlab's `encode`, its per-character
`encode_reference`, and Hugging Face's Rust BertWordPieceTokenizer, all on the vocabulary of
--bert-vocab (a vocab.txt, uncased) or else on one of 30,522 tokens that HF learns from the corpus.
"""

from __future__ import annotations

import argparse
import os
import platform
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--corpus",
        default="stdlib",
        help="stdlib, stdlib-all (with tests), or any attnlab corpus spec or dataset name",
    )
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary to train")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="cores for training (both trainers)",
    )
    parser.add_argument(
        "--reference-mb", type=float, default=3.0, help="MB of text for the reference encoder"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="timed runs per encoding row; the fastest is reported",
    )
    parser.add_argument("--skip-hf", action="store_true", help="do not train with HF tokenizers")
    parser.add_argument("--wordpiece", action="store_true", help="time WordPiece encoding only")
    parser.add_argument("--bert-vocab", type=Path, help="vocab.txt for --wordpiece (uncased)")
    return parser.parse_args()


def load_texts(spec: str) -> list[str]:
    from attnlab.cli.options import resolve_data_path
    from attnlab.data.corpus import Corpus

    if spec != "stdlib-all":
        return list(Corpus(resolve_data_path(spec)))  # a dataset's name, as attnlab's commands
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts[:-1]))
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def timed(
    fn: Callable[[], object], repeats: int = 1, before: Callable[[], object] = lambda: None
) -> tuple[float, object]:
    """Fastest of `repeats` runs of `fn` (`before` runs untimed ahead of each), and its result."""
    best = float("inf")
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def train_hf(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def prefix(texts: list[str], megabytes: float) -> list[str]:
    """The first texts, up to about `megabytes` of UTF-8."""
    out, size = [], 0
    for text in texts:
        if size >= megabytes * 1e6:
            break
        out.append(text)
        size += len(text.encode("utf-8", "replace"))
    return out


def mb(texts: list[str]) -> float:
    return sum(len(t.encode("utf-8", "replace")) for t in texts) / 1e6


def encoder_rows(
    name: str, tokenizer, texts: list[str], reference_mb: float, repeats: int
) -> list[tuple]:
    """(row name, seconds, MB, tokens) for our fast path, raw tiktoken and our reference."""
    import tiktoken

    ranks = {tokenizer.token_bytes(i): i for i in range(256 + len(tokenizer.merges))}
    raw = tiktoken.Encoding(
        "raw", pat_str=tokenizer.pattern, mergeable_ranks=ranks, special_tokens={}
    )
    rows = []
    for label, encode in [
        (f"{name}: attnlab encode (fast path)", tokenizer.encode),
        (f"{name}: tiktoken directly, same ranks", raw.encode_ordinary),
    ]:
        seconds, n = timed(lambda encode=encode: sum(len(encode(t)) for t in texts), repeats)
        rows.append((label, seconds, mb(texts), n))
    sample = prefix(texts, reference_mb)
    # From a cold start each time: the per-pre-token cache fills as it goes.
    seconds, n = timed(
        lambda: sum(len(tokenizer.encode_reference(t)) for t in sample),
        repeats,
        before=tokenizer._cache.clear,
    )
    rows.append((f"{name}: attnlab encode_reference (pure Python)", seconds, mb(sample), n))
    return rows


def wordpiece_rows(texts: list[str], vocab_file: Path | None, repeats: int) -> list[tuple]:
    """(row name, seconds, MB, tokens) for attnlab's WordPiece paths and HF's, a line a call."""
    from tokenizers import BertWordPieceTokenizer

    from attnlab.tokenizers.wordpiece import SPECIALS, WordPieceTokenizer

    lines = [line for text in texts for line in text.splitlines()]
    if vocab_file:
        hf = BertWordPieceTokenizer(str(vocab_file), lowercase=True)
    else:
        hf = BertWordPieceTokenizer(lowercase=True)
        hf.train_from_iterator(
            lines, vocab_size=30522, special_tokens=list(SPECIALS), show_progress=False
        )
    vocab = sorted(hf.get_vocab(), key=hf.get_vocab().get)
    ours, order = WordPieceTokenizer.from_vocab(vocab)
    hf_ids = lambda text: hf.encode(text, add_special_tokens=False).ids  # noqa: E731
    rows = []
    for label, encode in [
        ("attnlab encode (ASCII fast path)", ours.encode),
        ("attnlab encode_reference (per character)", ours.encode_reference),
        ("HF tokenizers BertWordPieceTokenizer (Rust)", hf_ids),
    ]:
        seconds, n = timed(
            lambda encode=encode: sum(len(encode(t)) for t in lines), repeats, ours._cache.clear
        )
        rows.append((label, seconds, mb(lines), n))
    some = lines[:: max(1, len(lines) // 2000)]
    same = all([order[i] for i in ours.encode(t)] == hf_ids(t) for t in some)
    print(f"attnlab's ids are HF's on {len(some)} lines spread over the corpus: {same}")
    return rows


def print_rows(rows: list[tuple]) -> None:
    print("| encoding (1 thread) | MB | seconds | MB/s | bytes/token |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, secs, megabytes, n in rows:
        print(
            f"| {label} | {megabytes:.1f} | {secs:.2f} | {megabytes / secs:.2f} | "
            f"{megabytes * 1e6 / n:.2f} |"
        )


def main() -> None:
    args = parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)  # before tokenizers starts its pool
    from attnlab.tokenizers.bpe import BPETokenizer

    texts = load_texts(args.corpus)
    if args.wordpiece:
        print(f"corpus {args.corpus}: {mb(texts):.1f} MB; {os.cpu_count()} cores; WordPiece")
        print_rows(wordpiece_rows(texts, args.bert_vocab, args.repeats))
        return
    size = mb(texts)
    print(
        f"corpus {args.corpus}: {len(texts)} files, {size:.1f} MB; vocab {args.vocab_size}; "
        f"{args.workers} worker(s); {os.cpu_count()} cores; Python {platform.python_version()}"
    )
    print()
    print("| training | seconds | MB/s |")
    print("| --- | ---: | ---: |")
    seconds, ours = timed(lambda: BPETokenizer.train(texts, args.vocab_size, workers=args.workers))
    print(f"| attnlab BPETokenizer.train | {seconds:.2f} | {size / seconds:.2f} |", flush=True)
    if not args.skip_hf:
        hf_seconds, _ = timed(lambda: train_hf(texts, args.vocab_size))
        print(
            f"| HF tokenizers BpeTrainer (ByteLevel) | {hf_seconds:.2f} | {size / hf_seconds:.2f} |"
        )
        print(f"| ratio attnlab / HF | {seconds / hf_seconds:.2f}x | |")
    print()
    rows = encoder_rows(f"trained {args.vocab_size}", ours, texts, args.reference_mb, args.repeats)
    gpt2_dir = Path(os.environ.get("ATTNLAB_DATA", REPO.parent / "shared" / "data")) / "gpt2-bpe"
    if (gpt2_dir / "vocab.bpe").is_file():
        gpt2 = BPETokenizer.from_gpt2_files(gpt2_dir / "vocab.bpe", gpt2_dir / "encoder.json")
        rows += encoder_rows("GPT-2", gpt2, texts, args.reference_mb, args.repeats)
    else:
        print(f"(GPT-2 rows skipped: no vocabulary in {gpt2_dir})")
    print_rows(rows)


if __name__ == "__main__":
    main()
