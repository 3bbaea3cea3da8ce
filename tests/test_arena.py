"""`attnlab arena`: matched sizes, the race's report, and cost against sequence length."""

import argparse
import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import one_line_error, outside_the_figure, overlapping_tick_labels, run

from attnlab.cli import arena as arena_command
from attnlab.cli import main
from attnlab.errors import UserError
from attnlab.evaluation import arena, scaling
from attnlab.evaluation.arena import Entry, block_parameters, matched_config, report
from attnlab.evaluation.scaling import Curve, activation_bytes, build_layer, crossovers, measure
from attnlab.layers.mixers import MIXERS, register_mixer


@pytest.mark.parametrize("mixer", ["attention", "lstm", "gru", "hyena", "mamba"])
def test_matched_configs_come_within_a_width_step_of_the_target(mixer):
    config = matched_config(mixer, 1_000_000, n_layers=4, context_length=256)
    params = block_parameters(config)
    assert abs(params - 1_000_000) < 0.1 * 1_000_000, (config.d_model, params)
    for width in (config.d_model - 8, config.d_model + 8):  # no other width is closer
        other = block_parameters(dataclasses.replace(config, d_model=width))
        assert abs(other - 1_000_000) >= abs(params - 1_000_000)
    assert config.positional == ("rope" if mixer == "attention" else "none")
    untied = matched_config(mixer, 1_000_000, 4, 256, weight_init="fan_in")
    assert untied.d_model == config.d_model and not untied.tie_weights  # the head not counted


def test_the_race_trains_each_mixer_alike_and_reports(tmp_path, capsys):
    out = tmp_path / "arena"
    argv = ["arena", "--out", str(out), "--mixers", "attention,lstm", "--data", "task:mqar"]
    argv += ["--params", "20000", "--tokens", "4096", "--context-length", "32", "--n-layers", "1"]
    argv += ["--batch-size", "16", "--eval-interval", "4", "--weight-init", "fan_in"]
    argv += ["--seed", "7"]
    handler = signal.getsignal(signal.SIGTERM)
    ballast = b"\x01" * (1 << 30)  # 1 GiB of the arena's memory, which no run may count as its own
    code, table, err = run(argv, capsys)
    assert code == 0, err
    del ballast
    assert signal.getsignal(signal.SIGTERM) is handler  # given back: a forked pool inherits it
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| attention") or line.startswith("| lstm")
    ]
    assert len(rows) == 2 and "val accuracy | best val accuracy |" in table and "seed 7" in table
    for row in rows:  # the best of the evaluations is at least the last
        final, best = (float(cell.strip(" %")) for cell in row.split("|")[-3:-1])
        assert 0 <= final <= best <= 100
        peak_mib = float(row.split("|")[5].replace(",", ""))  # the run's, not inherited by fork
        assert 50 < peak_mib < 1024, row
    assert (out / "arena.png").stat().st_size > 10_000 and (
        out / "arena.md"
    ).read_text() == table.strip() + "\n"
    for mixer in ("attention", "lstm"):  # ordinary run directories, 8 steps of 16 x 32 tokens
        assert (out / mixer / "model.safetensors").is_file()
        config = json.loads((out / mixer / "config.json").read_text())["config"]
        assert config["weight_init"] == "fan_in" and config["tie_weights"] is False
        state = json.loads((out / mixer / "trainer_state.json").read_text())
        assert state["train_config"]["seed"] == 7
        records = [json.loads(line) for line in (out / mixer / "metrics.jsonl").open()]
        assert records[-1]["step"] == 8
        tokens_per_s = next(r for r in rows if r.startswith(f"| {mixer} ")).split("|")[4]
        assert float(tokens_per_s.replace(",", "")) == pytest.approx(
            8 * 16 * 32 / records[-1]["elapsed_s"], abs=1
        )
        # a token budget knows its end: the learning rate has fallen to a tenth there
        assert [r["lr"] for r in records if "lr" in r][-1] == pytest.approx(2e-4)


def test_a_token_budget_warms_up_over_a_tenth_of_its_steps_but_100_at_most():
    for tokens, steps, warmup in ((4096, 8, 0), (10**5, 196, 19), (10**9, 1_953_125, 100)):
        args = argparse.Namespace(tokens=tokens, batch_size=8, context_length=64, learning_rate=1.0)
        budget, words = arena_command._budget(args)
        assert budget[:4] == ["--max-iters", str(steps), "--warmup-iters", str(warmup)]
        assert words == f"{steps * 8 * 64:,} tokens"  # whole steps: the tokens trained on


