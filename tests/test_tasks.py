"""The synthetic tasks (data/tasks.py): each answer is determined by the sequence, scored only
where it is, drawn reproducibly; `train gpt --data task:NAME` reports accuracy."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import one_line_error, run

from attnlab.data import tasks
from attnlab.data.tasks import (
    IGNORE_INDEX,
    MARK_ID,
    NOISE_ID,
    TASKS,
    TaskAccuracy,
    TaskBatches,
    TaskOptions,
    parse_task,
)
from attnlab.errors import UserError


def draw(name, length=41, n=64, seed=0, **options):
    return TASKS[name](torch.Generator().manual_seed(seed), n, length, TaskOptions(**options))


def test_associative_recall_asks_for_the_value_a_key_had():
    inputs, targets = draw("associative_recall", dense=0)
    assert inputs.shape == targets.shape == (64, 41)
    assert ((targets != IGNORE_INDEX).sum(1) == 1).all() and (targets[:, -1] != IGNORE_INDEX).all()
    for row, target in zip(inputs.tolist(), targets[:, -1].tolist(), strict=True):
        query = row[-1]
        values = {row[i + 1] for i in range(len(row) - 2) if row[i] == query and i % 2 == 0}
        assert values == {target}  # the key was seen, always with this value
    assert len(set(targets[:, -1].tolist())) > 5  # the answers vary


def test_mqar_asks_every_key_once_after_the_pairs():
    inputs, targets = draw("mqar", length=48, pairs=6, vocab=30)
    for row, answers in zip(inputs.tolist(), targets.tolist(), strict=True):
        table = {row[i]: row[i + 1] for i in range(0, 12, 2)}
        assert len(table) == 6  # distinct keys
        asked = [(t, row[t], a) for t, a in enumerate(answers) if a != IGNORE_INDEX]
        assert sorted(key for _, key, _ in asked) == sorted(table)
        assert all(t >= 12 and table[key] == a for t, key, a in asked)
        assert sum(token != NOISE_ID for token in row[12:]) == 6


def test_selective_copying_gives_back_the_scattered_tokens_in_order():
    inputs, targets = draw("selective_copying", length=40, tokens=8, vocab=10)
    for row, answers in zip(inputs.tolist(), targets.tolist(), strict=True):
        data = [token for token in row[:32] if token != NOISE_ID]
        assert len(data) == 8 and row[32:] == [MARK_ID] * 8
        assert answers[32:] == data and set(answers[:32]) == {IGNORE_INDEX}


def test_associative_recall_in_training_also_asks_every_key_seen_before():
    inputs, targets = draw("associative_recall", length=41)
    _, query_only = draw("associative_recall", length=41, dense=0)
    assert torch.equal(targets[:, -1], query_only[:, -1])
    for row, answers in zip(inputs.tolist(), targets.tolist(), strict=True):
        for t in range(40):
            seen = [row[s + 1] for s in range(t % 2, t - 1, 2) if row[s] == row[t]]
            if t % 2 == 0 and seen:  # a key met before: its value again
                assert answers[t] == seen[0] == row[t + 1]
            else:
                assert answers[t] == IGNORE_INDEX
    assert (targets[:, :-1] != IGNORE_INDEX).sum() > 5 * 64


def test_each_task_has_its_papers_vocabulary_unless_given():
    _, targets = draw("associative_recall", n=2000)
    assert len(set(targets[:, -1].tolist())) == 15  # 15 keys and 15 values
    inputs, _ = draw("selective_copying", length=64, n=200)
    assert len(set(inputs.flatten().tolist()) - {NOISE_ID, MARK_ID}) == 16


def test_batches_repeat_from_their_seed_and_resume_from_their_state():
    a = TaskBatches(TASKS["mqar"], TaskOptions(), 4, 32, seed=3)
    b = TaskBatches(TASKS["mqar"], TaskOptions(), 4, 32, seed=3)
    a.next()
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.next(), b.next(), strict=True))


def test_accuracy_counts_only_the_scored_positions():
    inputs, targets = draw("mqar", length=48, pairs=6)
    perfect = F.one_hot(targets.clamp(min=0), 60).float()
    scores = TaskAccuracy()
    scores.update(perfect, (inputs, targets))
    assert scores.compute()["accuracy"] == 1.0
    wrong = TaskAccuracy()
    wrong.update(F.one_hot((targets.clamp(min=0) + 1) % 60, 60).float(), (inputs, targets))
    assert wrong.compute()["accuracy"] == 0.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("task:sorting", "unknown task 'sorting'; tasks: associative_recall, mqar"),
        ("task:mqar:pairs=40", "mqar: 40 pairs need 40 keys"),
        ("task:mqar:depth=2", "task mqar has no option depth: vocab, pairs"),
        ("task:selective_copying:pairs=4", "has no option pairs: vocab, tokens"),
        ("task:mqar:pairs=x", "give KEY=NUMBER"),
        ("task:mqar:pairs=٣", "give KEY=NUMBER"),  # an Arabic-Indic 3
        ("task:mqar:pairs=8,pairs=9", "task option pairs is given twice"),
        ("task:associative_recall:vocab=10000", "associative_recall: vocab must be 2 to 52, got"),
        ("task:mqar:vocab=0", "task mqar: vocab must be 2 to 52, got 0"),  # not the default
        ("task:selective_copying:vocab=27", "vocab must be 1 to 26, got 27"),
        ("task:mqar:pairs=0", "task mqar: pairs must be at least 1, got 0"),
        ("task:associative_recall:dense=2", "dense must be 0 to 1, got 2"),
    ],
)
def test_bad_task_specs_are_one_line(tmp_path, capsys, spec, message):
    out = tmp_path / "run"
    code, _, err = run(["train", "gpt", "--data", spec, "--out", str(out)], capsys)
    assert message in one_line_error(code, err)
    assert not out.exists()


def test_train_on_a_task_reports_accuracy_and_samples(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "gpt", "--data", "task:selective_copying:tokens=4,vocab=6", "--out", str(out)]
    argv += ["--context-length", "16", "--n-layers", "1", "--d-model", "16", "--n-heads", "2"]
    argv += ["--max-iters", "4", "--eval-interval", "2", "--eval-iters", "2", "--batch-size", "8"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert f"score it:   attnlab evaluate {out}" in err and "sample it" not in err
    assert run(["evaluate", str(out)], capsys)[0] == 0  # the step it suggests works
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= records[-1]["val_accuracy"] <= 1
    code, text, err = run(
        ["sample", str(out), "--prompt", "..a..b>", "--max-new-tokens", "2"], capsys
    )
    assert code == 0 and text.startswith("..a..b>"), err
    spec = "task:selective_copying:tokens=4,vocab=6"
    code, text, err = run(["inspect", "layers", str(out), "--data", spec, "--json"], capsys)
    layers = json.loads(text)  # the loss over the answers, the one layer dropped or doubled
    assert (
        code == 0
        and math.isfinite(layers["baseline"])
        and set(layers["loss"]) == {"drop 0", "duplicate 0"}
    )
    baselines = [  # as many windows as asked, not a batch of 16
        json.loads(
            run(["inspect", "layers", str(out), "--data", spec, "--windows", n, "--json"], capsys)[
                1
            ]
        )
        for n in ("1", "16")
    ]
    assert baselines[0]["baseline"] != baselines[1]["baseline"]
    for command in ("evaluate", "inspect layers"):
        code, _, err = run([*command.split(), str(out), "--data", "task:mqar"], capsys)
        assert "trained on task:selective_copying:tokens=4,vocab=6, not on task:mqar" in err
        assert code == 2 and err.count("\n") == 1


def test_parse_task_reads_options():
    assert parse_task("task:mqar:pairs=16,vocab=40") == ("mqar", TaskOptions(vocab=40, pairs=16))
    assert parse_task("task:selective_copying") == ("selective_copying", TaskOptions(vocab=16))


@pytest.mark.parametrize("name", list(TASKS))
def test_the_example_in_a_bad_option_message_is_a_good_option(name):
    with pytest.raises(UserError, match="give KEY=NUMBER, e.g. ") as error:
        parse_task(f"task:{name}:vocab=x")
    example = str(error.value).rsplit("e.g. ", 1)[1]
    assert parse_task(example)[0] == name


def test_repeat_with_a_task_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(
        ["train", "gpt", "--data", "task:mqar", "--repeat", "--out", str(out)], capsys
    )
    assert "--repeat repeats text windows; a task makes its own sequences" in one_line_error(
        code, err
    )
    assert not out.exists()


def test_evaluate_scores_a_task_model_as_its_training_did(tmp_path, capsys):
    """On the same examples, in full precision whatever the training's (so a figure does not
    depend on the processor that scored it: "auto" is bf16 on some CPUs)."""
    out = tmp_path / "run"
    argv = ["train", "gpt", "--data", "task:selective_copying:tokens=4,vocab=6", "--out", str(out)]
    argv += ["--context-length", "16", "--n-layers", "1", "--d-model", "16", "--n-heads", "2"]
    argv += ["--max-iters", "2", "--eval-iters", "2", "--batch-size", "8", "--device", "cpu"]
    assert run([*argv, "--precision", "bf16"], capsys)[0] == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    code, text, err = run(["evaluate", str(out), "--json"], capsys)
    assert code == 0, err
    scores = json.loads(text)
    assert scores.pop("val_targets") == 2 * 8 * 4  # eval_iters x batch x the answer's tokens
    assert scores == pytest.approx(
        {"val_loss": last["val_loss"], "val_accuracy": last["val_accuracy"]}, abs=0.02
    )
    state = json.loads((out / "trainer_state.json").read_text())
    state["train_config"]["precision"] = "fp32"
    (out / "trainer_state.json").write_text(json.dumps(state))
    assert json.loads(run(["evaluate", str(out), "--json"], capsys)[1]) == {
        **scores,
        "val_targets": 2 * 8 * 4,
    }


def test_inspect_layers_scores_a_tasks_evaluation_sequences_not_its_training_ones(
    tmp_path, capsys, monkeypatch
):
    """A run of --seed S trains on the sequences of seed S and evaluates on those of S + 1:
    `inspect layers` scores the latter, whatever S (a fixed seed was some run's training data),
    and `evaluate` scores what its training did."""
    spec, out = "task:mqar:pairs=2", tmp_path / "run"
    argv = ["train", "gpt", "--data", spec, "--out", str(out), "--seed", "1", "--max-iters", "1"]
    argv += ["--context-length", "16", "--n-layers", "1", "--d-model", "16", "--n-heads", "2"]
    argv += ["--batch-size", "16", "--device", "cpu", "--precision", "fp32"]
    assert run(argv, capsys)[0] == 0
    code, stdout, err = run(["evaluate", str(out), "--json"], capsys)  # as its training did
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["val_loss"]
    assert code == 0 and json.loads(stdout)["val_loss"] == pytest.approx(logged, rel=1e-6), err
    scored, real = [], tasks.evaluation_batches

    def spy(*args, **kwargs):
        scored.extend(real(*args, **kwargs))
        return scored

    monkeypatch.setattr(tasks, "evaluation_batches", spy)
    code, _, err = run(["inspect", "layers", str(out), "--data", spec, "--windows", "16"], capsys)
    assert code == 0, err
    name, options = parse_task(spec)
    trained = TaskBatches(TASKS[name], options, 16, 16, seed=1).next()[0]  # its first batch
    assert not torch.equal(scored[0][0], trained)
    assert torch.equal(scored[0][0], real(spec, 1, 16, 16, 2)[0][0])
