"""Text data readers: a corpus refuses what is not text and counts only decoded text, a TSV
file has at most one header line, an empty held-out fold says why; a language model's random
windows."""

import gzip
import json
import os
import random
import tracemalloc
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import run

from attnlab.data import catalog
from attnlab.data.classification import (
    ClassificationDataConfig,
    classification_training_data,
    read_class_folders,
    read_tsv,
)
from attnlab.data.corpus import Corpus, corpus_files
from attnlab.data.labels import count_classes
from attnlab.data.text import RandomWindows, TextSplits
from attnlab.errors import UserError
from attnlab.training.sources import DataRequest

TEXT = "All the world's a stage, and all the men and women merely players.\n" * 20


@pytest.mark.parametrize(
    "content, message",
    [
        (gzip.compress(TEXT.encode()), "is gzip-compressed, not text"),
        (np.random.default_rng(0).bytes(5000), "is not UTF-8 text"),
        (TEXT.encode("utf-16"), "is not UTF-8 text"),
    ],
    ids=["gzip", "binary", "utf-16"],
)
def test_a_corpus_file_that_is_not_text_is_refused_by_name(tmp_path, content, message):
    (tmp_path / "good.txt").write_text(TEXT)
    (tmp_path / "bad.txt").write_bytes(content)
    with pytest.raises(UserError, match=f"^{tmp_path / 'bad.txt'} {message}"):
        Corpus(str(tmp_path))