def test_a_token_budget_below_one_step_reports_the_step_it_trains():
    args = argparse.Namespace(tokens=1, batch_size=8, context_length=64, learning_rate=1.0)
    budget, words = arena_command._budget(args)
    assert budget[:2] == ["--max-iters", "1"] and words == "512 tokens"


def test_the_report_flags_sizes_too_far_apart_to_compare(tmp_path):
    def entries(params):
        return [
            Entry(m, matched_config(m, params, 1, 32), tmp_path, [{"step": 1, "elapsed_s": 1,
                  "tokens": 64, "val_loss": 1.0}]) for m in ("attention", "mamba")
        ]  # fmt: skip

    small, large = entries(3000), entries(1_000_000)
    spread = [max(e.params for e in x) / min(e.params for e in x) for x in (small, large)]
    assert spread[0] > 1.2 > spread[1], spread
    assert "Sizes differ by up to" in report(small, tmp_path, "small")
    assert "Sizes differ" not in report(large, tmp_path, "large")


def test_the_race_plot_counts_tokens_in_readable_ticks(tmp_path, monkeypatch):
    """10 billion tokens read 10B, not 1.0 and a factor "1e10" at the axis's end."""
    drawn = []
    monkeypatch.setattr("attnlab.figures.save_figure", lambda fig, png, **_: drawn.append(fig))
    points = [{"step": s, "elapsed_s": s, "tokens": s * 10**8, "val_loss": 1.0} for s in (1, 100)]
    report([Entry("attention", matched_config("attention", 3000, 1, 32), tmp_path, points)],
           tmp_path, "title")  # fmt: skip
    assert "10B" in [t.get_text() for t in drawn[0].axes[1].get_xticklabels()]


def test_eager_attention_keeps_quadratic_memory_and_the_fused_kernel_does_not():
    def growth(name):
        _, small = measure(name, 128, 16, repeats=1)
        _, large = measure(name, 256, 16, repeats=1)
        return large / small

    assert growth("attention (eager)") > 3.0  # the (T, T) weights dominate
    assert growth("attention (fused)") < 2.5  # linear in T
    assert growth("mamba (scan)") < 2.5
    assert growth("mamba (fused)") < 2.5
    # the fused scan keeps one state in 32 positions, the parallel scan every one, several times
    fused, scan = (
        measure(name, 256, 16, repeats=1)[1] for name in ("mamba (fused)", "mamba (scan)")
    )
    assert fused < scan / 4


def test_activation_memory_leaves_the_layers_weights_out():
    """Weights are saved for the backward pass too, but held whatever the length: at a short
    one they would be most of the figure."""
    layer = torch.nn.Linear(64, 64, bias=False)
    x = torch.randn(1, 2, 64, requires_grad=True)
    assert activation_bytes(lambda: layer(x), layer.parameters())[1] == x.numel() * 4  # x only
    weights = sum(p.numel() * 4 for p in build_layer("attention (fused)", 16, 4).parameters())
    assert measure("attention (fused)", 4, 16, repeats=1)[1] < weights


def test_a_crossover_is_where_a_mixer_stays_faster_than_fused_attention():
    lengths = [256, 512, 1024, 2048]
    times = {
        "attention (fused)": [1.0, 2.0, 4.0, 8.0],
        "hyena": [3.0, 1.5, 3.0, 5.0],  # faster from 512 on
        "lstm": [0.5, 3.0, 5.0, 9.0],  # faster only at first
    }
    curves = [
        Curve(name, [(n, t, 0) for n, t in zip(lengths, ts, strict=True)])
        for name, ts in times.items()
    ]
    assert crossovers(curves) == {"hyena": 512}


def test_scaling_writes_a_table_and_a_plot(tmp_path, capsys):
    out = tmp_path / "scaling"
    argv = ["arena", "--scaling", "--out", str(out), "--lengths", "16:32", "--d-model", "16"]
    code, table, err = run([*argv, "--mixers", "attention,lstm,attention (fused),mamba"], capsys)
    assert code == 0, err
    assert "| lstm |" in table and "T=32" in table and (out / "scaling.png").is_file()
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")]
    assert rows == ["| mixer", "| attention (eager)", "| attention (fused)", "| lstm",
                    "| mamba (scan)", "| mamba (fused)"]  # fmt: skip


