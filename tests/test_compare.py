import json

from helpers import one_line_error, run
from test_run_directory import train

from attnlab.models.gpt import GPT, GPTConfig


def write_run(folder, records, kind="gpt", tokenizer="char"):
    """A run folder as training leaves it, less the checkpoint: run.json and metrics.jsonl."""
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"kind": kind, "data": {"tokenizer": tokenizer}}))
    lines = [json.dumps(r) if isinstance(r, dict) else r for r in records]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def record(step, loss, val=None, rate=1000.0, **scores):
    r = {"step": step, "train_loss": loss, "lr": 1e-3, "tokens_per_s": rate, "elapsed_s": step}
    return {**r, **({} if val is None else {"val_loss": val, **scores})}


def test_compare_tables_each_runs_best_and_last_evaluation(tmp_path, capsys):
    a = write_run(tmp_path / "a", [record(1, 4.0, 3.9, 900), record(2, 3.0, 2.5, 1100),
                                   '{"step": 3, "train_lo', record(4, 2.9, 2.7, 1000)])  # fmt: skip
    b = write_run(tmp_path / "b", [record(s, 5.0 - s, rate=2000) for s in (1, 2, 3)])
    code, out, err = run(["compare", a, b], capsys)
    assert code == 0 and err == ""
    header, row_a, row_b = out.splitlines()
    assert header.split()[:4] == ["run", "kind", "params", "steps"]
    # a's best is step 2's 2.5, its last 2.7; the cut line is skipped; speed is the median
    assert row_a.split() == [a, "gpt", "-", "4", "0:04", "1,000", "tokens/s", "2.5000", "(2)",
                             "2.7000"]  # fmt: skip
    assert row_b.split() == [b, "gpt", "-", "3", "0:03", "2,000", "tokens/s", "-", "-"]
    code, out, _ = run(["compare", a, b, "--json"], capsys)
    runs = json.loads(out)["runs"]
    assert [(r["best_val_loss"], r["best_step"], r["steps"]) for r in runs] == [
        (2.5, 2, 4),
        (None, None, 3),
    ]


def test_compare_counts_a_checkpoints_parameters_and_draws_the_curves(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "4", "--eval-interval", "2")[0] == 0
    other = write_run(tmp_path / "other", [record(1, 4.0, 3.0, accuracy=0.5)])
    png = tmp_path / "curves.png"
    code, text, err = run(["compare", str(out), other, "--png", str(png), "--by", "time"], capsys)
    assert code == 0 and f"wrote {png}" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
    config = GPTConfig(**json.loads((out / "config.json").read_text())["config"])
    params = sum(p.numel() for p in GPT(config).parameters())
    assert f"{params / 1e6:.2f}M" in text.splitlines()[1]
    assert text.splitlines()[0].split()[-1] == "accuracy"  # a score either run has
    assert text.splitlines()[2].split()[-1] == "0.5000"


def test_compare_notes_losses_of_other_tokenizers_or_units(tmp_path, capsys):
    a = write_run(tmp_path / "a", [record(1, 4.0, 3.0)])
    b = write_run(tmp_path / "b", [record(1, 4.0, 3.0)], tokenizer="bpe:512")
    c = tmp_path / "c"
    images = {k: v for k, v in record(1, 4.0).items() if k != "tokens_per_s"}
    write_run(c, [{**images, "images_per_s": 5.0}], kind="vit", tokenizer=None)
    assert "losses are per tokenizers that differ" in run(["compare", a, b], capsys)[2]
    assert "losses are per units (image, token)" in run(["compare", a, str(c)], capsys)[2]
    assert run(["compare", a, str(c)], capsys)[1].splitlines()[2].split()[5:7] == ["5", "images/s"]


