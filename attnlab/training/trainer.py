"""The one training loop, for every model and objective.

The loop knows nothing of the objective or of text: a batch is a tuple of tensors and the model's
``forward(*batch)`` returns ``(logits, loss)``. The data source decides what the tuple holds (inputs
and next tokens for a GPT; source, target input and target output for translation) and names the
unit its throughput counts. Artefacts (a tokenizer, a palette) only go into the checkpoint.

Each optimizer step: gradient accumulation over micro-batches under autocast, gradient clipping, a
finiteness check (a NaN/inf loss or gradient norm stops the run before it touches the weights),
AdamW. Every ``eval_interval`` steps: evaluation and a checkpoint. Ctrl-C finishes the current
step, saves a checkpoint and returns; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import random
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.compiling import CompiledRegions, training_compile_options
from attnlab.config import config_to_dict
from attnlab.devices import autocast, mfu_peak_flops, pick_device, pick_dtype, tf32
from attnlab.errors import UserError
from attnlab.files import BEST_DIR
from attnlab.kernels import cpu as cpu_kernels
from attnlab.layers.contracts import eval_mode
from attnlab.models.registry import describe
from attnlab.signals import KILLS, on_signals
from attnlab.training.checkpoints import MODEL_FILE, check_tokenizer, load_weights, save_checkpoint
from attnlab.training.config import TrainConfig
from attnlab.training.distributed import ALONE, Group
from attnlab.training.metrics_log import append_record, truncate_metrics
from attnlab.training.optimizers import build_optimizer, clip_gradients, scheduled_learning_rate
from attnlab.training.probes import load_probe, parse_probes
from attnlab.training.sources import IGNORE_INDEX, Batch, BatchSource, Metrics, check_sources
from attnlab.training.state import (
    SAVE_ID,
    load_training_state,
    random_states,
    restore_random_states,
    resumed_best,
    resumed_dtype,
)

METRICS_FILE = "metrics.jsonl"
SCHEDULE = ("lr_schedule", "learning_rate", "min_learning_rate", "warmup_iters", "max_iters")
HIGHER_IS_BETTER = ("accuracy", "f1", "bleu", "chrf")  # scores; losses, bits, nats: lower


def prepare(config: TrainConfig) -> None:
    """Start what a Trainer with this config will wait for, so that it happens while the caller
    prepares data and model: the build of attnlab's CPU kernels (7-10 s the first time)."""
    if config.cpu_kernels and pick_device(config.device).type == "cpu":
        cpu_kernels.start_building()


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    step: int
    interrupted: bool
    last_eval: dict[str, float]


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_data: BatchSource,
        eval_data: dict[str, Callable[[], Iterable[Batch]]],
        *,
        out_dir: str | Path,
        artifacts: dict[str, Any] | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        metrics: Callable[[], Metrics] | None = None,
        keep_best: str | None = None,
        group: Group = ALONE,
    ):
        """eval_data: split name -> a function giving that split's evaluation batches (the same
        batches every time, so evaluations compare). artifacts: saved beside the weights (a
        tokenizer, a palette). on_record: called with each step's metrics (the CLI draws
        progress). Throughput counts the elements of each batch's last tensor, the targets, or
        the source's count(batch) (its tokens, padding left out), in the source's unit (default
        "token"). metrics: makes an
        accumulator of scores beyond the loss (accuracy, ...), reported per split. keep_best: a
        score ("val_accuracy"; lower is better but for HIGHER_IS_BETTER) whose best weights are
        kept in out_dir/best, a checkpoint of its own. group: the ranks of a distributed run
        (distributed.py), each training its shard of every batch; alone by default. Seeds
        torch's (config.seed plus the rank: dropout draws there) and Python's random numbers."""
        tokenizer = (artifacts or {}).get("tokenizer")  # describe: an unregistered kind refused
        check_tokenizer(describe(model)["config"], tokenizer, "the tokenizer")
        check_sources(train_data, eval_data)
        self.config, self.group = config, group
        self.device = pick_device(config.device)
        self.dtype = group.from_writer(pick_dtype(self.device, config.precision))  # measured
        self.tf32 = self.device.type == "cuda" and config.precision != "fp32"  # in its steps
        self.model = model.to(self.device)
        self.trained = group.wrap(self.model)  # what training steps run: DDP, FSDP or the model
        self.unit = getattr(train_data, "unit", "token")
        # attnlab's CPU kernels, for this trainer's steps only (see attnlab/kernels/cpu.py)
        self.kernels_on = config.cpu_kernels and self.device.type == "cpu"
        # falls back to eager, with a warning, if compiling fails (no C++ compiler, say)
        options = training_compile_options(self.device)
        blocks = getattr(self.model, "compile_regions", lambda: None)()
        if config.compile_by_block and blocks is None:  # it would compile the model whole
            raise UserError(
                f"TrainConfig.compile_by_block: {type(model).__name__} has no blocks to compile "
                "one by one; leave it unset"
            )
        # Training: the whole model as one graph (the fastest steps), or one compiled block for
        # every layer (the shortest compile; compiling.py). Evaluation, a forward pass without
        # gradients that compiles anew, always by block: the baby GPT's first evaluation took
        # 3.8 s instead of 8.5 s from empty caches, and each later one 1.0 s instead of 0.9 s.
        self.compiled = self.compiled_eval = None
        if config.compile:
            regions, together = blocks if config.compile_by_block else None, []  # fail together
            self.compiled = CompiledRegions(self.trained, regions, together, **options)
            self.compiled_eval = CompiledRegions(self.model, blocks, together, **options)
        self.train_data, self.eval_data = train_data, eval_data
        self.artifacts, self.out_dir = artifacts or {}, Path(out_dir)
        self.on_record = on_record or (lambda record: None)
        self.metrics, self.keep_best = metrics, keep_best
        names = parse_probes(config.probes)
        self.probes = [load_probe(name) for name in names]
        # each once now: a model one cannot score is refused before training, naming the probe
        for name, probe in zip(names, self.probes, strict=True):
            try:
                probe(self.model)
            except UserError as error:
                raise UserError(f"--probes {name}: {error}") from None
        self.best: dict[str, Any] = {}  # {"step": ..., "value": ...} of the best evaluation
        self.step, self.last_eval, self.elapsed = 0, {}, 0.0
        self.saved_step: int | None = None  # of this run's last checkpoint
        # asked here, agreed by every rank at the next step: stop (Ctrl-C) or finish early
        self._stop_requested = self._stopping = self._finish_requested = self._finishing = False
        torch.manual_seed(config.seed + group.rank)  # dropout differs between the ranks' rows
        random.seed(config.seed)

    @functools.cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """Built on first use: scoring alone needs none (building one imports torch._dynamo)."""
        c, betas = self.config, (self.config.beta1, self.config.beta2)
        return build_optimizer(self.model, c.learning_rate, c.weight_decay, betas, c.adam_eps)

    # ----------------------------------------------------------------- the loop
    def fit(self) -> FitResult:
        """Train until max_iters, Ctrl-C or request_finish; returns where it stopped."""
        writer, log_path = self.group.is_writer, self.out_dir / METRICS_FILE
        if writer:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            truncate_metrics(log_path, self.step)
        # Ctrl-C, and in one process SIGTERM (a job scheduler's, `timeout`'s) and SIGHUP (the
        # terminal closed); under torchrun these are the launcher's, the process group's to handle
        signums = [signal.SIGINT, *(KILLS if self.group.world == 1 else ())]
        with on_signals(self._on_signal, signums):  # unbuffered: a full disk fails the write
            log = log_path.open("ab", 0) if writer else contextlib.nullcontext()
            with log as metrics:
                while not (self.step >= self.config.max_iters or self._stopping or self._finishing):
                    record = self.train_step()
                    evaluating = (
                        self.step % self.config.eval_interval == 0
                        or self.step == self.config.max_iters
                        or (self._finishing and not self._stopping)
                    )
                    if evaluating:
                        record.update(self.evaluate())
                    if writer:  # logged before the save: a checkpoint never outruns its log
                        with self.writing(f"logging step {self.step} in {metrics.name}"):
                            append_record(metrics, record)
                        self.on_record(record)
                    if evaluating:
                        losses = [kv for kv in self.last_eval.items() if kv[0].endswith("_loss")]
                        self._check_finite(losses, self.step)
                        self._keep_if_best()
                        self.save()
            interrupted = self._stopping and self.step < self.config.max_iters  # else finished
            if interrupted and self.saved_step != self.step:  # an evaluation's step is saved
                self.save()
            return FitResult(self.step, interrupted, self.last_eval)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step at the scheduled learning rate; returns its metrics record (step,
        train_loss, lr, tokens_per_s (in the data's unit: images_per_s, ...), elapsed_s, and mfu
        for models that count their FLOPs per unit: flops_per_token(), flops_per_image(), ...)."""
        lr = self.learning_rate(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with cpu_kernels.enabled(self.kernels_on), tf32(self.tf32):  # their build: untimed
            start = time.perf_counter()
            loss, units = self._optimizer_step()
            seconds = time.perf_counter() - start
        self.elapsed += seconds
        self.step += 1
        rate = units / seconds  # over all the ranks
        record = {
            "step": self.step,
            "train_loss": loss,
            "lr": lr,
            f"{self.unit}s_per_s": rate,
            "elapsed_s": self.elapsed,
        }
        flops_per_unit = getattr(self.model, f"flops_per_{self.unit}", lambda: None)()
        if flops_per_unit:
            peak = mfu_peak_flops(self.device, self.dtype)  # measured once per process
            record["mfu"] = flops_per_unit * rate / (peak * self.group.world)
        return record

    def _optimizer_step(self) -> tuple[float, int]:
        """One optimizer step; returns the mean loss and the number of targets (all ranks').

        A model's loss is a mean over the targets it scores (those not IGNORE_INDEX: a masked
        LM scores some tokens, a translation its non-pad ones). Each micro-batch of each rank
        weighs in by its share of the step's scored targets, so the step's loss and gradient are
        the mean over all of them: the same however the batch is split into micro-batches and
        ranks (every rank draws the global batches, so it knows their counts)."""
        self.model.train()
        steps, total = self.config.gradient_accumulation, torch.zeros((), device=self.device)
        batches = [self.train_data.next() for _ in range(steps)]  # the global micro-batches
        scored = max(sum(_scored(batch[-1]) for batch in batches), 1)
        for micro, batch in enumerate(batches):
            batch = self.group.shard(batch)
            # this rank's share, times the ranks: their gradients are averaged, not summed
            weight = _scored(batch[-1]) * self.group.world / scored
            batch = tuple(self._to_device(t) for t in batch)
            with self.group.syncing(self.trained, sync=micro == steps - 1), torch.enable_grad():
                _, loss = self._forward(batch, self.compiled or self.trained)
                (loss * weight).backward()
            total += loss.detach() * weight
        count = getattr(self.train_data, "count", lambda batch: batch[-1].numel())
        tokens = sum(count(batch) for batch in batches)
        # the gradients clipped to grad_clip (0: not); their norm is checked in the loss's sync
        norm = clip_gradients(self.optimizer, self.config.grad_clip)
        loss, norm, self._stopping, self._finishing = self.group.agree(
            [total, norm], self._stop_requested, self._finish_requested
        )
        self._check_finite([("loss", loss), ("gradient norm", norm)], self.step + 1)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, tokens

    def _check_finite(self, figures: Iterable[tuple[str, float]], step: int) -> None:
        """Stop the run at a figure (a loss, a gradient norm) that is NaN or infinite: before its
        step changes the weights, or an evaluation's weights are saved."""
        if not (bad := [kv for kv in figures if not math.isfinite(kv[1])]):
            return
        (name, value), saved, where = bad[0], self.saved_step, self.out_dir
        self.optimizer.zero_grad(set_to_none=True)  # a step's, never applied
        then = "start again" if saved is None else f"--resume (step {saved} is saved in {where})"
        raise TrainingDiverged(
            f"{name} became {value} at step {step}; training stopped. Lower the learning rate "
            f"or raise warmup, then {then}"
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss per scored target on each evaluation split, the data's scores and the
        probes' (probes.py), in eval mode: {"val_loss": ..., "val_accuracy": ..., ...}."""
        with eval_mode(self.model), tf32(self.tf32):  # then in the mode the model came in
            results = {}
            for split, batches in self.eval_data.items():
                total, count, scores = 0.0, 0, self.metrics() if self.metrics else None
                for batch in batches():
                    batch = tuple(self._to_device(t) for t in batch)
                    logits, loss = self._forward(batch, self.compiled_eval)
                    if scored := _scored(batch[-1]):  # a batch weighs as its targets
                        total, count = total + loss.item() * scored, count + scored
                    if scores is not None:
                        scores.update(logits, batch)
                if not count:  # not a divergence: there was nothing to score
                    raise UserError(
                        f"evaluation split {split!r} gave no targets to score (no batches, or all "
                        f"{IGNORE_INDEX}): eval_data maps splits to functions giving batches anew"
                    )
                results[f"{split}_loss"] = total / count
                if scores is not None:
                    results.update({f"{split}_{k}": v for k, v in scores.compute().items()})
            for probe in self.probes:  # in full precision, on the uncompiled model
                results.update(probe(self.model))
        self.last_eval = results = self.group.mean(results)  # the same figures on every rank
        return results

    def _keep_if_best(self) -> None:
        """Save the weights to out_dir/best when this evaluation is the best so far."""
        if not self.keep_best:
            return
        if self.keep_best not in self.last_eval:
            self.save()  # the training so far is kept: --resume goes on once the score is right
            raise UserError(
                f"keep_best: no score {self.keep_best!r}; evaluation gives "
                f"{', '.join(self.last_eval)} (step {self.step} is saved)"
            )
        value = self.last_eval[self.keep_best]
        sign = 1 if self.keep_best.endswith(HIGHER_IS_BETTER) else -1
        if self.best and sign * value <= sign * self.best["value"]:
            return
        with self.writing(f"saving step {self.step} in {self.out_dir / BEST_DIR}"):
            saved = save_checkpoint(self.out_dir / BEST_DIR, self.model, self.artifacts)
        self.best = {"score": self.keep_best, "value": value, "step": self.step, SAVE_ID: saved}

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch tensor on the device; to a GPU through pinned memory, without waiting."""
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _forward(self, batch: Batch, compiled=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model (compiled, if asked) on a batch under autocast."""
        with autocast(self.device, self.dtype):
            return (compiled or self.model)(*batch)

    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint and return from fit (what Ctrl-C does)."""
        self._stop_requested = True
        if self.group.world == 1:
            self._stopping = True

    def request_finish(self) -> None:
        """End the run after the next step as if it were the last: evaluate, keep the best and
        save, so that the run's figures are for its final weights (a time limit)."""
        self._finish_requested = True

    # ----------------------------------------------------------------- state
    def save(self) -> None:
        state = {
            "step": self.step,
            "elapsed_s": self.elapsed,
            "precision": str(self.dtype).removeprefix("torch."),
            "train_config": config_to_dict(self.config),
            "last_eval": self.last_eval,
            "best": self.best,
            "rng": random_states(self.train_data, self.group),
        }
        with self.writing(f"saving step {self.step} in {self.out_dir}"):
            save_checkpoint(self.out_dir, self.model, self.artifacts, self.optimizer, state)
        self.saved_step = self.step

    @contextlib.contextmanager
    def writing(self, what: str):
        """An OSError of the block (a full disk, say) as one line: what failed, what is kept."""
        try:
            yield
        except OSError as error:
            kept = "nothing" if self.saved_step is None else f"step {self.saved_step}"
            raise UserError(
                f"{what} failed: {error.strerror or error}; {kept} is saved in {self.out_dir}"
            ) from None

    def learning_rate(self, step: int, config: TrainConfig) -> float:
        d_model = getattr(getattr(self.model, "config", None), "d_model", 512)
        return scheduled_learning_rate(step, config, d_model)

    def resume(self) -> None:
        """Continue from the checkpoint in out_dir: weights, optimizer, step, RNG and data.
        lr_moved: the next step's learning rate by the run's schedule and by the new one, where
        they differ by more than 5% (a larger max_iters, say)."""
        load_weights(self.model, self.out_dir / MODEL_FILE)
        state = load_training_state(self.out_dir, self.optimizer)
        self.step, self.elapsed = state["step"], state["elapsed_s"]
        schedule = {k: v for k, v in state["train_config"].items() if k in SCHEDULE}
        old = self.learning_rate(self.step, dataclasses.replace(self.config, **schedule))
        new = self.learning_rate(self.step, self.config)  # the next step's, by each schedule
        moved = self.step and abs(new - old) > 0.05 * max(old, new)
        self.lr_moved = (old, new) if moved else None
        self.saved_step = self.step
        self.last_eval = state.get("last_eval", {})
        best = resumed_best(state.get("best"), self.out_dir / BEST_DIR / MODEL_FILE)
        self.best = self.group.from_writer(best)  # rank 0's, which saves best/: all alike
        self.dtype = resumed_dtype(state.get("precision"), self.config.precision, self.dtype)
        self.tf32 &= self.dtype != torch.float32  # a run kept in fp32 (auto): its products too
        if not restore_random_states(self.out_dir, state["rng"], self.train_data, self.group):
            # saved by another number of ranks: the others draw their own (dropout)
            torch.manual_seed(self.config.seed + self.group.rank + self.step)

    def _on_signal(self) -> None:
        """Ctrl-C (or SIGTERM): stop after the step in progress, saved; a second one at once."""
        if self._stop_requested:
            raise KeyboardInterrupt
        self.request_stop()


def _scored(targets: torch.Tensor) -> int:
    """The targets a loss averages over: those not IGNORE_INDEX."""
    return int((targets != IGNORE_INDEX).sum())