@pytest.mark.parametrize(
    "lengths",
    [[16, 32, 64, 128, 256, 512], [2**k for k in range(8, 16)], [2**k for k in range(3, 17)]],
)
def test_the_scaling_plot_labels_the_lengths_measured_legibly(tmp_path, monkeypatch, lengths):
    drawn = []
    monkeypatch.setattr(scaling, "save_figure", lambda fig, png, **_: drawn.append(fig))
    curves = [Curve(name, [(n, n * 1e-5, n * 1000) for n in lengths]) for name in ("a", "b")]
    scaling.write_scaling(curves, tmp_path, "title")
    for ax in drawn[0].axes:  # not 2x10^1, 3x10^1, ... one over the other
        shown = [t.get_text() for t in ax.get_xticklabels(which="both") if t.get_text()]
        assert shown == [f"{n:,}" for n in lengths]
    assert overlapping_tick_labels(drawn[0]) == [] and outside_the_figure(drawn[0]) == []


@dataclasses.dataclass(frozen=True)
class NoOptions:
    pass


def test_scaling_measures_a_mixer_registered_outside(tmp_path, capsys, request):
    register_mixer("test_linear", NoOptions, lambda options, ctx: torch.nn.Linear(ctx.d_model, 4))
    request.addfinalizer(lambda: MIXERS.pop("test_linear"))  # a plugin's mixer, say
    argv = ["arena", "--scaling", "--out", str(tmp_path / "s"), "--lengths", "8:8"]
    code, table, err = run([*argv, "--d-model", "4", "--mixers", "test_linear,lstm"], capsys)
    assert code == 0, err
    assert "| test_linear | " in table and "| lstm | " in table


def test_scaling_by_default_writes_beside_the_race_not_into_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README runs `arena` and then `arena --scaling`
    (tmp_path / "runs" / "arena").mkdir(parents=True)
    (tmp_path / "runs" / "arena" / "arena.md").write_text("the race's report\n")
    argv = ["arena", "--scaling", "--mixers", "lstm", "--lengths", "8:16", "--d-model", "16"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert (tmp_path / "runs" / "scaling" / "scaling.md").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mixers", "attention,transformer"], "unknown mixer(s) transformer; known:"),
        (["--time", "1", "--tokens", "100"], "give --time or --tokens, not both"),
        (["--params", "nan"], "--params must be a positive number"),
        (["--scaling", "--lengths", "big"], "--lengths 'big': give FIRST:LAST"),
        (["--scaling", "--d-model", "30"], "--d-model must be a positive multiple of 4"),
        (["--scaling", "--d-model", "0"], "--d-model must be a positive multiple of 4"),
        (["--scaling", "--max-seconds", "-1"], "--max-seconds must be a positive number"),
        (
            ["--scaling", "--time", "3", "--data", "x", "--seed", "3"],
            "--data, --seed, --time: not used by --scaling",
        ),
        (["--d-model", "64", "--lengths", "8:16"], "--d-model, --lengths: not used by the race"),
        (["--mixers", ""], "unknown mixer(s) (none)"),
        (["--out", ""], "--out is empty: give a folder"),
        (["--params", "1"], "--params 1: out of attention's reach, whose narrowest blocks"),
        (["--mixers", "lstm", "--params", "1e12"], "out of lstm's reach, whose widest blocks"),
        (["--params", "1e30"], "--params 1e+30: out of attention's reach"),  # not 31 digits
        (["--mixers", "attention,lstm,attention"], "--mixers names attention twice"),
        (["--scaling", "--mixers", "lstm,lstm"], "--mixers names lstm twice"),
        (
            ["--scaling", "--mixers", "attention,gru,transformer"],
            "does not measure transformer; it measures attention, mamba, attention (eager),",
        ),
    ],
)
def test_bad_arena_input_is_one_line(tmp_path, capsys, extra, message):
    code, _, err = run(["arena", "--out", str(tmp_path / "a"), *extra], capsys)
    assert message in one_line_error(code, err)
    assert not (tmp_path / "a").exists()


