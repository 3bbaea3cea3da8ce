"""--resume: a run continues on its own data and model from anywhere, with the training settings
a file or flags change; a damaged log, a moved corpus or another kind's run is one line."""

import json
import random
import shutil
import subprocess
import sys

import pytest
import safetensors
import safetensors.torch
import torch
from helpers import one_line_error, run, snapshot, tiny_gpt
from test_run_directory import FAST, train
from test_training import make_trainer

from attnlab.cli.runs import check_relative_data
from attnlab.errors import UserError
from attnlab.layers.contracts import MATRIX_LAYERS
from attnlab.training import optimizers
from attnlab.training import trainer as trainer_module
from attnlab.training.checkpoints import save_checkpoint
from attnlab.training.optimizers import build_optimizer
from attnlab.training.state import encode_tensor, load_training_state, restore_random_states


def test_a_relative_data_path_is_kept_whole_so_a_run_resumes_from_anywhere(
    tmp_path, corpus, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert train(capsys, "corpus.txt", "run", "--max-iters", "2")[0] == 0
    run_file = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_file["data"]["data"] == str(corpus)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = ["--out", str(tmp_path / "run"), "--resume", "--max-iters", "3"]
    assert run(["train", "gpt", *resumed, "--data", "../corpus.txt"], capsys)[0] == 0


def test_data_named_by_another_path_is_the_same_data(tmp_path, corpus, capsys, monkeypatch):
    root = tmp_path / "datasets"
    (root / "texts").mkdir(parents=True)
    corpus.rename(root / "texts" / "plays.txt")
    (tmp_path / "link.txt").symlink_to(root / "texts" / "plays.txt")
    monkeypatch.setenv("ATTNLAB_DATA", str(root))
    monkeypatch.chdir(tmp_path)
    assert train(capsys, "texts/plays.txt", "run", "--max-iters", "2")[0] == 0
    for step, name in enumerate([root / "texts" / "plays.txt", "link.txt"], start=3):
        argv = ["train", "gpt", "--out", "run", "--resume", "--max-iters", str(step)]
        code, _, err = run([*argv, "--data", str(name)], capsys)
        assert code == 0, err
    (tmp_path / "other.txt").write_text(corpus.name * 200)
    code, _, err = run([*argv[:-1], "9", "--data", "other.txt"], capsys)
    assert "cannot change the data or the model (--data " in one_line_error(code, err)


def test_data_inside_the_data_folder_is_kept_relative_to_it_for_another_machines(
    tmp_path, corpus, capsys, monkeypatch
):
    root, out = tmp_path / "data", tmp_path / "run"
    (root / "texts").mkdir(parents=True)
    corpus.rename(root / "texts" / "plays.txt")
    (tmp_path / "texts").mkdir()  # the current folder's texts/plays.txt is not the run's data
    (tmp_path / "texts" / "plays.txt").write_text("too short")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNLAB_DATA", str(root))
    assert train(capsys, root / "texts" / "plays.txt", out, "--max-iters", "1")[0] == 0
    assert json.loads((out / "run.json").read_text())["data"]["data"] == "texts/plays.txt"
    monkeypatch.setenv("ATTNLAB_DATA", str(root.rename(tmp_path / "another")))
    for argv in (["train", "gpt", "--out", str(out), "--resume"], ["evaluate", str(out)]):
        code, _, err = run(argv, capsys)
        assert code == 0, err


def test_a_run_trained_on_a_device_this_machine_lacks_says_how_to_resume_it(
    tmp_path, corpus, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")[0] == 0
    state = json.loads((out / "trainer_state.json").read_text())
    state["train_config"]["device"] = "cuda"  # as a GPU's run given --device cuda saves it
    (out / "trainer_state.json").write_text(json.dumps(state))
    before = snapshot(out)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "3"], capsys)
    assert one_line_error(code, err).endswith(
        f"{out} was trained with --device cuda, which is not available here: give --device auto "
        "(or cpu) to resume it here"
    )
    assert snapshot(out) == before


