"""`attnlab train bert`, `train classifier --init`, `fill-mask` and `classify`, end to end on
tiny models, and their one-line errors on bad input."""

import io
import json

import pytest
from helpers import one_line_error, run

TINY = ["--context-length", "32", "--n-layers", "1", "--n-heads", "2", "--d-model", "16",
        "--batch-size", "8", "--device", "cpu",
        "--tokenizer", "char"]  # fmt: skip
SENTENCES = ["a fine , warm and funny film", "a dull , cold and boring mess",
             "the best movie of the year", "the worst movie of the year"]  # fmt: skip


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    (root / "corpus.txt").write_text("\n".join(SENTENCES * 30))
    rows = [f"{s} \t{i % 2}" for i, s in enumerate(SENTENCES * 10)]
    (root / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def pretrained(texts):
    out = texts / "bert"
    code = run_quiet(["train", "bert", "--data", str(texts / "corpus.txt"), "--out", str(out),
                      "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "2",
                      *TINY])  # fmt: skip
    assert code == 0
    return out


def run_quiet(argv):
    from attnlab.cli import main

    return main(argv)


def test_fill_mask_prints_top_k_fillers(pretrained, capsys):
    code, out, err = run(["fill-mask", str(pretrained), "a [MASK] film", "--top-k", "3"], capsys)
    assert code == 0, err
    rows = [line.split(maxsplit=1) for line in out.splitlines()]
    assert len(rows) == 3
    probabilities = [float(row[0]) for row in rows]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0


def test_fill_mask_needs_a_mask(pretrained, capsys):
    line = one_line_error(*run(["fill-mask", str(pretrained), "no mask here"], capsys)[::2])
    assert "[MASK]" in line
    line = one_line_error(
        *run(["fill-mask", str(pretrained), "a [MASK]", "--top-k", "0"], capsys)[::2]
    )
    assert "--top-k must be at least 1" in line


def test_fill_mask_offers_words_only_however_many_are_asked_for(pretrained, capsys):
    code, out, err = run(
        ["fill-mask", str(pretrained), "a [MASK] film", "--top-k", "100000"], capsys
    )
    assert code == 0, err
    fillers = [line.split(maxsplit=1)[1] for line in out.splitlines() if len(line.split()) == 2]
    assert fillers and not {"[MASK]", "[SEP]", "[CLS]", "[PAD]"} & set(fillers)


def test_classifier_from_a_pretrained_bert(pretrained, texts, capsys, tmp_path):
    out = tmp_path / "cls"
    code, _, err = run(["train", "classifier", "--init", str(pretrained), "--data",
                        str(texts / "train.tsv"), "--out", str(out), "--max-iters", "4",
                        "--eval-interval", "2", "--folds", "4", *TINY[:-2]], capsys)  # fmt: skip
    assert code == 0, err
    assert "new: classifier.bias, classifier.weight, pooler.bias, pooler.weight" in err
    assert "mlm_bias" in err  # the masked-LM head is left out
    assert json.loads((out / "run.json").read_text())["init"] == str(pretrained)
    assert (out / "best" / "model.safetensors").is_file() and "best:" in err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"val_accuracy", "val_f1"} <= records[-1].keys()
    assert 0 <= records[-1]["val_accuracy"] <= 1
    code, scores, err = run(["evaluate", str(out), "--json"], capsys)  # as training scored it
    assert code == 0, err
    scores = json.loads(scores)
    assert scores.pop("val_targets") == 10  # the held-out fold's examples, a quarter
    assert scores == pytest.approx({k: records[-1][k] for k in scores}, rel=1e-3)  # fp32 here
    assert {"val_loss", "val_accuracy", "val_f1"} == scores.keys()
    code, stdout, err = run(["classify", str(out / "best"), *SENTENCES[:2]], capsys)
    assert code == 0, err
    after_an_option = ["classify", str(out / "best"), SENTENCES[0], "--device", "cpu"]
    assert run([*after_an_option, SENTENCES[1]], capsys)[1] == stdout  # words after options too
    rows = [line.split("\t") for line in stdout.splitlines()]
    assert [r[2] for r in rows] == SENTENCES[:2] and all(r[0] in ("0", "1") for r in rows)
    assert all(0.5 <= float(r[1]) <= 1 for r in rows)
    # its weights and artefacts alone (as from_hf's would be saved): scored on --data as the run
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "classes.json"):
        (alone / name).write_bytes((out / name).read_bytes())
    (tmp_path / "unseen.tsv").write_text(
        "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(SENTENCES))
    )
    on_data = ["--data", str(tmp_path / "unseen.tsv"), "--json"]
    code, by_run, err = run(["evaluate", str(out), *on_data], capsys)
    assert code == 0, err
    assert run(["evaluate", str(alone), *on_data], capsys)[1] == by_run
    (alone / "tokenizer.json").unlink()
    assert "holds no tokenizer" in one_line_error(
        *run(["evaluate", str(alone), *on_data], capsys)[::2]
    )


