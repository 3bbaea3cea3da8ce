"""Runs, checkpoints and files made by someone else: whatever they hold (a journal that renames
files elsewhere, links out of the run, JSON nested a thousand deep, a config of a model larger
than any memory), reading or resuming them is one line at worst, and writes nothing outside the
run."""

import dataclasses
import json

import pytest
import torch
from helpers import one_line_error, run, snapshot, tiny_gpt
from test_run_directory import train

from attnlab.cli import train as train_command
from attnlab.config import config_to_dict
from attnlab.errors import UserError
from attnlab.models import registry
from attnlab.tokenizers.byte import ByteTokenizer
from attnlab.training.checkpoints import finish_checkpoint, save_checkpoint
from attnlab.training.distributed import Group
from attnlab.training.metrics_log import truncate_metrics

DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot read


def checkpoint(path, **config):
    model = tiny_gpt(vocab_size=256, **config)
    save_checkpoint(path, model, {"tokenizer": ByteTokenizer()})
    return path


def test_a_journal_that_renames_files_out_of_the_run_is_refused(tmp_path, capsys):
    """Completing an interrupted save renames what its journal names: a journal of someone
    else's could put a file of theirs over any of ours (~/.bashrc) at a --resume."""
    run_folder, victim = checkpoint(tmp_path / "shared"), tmp_path / "victim"
    victim.write_text("mine")
    (run_folder / ".evil.tmp").write_text("echo pwned")
    (run_folder / "..." / "victim.1.tmp").parent.mkdir()  # named as the name's own would be
    (run_folder / "..." / "victim.1.tmp").write_text("echo pwned")
    renames = [(str(victim), ".evil.tmp"), ("../victim", ".evil.tmp"),
               ("model.safetensors", ".evil.tmp"), ("../victim", ".../victim.1.tmp")]  # fmt: skip
    for target, tmp in renames:
        (run_folder / "checkpoint.journal").write_text(json.dumps({target: tmp}))
        with pytest.raises(UserError, match="no journal of attnlab's: it renames files out of"):
            finish_checkpoint(run_folder)
        assert victim.read_text() == "mine" and (run_folder / tmp).exists()
    (run_folder / "checkpoint.journal").write_text(DEEP)  # damaged: nothing to rename
    finish_checkpoint(run_folder)
    code, _, err = run(["sample", str(run_folder), "--max-new-tokens", "2"], capsys)
    assert code == 0, err


def test_a_link_in_a_run_is_never_written_through(tmp_path, corpus, capsys):
    """Resuming a run writes its lock, run.json, metrics, plot and best copy in place: a link
    among them, in a run someone shared, would lead those writes to any file of the user's."""
    out = checkpoint(tmp_path / "run")
    (out / "run.json").write_text(json.dumps({"kind": "gpt", "data": {"data": str(corpus)}}))
    victim = tmp_path / "victim"
    victim.write_text("mine")
    for name in (".attnlab.lock", "run.json", "metrics.jsonl", "loss.png", "best"):
        own = out / name
        kept = own.read_bytes() if own.is_file() else None
        own.unlink(missing_ok=True)
        own.symlink_to(victim)
        before = snapshot(out)
        code, _, err = train(capsys, corpus, out, "--max-iters", "4", "--resume")
        assert f"{own} is a link (to {victim}): a run writes its own files" in one_line_error(
            code, err
        )
        assert victim.read_text() == "mine" and snapshot(out) == before
        own.unlink()
        if kept is not None:
            own.write_bytes(kept)


def test_json_nested_too_deep_is_one_line_or_cut_from_a_log(tmp_path, capsys):
    folder = checkpoint(tmp_path / "ckpt")
    (folder / "tokenizer.json").write_text(DEEP)
    code, _, err = run(["sample", str(folder), "--max-new-tokens", "2"], capsys)
    assert "tokenizer.json is not valid JSON: nested too deep" in one_line_error(code, err)
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "train_loss": 2.0}\n' + DEEP + "\n")
    with pytest.warns(RuntimeWarning, match="line 2 is not a metrics record"):
        truncate_metrics(log, 5)
    assert log.read_text() == '{"step": 1, "train_loss": 2.0}\n'


def test_a_run_description_whose_data_is_no_path_is_one_line(tmp_path, capsys):
    out = checkpoint(tmp_path / "run")
    (out / "run.json").write_text(json.dumps({"kind": "gpt", "data": {"data": 5}}))
    code, _, err = run(["evaluate", str(out)], capsys)
    assert "run.json is not a run description" in one_line_error(code, err)


def test_a_config_whose_buffers_would_fill_the_memory_is_one_line(tmp_path, capsys):
    """A sinusoidal table of 10**12 positions: no parameter the weights could be compared with,
    but 4 TB of memory."""
    folder = checkpoint(tmp_path / "ckpt", positional="sinusoidal")
    description = json.loads((folder / "config.json").read_text())
    description["config"]["context_length"] = 10**12
    (folder / "config.json").write_text(json.dumps(description))
    code, _, err = run(["sample", str(folder), "--max-new-tokens", "2"], capsys)
    assert "gives the model buffers of 59,605 GiB, more than this machine's memory" in (
        one_line_error(code, err)
    )


