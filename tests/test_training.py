import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from helpers import MUST_COMPILE

from attnlab import devices
from attnlab.data.text import TextSplits, language_model_data
from attnlab.errors import UserError
from attnlab.kernels import cpu as cpu_kernels
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.tokenizers import CharTokenizer
from attnlab.training.checkpoints import load_checkpoint, load_weights
from attnlab.training.sources import IGNORE_INDEX
from attnlab.training.trainer import TrainConfig, Trainer, TrainingDiverged

TEXT = "the quick brown fox jumps over the lazy dog. " * 60
TOKENIZER = CharTokenizer.from_text(TEXT)
MODEL = GPTConfig(
    vocab_size=TOKENIZER.vocab_size,
    context_length=16,
    n_layers=2,
    n_heads=2,
    d_model=32,
    dropout=0.1,
)


def make_trainer(out_dir, max_iters=8, eval_interval=4, model=MODEL, **train_fields):
    fields = dict(batch_size=4, eval_iters=2, warmup_iters=2, precision="fp32", device="cpu")
    config = TrainConfig(
        max_iters=max_iters, eval_interval=eval_interval, **{**fields, **train_fields}
    )
    torch.manual_seed(0)
    model = GPT(model)
    splits = TextSplits.from_tokens(np.array(TOKENIZER.encode(TEXT), dtype=np.uint16))
    train, evaluation = language_model_data(splits, 4, 16, config.seed, 2)
    return Trainer(
        model, config, train, evaluation, artifacts={"tokenizer": TOKENIZER}, out_dir=out_dir
    )


def losses(out_dir):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines]


def test_training_lowers_the_loss(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=60, eval_interval=60, learning_rate=3e-3)
    result = trainer.fit()
    assert result.last_eval["val_loss"] < math.log(TOKENIZER.vocab_size) - 1


@MUST_COMPILE
def test_compiled_training_follows_eager_on_the_cpu(tmp_path):
    """The CPU's compile options (C++ wrapper, no asserts) train as eager code does. Without
    dropout: compiled code draws its dropout masks from a different generator."""
    model = dataclasses.replace(MODEL, dropout=0.0)
    runs = {}
    for mode in ("eager", "whole", "by_block"):
        options = dict(compile=mode != "eager", compile_by_block=mode == "by_block")
        trainer = make_trainer(tmp_path / mode, 4, model=model, **options)
        trainer.fit()  # trains and evaluates: both compile
        assert (mode != "eager") == bool(trainer.compiled and trainer.compiled.active)
        runs[mode] = losses(tmp_path / mode) + [trainer.evaluate()["val_loss"]]
        blocks = trainer.model.blocks
        assert all(block._compiled_call_impl is None for block in blocks)  # left as it was
        if mode != "eager":  # evaluation compiles by block, training as asked
            assert [region for region, _ in trainer.compiled_eval.regions] == list(blocks)
            whole = [region for region, _ in trainer.compiled.regions] == [trainer.model]
            assert whole == (mode == "whole")
    assert runs["whole"] == pytest.approx(runs["eager"], rel=1e-4)
    assert runs["by_block"] == pytest.approx(runs["eager"], rel=1e-4)


class FixedBatches:
    """The rows of one (N, T) batch, `rows` at a time in order, again and again."""

    unit = "token"

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, rows: int):
        self.inputs, self.targets, self.rows, self.start = inputs, targets, rows, 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(self.start, self.start + self.rows)
        self.start = (self.start + self.rows) % len(self.inputs)
        return self.inputs[rows], self.targets[rows]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def gradients_of_one_step(tmp_path, micro_batches: int, rows: int, batch) -> tuple:
    """The loss and the gradients the optimizer receives in one step of k micro-batches."""
    config = TrainConfig(
        max_iters=1,
        eval_interval=1,
        gradient_accumulation=micro_batches,
        grad_clip=0.0,  # the gradients as computed
        precision="fp32",
        device="cpu",
        cpu_kernels=False,
    )
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(MODEL, dropout=0.0))
    trainer = Trainer(model, config, FixedBatches(*batch, rows), {}, out_dir=tmp_path)
    seen = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda: seen.append([p.grad.clone() for p in model.parameters()])
    loss = trainer.train_step()["train_loss"]
    trainer.optimizer.step = step
    return loss, seen[0]