def test_a_run_copied_without_its_optimizer_state_is_one_line_before_its_data_is_read(
    tmp_path, corpus, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")[0] == 0
    (out / "optimizer.safetensors").unlink()
    corpus.unlink()  # not read: the run's data is missing here too
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "3"], capsys)
    assert one_line_error(code, err).endswith(
        f"cannot resume: {out / 'optimizer.safetensors'} is missing (--init {out} starts a new "
        "run from its weights)"
    )


def test_a_run_copied_without_its_best_folder_keeps_the_best_anew(tmp_path):
    """What the run reports as its best must be on disk: a copy without best/ does not compare
    its evaluations with the record of weights it lacks."""
    first = make_trainer(tmp_path, max_iters=4, eval_interval=2)
    first.keep_best = "val_loss"
    first.fit()
    shutil.rmtree(tmp_path / "best")
    resumed = make_trainer(tmp_path, max_iters=6, eval_interval=2)
    resumed.keep_best = "val_loss"
    with pytest.warns(RuntimeWarning, match="best is missing: the best weights are kept again"):
        resumed.resume()
    resumed.fit()
    assert resumed.best["step"] == 6 and (tmp_path / "best" / "model.safetensors").is_file()


def test_a_run_of_another_kind_is_not_resumed(tmp_path, corpus, capsys):
    out = tmp_path / "gpt_run"
    code, _, err = train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")
    assert code == 0, err
    before = snapshot(out)
    code, _, err = run(["train", "test_sum", "--out", str(out), "--resume"], capsys)
    assert "holds a 'gpt' run: resume it with that kind" in one_line_error(code, err)
    assert snapshot(out) == before


def test_a_run_stopped_before_its_first_save_is_started_again_not_resumed(tmp_path, corpus, capsys):
    other, out = tmp_path / "other", tmp_path / "run"
    code, _, err = train(capsys, corpus, other, "--max-iters", "1")
    assert code == 0, err
    out.mkdir()  # as a run stopped (killed, say) between writing run.json and its first save
    shutil.copy(other / "run.json", out / "run.json")
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume"], capsys)
    assert "stopped before its first save; start it again without --resume" in one_line_error(
        code, err
    )


@pytest.mark.parametrize(
    "damage",
    [
        *("garbage\n", "[1, 2]\n", '{"loss": 1.0}\n', '{"step": 9}\n'),
        *('{"step": 1, "train_loss": 1}\n', '{"step": 4, "train_loss": "\\ud800"}\n'),
    ],
)
def test_resume_cuts_a_damaged_metrics_log_at_its_last_good_record(
    tmp_path, corpus, capsys, damage
):
    out = tmp_path / "run"
    code, _, err = train(capsys, corpus, out, "--max-iters", "4", "--eval-interval", "2")
    assert code == 0, err
    log = out / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:3]) + "\n" + damage + "\n".join(lines[3:]) + "\n")
    resume = ["train", "gpt", "--out", str(out), "--resume", "--max-iters", "6"]
    with pytest.warns(RuntimeWarning, match="line 4 is not a metrics record"):
        code, _, err = run(resume, capsys)
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1, 2, 3, 5, 6]  # cut after step 3; the run went on from its checkpoint


