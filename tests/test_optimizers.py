"""The optimizer's parts (attnlab/training/optimizers.py): the learning-rate schedules, weight
decay on matrices only, and gradient clipping as torch's."""

import copy
import dataclasses
import itertools
import math

import pytest
import torch
from test_run_directory import train
from torch.optim import lr_scheduler as S

from attnlab.layers.contracts import decayed
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.training.optimizers import build_optimizer, clip_gradients, learning_rate
from attnlab.training.state import load_training_state
from attnlab.training.trainer import TrainConfig, Trainer

MODEL = GPTConfig(vocab_size=11, context_length=16, n_layers=2, n_heads=2, d_model=32)


def torch_rates(schedulers, steps: int, peak: float, milestones=()) -> list[float]:
    """The rates torch's schedulers (SequentialLR of `schedulers(optimizer)`) give steps 0, 1..."""
    optimizer = torch.optim.SGD([torch.zeros(1, dtype=torch.float64, requires_grad=True)], peak)
    parts = schedulers(optimizer)
    scheduler = S.SequentialLR(optimizer, parts, list(milestones)) if milestones else parts[0]
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


W, T, PEAK, FLOOR = 10, 100, 1e-3, 1e-4  # warmup, steps, the rates


def nanogpt_cosine(it: int) -> float:
    """nanoGPT's get_lr (train.py), its step `it` attnlab's n = step + 1: its step 0, at rate 0,
    is not taken."""
    if it < W:
        return PEAK * it / W
    ratio = (it - W) / (T - W)
    return FLOOR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (PEAK - FLOOR)


def wsd(n: int, warmup: int = W) -> float:
    """Warmup, stable, decay with the linear cooldown of Hägele et al. 2024 (MiniCPM's WSD, Hu
    et al. 2024, decays exponentially): linear warmup to the peak, the peak, and a linear fall
    over the last fifth of the steps to the floor, or from the warmup's end if that is later."""
    if n <= warmup:
        return PEAK * n / warmup
    decay_start = max(warmup, 0.8 * T)
    return PEAK - (PEAK - FLOOR) * max(0.0, n - decay_start) / (T - decay_start)


def warming(optimizer):  # steps 0..W-1: PEAK · (step + 1) / W
    return S.LinearLR(optimizer, 1 / W, 1.0, total_iters=W - 1)