@pytest.mark.parametrize(
    "flags", [["--d-model", str(10**12)], ["--n-layers", "100000"], ["--d-ff", str(10**20)]]
)
def test_a_model_too_large_to_train_is_one_line_before_it_is_allocated(
    tmp_path, corpus, capsys, monkeypatch, flags
):
    """Refused on the meta device as soon as its size passes the memory: no traceback of a
    failed allocation, no machine brought to swapping layer by layer; nor of a tensor whose
    size overflows PyTorch's int64 (d_ff 10**20)."""
    monkeypatch.setattr(train_command, "memory_bytes", lambda device: 2**30)
    code, _, err = train(capsys, corpus, tmp_path / "run", "--max-iters", "2", *flags)
    assert "holds more than 67,108,864 numbers: training it needs more than the 1 GiB" in (
        one_line_error(code, err)
    )
    assert not (tmp_path / "run").exists()


def test_a_model_of_tiny_layers_by_the_million_is_refused_in_seconds(tmp_path, corpus, capsys):
    """Its numbers would pass the memory only after minutes of layers built on the meta device:
    refused by its count of weight tensors (a GPT layer holds 12)."""
    flags = ["--n-layers", str(10**9), "--d-model", "8", "--n-heads", "1"]
    code, _, err = train(capsys, corpus, tmp_path / "run", *flags)
    assert "holds more than 20,000 weight tensors" in one_line_error(code, err)


def test_a_model_too_large_to_train_is_refused_before_its_data_is_read(
    tmp_path, corpus, capsys, monkeypatch
):
    """Reading and tokenizing a corpus takes minutes: not for a model that cannot train."""

    def read(request):
        raise AssertionError("the data was read")

    gpt = registry.get_kind("gpt")
    monkeypatch.setitem(registry.KINDS, "gpt", dataclasses.replace(gpt, build_data=read))
    monkeypatch.setattr(train_command, "memory_bytes", lambda device: 2**30)
    code, _, err = train(capsys, corpus, tmp_path / "run", "--n-layers", "100000")
    assert "holds more than 67,108,864 numbers" in one_line_error(code, err)
    code, _, err = train(capsys, corpus, tmp_path / "run", "--weight-init", "xavier")  # nor one
    assert "--weight-init must be one of 'gpt2', 'fan_in'" in one_line_error(code, err)  # invalid


BUILT_IN = sorted(n for n, k in registry.KINDS.items() if k.model.__module__.startswith("attnlab"))


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_kinds_presets_are_valid_with_the_least_its_data_can_set(name):
    """What lets a config's errors be told before the data is read: none is the data's."""
    kind = registry.get_kind(name)
    least = {k: registry.LEAST_DATA[k] for k in kind.data_fields}  # every data field known
    for preset in [kind.config(**least), *kind.presets.values()]:
        shape = {k: v for k, v in config_to_dict(preset).items() if k not in kind.data_fields}
        registry.check_trainable_before_data(kind, shape, 2**40, "preset")


def test_a_model_whose_buffers_would_not_fit_is_refused_before_training(
    tmp_path, corpus, capsys, monkeypatch
):
    """Its sinusoidal table of positions (a buffer, not a parameter) counts with its weights."""
    monkeypatch.setattr(train_command, "memory_bytes", lambda device: 2**15)  # 2,048 numbers
    flags = ["--context-length", "150", "--positional", "sinusoidal", "--d-model", "8"]
    flags += ["--n-layers", "1", "--n-heads", "2", "--max-iters", "1"]  # 1,129 parameters
    code, _, err = train(capsys, corpus, tmp_path / "run", *flags)  # and 1,200 positions
    assert "holds more than 2,048 numbers" in one_line_error(code, err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", [None, "ddp", "fsdp"])
def test_the_memory_a_model_trains_in_is_shared_by_fsdp_ranks_and_copied_by_others(
    monkeypatch, mode
):
    """Two ranks: FSDP's shards fill the two GPUs' memory or the machine's; a copy on each
    (DDP) has one GPU's, or half the machine's."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(train_command, "memory_bytes", lambda device: 2**30)
    group = Group(mode)
    shared = {"cuda": 2 if mode == "fsdp" else 1, "cpu": 1 if mode == "fsdp" else 1 / group.world}
    for device, share in shared.items():
        assert train_command._model_memory(torch.device(device), group) == 2**30 * share


def test_a_config_claiming_a_huge_model_is_checked_against_the_weights_before_it_is_built(
    tmp_path, corpus, capsys, monkeypatch
):
    """By --resume and --init alike: not built layer by layer on the meta device (10**30
    layers of a tiny model: hours), until it outgrew the memory (here 1 GiB: soon)."""
    monkeypatch.setattr(train_command, "memory_bytes", lambda device: 2**30)
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "1")[0] == 0
    description = json.loads((out / "config.json").read_text())
    description["config"]["n_layers"] = 10**30
    (out / "config.json").write_text(json.dumps(description))
    before = snapshot(out)
    for how in (["--resume"], ["--init", str(out), "--data", str(corpus)]):
        argv = ["train", "gpt", "--out", str(out if how == ["--resume"] else tmp_path / "new")]
        code, _, err = run([*argv, *how, "--max-iters", "2"], capsys)
        assert "the config does not belong to these weights" in one_line_error(code, err)
    assert snapshot(out) == before and not (tmp_path / "new").exists()


def test_a_vocabulary_the_settings_hold_is_the_datas_to_set_not_checked_before_it():
    """GPT-2's preset holds its 50,257 tokens (124M parameters, 1.9 GB to train): on 1.5 GiB,
    a character vocabulary (86M) still fits, so its data is read before it is refused."""
    kind = registry.get_kind("gpt")
    registry.check_trainable_before_data(kind, config_to_dict(kind.presets["gpt2"]), 3 << 29, "")
