"""Training as one of several processes, through PyTorch's own engine: torchrun starts the
processes, DDP or FSDP2 keeps their models in step.

A `Group` is this process's place in the job: one rank of a torchrun job (``--distributed ddp``
or ``fsdp``), or a process alone (`ALONE`), for which every method is the identity. The Trainer
calls the same methods either way, so one training loop serves both.

How the ranks stay one training run:
- The batch size is the global one. Every rank draws the same global batch from a data stream
  seeded alike and keeps its own rows of it (`shard`), so two ranks see exactly the rows one
  process would, and the data's position is one state that any number of ranks can resume.
- Gradients are averaged over the ranks on the last micro-batch of a step only (`syncing`).
- The step's loss, the NaN check, Ctrl-C and evaluation scores are reduced over the ranks
  (`agree`, `mean`): every rank takes the same decisions, so none waits on a collective that
  another has left.
- Checkpoints hold whole tensors, gathered from FSDP's shards (checkpoints.py), and are
  written by rank 0 only: a run saved by two ranks resumes with one or four, and the
  single-process commands read it as any other.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import sys
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from attnlab.errors import UserError
from attnlab.signals import KILLS, handlers_kept, on_signals

MODES = ("ddp", "fsdp")
# How long a collective waits for a rank that is alive but busy (rank 0 learning a tokenizer
# while the others wait for its cache) before it fails; a rank that dies ends the job at once.
TIMEOUT = datetime.timedelta(minutes=30)


class RankStopped(UserError):
    """This rank ended because another did: reported by every rank, not only rank 0."""

    every_rank = True


class Group:
    def __init__(self, mode: str | None = None):
        """mode: "ddp" or "fsdp" for one of torchrun's processes (the rank and world size
        torchrun sets); None for a process alone. `start` joins the others."""
        self.mode = mode
        self.rank = int(os.environ.get("RANK", 0)) if mode else 0
        self.world = int(os.environ.get("WORLD_SIZE", 1)) if mode else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0)) if mode else 0

    @classmethod
    def for_run(cls, mode: str | None) -> Group:
        """The group of a training command given --distributed `mode`, checked against how
        the process was started."""
        under_torchrun = "WORLD_SIZE" in os.environ and "RANK" in os.environ
        if mode is None and under_torchrun and int(os.environ["WORLD_SIZE"]) > 1:
            raise UserError(
                "started by torchrun with several processes: pass --distributed ddp or fsdp"
            )
        if mode is not None and mode not in MODES:
            raise UserError(f"unknown --distributed {mode!r}; choose one of {', '.join(MODES)}")
        if mode is not None and not under_torchrun:
            raise UserError(
                f"--distributed {mode} runs under torchrun, which starts one process per rank: "
                f"torchrun --nproc-per-node N -m attnlab train ... --distributed {mode}, or "
                f"add --processes N to start them here"
            )
        return cls(mode)

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes the run's files (checkpoints, metrics, plots, notes)."""
        return self.rank == 0

    # ----------------------------------------------------------------- the process group
    def start(self) -> None:
        """Join the other ranks: gloo between CPUs, NCCL between GPUs (one GPU per rank)."""
        if self.mode is None or dist.is_initialized():
            return
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend, timeout=TIMEOUT)

    def close(self) -> None:
        if self.mode is not None and dist.is_initialized():
            dist.destroy_process_group()

    @contextlib.contextmanager
    def running(self) -> Iterator[Group]:
        """The process group for the duration, torn down however the block ends. A rank that
        loses another (it crashed, or torchrun stopped the job) ends with one line."""
        if self.mode is None:
            yield self
            return
        self.start()
        previous = signal.signal(signal.SIGTERM, self._stopped)
        try:
            yield self
        except (dist.DistError, RuntimeError) as error:
            if not isinstance(error, dist.DistError) and " by peer" not in str(error):
                raise  # a fault of this rank's own: its traceback
            raise RankStopped(
                f"rank {self.rank} lost another process of the run: {error}"
            ) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.close()

    def _stopped(self, signum, frame):
        raise RankStopped(
            f"rank {self.rank} stopped by SIGTERM (another rank ended, or the job was stopped: "
            "Ctrl-C, SIGINT, stops a job at a saved step)"
        )

    @contextlib.contextmanager
    def writer_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (downloads, caches), then the others, so that no two
        ranks write one file. Rank 0's one-line error (data not found) ends every rank, which
        rank 0 alone reports."""
        if self.world > 1 and not self.is_writer and (refusal := self.from_writer(None)):
            raise UserError(refusal)
        try:
            yield
        except UserError as error:
            if self.world > 1 and self.is_writer:
                self.from_writer(str(error))
            raise
        if self.world > 1 and self.is_writer:
            self.from_writer(None)

    # ----------------------------------------------------------------- the model
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train through: DDP around the model, or the model with each block and
        then the whole sharded by FSDP2 (in place). Build the optimizer after wrapping."""
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device = next(model.parameters()).device
            ids = [device.index] if device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        if self.mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            # FSDP puts new parameters (DTensors) in place of the model's: the marks a layer
            # set on its own (no weight decay, a learning-rate scale) go with them
            marks = {name: vars(param).copy() for name, param in model.named_parameters()}
            for block in getattr(model, "compile_regions", list)():  # the blocks
                fully_shard(block)
            fully_shard(model)
            for name, param in model.named_parameters():
                vars(param).update(marks[name])
            # FSDP warns of every view the model returns (BERT's logits of the masked rows),
            # lest one write into it; the model's outputs go to the Trainer, which never does
            # (its blocks', which a model's own code might, are still watched)
            shown = re.escape(type(model).__name__)
            warnings.filterwarnings("ignore", rf"FSDP2-wrapped module \({shown}\) returned a view")
        return model

    @contextlib.contextmanager
    def syncing(self, module: nn.Module, sync: bool) -> Iterator[None]:
        """A backward pass that averages the gradients over the ranks only when `sync` (the
        last micro-batch of an optimizer step)."""
        if self.mode == "ddp" and not sync:
            with module.no_sync():
                yield
            return
        if self.mode == "fsdp":
            module.set_requires_gradient_sync(sync)
        yield

    # ----------------------------------------------------------------- data and decisions
    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise UserError(
                f"TrainConfig.batch_size {batch_size} does not split among {self.world} "
                f"processes: the batch size is the global one; choose a multiple of {self.world}"
            )

    def shard(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """This rank's rows of a global batch."""
        if self.world == 1:
            return batch
        return tuple(t.tensor_split(self.world)[self.rank] for t in batch)

    def agree(self, figures: list[torch.Tensor], *flags: bool) -> tuple[float, ...]:
        """The mean over the ranks of each figure (a scalar: the loss, a gradient norm, whose
        FSDP shard counts its own part: not the norm, but as finite), and for each flag whether
        any rank raised it: one collective."""
        values = torch.stack([_local(figure).detach().float() for figure in figures])
        if self.world == 1:
            return (*values.tolist(), *flags)
        values = torch.cat([values, torch.tensor([*map(float, flags)], device=values.device)])
        dist.all_reduce(values)
        values = values.tolist()
        means, raised = values[: len(figures)], values[len(figures) :]
        return (*(mean / self.world for mean in means), *(value > 0 for value in raised))

    def from_writer(self, value):
        """Rank 0's `value` on every rank (a choice the ranks must share, such as one that
        measures the machine)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def mean(self, scores: dict[str, float]) -> dict[str, float]:
        """Scores averaged over the ranks, so that every rank acts on the same figures."""
        if self.world == 1 or not scores:
            return scores
        values = torch.tensor(list(scores.values()), dtype=torch.float64)
        dist.all_reduce(values)
        return dict(zip(scores, (values / self.world).tolist(), strict=True))


ALONE = Group()


def is_writer() -> bool:
    """Whether this process writes files: alone, or rank 0 of a process group."""
    return not dist.is_initialized() or dist.get_rank() == 0


def _is_shard(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a DTensor (an FSDP shard). No tensor is one before FSDP has imported
    torch.distributed.tensor, which is not imported here for asking: it takes 0.8 s."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor entire: an FSDP shard (a DTensor) gathered from every rank (a collective)."""
    return tensor.full_tensor() if _is_shard(tensor) else tensor


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of an FSDP shard (a DTensor), or the tensor."""
    return tensor.to_local() if _is_shard(tensor) else tensor


def like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A whole tensor as `reference` holds it: this rank's shard when it is an FSDP DTensor of
    the same shape (no communication: every rank has read the whole tensor)."""
    if _is_shard(reference) and value.shape == reference.shape:
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(
            value.to(reference.device, reference.dtype),
            reference.device_mesh,
            reference.placements,
            src_data_rank=None,
        )
    return value


def launch(processes: int, argv: list[str]) -> int:
    """`attnlab ARGV` as `processes` ranks on this machine, started by torchrun's own launcher
    (as `torchrun --standalone --nproc-per-node N -m attnlab ARGV` would), whose logs are kept
    quiet: the ranks speak for themselves (rank 0 one line for a bad setting). Returns the job's
    exit code: 0, or that of the rank that failed first (2 for a bad setting)."""
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port
        max_restarts=0,
        monitor_interval=0.5,
        signals_to_handle="SIGINT,SIGQUIT",  # SIGTERM, SIGHUP: kill_as_ctrl_c, below
    )

    def kill_as_ctrl_c() -> None:  # the ranks save, as on Ctrl-C, and then stop
        raise SignalException("a kill, passed on as SIGINT", sigval=signal.SIGINT)

    # A kill (`kill`, `timeout`, a job scheduler's) or a hang-up reaches this launcher alone,
    # the ranks having sessions of their own; torchrun's would pass it on as it came (SIGTERM
    # to a rank means the job is ending without it: another rank failed), so unsaved.
    try:
        with _launcher_settings(processes), on_signals(kill_as_ctrl_c, KILLS):
            elastic_launch(config, sys.executable)("-m", "attnlab", *argv)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        if failure.exitcode > 0:  # the rank said why (or its traceback did)
            return failure.exitcode
        signal_name = failure.signal_name()
        raise RankStopped(f"rank {rank} was stopped by {signal_name}; the others with it") from None
    except SignalException:  # passed on to the ranks: after Ctrl-C (SIGINT) each saved
        raise KeyboardInterrupt from None
    return 0


@contextlib.contextmanager
def _launcher_settings(processes: int) -> Iterator[None]:
    """For the launch only (its caller may be a notebook, through attnlab.cli.run): the logs of
    torchrun's launcher quiet, the ranks' threads sharing the cores (OMP_NUM_THREADS, unless
    set); after it, the handlers of the signals the launcher handles (SIGINT, SIGHUP, SIGQUIT)
    and the environment it changes as they were."""
    import logging

    names = [*logging.root.manager.loggerDict, "torch.distributed.elastic"]
    loggers = [logging.getLogger(n) for n in names if n.startswith("torch.distributed.elastic")]
    levels = [log.level for log in loggers]
    environment = dict(os.environ)
    try:
        with handlers_kept([signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]):
            for log in loggers:  # each sets its own level
                log.setLevel(logging.CRITICAL)
            os.environ.setdefault(
                "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes))
            )
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
        for name in os.environ.keys() - environment.keys():
            del os.environ[name]
        os.environ.update(environment)