def test_init_keeps_the_checkpoints_shape(pretrained, texts, tmp_path, capsys):
    argv = ["train", "classifier", "--init", str(pretrained), "--data", str(texts / "train.tsv"),
            "--out", str(tmp_path / "c"), "--prenorm", "--dropout", "0.2"]  # fmt: skip
    line = one_line_error(*run(argv, capsys)[::2])
    assert "leave --prenorm out" in line and "dropout" not in line
    assert not (tmp_path / "c").exists()
    argv = [*argv[:-3], "--tokenizer", "byte"]  # the weights read the checkpoint's ids
    line = one_line_error(*run(argv, capsys)[::2])
    assert "takes the tokenizer from" in line and "leave --tokenizer (and a config" in line
    (tmp_path / "tok.toml").write_text('tokenizer = "byte"\n')  # from a file alike
    line = one_line_error(*run([*argv[:-2], "--config", str(tmp_path / "tok.toml")], capsys)[::2])
    assert "takes the tokenizer from" in line
    assert not (tmp_path / "c").exists()


def test_init_refuses_a_preset_flag_of_another_shape_not_a_files_preset(
    pretrained, texts, tmp_path, capsys
):
    out = tmp_path / "c"
    argv = ["train", "classifier", "--init", str(pretrained), "--data", str(texts / "train.tsv"),
            "--out", str(out), "--max-iters", "1", "--device", "cpu"]  # fmt: skip
    line = one_line_error(*run([*argv, "--preset", "small-cpu"], capsys)[::2])
    assert "(context_length 32, d_model 16, n_heads 2, n_layers 1): leave --preset out" in line
    assert not out.exists()
    shape = ["--context-length", "32", "--d-model", "16", "--n-heads", "2", "--n-layers", "1"]
    given = [*argv, "--preset", "small-cpu", *shape, "--dropout", "0.25"]  # its shape: no change
    assert run([*given, "--out", str(tmp_path / "d")], capsys)[0] == 0  # dropout is tunable
    assert json.loads((tmp_path / "d" / "config.json").read_text())["config"]["dropout"] == 0.25
    # a file's preset shapes its runs without --init (configs/sst2_finetune.toml): not refused
    (tmp_path / "c.toml").write_text('preset = "small-cpu"\n')
    assert run([*argv, "--config", str(tmp_path / "c.toml")], capsys)[0] == 0


def test_long_reviews_read_in_windows(pretrained, tmp_path, capsys):
    for label, sentences in (("neg", SENTENCES[1::2]), ("pos", SENTENCES[::2])):
        (tmp_path / "reviews" / label).mkdir(parents=True)
        for i in range(5):  # about 170 characters: six windows of a 32-token context
            (tmp_path / "reviews" / label / f"cv{i}.txt").write_text("\n".join(sentences * 3))
    out = tmp_path / "cls"
    code, _, err = run(["train", "classifier", "--init", str(pretrained), "--long-text",
                        "windows", "--data", str(tmp_path / "reviews"), "--out", str(out),
                        "--folds", "5", "--max-iters", "2", *TINY[:-2]], capsys)  # fmt: skip
    assert code == 0, err
    assert "8 training examples (neg 4, pos 4), 2 dev; 48 training windows" in err
    code, stdout, err = run(["classify", str(out), (tmp_path / "reviews/pos/cv0.txt").read_text()],
                            capsys)  # fmt: skip
    assert code == 0, err
    assert stdout.split("\t")[0] in ("neg", "pos") and 0.5 <= float(stdout.split("\t")[1]) <= 1


