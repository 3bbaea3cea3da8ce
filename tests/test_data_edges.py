"""Data at the edges of what the readers expect: text without a space for BERT's character
vocabulary, SST-2's layout missing its training file, label names for classes that have names,
a read-only folder, a mirror that is a folder, a data folder that is a file, empty names, a
pipe and a link that leads nowhere."""

import errno
import hashlib
import os
from types import SimpleNamespace

import pytest
import torch
from helpers import one_line_error, read_only, run

from attnlab.data import catalog
from attnlab.data.catalog import DataFile, Dataset
from attnlab.data.classification import (
    ClassificationDataConfig,
    classification_training_data,
    read_examples,
)
from attnlab.data.corpus import corpus_files
from attnlab.data.masked_lm import IGNORE_INDEX, MaskedLMDataConfig, masked_lm_training_data
from attnlab.data.translation import read_lines
from attnlab.errors import UserError, os_error_line
from attnlab.files import cache_dir, check_writable, read_text
from attnlab.training.artifacts import ClassNames
from attnlab.training.sources import DataRequest

TRAIN = SimpleNamespace(batch_size=4, eval_iters=1, seed=0)


def classifier_request(data, **settings):
    config = ClassificationDataConfig(data=str(data), tokenizer="char", folds=2, **settings)
    return DataRequest(config, {"context_length": 16, "long_text": "head_tail"}, TRAIN)


def test_a_char_vocabulary_learned_for_bert_holds_the_space_put_before_every_text(tmp_path):
    """encode_sentence reads a text as if after a space: text without one still encodes."""
    corpus = tmp_path / "words.txt"
    corpus.write_text("apple\nbanana\n" * 100)
    request = DataRequest(MaskedLMDataConfig(str(corpus), "char"), {"context_length": 16}, TRAIN)
    assert " " in masked_lm_training_data(request).artifacts["tokenizer"].chars
    (tmp_path / "train.tsv").write_text("good\t1\nbad\t0\n" * 10)
    data = classification_training_data(classifier_request(tmp_path / "train.tsv"))
    assert data.artifacts["tokenizer"].chars == sorted(set(" goodbad"))


def test_a_checkpoints_classes_or_some_of_them_are_numbered_as_it_numbers_them(tmp_path):
    """Scored by a checkpoint of classes c, b, a (a run's --label-names, say): folders of all
    of them, in the order of their names, or a file of its last label alone."""
    saved = {"classes": ClassNames(("c", "b", "a"))}
    for name in ("a", "b", "c"):
        (tmp_path / "all" / name).mkdir(parents=True)
        (tmp_path / "all" / name / "1.txt").write_text(f"a text of {name}")
    (tmp_path / "last.tsv").write_text("a text of a\t2\n" * 2)
    for data, labels in [("all", [2, 1, 0]), ("last.tsv", [2, 2])]:
        config = ClassificationDataConfig(data=str(tmp_path / data), tokenizer="byte")
        model = {"context_length": 16, "long_text": "head_tail"}
        scored = classification_training_data(DataRequest(config, model, TRAIN, saved,
                                                          evaluate="all"))  # fmt: skip
        assert [y for _, y in scored.eval["val"]()][0].tolist() == labels
        assert scored.model_fields["n_classes"] == 3


def test_a_dev_file_without_its_training_file_is_named(tmp_path):
    (tmp_path / "dev.tsv").write_text("a good film\t1\na bad film\t0\n")
    with pytest.raises(UserError) as error:
        read_examples(str(tmp_path), 10, 0)
    assert str(error.value) == f"no train.tsv in {tmp_path} beside its dev.tsv"


def test_label_names_are_refused_for_classes_named_by_their_folders(tmp_path, capsys):
    for name in ("neg", "pos"):
        (tmp_path / "cf" / name).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "cf" / name / f"{i}.txt").write_text(f"a {name} review")
    with pytest.raises(UserError) as error:
        classification_training_data(classifier_request(tmp_path / "cf", label_names="good,bad"))
    assert str(error.value) == (
        f"{tmp_path / 'cf'}: --label-names names integer labels; these classes are named by "
        "their folders already"
    )
    argv = ["train", "classifier", "--data", str(tmp_path / "cf"), "--label-names", "good,bad",
            "--tokenizer", "byte", "--out", str(tmp_path / "run")]  # fmt: skip
    assert "--label-names names integer labels" in one_line_error(*run(argv, capsys)[::2])
    assert not (tmp_path / "run").exists()