@pytest.mark.parametrize(
    "schedule, formula, schedulers, milestones",
    [
        ("cosine", nanogpt_cosine,
         lambda o: [warming(o), S.CosineAnnealingLR(o, T - W, eta_min=FLOOR)], [W - 1]),
        ("constant", lambda n: PEAK * min(1.0, n / W), lambda o: [warming(o)], []),
        ("wsd", wsd, lambda o: [warming(o), S.ConstantLR(o, 1.0, 0),
                                S.LinearLR(o, 1.0, FLOOR / PEAK, total_iters=T // 5)],
         [W - 1, T - T // 5 - 1]),
    ],
)  # fmt: skip
def test_each_schedule_is_its_formula_and_torchs_schedulers_step_by_step(
    schedule, formula, schedulers, milestones
):
    """Step 0's rate is PEAK / W, not 0; step W - 1's the peak; the last step's the floor."""
    kwargs = dict(schedule=schedule, max_lr=PEAK, min_lr=FLOOR, warmup=W, total=T)
    mine = [learning_rate(step, **kwargs) for step in range(T)]
    assert mine == pytest.approx([formula(step + 1) for step in range(T)], rel=1e-12, abs=0)
    theirs = torch_rates(schedulers, T, PEAK, milestones)
    assert mine == pytest.approx(theirs, rel=1e-12, abs=0)
    assert mine[0] == PEAK / W and mine[W - 1] == PEAK
    assert mine[-1] == pytest.approx(PEAK if schedule == "constant" else FLOOR, rel=1e-12)


def test_inverse_sqrt_is_the_papers_formula_and_a_lambda_lr_step_by_step():
    """lrate = d_model^-0.5 · min(step_num^-0.5, step_num · warmup_steps^-1.5), step_num from 1,
    times learning_rate."""
    d_model, warmup, scale = 64, 40, 2.0

    def paper(step_num):
        return d_model**-0.5 * min(step_num**-0.5, step_num * warmup**-1.5)

    theirs = torch_rates(lambda o: [S.LambdaLR(o, lambda step: paper(step + 1))], 200, scale)
    kwargs = dict(schedule="inverse_sqrt", max_lr=scale, min_lr=0, warmup=warmup, total=200)
    mine = [learning_rate(step, **kwargs, d_model=d_model) for step in range(200)]
    assert mine == pytest.approx(theirs, rel=1e-12, abs=0)
    assert max(mine) == mine[warmup - 1] == pytest.approx(scale * (d_model * warmup) ** -0.5)


def test_a_wsd_warmup_reaching_into_the_decay_falls_from_the_peak_without_a_jump():
    """Warmup 90 of 100 steps: the decay, the last 20 steps, starts where the warmup ends."""
    kwargs = dict(schedule="wsd", max_lr=PEAK, min_lr=FLOOR, warmup=90, total=T)
    mine = [learning_rate(step, **kwargs) for step in range(T)]
    assert mine == pytest.approx([wsd(step + 1, warmup=90) for step in range(T)], rel=1e-12)
    assert mine[89] == PEAK and mine[90] == pytest.approx(PEAK - (PEAK - FLOOR) / 10)
    assert max(abs(b - a) for a, b in itertools.pairwise(mine)) <= PEAK / 10 + 1e-15


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_floor_above_the_peak_never_lifts_the_rate_past_the_peak(schedule):
    kwargs = dict(schedule=schedule, max_lr=1e-3, min_lr=0.5, warmup=2, total=10)
    rates = [learning_rate(step, **kwargs) for step in range(10)]
    assert max(rates) == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-3)


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


def every_kind():
    """A model of every kind's default preset, and GPTs of the mixers with parameters of their
    own: (name, model, the 2-D parameters that are not decayed)."""
    from attnlab.models.registry import KINDS

    for name, kind in KINDS.items():
        kept = ("position_embedding.weight",) if name == "vit" else ()  # as DeiT's and timm's
        yield name, kind.model(kind.presets[kind.default_preset]), kept
    for mixer, kept in [("mamba", ("A_log",)), ("hyena", ("filter.network.",)), ("gru", ())]:
        options = {"filter_lr_scale": 0.5} if mixer == "hyena" else None
        config = dataclasses.replace(MODEL, mixer=mixer, mixer_options=options, positional="none")
        yield mixer, GPT(config), kept


def test_every_kind_decays_its_matrices_and_nothing_else():
    """Biases, norm gains, Mamba's D and Δ bias, convolution kernels and class tokens are never
    decayed; of the matrices, only Mamba's A, Hyena's filter networks (in a group of their own,
    at their learning-rate scale, as in the paper) and a ViT's position table are spared."""
    for name, model, kept in every_kind():
        optimizer = build_optimizer(model, 1e-3, 0.1, (0.9, 0.99))
        names = {id(p): n for n, p in model.named_parameters()}
        grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
        assert sorted(grouped) == sorted(names), name  # every parameter once
        decays, *others = optimizer.param_groups
        assert decays["weight_decay"] == 0.1 and all(g["weight_decay"] == 0 for g in others)
        assert all(p.dim() == 2 for p in decays["params"]), name
        spared = {names[id(p)] for group in others for p in group["params"] if p.dim() == 2}
        assert {n for n in spared if not any(k in n for k in kept)} == set(), name
        assert all(any(k in n for n in spared) for k in kept), name
        scaled = {names[id(p)] for g in others if g["lr_scale"] != 1.0 for p in g["params"]}
        assert bool(scaled) == (name == "hyena") and all(".filter." in n for n in scaled)


@pytest.mark.parametrize("gradient_scale", [100.0, 1e-3])  # clipped, and left alone
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_norm", [1.0, 0.0])  # 0: nothing clipped
def test_clipping_steps_as_torchs_clip_grad_norm(gradient_scale, fused, max_norm):
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
            clip(optimizer, max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or math.inf)
        optimizer.step()
        steps.append([p.detach() for p in model.parameters()])
    for mine, theirs in zip(*steps, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("clip", [1.0, 0.0])
@pytest.mark.parametrize("fused", [True, False])
def test_adamw_steps_as_torchs_over_several_steps_in_float64(fused, clip):
    """attnlab's optimizer (fused: clipping by the kernel's grad_scale, in float32, which float64
    gradients are not given) against torch's AdamW, neither fused nor foreach, on torch's
    clipping: the weights and the moments after five steps of changing gradients and rates."""
    torch.manual_seed(0)
    model = GPT(MODEL).double()
    reference = copy.deepcopy(model)
    optimizer = build_optimizer(model, 1e-2, 0.1, (0.8, 0.95))
    if not fused:
        optimizer = torch.optim.AdamW(optimizer.param_groups, fused=False)
    params, decay = list(reference.parameters()), decayed(reference)
    groups = [
        {"params": [p for p in params if (id(p) in decay) == decays], "weight_decay": rate}
        for decays, rate in ((True, 0.1), (False, 0.0))
    ]
    torchs = torch.optim.AdamW(groups, betas=(0.8, 0.95), foreach=False, fused=False)
    assert optimizer.defaults["eps"] == torchs.defaults["eps"] == 1e-8
    for step, scale in enumerate((50.0, 0.01, 30.0, 2.0, 80.0)):  # clipped, or not
        for mine, theirs in zip(model.parameters(), params, strict=True):
            mine.grad = torch.randn_like(mine) * scale
            theirs.grad = mine.grad.clone()
        norm = clip_gradients(optimizer, clip)  # summed in another order: to rounding
        theirs = torch.nn.utils.clip_grad_norm_(params, clip or math.inf, foreach=True)  # 0: none
        torch.testing.assert_close(norm, theirs, rtol=1e-14, atol=0)
        for group in (*optimizer.param_groups, *torchs.param_groups):
            group["lr"] = 1e-2 * (step + 1) / 5
        optimizer.step()
        torchs.step()
    for mine, theirs in zip(model.parameters(), params, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-13, atol=1e-14)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            ours = optimizer.state[mine][key]
            torch.testing.assert_close(ours, torchs.state[theirs][key], rtol=1e-12, atol=1e-17)


def test_clipping_a_bfloat16_model_steps_as_torchs():
    """The fused kernel takes its grad_scale in float32 whatever the gradients' dtype."""
    steps = []
    for clip in (clip_gradients, None):
        torch.manual_seed(0)
        model = GPT(MODEL).to(torch.bfloat16)
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


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_the_trainers_steps_are_adamw_on_clipped_gradients_at_the_scheduled_rates(
    tmp_path, micro_batches
):
    """Two steps of the Trainer, in float64, against torch's AdamW by hand: warmup from step 0's
    rate, decay on the matrices only, the global norm of the step's whole gradient (all its
    micro-batches) clipped once before each step (AdamW's first step barely sees a gradient's
    scale; the second sees the ratio of the two steps' norms)."""
    config = TrainConfig(max_iters=10, warmup_iters=4, learning_rate=1e-2, grad_clip=0.5,
                         gradient_accumulation=micro_batches, precision="fp32", device="cpu",
                         cpu_kernels=False)  # fmt: skip
    windows = torch.randint(0, MODEL.vocab_size, (8 * micro_batches, 17))
    inputs, targets = windows[:, :-1], windows[:, 1:]
    model = GPT(MODEL).double()  # no dropout
    reference = copy.deepcopy(model)
    trainer = Trainer(model, config, Rows(inputs, targets), {}, out_dir=tmp_path)
    assert [trainer.train_step()["lr"] for _ in range(2)] == pytest.approx([2.5e-3, 5e-3])
    params, decay = list(reference.parameters()), decayed(reference)
    groups = [
        {"params": [p for p in params if (id(p) in decay) == decays], "weight_decay": rate}
        for decays, rate in ((True, config.weight_decay), (False, 0.0))
    ]
    adamw = torch.optim.AdamW(groups, betas=(config.beta1, config.beta2), foreach=False)
    norms, rows = [], 4 * micro_batches
    for step in range(2):
        part = slice(step * rows, (step + 1) * rows)  # the step's micro-batches as one batch
        reference(inputs[part], targets[part])[1].backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params, 0.5))
        for group in adamw.param_groups:
            group["lr"] = 1e-2 * (step + 1) / 4  # warming up over 4 steps
        adamw.step()
        adamw.zero_grad()
    assert min(norms) > 0.5 and abs(norms[0] - norms[1]) > 0.1  # both clipped, by different factors
    for mine, theirs in zip(model.parameters(), params, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-13)


@pytest.mark.parametrize("saved_fused, loaded_fused", [(True, True), (False, False), (True, False)])
def test_a_checkpoint_restores_the_optimizers_state_exactly(tmp_path, saved_fused, loaded_fused):
    """Step counts and both moments, bit for bit, into a fused optimizer or a plain one."""

    def optimizer(model, fused):
        built = build_optimizer(model, 1e-2, 0.1, (0.9, 0.99))
        return built if fused else torch.optim.AdamW(built.param_groups, fused=False)

    config = TrainConfig(
        max_iters=3, warmup_iters=1, precision="fp32", device="cpu", cpu_kernels=False
    )
    windows = torch.randint(0, MODEL.vocab_size, (12, 17))
    trainer = Trainer(
        GPT(MODEL), config, Rows(windows[:, :-1], windows[:, 1:]), {}, out_dir=tmp_path
    )
    trainer.optimizer = optimizer(trainer.model, saved_fused)
    for _ in range(3):
        trainer.train_step()
    trainer.save()
    model = copy.deepcopy(trainer.model)
    restored = optimizer(model, loaded_fused)
    load_training_state(tmp_path, restored)
    saved = trainer.optimizer.state
    for mine, theirs in zip(model.parameters(), trainer.model.parameters(), strict=True):
        assert (
            restored.state[mine].keys() == saved[theirs].keys() == {"step", "exp_avg", "exp_avg_sq"}
        )
        for key, value in saved[theirs].items():
            assert torch.equal(restored.state[mine][key], value) and value.dtype == torch.float32
    assert float(saved[theirs]["step"]) == 3


def test_inverse_sqrt_says_where_its_rate_peaks(tmp_path, corpus, capsys):
    """Its --learning-rate is a multiplier: 1e-3 (the default) peaks far below what it reads as
    (1e-3 · 32^-0.5 · 2^-0.5 here)."""
    flags = ["--lr-schedule", "inverse_sqrt", "--warmup-iters", "2", "--max-iters", "3"]
    flags += ["--d-model", "32", "--n-heads", "2", "--n-layers", "1"]
    code, _, err = train(capsys, corpus, tmp_path / "run", *flags)
    assert code == 0, err
    assert "note: inverse_sqrt peaks at 0.000125 at step 2: --learning-rate is its mult" in err