def test_a_warning_reads_as_one_line_of_the_command(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")[0] == 0
    log = out / "metrics.jsonl"
    log.write_text(log.read_text() + "garbage\n")
    command = [sys.executable, "-m", "attnlab", "train", "gpt", "--out", str(out), "--resume"]
    done = subprocess.run([*command, "--max-iters", "3"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "metrics record" in line]
    assert warning and warning[0].startswith("attnlab: warning: ") and ".py" not in done.stderr


def test_resume_takes_the_files_training_settings_and_refuses_its_model_changes(
    tmp_path, corpus, capsys
):
    out, config = tmp_path / "run", tmp_path / "run.toml"
    settings = f'data = "{corpus}"\nout = "{out}"\n[model]\ncontext_length = 16\n'
    config.write_text(settings + "[training]\nmax_iters = 2\neval_interval = 2\n")
    assert run(["train", "gpt", "--config", str(config), *FAST], capsys)[0] == 0
    changed = "weight_decay = 0.0\nbeta2 = 0.95\n"  # the optimizer's groups take them
    config.write_text(settings + "[training]\nmax_iters = 4\neval_interval = 2\n" + changed)
    code, _, err = run(["train", "gpt", "--config", str(config), "--resume", *FAST], capsys)
    assert code == 0, err
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 4
    with safetensors.safe_open(out / "optimizer.safetensors", framework="pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
    assert {(g["weight_decay"], tuple(g["betas"])) for g in groups} == {(0.0, (0.9, 0.95))}
    longer = settings.replace("context_length = 16", "context_length = 32")  # not the paths'
    config.write_text(longer + "[training]\nmax_iters = 6\n")
    code, _, err = run(["train", "gpt", "--config", str(config), "--resume", *FAST], capsys)
    assert "cannot change the data or the model (context_length = 32)" in one_line_error(code, err)
    typos = [("model", "context_lenght", settings.replace("context_length", "context_lenght")),
             ("training", "max_iter", settings + "[training]\nmax_iter = 6\n")]  # fmt: skip
    for table, typo, text in typos:  # a typo is no setting, nor a change to refuse
        config.write_text(text)
        code, _, err = run(["train", "gpt", "--config", str(config), "--resume", *FAST], capsys)
        assert f"run.toml [{table}]: unknown key(s) {typo} for" in one_line_error(code, err)


def test_an_older_runs_relative_data_path_is_read_from_its_folder_and_named_elsewhere(
    tmp_path, corpus, capsys, monkeypatch
):
    out = tmp_path / "run"  # run.json as attnlab wrote it before 2026-12-05: --data as given
    assert train(capsys, corpus, out, "--max-iters", "1")[0] == 0
    description = json.loads((out / "run.json").read_text())
    description["data"]["data"] = "corpus.txt"
    (out / "run.json").write_text(json.dumps(description))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    resume = ["train", "gpt", "--out", str(out), "--resume", "--max-iters", "2"]
    for argv in (resume, ["evaluate", str(out)]):
        line = one_line_error(*run(argv, capsys)[::2])
        assert "trained on corpus.txt, which is neither in the data folder" in line
        assert line.endswith("the folder the run was started in (a run of attnlab before "
                             "2026-12-05 reads its relative --data there)")  # fmt: skip
    code, _, err = run(["evaluate", str(out), "--data", str(corpus)], capsys)  # data named anew
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    for argv in (resume, ["evaluate", str(out)]):
        code, _, err = run(argv, capsys)
        assert code == 0, err


@pytest.mark.parametrize("spec", ["corpus.txt", "texts/corpus", "texts:*.txt", ":*.txt"])
def test_a_relative_path_an_older_run_kept_is_named_where_a_dataset_is_not(tmp_path, spec):
    (tmp_path / "run").mkdir()
    for name in ("stdlib", "task:mqar", "tinyshakespeare", "tinyshakespeare/input.txt"):
        check_relative_data(name, tmp_path / "run")  # a dataset's, fetched where missing
    if spec.startswith(":"):  # the files of the folder it was started in: any folder's, here
        return check_relative_data(spec, tmp_path / "run")
    with pytest.raises(UserError, match="neither in the data folder .* nor here: put it there"):
        check_relative_data(spec, tmp_path / "run")


def test_a_resumed_run_whose_data_is_gone_or_whose_run_file_is_damaged_says_so(
    tmp_path, corpus, capsys
):
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "1")[0] == 0
    description = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**description, "data": {
        **description["data"], "bogus": 1}}))  # fmt: skip
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "2"], capsys)
    assert f"{out / 'run.json'} data settings: unknown key(s) bogus" in one_line_error(code, err)
    (out / "run.json").write_text(json.dumps(description))
    corpus.rename(tmp_path / "moved.txt")
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "2"], capsys)
    assert f"was trained on {corpus}, which is not here: put it there" in one_line_error(code, err)
    code, _, err = run(["evaluate", str(out)], capsys)  # on another machine, say
    assert one_line_error(code, err).endswith(
        f"trained on {corpus}, which is not here: give --data"
    )