def test_init_must_be_a_kind_the_classifier_starts_from(texts, tmp_path, capsys):
    gpt = tmp_path / "gpt"
    assert run_quiet(["train", "gpt", "--data", str(texts / "corpus.txt"), "--out", str(gpt),
                      "--max-iters", "1", *TINY]) == 0  # fmt: skip
    capsys.readouterr()
    argv = ["train", "classifier", "--init", str(gpt), "--data", str(texts / "train.tsv"),
            "--out", str(tmp_path / "c")]  # fmt: skip
    line = one_line_error(*run(argv, capsys)[::2])
    assert "'gpt' model" in line and "bert" in line
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "content, flags, expected",
    [
        ("good film\t1\nbad film\n", [], "train.tsv:2: expected 'sentence<TAB>label'"),
        (
            "good film\t1\nbad film\tnegative\n",
            [],
            "train.tsv:2: label 'negative' is not an integer",
        ),
        ("sentence\tlabel\n", [], "train.tsv holds no examples"),
        ("good film\t1\n" * 20, [], "hold 1 class(es): give two or more"),
        ("good film\t1\nbad film\t0\n" * 10, ["--folds", "1"], "--folds must be >= 2"),
        ("good film\t1\nbad film\t0\n" * 10, ["--fold", "10"], "--fold must be in 0..9, got 10"),
        ("good film\t1\nbad film\t0\n" * 10, ["--label-names", "a"], "--label-names gives 1"),
        ("good film\t1\nbad film\t0\n" * 10, ["--context-length", "2"], "must be >= 3"),
    ],
)
def test_bad_tsv_is_one_line(content, flags, expected, tmp_path, capsys):
    (tmp_path / "train.tsv").write_text(content)
    argv = ["train", "classifier", "--data", str(tmp_path / "train.tsv"), "--out",
            str(tmp_path / "out"), *TINY, *flags]  # fmt: skip
    assert expected in one_line_error(*run(argv, capsys)[::2])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("labels", "new"),
    [
        (
            ["0", "1", "2"],
            "classifier.bias, classifier.weight (this data's classes are 0, 1, not 0, 1, 2)",
        ),  # another count
        (
            ["neg", "pos"],
            "classifier.bias, classifier.weight (this data's classes are 0, 1, not neg, pos)",
        ),  # as many, but other classes
        (["0", "1"], "none"),  # the same classes: the head carries on
    ],
)
def test_init_from_a_classifier_of_other_classes_starts_a_new_head(
    labels, new, texts, tmp_path, capsys
):
    first = tmp_path / "first"  # class folders for named classes, else a labelled table
    for i, sentence in enumerate(SENTENCES * 10):
        label = labels[i % len(labels)]
        if label.isdigit():
            with open(tmp_path / "first.tsv", "a") as table:
                table.write(f"{sentence}\t{label}\n")
        else:
            (tmp_path / "folders" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "folders" / label / f"{i}.txt").write_text(sentence)
    data = tmp_path / ("first.tsv" if labels[0].isdigit() else "folders")
    argv = ["train", "classifier", "--data", str(data), "--out", str(first), "--max-iters", "1"]
    assert run_quiet([*argv, *TINY]) == 0
    capsys.readouterr()
    code, _, err = run(["train", "classifier", "--init", str(first), "--data",
                        str(texts / "train.tsv"), "--out", str(tmp_path / "two"), "--max-iters",
                        "1", "--batch-size", "8"], capsys)  # fmt: skip
    assert code == 0, err
    assert f"new: {new};" in err, err


def test_a_classifier_saved_before_long_text_and_pooling_resumes(texts, tmp_path, capsys):
    out, data = tmp_path / "cls", ["--data", str(texts / "train.tsv"), "--folds", "4"]
    argv = ["train", "classifier", "--out", str(out)]  # config.json as attnlab 2026-12-04 wrote it
    assert run_quiet([*argv, *data, "--max-iters", "1", *TINY]) == 0
    description = json.loads((out / "config.json").read_text())
    for field in ("long_text", "pooling"):
        del description["config"][field]
    (out / "config.json").write_text(json.dumps(description))
    code, _, err = run(["classify", str(out), SENTENCES[0]], capsys)
    assert code == 0, err
    code, _, err = run([*argv, "--resume", "--max-iters", "2", "--long-text", "head_tail"], capsys)
    assert code == 0, err  # the old run's model read whole: its defaults, no change given
    assert json.loads((out / "config.json").read_text())["config"]["long_text"] == "head_tail"


def test_empty_class_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "reviews" / "pos").mkdir(parents=True)
    (tmp_path / "reviews" / "neg").mkdir()
    (tmp_path / "reviews" / "pos" / "a.txt").write_text("great")
    argv = ["train", "classifier", "--data", str(tmp_path / "reviews"), "--out",
            str(tmp_path / "out"), *TINY]  # fmt: skip
    assert "class folder" in one_line_error(*run(argv, capsys)[::2])