def test_a_value_that_looks_like_a_flag_is_told_to_join_it_with_equals(tmp_path, capsys):
    argv = ["arena", "--scaling", "--out", str(tmp_path / "a"), "--lengths"]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "-8:16"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "is written --lengths=-8:16 (see attnlab arena" in err
    with pytest.raises(SystemExit):  # a mistyped flag after it: its value was left out
        main([*argv, "--lenghts", "8:16"])
    assert "--lengths: expected one argument (see" in capsys.readouterr().err
    code, _, err = run([*argv[:-1], "--lengths=-8:16"], capsys)  # taken: FIRST must be >= 1
    assert "--lengths: FIRST must be at least 1" in one_line_error(code, err)


def test_an_arena_whose_first_run_fails_leaves_its_out_free_for_the_corrected_one(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("some text to learn from\n" * 200)
    argv = ["arena", "--out", str(tmp_path / "a"), "--mixers", "attention"]
    argv += ["--data", str(tmp_path / "text.txt"), "--tokenizer", "foo"]
    code, _, err = run(argv, capsys)
    line = one_line_error(code, err)
    assert "training attention failed: unknown tokenizer 'foo'" in line
    assert ".log" not in line  # its log went with the folder: not named
    assert not (tmp_path / "a").exists()


def test_a_bad_seed_is_refused_before_any_mixer_trains(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(arena, "train_mixer", lambda *_: pytest.fail("a mixer trained"))
    argv = ["arena", "--out", str(tmp_path / "a"), "--seed", "-1"]
    assert "--seed must be in [0, 2**63)" in one_line_error(*run(argv, capsys)[::2])
    assert not (tmp_path / "a").exists()


def test_arena_refuses_a_folder_with_files(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    code, _, err = run(["arena", "--out", str(tmp_path)], capsys)
    assert "not an empty folder" in one_line_error(code, err)
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_a_stopped_arena_stops_its_run_and_reports_the_finished_mixers(tmp_path, built_kernels):
    """SIGTERM to the arena alone (a scheduler's stop, a kill): the mixer in training is
    interrupted and saved, not left running, and the finished ones are compared."""
    out = tmp_path / "arena"
    argv = [sys.executable, "-m", "attnlab", "arena", "--out", str(out), "--mixers",
            "attention,lstm", "--data", "task:mqar", "--params", "20000", "--time", "0.1",
            "--context-length", "32", "--n-layers", "1", "--batch-size", "16"]  # fmt: skip
    arena = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "lstm" / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # until the second mixer has trained a step
    arena.send_signal(signal.SIGTERM)
    _, err = arena.communicate(timeout=60)
    assert arena.returncode == 130 and "interrupted" in err
    running = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out / "lstm") not in running  # the run ended with the arena
    table = (out / "arena.md").read_text()
    assert "(interrupted: 1 of 2)" in table and "| attention" in table and "| lstm" not in table


def test_scaling_refuses_an_out_it_cannot_make_before_measuring(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(scaling, "scaling_curves", lambda *a, **k: pytest.fail("measured"))
    code, _, err = run(["arena", "--scaling", "--out", str(tmp_path / "file" / "a")], capsys)
    assert "is a file, not a folder" in one_line_error(code, err)


def test_an_arena_stopped_by_a_failing_mixer_reports_the_finished_ones(
    tmp_path, capsys, monkeypatch
):
    def train(entry, *_):
        if entry.mixer == "lstm":
            raise UserError("arena: training lstm failed (lstm.log): killed by SIGKILL")
        entry.evaluations = [{"step": 1, "elapsed_s": 1.0, "tokens": 64, "val_loss": 2.0}]

    monkeypatch.setattr(arena, "train_mixer", train)
    out = tmp_path / "a"
    argv = ["arena", "--out", str(out), "--mixers", "attention,lstm", "--params", "2e4"]
    code, _, err = run([*argv, "--context-length", "32", "--n-layers", "1"], capsys)
    assert "training lstm failed" in one_line_error(code, err)
    table = (out / "arena.md").read_text()
    assert "(lstm failed: 1 of 2)" in table and "| attention |" in table and "| lstm" not in table
    assert "seed" not in table  # the title names a seed given, not the default


def test_memory_figures_name_the_mebibytes_they_count(tmp_path):
    """A peak's VmHWM is in KiB, an activation's bytes are divided by 2**20: MiB, not MB, 5%
    fewer bytes."""
    points = [{"step": 1, "elapsed_s": 1.0, "tokens": 64, "val_loss": 2.0}]
    entry = Entry("lstm", matched_config("lstm", 20_000, 1, 32), tmp_path, points)
    entry.peak_rss_mib = 100.0
    assert "| peak memory (MiB) |" in report([entry], tmp_path, "title")
    table = scaling.write_scaling([scaling.Curve("lstm", [(8, 0.001, 3 * 2**20)])], tmp_path, "t")
    assert "activation memory (MiB)" in table and "| lstm | 1.0 / 3.0 |" in table


def test_a_killed_training_run_is_named_so_not_by_its_last_line(tmp_path, monkeypatch):
    """The out-of-memory killer ends a run without an error line: its last line is progress."""
    popen = subprocess.Popen
    killed = "import os; print('step 1: train loss 2.0', flush=True); os.kill(os.getpid(), 9)"
    monkeypatch.setattr(
        subprocess, "Popen", lambda _, **kw: popen([sys.executable, "-c", killed], **kw)
    )
    entry = Entry("lstm", matched_config("lstm", 20_000, 1, 32), tmp_path / "lstm")
    with pytest.raises(UserError, match=r"training lstm failed \(.*lstm.log\): killed by SIGKILL$"):
        arena.train_mixer(entry, [], [], 64, lambda message: None)


def test_a_run_on_a_full_disk_fails_in_one_line_not_on_its_empty_peak_file(tmp_path, monkeypatch):
    """On a full disk the run's peak file is made but its number cannot be written, and its
    error line cannot reach its log: reading the empty file as a number was a traceback."""
    popen = subprocess.Popen
    peak = tmp_path / "lstm.peak_kb"
    full = f"import sys; open({str(peak)!r}, 'w').close(); sys.exit(2)"
    monkeypatch.setattr(
        subprocess, "Popen", lambda _, **kw: popen([sys.executable, "-c", full], **kw)
    )
    entry = Entry("lstm", matched_config("lstm", 20_000, 1, 32), tmp_path / "lstm")
    with pytest.raises(UserError, match=r"\(.*lstm.log\): exit code 2, and nothing in its log$"):
        arena.train_mixer(entry, [], [], 64, lambda message: None)
    assert not peak.exists()


@pytest.mark.parametrize("written", ["2048", ""])
def test_a_runs_peak_is_its_own_kib_or_wait4s_where_its_file_is_empty(
    tmp_path, monkeypatch, written
):
    popen = subprocess.Popen
    peak = tmp_path / "lstm.peak_kb"
    ends = f"open({str(peak)!r}, 'w').write({written!r})"  # a full disk: the file, empty
    monkeypatch.setattr(
        subprocess, "Popen", lambda _, **kw: popen([sys.executable, "-c", ends], **kw)
    )
    monkeypatch.setattr(arena, "read_run", lambda entry, tokens_per_step: None)
    entry = Entry("lstm", matched_config("lstm", 20_000, 1, 32), tmp_path / "lstm")
    arena.train_mixer(entry, [], [], 64, lambda message: None)
    assert entry.peak_rss_mib == 2.0 if written else entry.peak_rss_mib > 1  # a Python's MiB
    assert not peak.exists()


def test_scaling_interrupted_writes_what_it_measured(tmp_path, capsys, monkeypatch):
    def measure(name, length, d_model, repeats):
        if name == "lstm" and length > 16:
            raise KeyboardInterrupt
        return length / 1000, length * 2**20  # ms and MiB: the length

    monkeypatch.setattr(scaling, "measure", measure)
    out = tmp_path / "scaling"
    argv = ["arena", "--scaling", "--mixers", "hyena,lstm", "--lengths", "8:64", "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 130 and "interrupted: what was measured is in" in err
    table = (out / "scaling.md").read_text()
    assert "(interrupted)" in table and "| hyena | 8.0 / 8.0 | 16.0 / 16.0 | 32.0 / 32.0 |" in table
    assert "| lstm | 8.0 / 8.0 | 16.0 / 16.0 | - | - |" in table
