"""TrainConfig.adam_eps: AdamW's epsilon (1e-8; the Transformer paper's 1e-9), from the flag to
the optimizer, kept by a run and read as 1e-8 from a run saved before the setting."""

import json
import math

import pytest
import safetensors
import torch
from test_run_directory import train
from test_training import make_trainer

from attnlab.errors import ConfigError
from attnlab.training.config import TrainConfig
from attnlab.training.optimizers import build_optimizer


def test_the_optimizer_takes_the_epsilon_fused_on_a_cpu_and_not_elsewhere():
    """On a CPU torch's fused kernel (its first step is lr·g/(|g| + eps)); on another device
    torch's default path: both groups carry it."""
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, 1.0, 0.0, (0.9, 0.99), eps=1.0)
    assert optimizer.defaults["fused"] and {g["eps"] for g in optimizer.param_groups} == {1.0}
    before = model.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    torch.testing.assert_close(before - model.weight, torch.full_like(before, 0.5))  # 1/(1+1)
    elsewhere = build_optimizer(torch.nn.Linear(3, 2, device="meta"), 1.0, 0.0, (0.9, 0.99), 1e-9)
    assert not elsewhere.defaults["fused"]
    assert {g["eps"] for g in elsewhere.param_groups} == {1e-9}
    default = build_optimizer(model, 1.0, 0.0, (0.9, 0.99))
    assert default.defaults["eps"] == TrainConfig.adam_eps == 1e-8  # torch's


def test_the_trainer_builds_its_optimizer_with_the_configs_epsilon(tmp_path):
    trainer = make_trainer(tmp_path, adam_eps=1e-9)
    assert {g["eps"] for g in trainer.optimizer.param_groups} == {1e-9}


@pytest.mark.parametrize("value", [0.0, -1e-8, math.inf, math.nan])
def test_an_epsilon_not_positive_and_finite_is_refused(value):
    with pytest.raises(ConfigError, match="TrainConfig.adam_eps must be a (positive|finite) "):
        TrainConfig(adam_eps=value)


def saved_epsilons(out) -> set[float]:
    with safetensors.safe_open(out / "optimizer.safetensors", framework="pt") as f:
        return {g["eps"] for g in json.loads(f.metadata()["param_groups"])}


def test_a_resumed_run_keeps_its_epsilon_and_an_older_run_gets_the_default(
    tmp_path, corpus, capsys
):
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--adam-eps", "1e-9", "--max-iters", "2")[0] == 0
    state_file = out / "trainer_state.json"
    assert json.loads(state_file.read_text())["train_config"]["adam_eps"] == 1e-9
    assert saved_epsilons(out) == {1e-9}
    code, _, err = train(capsys, corpus, out, "--resume", "--max-iters", "3")
    assert code == 0, err
    assert saved_epsilons(out) == {1e-9}
    state = json.loads(state_file.read_text())  # as a run saved before adam_eps
    del state["train_config"]["adam_eps"]
    state_file.write_text(json.dumps(state))
    code, _, err = train(capsys, corpus, out, "--resume", "--max-iters", "4")
    assert code == 0, err
    assert saved_epsilons(out) == {1e-8}