def test_a_resumed_runs_time_limit_counts_from_where_it_resumes(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "2")[0] == 0
    state = json.loads((out / "trainer_state.json").read_text())
    (out / "trainer_state.json").write_text(json.dumps({**state, "elapsed_s": 1e6}))  # long ago
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "4",
                        "--time-limit", "10", *FAST], capsys)  # fmt: skip
    assert code == 0 and "time limit" not in err, err
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 4
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "5",
                        "--seed", "7", *FAST], capsys)  # fmt: skip
    assert "a resumed run carries on its own random state" in one_line_error(code, err)


def test_a_resumed_run_whose_schedule_moves_the_learning_rate_says_so(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    fast = ["--max-iters", "6", "--warmup-iters", "1", "--eval-interval", "3"]
    assert train(capsys, corpus, out, *fast)[0] == 0
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "6"], capsys)
    assert code == 0 and "schedule" not in err  # already done: nothing moves
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "60"], capsys)
    assert code == 0 and "attnlab: note: the new schedule moves the learning rate from" in err
    warming = ["--warmup-iters", "100", "--lr-schedule", "constant", "--eval-interval", "3"]
    assert train(capsys, corpus, tmp_path / "warm", "--max-iters", "3", *warming)[0] == 0
    more = ["train", "gpt", "--out", str(tmp_path / "warm"), "--resume", "--max-iters", "6"]
    code, _, err = run(more, capsys)  # the same schedule, still warming up: nothing moved
    assert code == 0 and "schedule" not in err, err


def test_init_and_resume_together_are_refused_before_the_run_is_read(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "1")[0] == 0
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--init", str(out)], capsys)
    assert "--init starts a new run" in one_line_error(code, err) and "note" not in err, err


def old_decayed(model):  # the weights decayed before 2026-12-05: no recurrent layer's
    return {id(m.weight) for m in model.modules() if isinstance(m, MATRIX_LAYERS)}