def test_a_corpus_of_a_byte_order_mark_alone_is_empty(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf")
    (tmp_path / "nothing.txt").write_bytes(b"")
    with pytest.raises(UserError, match="^corpus .* is empty$"):
        Corpus(str(tmp_path))
    (tmp_path / "nothing.txt").write_text("a word")
    assert "".join(Corpus(str(tmp_path))) == "\n\na word"


def test_only_the_first_line_of_a_tsv_file_may_be_a_header(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("\nsentence\tlabel\ngood\t1\n")
    assert read_tsv(path) == (["good"], [1])
    path.write_text("sentence\tlabel\ntext\tclass\ngood\t1\nbad\t0\n")  # two headers
    with pytest.raises(UserError, match=f"^{path}:2: label 'class' is not an integer >= 0 "):
        read_tsv(path)
    path.write_text("great movie\tpositive\ngood\t1\n")  # an example, not column names
    with pytest.raises(UserError, match=f"^{path}:1: label 'positive' is not an integer >= 0 "):
        read_tsv(path)
    path.write_text("great\tvery positive\ngood\t1\n")
    with pytest.raises(UserError, match=f"^{path}:1: label 'very positive' is not an integer "):
        read_tsv(path)


def test_a_folder_unzipped_on_macos_is_read_without_its_metadata(tmp_path):
    """A zip made on macOS unpacks a __MACOSX folder of "._" files beside the data: it is no
    class, and no text of a corpus."""
    for name in ("neg/0.txt", "pos/0.txt", "__MACOSX/pos/._0.txt", "pos/.DS_Store"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"\x00\x05\x16\x07" if "/." in name else b"a review")
    warnings = []
    assert read_class_folders(tmp_path, warnings.append) == (
        (["a review", "a review"], [0, 1]),
        ["neg", "pos"],
    )
    assert warnings == []
    assert corpus_files(str(tmp_path)) == [tmp_path / "neg/0.txt", tmp_path / "pos/0.txt"]
    assert corpus_files(f"{tmp_path}:__MACOSX/**/*.txt") == [tmp_path / "__MACOSX/pos/._0.txt"]


def test_a_tsv_label_that_is_a_name_points_to_the_label_names_flag(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("good film\t1\nbad film\tnegative\n")
    with pytest.raises(UserError, match=r"label 'negative' .* class numbers 0, 1, .*--label-names"):
        read_tsv(path)


def test_a_tsv_file_whose_lines_end_in_a_lone_carriage_return_is_told_so(tmp_path):
    path = tmp_path / "train.tsv"  # Excel's "CSV (Macintosh)", saved as text: one long line
    path.write_bytes(b"good\t1\rbad\t0\r")
    with pytest.raises(UserError, match=r"found 3 column\(s\) \(its lines end in a lone \\r"):
        read_tsv(path)


def test_a_gzip_compressed_tsv_file_is_told_to_be_decompressed_not_converted(tmp_path):
    path = tmp_path / "train.tsv.gz"
    path.write_bytes(gzip.compress(b"sentence\tlabel\ngood\t1\nbad\t0\n"))
    with pytest.raises(UserError) as error:
        read_tsv(path)
    assert str(error.value) == f"TSV file {path} is gzip-compressed: decompress it (gunzip)"
    path.write_bytes(b"\x1f\xe9t\xe9\t1\n")  # a control character, then Latin-1: not gzip
    with pytest.raises(UserError, match="is not UTF-8 text .*: convert it to UTF-8"):
        read_tsv(path)


def request_for(data, folds=10):
    settings = ClassificationDataConfig(data=str(data), tokenizer="byte", folds=folds)
    train = SimpleNamespace(batch_size=2, eval_iters=1, seed=0)
    model = {"context_length": 16, "long_text": "head_tail"}
    return DataRequest(settings, model, train)


def test_an_empty_held_out_fold_names_the_largest_class_and_what_it_needs(tmp_path):
    path = tmp_path / "small.tsv"
    path.write_text("".join(f"text {i}\t{int(i < 3)}\n" for i in range(7)))  # 4 of 0, 3 of 1
    with pytest.raises(UserError) as error:
        classification_training_data(request_for(path))
    assert str(error.value) == (
        f"{path}: no examples are left to evaluate on: the largest class, label 0, has 4 "
        "example(s), and holding out one of folds=10 parts needs 10 or more (give more "
        "examples, a dev file, or fewer folds)"
    )
    for name, count in (("neg", 2), ("pos", 5)):
        for i in range(count):
            (tmp_path / "reviews" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "reviews" / name / f"{i}.txt").write_text(f"review {i}")
    with pytest.raises(UserError, match="the largest class, 'pos', has 5 example.s., and"):
        classification_training_data(request_for(tmp_path / "reviews", folds=6))
    assert len(list(classification_training_data(request_for(path, folds=4)).eval["val"]())) == 1


def test_encoded_training_texts_hold_a_few_bytes_an_id(tmp_path):
    """Held as lists, each id took a pointer and an int (over 40 bytes): 200,000 sentences of a
    TSV peaked at 670 MB, 500 MB as arrays."""
    rng = random.Random(0)
    words = ["the", "film", "was", "good", "bad", "dull", "plot", "scene", "story"]
    path = tmp_path / "train.tsv"
    path.write_text(
        "".join(f"{' '.join(rng.choices(words, k=12))} {i}\t{i % 2}\n" for i in range(3000))
    )
    request = request_for(path)
    request = DataRequest(
        replace(request.settings, tokenizer="bpe:600"),
        {**request.model, "context_length": 64},
        request.train,
    )
    classification_training_data(request)  # what a first call imports is not counted
    tracemalloc.start()
    try:
        data = classification_training_data(request)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 20 * sum(len(ids) for ids in data.train.sequences)


def test_the_held_out_batches_pair_each_text_with_its_own_label(tmp_path):
    (tmp_path / "train.tsv").write_text("".join(f"text {i}\t{i % 2}\n" for i in range(8)))
    (tmp_path / "dev.tsv").write_text("one\t1\nzero zero\t0\none\t1\none\t1\nzero zero\t0\n")
    data = classification_training_data(request_for(tmp_path))  # batches of 2, 2 and 1
    batches, pad = list(data.eval["val"]()), data.model_fields["pad_id"]
    lengths = [n for ids, _ in batches for n in (ids != pad).sum(-1).tolist()]  # [CLS] " "...
    labels = [y for _, labels in batches for y in labels.tolist()]
    assert labels == [1, 0, 1, 1, 0] and lengths == [6, 12, 6, 6, 12]


def test_labels_that_leave_most_classes_empty_are_refused():
    assert count_classes([0, 2, 2, 1], "data") == 3
    assert count_classes([1, 3], "data") == 4  # half the classes empty: allowed
    with pytest.raises(UserError, match="^data: the labels run to 200, but only 3 of them"):
        count_classes([0, 1, 200], "data")


def test_random_windows_are_shifted_by_one_and_reproducible():
    tokens = np.arange(100, dtype=np.uint16)
    a, b = RandomWindows(tokens, 3, 8, seed=1), RandomWindows(tokens, 3, 8, seed=1)
    x, y = a.next()
    assert torch.equal(y, x + 1) and x.shape == (3, 8)
    assert torch.equal(b.next()[0], x)
    short = RandomWindows(np.arange(10, dtype=np.uint16), 64, 8, seed=0)  # 9 tokens a window
    assert set(short.next()[0][:, 0].tolist()) == {0, 1}  # the last token is a target too


def test_the_validation_split_is_the_last_tenth_and_shares_no_token_with_training():
    splits = TextSplits.from_tokens(np.arange(100, dtype=np.uint16))
    assert splits.train.tolist() == list(range(90)) and splits.val.tolist() == list(range(90, 100))


def test_repeated_windows_end_with_their_own_beginning_at_varying_distances():
    tokens = np.arange(10_000, dtype=np.uint16)
    x, y = RandomWindows(tokens, 64, 15, seed=1, repeat=True).next()
    cuts = set()
    for window in torch.cat([x, y[:, -1:]], 1).tolist():  # the 16 tokens drawn
        cut = next(i for i in range(1, 16) if window[i] != window[i - 1] + 1)  # text until here
        assert window[cut:] == window[: 16 - cut] and 4 <= 16 - cut <= 8
        cuts.add(cut)
    assert len(cuts) == 5  # every length from a quarter to a half of the window


def test_a_folder_with_colons_in_its_name_takes_a_glob_after_the_last(tmp_path, monkeypatch):
    folder = tmp_path / "notes:2024:draft"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "b.md").write_text("b")
    assert corpus_files(f"{folder}:*.md") == [folder / "b.md"]
    assert corpus_files(str(folder)) == [folder / "a.txt"]
    monkeypatch.chdir(tmp_path)  # a path found here is made absolute; other specs are kept
    assert catalog.here("notes:2024:draft:*.md") == f"{folder}:*.md"
    assert [catalog.here(s) for s in ("stdlib", "task:mqar", "fake")] == [
        "stdlib",
        "task:mqar",
        "fake",
    ]


def test_a_folders_text_files_are_read_whatever_the_case_of_their_suffix(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.txt", "B.TXT", "c.Txt", "d.md", "e.txt.bak", "sub/F.TXT", ".g.TXT"):
        (tmp_path / name).write_text(f"{name} ")
    expected = ["B.TXT", "a.txt", "c.Txt", "sub/F.TXT"]  # a Windows folder's names too
    assert corpus_files(str(tmp_path)) == [tmp_path / name for name in expected]
    assert "".join(Corpus(str(tmp_path))) == "\n\n".join(f"{name} " for name in expected)


def test_a_long_run_without_a_safe_cut_is_carried_whole_into_the_next_piece(
    tmp_path, monkeypatch, shared_data
):
    """A line of letters longer than a piece is one pre-token: it is never cut inside, so the
    pieces' ids are the whole text's."""
    from attnlab.data import corpus
    from attnlab.data.text import tokenize_cached
    from attnlab.tokenizers.bpe import BPETokenizer

    folder = shared_data / "gpt2-bpe"
    tokenizer = BPETokenizer.from_gpt2_files(folder / "vocab.bpe", folder / "encoder.json")
    monkeypatch.setattr(corpus, "CHUNK", 64)
    text = "A first line.\n" + "thequickbrownfox" * 40 + "\nAnd the last line, with words.\n"
    (tmp_path / "run.txt").write_text(text)
    pieces = list(Corpus(str(tmp_path / "run.txt")))
    assert tokenize_cached(pieces, tokenizer).tolist() == tokenizer.encode(text)
    assert "".join(pieces) == text and "thequickbrownfox" * 40 in pieces[1]


def test_the_cache_is_listed_by_kind_and_cleared_by_kind(tmp_path, monkeypatch, capsys):
    from helpers import one_line_error, run

    from attnlab.data.text import tokenize_cached
    from attnlab.files import cache_dir
    from attnlab.tokenizers.char import CharTokenizer

    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    tokenize_cached([TEXT], CharTokenizer.from_text(TEXT))
    for kind, name in (("tokenizers", "0a" * 16 + ".json"), ("decoding", "0b" * 16 + ".pt2")):
        (tmp_path / kind).mkdir()  # a file of 2 bytes in each
        (tmp_path / kind / name).write_text("{}")
    (tmp_path / "data").mkdir()  # the datasets' default folder: not the cache's to clear
    (tmp_path / "kernels").mkdir()  # a cache folder given wrongly: files not attnlab's stay
    (tmp_path / "kernels" / "notes.txt").write_text("mine")
    (tmp_path / "tokenizers" / ("0c" * 16 + ".d")).mkdir()  # a folder, named as a file: not one

    def table():
        code, out, _ = run(["data", "cache"], capsys)
        rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[2:]}
        return code, rows

    code, rows = table()
    ids = f"{len(TEXT) * 2 / 1000:.1f}"  # one uint16 per character
    assert code == 0 and rows["tokens"] == ["1", ids] and rows["tokenizers"] == ["1", "2"]
    assert rows["total"] == ["3", f"{(len(TEXT) * 2 + 4) / 1000:.1f}"]  # files, not folders
    code, _, err = run(["data", "cache", "--clear", "tokens,kernels"], capsys)
    assert code == 0 and "cleared tokens: 1 file" in err
    assert table()[1]["tokens"] == ["0", "0"] and (tmp_path / "tokenizers").exists()
    code, _, err = run(["data", "cache", "--clear", "all,data"], capsys)
    assert one_line_error(code, err).endswith(
        "unknown kind(s) 'data'; known: "
        + ", ".join(["tokens", "lines", "tokenizers", "kernels", "decoding"])
        + ", or all"
    )
    assert (tmp_path / "decoding" / ("0b" * 16 + ".pt2")).exists()  # refused: nothing cleared
    run(["data", "cache", "--clear", "all"], capsys)
    left = ["0c" * 16 + ".d", "data", "kernels", "notes.txt", "tokenizers"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == left
    monkeypatch.setenv("ATTNLAB_CACHE", "")  # as unset: not the current folder
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "attnlab"


def test_clearing_the_cache_leaves_the_files_a_running_command_writes(
    tmp_path, monkeypatch, capsys
):
    """`data cache --clear` deleted the temporary file of a command encoding a corpus, which
    then failed at its rename ("No such file or directory"); a killed one's old file goes."""
    from attnlab.data.text import tokenize_cached
    from attnlab.tokenizers.char import CharTokenizer

    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    tokenizer, readings = CharTokenizer.from_text(TEXT), []

    class Cleared:  # a corpus of two pieces, the cache cleared as the second is encoded
        def __iter__(self):
            readings.append(len(readings))
            yield TEXT
            if readings == [0, 1]:  # the first reading hashes it, the second encodes it
                assert run(["data", "cache", "--clear", "all"], capsys)[0] == 0
            yield TEXT

    assert tokenize_cached(Cleared(), tokenizer).tolist() == tokenizer.encode(TEXT * 2)
    killed = tmp_path / "tokens" / f".{'0' * 32}.uint16.a1b2.tmp"
    killed.write_bytes(b"12")
    os.utime(killed, (0, 0))
    assert run(["data", "cache", "--clear", "tokens"], capsys)[2].startswith(
        "attnlab: cleared tokens: 2 files"
    )
    assert not (tmp_path / "tokens").exists()


def test_a_token_cache_gone_as_it_is_written_is_one_line(tmp_path, monkeypatch):
    """Deleted (`data cache --clear`) or replaced by a damaged file as soon as it is written."""
    from attnlab.data import text
    from attnlab.tokenizers.char import CharTokenizer

    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(text, "_read_tokens", lambda path, dtype: None)
    with pytest.raises(UserError, match=r"the token cache .* changed as it was written: run again"):
        text.tokenize_cached([TEXT], CharTokenizer.from_text(TEXT))


def test_evaluate_scores_all_of_a_text_the_model_never_saw(tmp_path, capsys):
    """--data of another text is scored whole, as for every other kind (its last tenth alone
    is no held-out part of anything); the run's own text, its validation tenth."""
    own, other = tmp_path / "own.txt", tmp_path / "other.txt"
    own.write_text(TEXT)
    other.write_text("And all the men and women merely stage players.\n" * 8)
    out = str(tmp_path / "run")
    tiny = ["--context-length", "16", "--n-layers", "1", "--n-heads", "2", "--d-model", "16"]
    argv = ["train", "gpt", "--data", str(own), "--out", out, "--max-iters", "1", *tiny]
    assert run([*argv, "--batch-size", "2", "--eval-iters", "1", "--device", "cpu"], capsys)[0] == 0
    tokens = {
        data: json.loads(run(["evaluate", out, "--data", str(data), "--json"], capsys)[1])["tokens"]
        for data in (own, other)
    }
    assert tokens == {own: len(TextSplits.from_tokens(np.arange(len(TEXT))).val) - 1,
                      other: len(other.read_text()) - 1}  # fmt: skip