def test_compare_refuses_in_one_line(tmp_path, capsys):
    a = write_run(tmp_path / "a", [record(1, 4.0, 3.0)])
    (tmp_path / "empty").mkdir()
    cases = {
        (str(tmp_path / "empty"),): "has no metrics.jsonl: give a run folder",
        (a, a + "/"): "a run is named twice",
        (a, "--png", a + "/loss.png"): "would overwrite a file of the checkpoint",
        (a, "--png", str(tmp_path / "x.nope")): ".nope is not a plot file type",
    }
    for argv, message in cases.items():
        code, out, err = run(["compare", *argv], capsys)
        assert message in one_line_error(code, err) and out == ""
    (tmp_path / "a" / "best").mkdir()
    code, _, err = run(["compare", a + "/best"], capsys)
    assert f"has no metrics.jsonl: give its run, {tmp_path / 'a'}" in one_line_error(code, err)
    write_run(tmp_path / "new", ["not a record"])
    code, _, err = run(["compare", str(tmp_path / "new")], capsys)
    assert "holds no record" in one_line_error(code, err)


def test_every_run_is_in_the_legend_whatever_its_name(tmp_path, monkeypatch, capsys):
    drawn = []
    monkeypatch.setattr("attnlab.figures.save_figure", lambda fig, png: drawn.append(fig) or png)
    monkeypatch.chdir(tmp_path)  # runs named as given: "_a" would be a hidden label
    write_run(tmp_path / "_a", [record(1, 4.0, 3.0), record(2, 3.5, 2.9)])
    write_run(tmp_path / "b", [record(1, 4.0), record(2, 3.0)])  # no evaluation: train loss
    assert run(["compare", "_a", "b", "--png", "p.png"], capsys)[0] == 0
    legend = drawn[0].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["_a", "b (train)"]


def test_a_nan_evaluation_is_no_best_and_a_log_without_speeds_shows_none(tmp_path, capsys):
    nan = {**record(1, 4.0, float("nan"))}
    plain = {k: v for k, v in record(2, 3.0, 0.5).items() if k != "tokens_per_s"}
    a = write_run(tmp_path / "a", [{k: v for k, v in nan.items() if k != "tokens_per_s"}, plain])
    code, out, err = run(["compare", a], capsys)
    assert code == 0, err
    assert out.splitlines()[1].split()[4:] == ["0:02", "-", "0.5000", "(2)", "0.5000"]


def test_a_score_other_than_the_loss_is_plotted_alone(tmp_path, monkeypatch, capsys):
    drawn = []
    monkeypatch.setattr("attnlab.figures.save_figure", lambda fig, png: drawn.append(fig) or png)
    a = write_run(tmp_path / "a", [record(1, 4.0, 3.0, val_accuracy=0.5), record(2, 3.0, 2.0,
                                   val_accuracy=0.75)])  # fmt: skip
    b = write_run(tmp_path / "b", [record(1, 4.0, 3.5)])  # logs no accuracy: not drawn
    png = str(tmp_path / "p.png")
    assert run(["compare", a, b, "--png", png, "--score", "val_accuracy"], capsys)[0] == 0
    ax = drawn[0].axes[0]
    assert ax.get_ylabel() == "val accuracy" and len(ax.get_lines()) == 1
    assert list(ax.get_lines()[0].get_ydata()) == [0.5, 0.75]
    code, _, err = run(["compare", a, b, "--png", png, "--score", "bleu"], capsys)
    assert "--score bleu: no run logs it; they log val_accuracy, val_loss" in one_line_error(
        code, err
    )
    code, _, err = run(["compare", a, "--score", "val_loss"], capsys)
    assert "--score picks what --png plots" in one_line_error(code, err)


def test_a_folder_of_runs_is_its_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    write_run(runs / "b", [record(1, 4.0, 3.0)])
    write_run(runs / "a", [record(1, 4.0, 2.0)])
    (runs / "notes").mkdir()  # no run: left out
    code, out, err = run(["compare", str(runs)], capsys)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(runs / "a"), str(runs / "b")]
    code, _, err = run(["compare", str(runs / "notes")], capsys)
    assert "has no metrics.jsonl" in one_line_error(code, err)