def test_an_optimizer_state_of_other_groups_or_shapes_is_one_line_the_run_untouched(
    tmp_path, corpus, capsys, monkeypatch
):
    """An LSTM's optimizer state saved by an attnlab that did not decay its weights would, by
    the places in its groups, give their moments to other parameters."""
    out, lstm = tmp_path / "run", ["--mixer", "lstm", "--positional", "none"]
    with monkeypatch.context() as old:
        old.setattr(optimizers, "decayed", old_decayed)
        assert train(capsys, corpus, out, "--max-iters", "1", *lstm)[0] == 0
    before, resume = snapshot(out), ["train", "gpt", "--resume", "--max-iters", "2", "--out"]
    line = one_line_error(*run([*resume, str(out)], capsys)[::2])
    assert "grouped the parameters otherwise for weight decay" in line and f"--init {out}" in line
    assert snapshot(out) == before
    new = tmp_path / "new"  # the groups of now, a moment of another shape (smaller)
    assert train(capsys, corpus, new, "--max-iters", "1", *lstm)[0] == 0
    with safetensors.safe_open(new / "optimizer.safetensors", framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
    tensors["0.exp_avg"] = tensors["0.exp_avg"][:1].clone()
    safetensors.torch.save_file(tensors, new / "optimizer.safetensors", metadata)
    line = one_line_error(*run([*resume, str(new)], capsys)[::2])
    assert "does not fit the model" in line


def test_an_optimizer_state_of_another_number_of_groups_is_named_so_not_corrupt(tmp_path):
    model = tiny_gpt()
    saved = torch.optim.AdamW(model.parameters())  # one group, not build_optimizer's two
    sum(p.sum() for p in model.parameters()).backward()
    saved.step()
    rng = {"torch": "", "cuda": [], "python": [], "data": {}}
    state = {"step": 1, "elapsed_s": 0.0, "train_config": {}, "rng": rng}
    save_checkpoint(tmp_path, model, None, saved, state)
    with pytest.raises(UserError, match=r"grouped the parameters otherwise .*groups of \[\d+\],"):
        load_training_state(tmp_path, build_optimizer(model, 1e-3, 0.1, (0.9, 0.95)))


def test_a_stop_at_an_evaluation_step_saves_its_checkpoint_once(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_iters=8, eval_interval=4)
    saves = []
    monkeypatch.setattr(trainer_module, "save_checkpoint", lambda path, *a, **k: saves.append(path))
    trainer.on_record = lambda record: record["step"] == 4 and trainer.request_stop()
    assert trainer.fit().interrupted and trainer.step == 4 and saves == [tmp_path]


def test_init_from_a_run_on_other_data_notes_the_default_it_reads(tmp_path, corpus, capsys):
    first = tmp_path / "run"
    assert train(capsys, corpus, first, "--max-iters", "1")[0] == 0
    argv = ["train", "gpt", "--init", str(first), *FAST, "--max-iters", "1"]
    _, _, err = run([*argv, "--out", str(tmp_path / "b")], capsys)  # stdlib: unseen characters
    assert f"attnlab: note: {first} was trained on {corpus}; this run reads stdlib" in err
    other = tmp_path / "other.txt"  # data given: what was meant, however the first run's
    other.write_text(corpus.read_text())
    code, _, err = run([*argv, "--out", str(tmp_path / "c"), "--data", str(other)], capsys)
    assert code == 0 and "was trained on" not in err, err


def test_a_state_saved_on_more_gpus_restores_those_this_machine_has(monkeypatch, tmp_path):
    """Saved on 3 GPUs, resumed on 1: that one's generator restored, not the state refused."""
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.update({d: s}))
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(3)]

    class Data:
        def load_state_dict(self, state):
            pass

    rng = {"torch": encode_tensor(torch.get_rng_state()), "python": random.getstate()[1],
           "cuda": [encode_tensor(s) for s in states], "data": {}}  # fmt: skip
    restore_random_states(tmp_path, rng, Data())
    assert list(restored) == [0] and torch.equal(restored[0], states[0])


def test_a_floor_for_a_schedule_that_never_decays_is_refused_not_ignored(tmp_path, corpus, capsys):
    out, floor = tmp_path / "run", ["--min-learning-rate", "1e-5"]
    constant = ["--max-iters", "2", "--lr-schedule", "constant", "--eval-interval", "2"]
    line = one_line_error(*train(capsys, corpus, out, *constant, *floor)[::2])
    assert (
        "--min-learning-rate: a setting of the cosine and wsd schedules, not of 'constant'" in line
    )
    assert not (out / "run.json").exists()
    (tmp_path / "c.toml").write_text(
        '[training]\nlr_schedule = "inverse_sqrt"\nmin_learning_rate = 0.1\n'
    )
    code, _, err = train(capsys, corpus, out, "--config", str(tmp_path / "c.toml"))
    assert "not of 'inverse_sqrt'" in one_line_error(code, err)
    assert train(capsys, corpus, out, *constant)[0] == 0
    before, resumed = snapshot(out), ["train", "gpt", "--out", str(out), "--resume", *floor]
    code, _, err = run([*resumed, "--max-iters", "4"], capsys)  # the run's own schedule: constant
    assert "not of 'constant'" in one_line_error(code, err) and snapshot(out) == before
    assert run([*resumed, "--max-iters", "4", "--lr-schedule", "cosine"], capsys)[0] == 0
