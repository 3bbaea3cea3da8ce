"""The optimizer's parts (attnlab/training/optimizers.py): the learning-rate schedules, weight
decay on matrices only, and gradient clipping as torch's."""

import copy

import pytest
import torch

from attnlab.layers.contracts import decayed
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.training.optimizers import build_optimizer, clip_gradients, learning_rate
from attnlab.training.trainer import TrainConfig, Trainer

MODEL = GPTConfig(vocab_size=11, context_length=16, n_layers=2, n_heads=2, d_model=32)


def test_schedule_warms_up_then_decays_to_the_minimum():
    kwargs = dict(schedule="cosine", max_lr=1e-3, min_lr=1e-4, warmup=10, total=100)
    assert learning_rate(0, **kwargs) == pytest.approx(1e-4)
    assert learning_rate(9, **kwargs) == pytest.approx(1e-3)
    assert learning_rate(99, **kwargs) == pytest.approx(1e-4)
    assert learning_rate(54, **kwargs) == pytest.approx(5.5e-4)  # half-way down the cosine


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_floor_above_the_peak_never_lifts_the_rate_past_the_peak(schedule):
    kwargs = dict(schedule=schedule, max_lr=1e-3, min_lr=0.5, warmup=2, total=10)
    rates = [learning_rate(step, **kwargs) for step in range(10)]
    assert max(rates) == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-3)


def test_wsd_holds_the_peak_then_falls_linearly_over_the_last_fifth():
    kwargs = dict(schedule="wsd", max_lr=1e-3, min_lr=1e-4, warmup=10, total=100)
    assert learning_rate(9, **kwargs) == pytest.approx(1e-3)
    assert learning_rate(79, **kwargs) == pytest.approx(1e-3)  # n = 80: the decay begins
    assert learning_rate(89, **kwargs) == pytest.approx(5.5e-4)  # half-way down
    assert learning_rate(99, **kwargs) == pytest.approx(1e-4)


def test_inverse_sqrt_is_the_papers_formula():
    for step, expected in [
        (0, 512**-0.5 * 4000**-1.5),
        (3999, 512**-0.5 * 4000**-0.5),
        (15999, 512**-0.5 * 16000**-0.5),
    ]:
        got = learning_rate(
            step, schedule="inverse_sqrt", max_lr=1.0, min_lr=0, warmup=4000, total=0, d_model=512
        )
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    "model",
    [GPT(MODEL), RecurrentLM(RecurrentLMConfig(vocab_size=11, d_model=8, tie_weights=False))],
)
def test_weight_decay_on_every_matrix_and_nothing_else(model):
    optimizer = build_optimizer(model, 1e-3, 0.1, (0.9, 0.99))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    matrices = {id(p) for p in model.parameters() if p.dim() == 2}  # an LSTM's included
    assert {id(p) for p in decayed["params"]} == matrices
    assert all(p.dim() == 1 for p in plain["params"])


@pytest.mark.parametrize("gradient_scale", [100.0, 1e-3])  # clipped, and left alone
@pytest.mark.parametrize("fused", [True, False])
def test_clipping_steps_as_torchs_clip_grad_norm(gradient_scale, fused):
    steps = []
    for clip in (clip_gradients, None):
        torch.manual_seed(0)
        model = GPT(MODEL)
        optimizer = build_optimizer(model, 1e-2, 0.1, (0.9, 0.99))
        if not fused:
            optimizer = torch.optim.AdamW(optimizer.param_groups, fused=False)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * gradient_scale
        if clip:
            clip(optimizer, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps.append([p.detach() for p in model.parameters()])
    for mine, theirs in zip(*steps, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_clipping_a_model_of_another_dtype_steps_as_torchs(dtype):
    """The fused kernel takes its grad_scale in float32 whatever the gradients' dtype."""
    steps = []
    for clip in (clip_gradients, None):
        torch.manual_seed(0)
        model = GPT(MODEL).to(dtype)
        optimizer = build_optimizer(model, 1e-2, 0.1, (0.9, 0.99))
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 100
        if clip:
            clip(optimizer, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps.append([p.detach().float() for p in model.parameters()])
    for mine, theirs in zip(*steps, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-2, atol=1e-6)


def test_the_loss_of_float64_logits_is_float64_and_gradient_checks():
    """float32 at least (bf16 logits are scored in float32), float64 kept: a float64 model's
    loss is exact enough for gradcheck, which float32 rounding would fail."""
    from attnlab.training.sources import token_loss

    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 2, -100], [0, 4, 3]])
    assert token_loss(logits, targets).dtype == torch.float64
    assert token_loss(logits.detach().bfloat16(), targets).dtype == torch.float32
    assert torch.autograd.gradcheck(lambda x: token_loss(x, targets), (logits,))


class Rows:
    """The rows of (N, T) inputs and targets, 4 at a time in order: a trainer's BatchSource."""

    unit = "token"

    def __init__(self, inputs, targets):
        self.inputs, self.targets, self.start = inputs, targets, 0

    def next(self):
        self.start += 4
        return self.inputs[self.start - 4 : self.start], self.targets[self.start - 4 : self.start]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_the_trainers_steps_are_adamw_on_clipped_gradients_at_the_scheduled_rates(tmp_path):
    """Two steps of the Trainer against torch's AdamW by hand: warmup from step 0's rate, decay
    on the matrices only, the global norm clipped before each step (AdamW's first step barely
    sees a gradient's scale; the second sees the ratio of the two steps' norms)."""
    config = TrainConfig(max_iters=10, warmup_iters=4, learning_rate=1e-2, grad_clip=0.5,
                         precision="fp32", device="cpu", cpu_kernels=False)  # fmt: skip
    windows = torch.randint(0, MODEL.vocab_size, (8, 17))
    inputs, targets = windows[:, :-1], windows[:, 1:]
    model = GPT(MODEL)  # no dropout
    reference = copy.deepcopy(model)
    trainer = Trainer(model, config, Rows(inputs, targets), {}, out_dir=tmp_path)
    assert [trainer.train_step()["lr"] for _ in range(2)] == pytest.approx([2.5e-3, 5e-3])
    params, decay = list(reference.parameters()), decayed(reference)
    groups = [
        {"params": [p for p in params if (id(p) in decay) == decays], "weight_decay": rate}
        for decays, rate in ((True, config.weight_decay), (False, 0.0))
    ]
    adamw = torch.optim.AdamW(groups, betas=(config.beta1, config.beta2))
    norms = []
    for step, rows in enumerate((slice(0, 4), slice(4, 8))):
        reference(inputs[rows], targets[rows])[1].backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params, 0.5))
        for group in adamw.param_groups:
            group["lr"] = 1e-2 * (step + 1) / 4  # warming up over 4 steps
        adamw.step()
        adamw.zero_grad()
    assert min(norms) > 0.5 and abs(norms[0] - norms[1]) > 0.1  # both clipped, by different factors
    for mine, theirs in zip(model.parameters(), params, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
