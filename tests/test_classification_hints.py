"""A held-out text that a character tokenizer cannot read: the line gives one way out, the
tokenizer's own where it has one (the same text in another Unicode form)."""

import unicodedata

from helpers import one_line_error, run

TINY = ["--context-length", "32", "--n-layers", "1", "--n-heads", "2", "--d-model", "16",
        "--batch-size", "8", "--device", "cpu", "--max-iters", "1",
        "--tokenizer", "char"]  # fmt: skip


def test_a_dev_text_in_another_unicode_form_is_told_which_form_reads(tmp_path, capsys):
    data = tmp_path / "texts"
    data.mkdir()
    rows = [f"{s}\t{i % 2}" for i, s in enumerate(["schön und gut", "a dull mess"] * 8)]
    (data / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    decomposed = unicodedata.normalize("NFD", "schön")  # as typed on macOS: o and a diaeresis
    (data / "dev.tsv").write_text(f"sentence\tlabel\n{decomposed}\t1\na dull mess\t0\n")
    argv = ["train", "classifier", "--data", str(data), "--out", str(tmp_path / "out"), *TINY]
    line = one_line_error(*run(argv, capsys)[::2])
    unseen = "has 2 character(s) the tokenizer never saw: 'o' '\\u0308'"  # o, not ö, unseen
    assert f"a text held out for evaluation {unseen}" in line
    assert "in Unicode's NFC form the text has only characters it knows" in line
    assert "bpe:N" not in line and line.count("training text") == 1  # one way out, not two