@pytest.mark.parametrize("micro_batches", [2, 4])
@pytest.mark.parametrize("unscored_rows", [0, 2])
def test_k_micro_batches_of_b_step_like_one_batch_of_k_times_b(
    tmp_path, micro_batches, unscored_rows
):
    """Also when a micro-batch scores nothing (a masked LM's rows may): it weighs 0, not NaN."""
    windows = torch.randint(0, TOKENIZER.vocab_size, (8, 17))
    batch = windows[:, :-1], windows[:, 1:].clone()
    batch[1][:unscored_rows] = IGNORE_INDEX
    whole_loss, whole = gradients_of_one_step(tmp_path / "whole", 1, 8, batch)
    loss, accumulated = gradients_of_one_step(
        tmp_path / "micro", micro_batches, 8 // micro_batches, batch
    )
    assert loss == pytest.approx(whole_loss, abs=1e-6)
    assert max(g.abs().max().item() for g in whole) > 1e-3  # gradients worth comparing
    for mine, theirs in zip(accumulated, whole, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


def test_the_validation_loss_is_the_mean_over_scored_targets(tmp_path):
    """Batches with few scored targets (padding, a short last batch) weigh as little as they
    score, as in training: not a mean of the batches' means."""
    windows = torch.randint(0, TOKENIZER.vocab_size, (6, 17))
    inputs, targets = windows[:, :-1], windows[:, 1:].clone()
    targets[:3, 1:] = IGNORE_INDEX  # the first batch scores 3 targets, the second 48
    batches = [(inputs[:3], targets[:3]), (inputs[3:], targets[3:])]
    config = TrainConfig(max_iters=1, precision="fp32", device="cpu", compile=False)
    model = GPT(dataclasses.replace(MODEL, dropout=0.0))
    evaluation = {"val": lambda: batches}
    trainer = Trainer(model, config, FixedBatches(inputs, targets, 3), evaluation, out_dir=tmp_path)
    with torch.no_grad():
        logits = model(inputs)[0]
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert trainer.evaluate()["val_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert model.training  # given back in its mode, as generation and inspection give it


@MUST_COMPILE
def test_the_shipped_cpu_path_trains_like_fp32_eager(tmp_path):
    """bf16 autocast, torch.compile and attnlab's CPU kernels (the shipped CPU configuration)
    against fp32 eager training with torch's kernels: 50 steps of a small model like the baby
    GPT's (RoPE, exact GELU, no biases) from the same weights on the same batches. Measured:
    the losses differ by at most 9.4e-4 (3.7e-4 relative), the final weights by at most 4.6e-3
    (the learning rate is 3e-3)."""
    model = dataclasses.replace(
        MODEL, dropout=0.0, positional="rope", activation="gelu", bias=False
    )
    runs = {}
    for path, options in {
        "shipped": dict(precision="bf16", compile=True, cpu_kernels=True),
        "reference": dict(precision="fp32", compile=False, cpu_kernels=False),
    }.items():
        trainer = make_trainer(tmp_path / path, 50, model=model, learning_rate=3e-3, **options)
        assert trainer.dtype == (torch.bfloat16 if path == "shipped" else torch.float32)
        steps = [trainer.train_step()["train_loss"] for _ in range(50)]
        assert bool(trainer.compiled and trainer.compiled.active) == (path == "shipped")
        runs[path] = steps, [p.detach() for p in trainer.model.parameters()]
    (shipped, shipped_weights), (reference, reference_weights) = runs["shipped"], runs["reference"]
    assert cpu_kernels.load()  # built (a failed build would have failed the test already)
    assert reference[-1] < reference[0] - 1  # it trained
    assert max(abs(a - b) for a, b in zip(shipped, reference, strict=True)) < 5e-3
    for mine, theirs in zip(shipped_weights, reference_weights, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-2)


def test_a_failing_compiler_falls_back_to_eager(tmp_path, monkeypatch):
    """No C++ compiler, say: the run warns and trains uncompiled, with the same losses."""

    def broken_compile(model, **options):
        def compiled(*args, **kwargs):
            raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")

        return compiled

    eager = make_trainer(tmp_path / "eager", max_iters=4)
    eager.fit()
    monkeypatch.setattr(torch, "compile", broken_compile)
    trainer = make_trainer(tmp_path / "compiled", max_iters=4, compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no working C") as caught:
        trainer.fit()
    assert len(caught) == 1  # not one more for evaluation and for each of its blocks
    assert not trainer.compiled.active and not trainer.compiled_eval.active
    assert losses(tmp_path / "compiled") == losses(tmp_path / "eager")


def test_measuring_the_peak_leaves_the_seeded_generator_alone(monkeypatch):
    """MFU's peak is measured during the first run of a process; that run must not draw
    different random numbers from the next one with the same seed."""
    monkeypatch.setattr(devices, "_PEAK_FLOPS", {})
    state = torch.get_rng_state()
    assert devices.measure_peak_flops(torch.device("cpu"), torch.float32, seconds=0.01) > 0
    assert torch.equal(torch.get_rng_state(), state)


def measured_cpu(monkeypatch, bf16_speedup, instructions=True):
    """A CPU whose bf16 matrix products run `bf16_speedup` times as fast as its fp32 ones."""
    cpu = str(torch.device("cpu"))
    peaks = {(cpu, torch.float32): 1e11, (cpu, torch.bfloat16): bf16_speedup * 1e11}
    monkeypatch.setattr(devices, "_PEAK_FLOPS", peaks)
    monkeypatch.setattr(devices, "_cpu_has_bf16_instructions", lambda: instructions)


@pytest.mark.parametrize(
    "speedup, instructions, dtype",
    [(2.0, True, torch.bfloat16), (0.55, True, torch.float32), (2.0, False, torch.float32)],
)
def test_auto_precision_on_a_cpu_is_bf16_only_where_measured_faster(
    monkeypatch, speedup, instructions, dtype
):
    measured_cpu(monkeypatch, speedup, instructions)
    assert devices.pick_dtype(torch.device("cpu"), "auto") == dtype
    assert devices.pick_dtype(torch.device("cpu"), "fp32") == torch.float32


def test_resume_keeps_the_precision_auto_first_chose(tmp_path, monkeypatch):
    measured_cpu(monkeypatch, 0.55)
    first = make_trainer(tmp_path, max_iters=2, precision="auto")
    assert first.dtype == torch.float32
    first.fit()
    measured_cpu(monkeypatch, 2.0)  # a second measurement that disagrees
    resumed = make_trainer(tmp_path, max_iters=4, precision="auto")
    assert resumed.dtype == torch.bfloat16
    resumed.tf32 = True  # as on a GPU, where auto turns TF32 on for bf16's fp32 products
    with pytest.warns(RuntimeWarning, match="goes on in float32, .*auto picks bfloat16 on this"):
        resumed.resume()
    assert resumed.dtype == torch.float32 and not resumed.tf32  # fp32 kept whole: no TF32


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    whole, rest = tmp_path / "whole", tmp_path / "interrupted"
    make_trainer(whole, max_iters=8, eval_interval=3).fit()
    interrupted = make_trainer(rest, max_iters=8, eval_interval=3)
    interrupted.on_record = lambda record: record["step"] == 4 and interrupted.request_stop()
    assert interrupted.fit().interrupted  # stops and checkpoints at step 4, between evaluations
    late = make_trainer(tmp_path / "late", max_iters=3, eval_interval=3)
    late.on_record = lambda record: record["step"] == 3 and late.request_stop()  # at the end
    assert not late.fit().interrupted and late.step == 3
    resumed = make_trainer(rest, max_iters=8, eval_interval=3)
    load_weights(resumed.model, rest / "model.safetensors")
    resumed.resume()
    assert resumed.step == 4
    resumed.fit()
    assert losses(rest) == losses(whole)
    a, b = load_checkpoint(whole).model, load_checkpoint(rest).model
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_a_run_asked_to_finish_ends_a_step_later_evaluated_and_saved(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=50, eval_interval=40)
    trainer.keep_best = "val_loss"
    trainer.on_record = lambda record: record["step"] == 5 and trainer.request_finish()
    result = trainer.fit()
    assert not result.interrupted and result.step == 6
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 6 and last["val_loss"] == result.last_eval["val_loss"]
    assert json.loads((tmp_path / "trainer_state.json").read_text())["step"] == 6
    assert trainer.best["step"] == 6 and (tmp_path / "best" / "model.safetensors").is_file()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=10, eval_interval=2)
    embedding = trainer.model.token_embedding.weight

    def poison(record):
        if record["step"] == 3:
            with torch.no_grad():
                embedding.fill_(float("nan"))

    trainer.on_record = poison
    with pytest.raises(TrainingDiverged, match="^loss became nan at step 4.*step 2"):
        trainer.fit()
    model = load_checkpoint(tmp_path).model
    assert json.loads((tmp_path / "trainer_state.json").read_text())["step"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])  # clipping's norm, or the norm alone
def test_a_non_finite_gradient_of_a_finite_loss_stops_before_the_weights_change(
    tmp_path, grad_clip
):
    """An overflow in the backward pass: the gradient norm is checked as the loss."""
    trainer = make_trainer(tmp_path, max_iters=10, eval_interval=2, grad_clip=grad_clip)
    weight = trainer.model.token_embedding.weight
    weight.register_hook(lambda grad: grad * math.inf if trainer.step == 2 else grad)
    with pytest.raises(TrainingDiverged, match="gradient norm became inf at step 3.*step 2 is"):
        trainer.fit()
    assert torch.equal(load_checkpoint(tmp_path).model.token_embedding.weight, weight)
    assert all(p.grad is None for p in trainer.model.parameters())  # the step's, let go


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_validation_loss_stops_before_it_is_saved(tmp_path, bad):
    trainer = make_trainer(tmp_path, max_iters=10, eval_interval=2)
    evaluate = trainer.evaluate

    def nan_at_step_4():  # the weights score NaN on held-out data, not (yet) in training
        results = evaluate()
        if trainer.step == 4:
            results["val_loss"] = trainer.last_eval["val_loss"] = bad
        return results

    trainer.evaluate = nan_at_step_4
    with pytest.raises(TrainingDiverged, match=f"val_loss became {bad} at step 4.*step 2 is saved"):
        trainer.fit()
    assert json.loads((tmp_path / "trainer_state.json").read_text())["step"] == 2


def test_an_evaluation_split_with_nothing_to_score_is_not_called_a_divergence(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=4, eval_interval=2)
    once = iter(list(trainer.eval_data["val"]()))  # a generator made once: empty the 2nd time
    trainer.eval_data = {"val": lambda: once}
    with pytest.raises(UserError, match="split 'val' gave no targets to score .* batches anew"):
        trainer.fit()
    assert json.loads((tmp_path / "trainer_state.json").read_text())["step"] == 2


def test_a_run_that_diverges_before_its_first_save_is_started_again_with_a_fresh_log(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=8, eval_interval=4)

    trainer.on_record = lambda record: trainer.model.token_embedding.weight.data.fill_(math.nan)
    with pytest.raises(TrainingDiverged, match="then start again"):
        trainer.fit()
    assert not (tmp_path / "trainer_state.json").exists()
    make_trainer(tmp_path, max_iters=8, eval_interval=4).fit()  # a new run in the same folder
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == list(range(1, 9))


def test_hyena_filters_train_in_their_own_group_at_their_learning_rate_scale(tmp_path):
    hyena = dataclasses.replace(
        MODEL, mixer="hyena", positional="none", mixer_options={"filter_lr_scale": 0.1}
    )
    trainer = make_trainer(tmp_path, max_iters=3, model=hyena, learning_rate=1e-3)
    groups = trainer.optimizer.param_groups
    filters = {
        id(p)
        for block in trainer.model.blocks
        for p in block.token_mixer.filter.network.parameters()
    }
    scaled = [g for g in groups if g["lr_scale"] != 1.0]
    assert len(groups) == 3 and len(scaled) == 1
    assert {id(p) for p in scaled[0]["params"]} == filters and scaled[0]["weight_decay"] == 0
    record = trainer.train_step()
    assert scaled[0]["lr"] == pytest.approx(0.1 * record["lr"]) and record["lr"] > 0
    assert all(g["lr"] == record["lr"] for g in groups if g is not scaled[0])


def test_a_trainer_refuses_what_it_could_not_checkpoint_or_draw_from_before_training(tmp_path):
    config = TrainConfig(max_iters=1, precision="fp32", device="cpu")
    batches = FixedBatches(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4), 2)
    with pytest.raises(ValueError, match="Linear is not a registered model kind: register_kind"):
        Trainer(torch.nn.Linear(4, 1), config, batches, {}, out_dir=tmp_path)

    class SmoothedGPT(GPT):  # another loss: saved as "gpt", it would load back without it
        pass

    with pytest.raises(ValueError, match="SmoothedGPT is not a .* its parent kind 'gpt'"):
        Trainer(SmoothedGPT(MODEL), config, batches, {}, out_dir=tmp_path)
    model = GPT(MODEL)
    with pytest.raises(TypeError, match="lacks next, state_dict, load_state_dict"):
        Trainer(model, config, iter([batches.next()]), {}, out_dir=tmp_path)
    with pytest.raises(TypeError, match="a function giving its batches"):
        Trainer(model, config, batches, {"val": [batches.next()]}, out_dir=tmp_path)


@pytest.mark.parametrize(
    "score, values, kept",
    [("val_accuracy", [0.3, 0.9, 0.2], 0.9), ("val_bits_per_pixel", [0.3, 0.9, 0.2], 0.2)],
)
def test_the_best_checkpoint_is_the_highest_score_or_the_lowest_loss(tmp_path, score, values, kept):
    trainer = make_trainer(tmp_path)
    trainer.keep_best = score
    for step, value in enumerate(values, start=1):
        trainer.step, trainer.last_eval = step, {score: value}
        trainer._keep_if_best()
    assert trainer.best["value"] == kept and (tmp_path / "best" / "model.safetensors").is_file()
