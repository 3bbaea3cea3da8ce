"""TrainConfig: how a model is trained, whatever the model (the Trainer's settings).

batch_size and eval_iters size the batches of the data sources a kind builds (`attnlab train`);
a Trainer given sources of one's own trains and evaluates on their batches as they come."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attnlab.config import check_at_least, check_choice, check_positive, check_types
from attnlab.errors import UserError
from attnlab.training.optimizers import SCHEDULES
from attnlab.training.probes import parse_probes


@dataclass(frozen=True)
class TrainConfig:
    max_iters: int = 2000  # optimizer steps
    batch_size: int = 12  # examples (sequences, images) per micro-batch
    gradient_accumulation: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-3  # peak learning rate (a multiplier for inverse_sqrt)
    min_learning_rate: float = 1e-4  # where cosine and wsd end (at most learning_rate)
    lr_schedule: str = "cosine"  # cosine | constant | wsd | inverse_sqrt (Vaswani et al.'s "Noam")
    warmup_iters: int = 100  # linear warmup steps
    weight_decay: float = 0.1  # on weight matrices (linear, embedding, recurrent)
    beta1: float = 0.9  # AdamW's decay of its gradient average
    beta2: float = 0.99  # AdamW's decay of its squared-gradient average
    adam_eps: float = 1e-8  # AdamW's epsilon, added to the root of that average (the paper: 1e-9)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_interval: int = 250  # evaluate and checkpoint every N steps (and at the end)
    eval_iters: int = 20  # batches per evaluation, each the size of a training batch
    seed: int = 1337  # all chance: weights, batches, dropout, masks, the held-out windows scored
    precision: str = "auto"  # auto (bf16 where faster: a GPU, some CPUs; else fp32) | fp32 | bf16
    compile: bool = False  # torch.compile the model for training
    compile_by_block: bool = False  # with compile: one block for all layers; builds faster
    cpu_kernels: bool = True  # on a CPU, attnlab's kernels (attention, GELU, dropout)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    probes: str = ""  # scores of the model logged at each evaluation, comma-separated: induction

    @staticmethod
    def unread(values: dict[str, Any]) -> dict[str, str]:
        """The fields that training by these values would not read, each with what reads it
        (check_read): the floor of a schedule that never decays."""
        if (schedule := values.get("lr_schedule", "cosine")) in ("constant", "inverse_sqrt"):
            return {"min_learning_rate": f"of the cosine and wsd schedules, not of {schedule!r}"}
        return {}

    def __post_init__(self):
        check_types(self)
        check_positive(
            "TrainConfig",
            max_iters=self.max_iters,
            batch_size=self.batch_size,
            gradient_accumulation=self.gradient_accumulation,
            learning_rate=self.learning_rate,
            adam_eps=self.adam_eps,
            eval_interval=self.eval_interval,
            eval_iters=self.eval_iters,
        )
        for name in ("warmup_iters", "grad_clip", "min_learning_rate", "weight_decay"):
            check_at_least("TrainConfig", name, getattr(self, name), 0)
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        check_choice("TrainConfig", "lr_schedule", self.lr_schedule, SCHEDULES)
        if not 0 <= self.seed < 2**63:
            raise UserError(f"TrainConfig.seed must be in [0, 2**63), got {self.seed}")
        check_choice("TrainConfig", "precision", self.precision, ("auto", "fp32", "bf16"))
        if self.compile_by_block and not self.compile:
            raise UserError("TrainConfig.compile_by_block is a way to compile: it needs compile")
        parse_probes(self.probes)