def test_a_read_only_folder_is_named_as_asked_about_not_by_a_probe_file(tmp_path, monkeypatch):
    (tmp_path / "ro").mkdir()
    read_only(monkeypatch, tmp_path / "ro")
    with pytest.raises(UserError) as error:
        check_writable(tmp_path / "ro" / "sub")
    assert str(error.value) == f"cannot write to {tmp_path / 'ro' / 'sub'}: Permission denied"
    assert not any((tmp_path / "ro").iterdir())


@pytest.mark.parametrize("relative", [False, True])
def test_a_folder_path_is_a_mirror(tmp_path, monkeypatch, relative):
    body = b"alpha\n" * 10
    entry = DataFile(
        "sub/a.txt", hashlib.sha256(body).hexdigest(), len(body), "http://127.0.0.1:9/a"
    )
    monkeypatch.setitem(catalog.CATALOG, "fake", Dataset("fake", "a test dataset", (entry,)))
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path / "data"))
    (tmp_path / "my copy" / "fake" / "sub").mkdir(parents=True)
    (tmp_path / "my copy" / "fake" / "sub" / "a.txt").write_bytes(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNLAB_DATA_MIRROR", "my copy/" if relative else str(tmp_path / "my copy"))
    assert (catalog.get("fake", progress=False) / "sub" / "a.txt").read_bytes() == body


def test_a_data_folder_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").write_text("not a folder")
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path / "data"))
    for argv in (["data", "list"], ["data", "get", "tinyshakespeare"]):
        code, out, err = run(argv, capsys)
        assert one_line_error(code, err) == (
            f"attnlab: error: the data folder {tmp_path / 'data'} (ATTNLAB_DATA) is a file, "
            "not a folder"
        )
        assert out == ""


def test_a_cache_or_data_folder_set_with_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch):
    """A quoted "~/cache" (a .env file's, os.environ's) made a folder named ~ wherever a command
    ran, and ~user/data of no such user was a traceback."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for variable, where in (("ATTNLAB_CACHE", cache_dir), ("ATTNLAB_DATA", catalog.data_root)):
        monkeypatch.setenv(variable, "~/kept")
        assert where() == tmp_path / "home" / "kept"
        monkeypatch.setenv(variable, "kept")
        assert where() == tmp_path / "kept"  # absolute: the same after a change of folder
        monkeypatch.setenv(variable, "~no-such-user-here/kept")
        with pytest.raises(
            UserError, match=rf"no home folder for ~no-such-user-here/kept \({variable}\)"
        ):
            where()


def test_a_cache_folder_that_is_a_file_is_named_as_the_cache(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("not a folder")
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "notes.txt"))
    code, _, err = run(["train", "gpt", "--data", str(tmp_path / "notes.txt"), "--tokenizer",
                        "bpe:300", "--out", str(tmp_path / "run")], capsys)  # fmt: skip
    assert one_line_error(code, err) == (
        f"attnlab: error: {tmp_path / 'notes.txt'} is a file, not a folder (the cache; "
        "ATTNLAB_CACHE sets it)"
    )


def test_a_full_disk_under_the_cache_is_named_as_the_cache(tmp_path, monkeypatch, capsys):
    """The token array filling the disk named a file deep in the cache, not what sets it."""
    (tmp_path / "notes.txt").write_text("All the world's a stage. " * 40)
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as fsync gives it: no name

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = run(["train", "gpt", "--data", str(tmp_path / "notes.txt"), "--out",
                        str(tmp_path / "run"), "--max-iters", "1"], capsys)  # fmt: skip
    line = one_line_error(code, err)
    tokens = tmp_path / "cache" / "tokens"
    assert line.startswith(f"attnlab: error: No space left on device: {tokens}{os.sep}")
    assert line.endswith(".uint16 (the cache; ATTNLAB_CACHE sets it)")
    assert not any(tokens.iterdir()) and not (tmp_path / "run").exists()


def test_a_cache_folder_that_is_a_link_in_a_loop_is_named_as_the_cache(tmp_path, monkeypatch):
    (tmp_path / "cache").symlink_to("cache")  # itself: no folder at its end
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError) as refused:
        check_writable(tmp_path / "cache" / "tokens")
    assert str(refused.value) == (
        f"{tmp_path / 'cache'} is a link that leads nowhere, or around in a loop (to cache) "
        "(the cache; ATTNLAB_CACHE sets it)"
    )


def test_the_cache_and_data_folders_default_to_the_users_xdg_cache(tmp_path, monkeypatch):
    """$XDG_CACHE_HOME, where a user set one, holds attnlab's cache and datasets (~/.cache was
    taken whatever it said); a relative one is ignored, as the XDG specification asks; the
    ATTNLAB_ variables still decide first."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for variable in ("ATTNLAB_CACHE", "ATTNLAB_DATA"):
        monkeypatch.delenv(variable, raising=False)
    for xdg, cache in (
        (str(tmp_path / "xdg"), tmp_path / "xdg"),
        ("xdg", tmp_path / "home/.cache"),
    ):
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        assert (cache_dir(), catalog.data_root()) == (cache / "attnlab", cache / "attnlab/data")
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_an_error_line_where_the_cache_has_no_home_folder_names_the_error(monkeypatch):
    """Asking whether a file is in a cache that cannot be found stopped the error's own line."""
    monkeypatch.setenv("ATTNLAB_CACHE", "~no-such-user-here/kept")
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/no/such/file")
    assert os_error_line(error) == f"{os.strerror(errno.ENOSPC)}: /no/such/file"