def test_classify_reads_stdin_line_for_line_and_names_a_line_it_cannot_read(
    texts, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "cls"  # a character vocabulary: the training sentences' letters only
    assert run_quiet(["train", "classifier", "--data", str(texts / "train.tsv"), "--out",
                      str(out), "--folds", "4", "--max-iters", "1", *TINY]) == 0  # fmt: skip
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{SENTENCES[0]}\n\n{SENTENCES[1]}\n"))
    code, stdout, err = run(["classify", str(out)], capsys)
    assert code == 0, err
    lines = stdout.split("\n")
    assert lines[1] == "" and lines[0].endswith(SENTENCES[0]) and lines[2].endswith(SENTENCES[1])
    lines = [SENTENCES[0]] * 32 + ["", "zebra quiz!"]  # a batch is printed once it is scored
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    code, stdout, err = run(["classify", str(out)], capsys)
    assert len(stdout.splitlines()) == 33 and "line 34: text has" in one_line_error(code, err)


def test_classify_refuses_a_masked_lm_checkpoint(pretrained, capsys):
    line = one_line_error(*run(["classify", str(pretrained), "text"], capsys)[::2])
    assert "'bert' model" in line and "fill-mask" in line


def test_bert_offers_neither_classifier_settings_nor_the_datas(texts, tmp_path, capsys):
    for kind, offered in (("bert", False), ("classifier", True)):
        with pytest.raises(SystemExit):
            run_quiet(["train", kind, "--help"])
        shown = capsys.readouterr().out
        assert ("--pooling" in shown) is offered and "--vocab-size" not in shown
        assert ("--eval-iters" in shown) is not offered  # a classifier scores its whole dev set
    (tmp_path / "bert.toml").write_text('data = "stdlib"\n[model]\npooling = "mean"\n')
    argv = ["train", "bert", "--config", str(tmp_path / "bert.toml"), "--out", str(tmp_path / "b")]
    assert "bert.toml [model]: bert does not use pooling" in one_line_error(*run(argv, capsys)[::2])
    (tmp_path / "bert.toml").write_text('data = "/no/such/corpus"\n[model]\nvocab_size = 99\n')
    line = one_line_error(*run(argv, capsys)[::2])  # before the data is looked for
    assert "vocab_size comes from the data: leave it unset" in line
    classifier = ["train", "classifier", "--out", str(tmp_path / "c")]
    assert run_quiet([*classifier, "--data", str(texts / "train.tsv"), "--folds", "4",
                      "--max-iters", "1", *TINY]) == 0  # fmt: skip
    (tmp_path / "c.toml").write_text("[training]\neval_iters = 3\n")
    resumed = [*classifier, "--resume", "--config", str(tmp_path / "c.toml")]
    line = one_line_error(*run(resumed, capsys)[::2])  # resumed too: not silently unused
    assert "c.toml [training]: classifier does not use eval_iters" in line


def test_a_dev_text_a_character_tokenizer_cannot_read_is_one_line(tmp_path, capsys):
    data = tmp_path / "texts"
    data.mkdir()
    rows = [f"{s}\t{i % 2}" for i, s in enumerate(SENTENCES * 5)]
    (data / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (data / "dev.tsv").write_text("sentence\tlabel\nschön\t1\na fine film\t0\n")
    argv = ["train", "classifier", "--data", str(data), "--out", str(tmp_path / "out"), *TINY]
    line = one_line_error(*run(argv, capsys)[::2])
    assert "a text held out for evaluation has 1 character(s)" in line and "'ö'" in line
    assert line.count("bpe:N") == 1 and line.count("training text") == 1  # the hint once


def test_evaluate_refuses_data_of_other_classes(texts, tmp_path, capsys):
    out = tmp_path / "cls"
    assert run_quiet(["train", "classifier", "--data", str(texts / "train.tsv"), "--out",
                      str(out), "--folds", "4", "--max-iters", "1", *TINY]) == 0  # fmt: skip
    capsys.readouterr()
    rows = [f"{s}\t{(0, 1, 5)[i % 3]}\n" for i, s in enumerate(SENTENCES * 6)]
    (tmp_path / "five.tsv").write_text("".join(rows))
    for name in ("neg", "pos"):
        (tmp_path / "folders" / name).mkdir(parents=True)
        for i, sentence in enumerate(SENTENCES):
            (tmp_path / "folders" / name / f"{i}.txt").write_text(sentence)
    for data, names in [("five.tsv", "0, 1, 2, 3, 4, 5"), ("folders", "neg, pos")]:
        argv = ["evaluate", str(out), "--data", str(tmp_path / data), "--device", "cpu"]
        line = one_line_error(*run(argv, capsys)[::2])
        assert f"({names}) are not those the checkpoint was trained on (0, 1)" in line
    (tmp_path / "big.tsv").write_text("a fine film\t0\na dull mess\t1\nthe end\t100000\n" * 10)
    argv = [
        "train",
        "classifier",
        "--data",
        str(tmp_path / "big.tsv"),
        "--out",
        str(tmp_path / "b"),
        *TINY,
    ]
    assert "the labels run to 100000, but only 3 of them appear" in one_line_error(
        *run(argv, capsys)[::2]
    )


def test_evaluate_scores_all_of_a_file_the_model_never_saw(texts, tmp_path, capsys, monkeypatch):
    """Not the fold that training would have held out of it: every line, as `classify` reads
    them; the run's own data is scored on what it held out."""
    out = tmp_path / "cls"
    assert run_quiet(["train", "classifier", "--data", str(texts / "train.tsv"), "--out",
                      str(out), "--folds", "4", "--max-iters", "3", *TINY]) == 0  # fmt: skip
    rows = [(s, i % 2) for i, s in enumerate(SENTENCES * 3)] + [(SENTENCES[0], 1)] * 3
    (tmp_path / "new.tsv").write_text("".join(f"{s}\t{y}\n" for s, y in rows))
    capsys.readouterr()
    code, stdout, err = run(["evaluate", str(out), "--data", str(tmp_path / "new.tsv"), "--json"],
                            capsys)  # fmt: skip
    assert code == 0, err
    accuracy = json.loads(stdout)["val_accuracy"]
    assert json.loads(stdout)["val_targets"] == len(rows)
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{s}\n" for s, _ in rows)))
    code, stdout, err = run(["classify", str(out)], capsys)
    predicted = [line.split("\t")[0] for line in stdout.splitlines()]
    right = sum(p == str(y) for p, (_, y) in zip(predicted, rows, strict=True))
    assert accuracy == pytest.approx(right / len(rows))  # 15 lines: no fold is 1/15 of them
    code, stdout, _ = run(["evaluate", str(out), "--json"], capsys)  # its own: the held-out fold
    assert code == 0 and 0 <= json.loads(stdout)["val_accuracy"] <= 1
    line = one_line_error(*run(["evaluate", str(out), "--split", "train"], capsys)[::2])
    assert "--split train: this model is scored on its run's validation data, or on all" in line
    sst = tmp_path / "sst"  # SST-2's layout: its dev.tsv scored, and named
    sst.mkdir()
    (sst / "train.tsv").write_text((tmp_path / "new.tsv").read_text())
    (sst / "dev.tsv").write_text("".join(f"{s}\t{y}\n" for s, y in rows[:4]))
    code, stdout, err = run(["evaluate", str(out), "--data", str(sst), "--json"], capsys)
    assert json.loads(stdout)["val_targets"] == 4 and f"scoring {sst / 'dev.tsv'}; --data" in err


def test_evaluate_names_classes_not_the_run_label_names(texts, tmp_path, capsys):
    """The run's --label-names named its training file's labels: other data is judged by its
    classes against the checkpoint's, not refused for names the user never gave `evaluate`."""
    out = tmp_path / "named"
    assert run_quiet(["train", "classifier", "--data", str(texts / "train.tsv"), "--out",
                      str(out), "--folds", "4", "--max-iters", "1", "--label-names", "bad,good",
                      *TINY]) == 0  # fmt: skip
    (tmp_path / "three.tsv").write_text("".join(f"{s}\t{i % 3}\n" for i, s in enumerate(SENTENCES)))
    for name in ("neg", "pos"):
        (tmp_path / "folders" / name).mkdir(parents=True)
        (tmp_path / "folders" / name / "a.txt").write_text(SENTENCES[0])
    capsys.readouterr()
    for data, names in [("three.tsv", "0, 1, 2"), ("folders", "neg, pos")]:
        argv = ["evaluate", str(out), "--data", str(tmp_path / data), "--device", "cpu"]
        line = one_line_error(*run(argv, capsys)[::2])
        assert f"({names}) are not those the checkpoint was trained on (bad, good)" in line
    (tmp_path / "some" / "good").mkdir(parents=True)  # some of its classes: scored as named
    (tmp_path / "some" / "good" / "a.txt").write_text(SENTENCES[0])
    (tmp_path / "good.tsv").write_text(f"{SENTENCES[0]}\t1\n")
    scores = [run(["evaluate", str(out), "--data", str(tmp_path / data), "--json"], capsys)[1]
              for data in ("some", "good.tsv")]  # fmt: skip
    assert scores[0] == scores[1] and json.loads(scores[0])["val_targets"] == 1