@pytest.mark.parametrize("kind", ["gpt", "classifier", "vit"])
def test_empty_data_is_refused_not_read_as_the_current_folder(kind, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["train", kind, "--data", "", "--out", str(out)], capsys)
    assert "the data is empty: give a file" in one_line_error(code, err)
    assert not out.exists()


def test_an_empty_tokenizer_is_unknown(tmp_path, capsys):
    code, _, err = run(["train", "gpt", "--tokenizer", "", "--out", str(tmp_path / "r")], capsys)
    assert "unknown tokenizer ''" in one_line_error(code, err)


def test_masked_lm_batches_never_select_special_tokens_nor_held_out_sequences(tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("".join(f"{i:03} words\n" for i in range(200)))  # one a sequence
    request = DataRequest(MaskedLMDataConfig(str(corpus), "char"), {"context_length": 16}, TRAIN)
    data = masked_lm_training_data(request)
    specials = torch.tensor(list(data.artifacts["tokenizer"].special_tokens.values()))
    assert data.train.masking.n_ordinary == specials.min()  # the specials come last
    for inputs, targets in [data.train.next() for _ in range(10)]:
        original = torch.where(targets != IGNORE_INDEX, targets, inputs)
        assert (targets[torch.isin(original, specials)] == IGNORE_INDEX).all()
    (inputs, targets), *_ = data.eval["val"]()
    held_out = torch.where(targets != IGNORE_INDEX, targets, inputs)  # the unmasked sequences
    trained = {tuple(row) for row in data.train.rows.tolist()}
    assert held_out.size(0) == 4 and not trained & {tuple(row) for row in held_out.tolist()}


def test_a_pipe_is_read_where_text_is_read_once_and_named_where_it_is_read_again(tmp_path, capsys):
    """bash's `--ref <(zcat ref.gz)` is a pipe: its lines are read; a corpus (read again for
    each pass) from a pipe, or a link in a loop, is named for what it is, not as missing."""
    reader, writer = os.pipe()
    os.write(writer, b"\xef\xbb\xbfone\r\ntwo")
    os.close(writer)
    assert read_lines(f"/dev/fd/{reader}") == ["one", "two"]
    os.close(reader)
    reader, writer = os.pipe()  # a classifier's TSV alike (it was "data not found")
    os.write(writer, b"a\t0\nb\t1\n" * 5)
    os.close(writer)
    train, dev, _ = read_examples(f"/dev/fd/{reader}", 5, 0)
    assert sorted(train[0] + dev[0]) == ["a"] * 5 + ["b"] * 5 and len(dev[0]) == 2
    os.close(reader)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(UserError, match="loop \\(a link that leads nowhere, or around in a loop"):
        read_lines(tmp_path / "loop")
    argv = ["train", "gpt", "--data", str(tmp_path / "fifo"), "--out", str(tmp_path / "r")]
    line = one_line_error(*run(argv, capsys)[::2])
    assert line.endswith("fifo is not a file or a folder (a pipe?): save the text to a file")
    assert not (tmp_path / "r").exists()


def test_data_not_found_names_the_file_or_dataset_one_typo_away(tmp_path):
    (tmp_path / "notes.txt").write_text("some text")
    with pytest.raises(UserError, match=f"did you mean {tmp_path / 'notes.txt'}\\?$"):
        corpus_files(str(tmp_path / "notse.txt"))
    with pytest.raises(UserError, match="did you mean tinyshakespeare\\?$"):
        corpus_files("tinyshakespear")
    with pytest.raises(UserError, match=r"or task:NAME\)$"):  # nothing close: no guess
        corpus_files(str(tmp_path / "elsewhere" / "x.txt"))


def test_data_not_found_in_a_huge_folder_is_no_guess(tmp_path, monkeypatch):
    """Listing a folder of a million files and comparing each name takes seconds: past
    GUESSED_NAMES names the line names no file (a dataset's name is still guessed)."""
    from attnlab.data import corpus

    monkeypatch.setattr(corpus, "GUESSED_NAMES", 2)
    for name in ("notes.txt", "a.txt", "b.txt"):
        (tmp_path / name).write_text("some text")
    with pytest.raises(UserError, match=r"or task:NAME\)$"):
        corpus_files(str(tmp_path / "notse.txt"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="did you mean tinyshakespeare\\?$"):
        corpus_files("tinyshakespear")


def test_a_device_is_no_file_to_read():
    with pytest.raises(UserError, match="/dev/zero is a device, not a config file"):
        read_text("/dev/zero", "config file")  # it would be read for ever


def test_a_glob_in_the_current_folder_is_kept_as_that_folders(tmp_path, monkeypatch):
    """A run trained on ':*.txt' and evaluated elsewhere read that folder's files instead."""
    monkeypatch.chdir(tmp_path)
    assert catalog.here(":*.txt") == f"{tmp_path}:*.txt" == catalog.where(":*.txt")


def test_the_data_folder_itself_is_kept_whole_not_as_the_current_folder(tmp_path, monkeypatch):
    """A path inside $ATTNLAB_DATA is kept relative to it, but the folder itself, as "." would
    be read from wherever a command runs."""
    root = tmp_path / "data"
    (root / "books").mkdir(parents=True)
    monkeypatch.setenv("ATTNLAB_DATA", str(root))
    monkeypatch.chdir(tmp_path)
    assert catalog.here("data/books") == "books"
    assert catalog.here("data") == str(root) and catalog.here("data:*.txt") == f"{root}:*.txt"
    (root / "books" / "a.txt").write_text("a")
    assert catalog.in_root("books/a.txt") == str(root / "books/a.txt")  # a run's, as read
    for other in ("absent/a.txt", "stdlib", None):  # not in the root: as kept
        assert catalog.in_root(other) == other


def test_a_runs_own_data_is_scored_on_its_held_out_fold_only(tmp_path):
    """`attnlab evaluate` of a classifier on the file it was trained on (evaluate="held_out")
    scores the fold training held out; on other data ("all"), every example."""
    tsv = tmp_path / "t.tsv"
    tsv.write_text("".join(f"text {i}\t{i % 2}\n" for i in range(40)))
    held_out = [read_examples(str(tsv), 4, 1, evaluate=e)[1] for e in ("", "held_out")]
    assert held_out[0] == held_out[1] and len(held_out[0][0]) == 10
    assert len(read_examples(str(tsv), 4, 1, evaluate="all")[1][0]) == 40


def test_a_file_in_the_data_folder_with_a_colon_in_its_name_is_found_again(tmp_path, monkeypatch):
    """A run keeps "books/a:b.txt" relative to $ATTNLAB_DATA; read from another folder, the
    colon was taken for a glob's ("books/a", "b.txt") and the file was not found."""
    root = tmp_path / "data"
    (root / "books").mkdir(parents=True)
    (root / "books" / "a:b.txt").write_text("a")
    monkeypatch.setenv("ATTNLAB_DATA", str(root))
    monkeypatch.chdir(tmp_path)
    assert catalog.here("data/books/a:b.txt") == "books/a:b.txt"
    assert catalog.in_root("books/a:b.txt") == str(root / "books/a:b.txt")
    assert catalog.where("books/a:b.txt") == str(root / "books/a:b.txt")
    assert catalog.locate("books/a:b.txt") == str(root / "books/a:b.txt")
    assert catalog.locate("books:a*.txt") == f"{root / 'books'}:a*.txt"  # a glob still is one
