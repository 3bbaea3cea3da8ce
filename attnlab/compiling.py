"""torch.compile as attnlab uses it: compiled calls that fall back to eager code, with one
warning, where the compiler fails; a model with some of its modules compiled; the options of a
model that trains. Compiling happens at a call, so nothing here compiles until it runs."""

from __future__ import annotations

import contextvars
import logging
import warnings
from collections.abc import Callable

import torch


def _for_users(record: logging.LogRecord) -> bool:
    """False for what Inductor's C++ wrapper logs for torch's own developers, a line for each
    operator it calls through its fallback ("... is missing a c-shim implementation"): two
    dozen lines in a Hyena model's first compile, none a user's to act on."""
    return "is missing a c-shim implementation" not in record.getMessage()


_CALLING = contextvars.ContextVar("attnlab_compiled_call", default=False)  # in Compiled's call


def _not_handled(record: logging.LogRecord) -> bool:
    """False for dynamo's warning that a function hit its recompile limit, within Compiled's
    calls: that call runs eagerly, but the compiler then starts afresh and the next compiles."""
    return not (_CALLING.get() and str(record.msg).startswith("torch._dynamo hit config."))


def _limit_hits() -> int:
    """How often dynamo has met its recompile limit in this process (its counters)."""
    from torch._dynamo.utils import counters

    hits = counters["unimplemented"].items()
    return sum(n for reason, n in hits if reason.startswith("Dynamo recompile limit exceeded"))


# Inductor generates no code for complex numbers: an FFT (Hyena's convolutions) runs as torch's
# own kernel inside the compiled graph, as it would eagerly, and the rest is compiled. Its
# warning that "performance may be worse than eager" is not so: the Hyena baby GPT's training
# step was 1.9x as fast compiled (21.6 ms, eager 40.2 ms) on a CPU.
COMPLEX_WARNING = "Torchinductor does not support code generation for complex operators"


class Compiled:
    """``torch.compile(module, **options)`` that falls back to the module itself, with one
    RuntimeWarning, when compiling fails (no C++ compiler, say). Compilation happens at the first
    call of each new shape, before anything runs, so the eager retry computes the call afresh and
    raises any error that is the module's own. together: a list shared by the Compiled of one
    model (its blocks, its training and evaluation), which fail alike: the first failure turns
    them all eager, with one warning.

    Dynamo keeps what it compiles on the code that every model of a class shares (GPT.forward),
    and past torch._dynamo.config.recompile_limit versions of it (8) it ran that code eagerly,
    unsaid: a sweep's 9th differently shaped model in one process trained eagerly while it said
    it was compiled. There torch's compiler now starts afresh after the call, as in a new process
    (the other compiled code compiles again at its next call), and the next call compiles."""

    def __init__(self, module: Callable, together: list | None = None, **options):
        self.module = module
        self.compiled: Callable | None = torch.compile(module, **options)
        self.together = [] if together is None else together
        self.together.append(self)
        self.restarted = False  # whether a call of this one started the compiler afresh
        logging.getLogger("torch._inductor.ir").addFilter(_for_users)  # added once, however often
        logging.getLogger("torch._dynamo.convert_frame").addFilter(_not_handled)
        warnings.filterwarnings("ignore", COMPLEX_WARNING, module=r"torch\._inductor\.lowering")

    @property
    def active(self) -> bool:
        """False once compiling has failed and calls run eagerly."""
        return self.compiled is not None

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self._compiled_call(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure
                self._run_eagerly(error, stacklevel=3)
        return self.module(*args, **kwargs)

    def _compiled_call(self, *args, **kwargs):
        """The compiled call; past the recompile limit dynamo runs it eagerly (from a graph
        break on, where part of it has run and it cannot be made again), and the compiler then
        starts afresh, once: a model that needs more versions than the limit runs eagerly."""
        hits, calling = _limit_hits(), _CALLING.set(True)
        try:
            result = self.compiled(*args, **kwargs)
        finally:
            _CALLING.reset(calling)
        if _limit_hits() > hits:
            if self.restarted:
                reached = RuntimeError("torch._dynamo.config.recompile_limit reached again")
                self._run_eagerly(reached, stacklevel=4)
            else:
                self.restarted = True
                torch.compiler.reset()
        return result

    def _run_eagerly(self, error: Exception, stacklevel: int) -> None:
        """Every Compiled of the group eager from now on, with one warning of why."""
        warn_compiler_failure(error, "torch.compile", "running without it", stacklevel)
        for compiled in self.together:
            compiled.compiled = None


def training_compile_options(device: torch.device) -> dict:
    """Keyword arguments for ``torch.compile`` of a model that trains on `device`.

    On a CPU a small model's step is made of many short kernels, and Inductor's Python wrapper
    (a Python call for each kernel and a size and stride assert for each tensor) is a sizeable
    part of it. Its C++ wrapper, without the asserts (dynamo's guards already check the inputs'
    shapes and strides), made the baby GPT's step 1.07-1.09x as fast on two Sapphire Rapids
    cores (benchmarks/train_throughput.py) for about 6 s more of compiling once.
    """
    if device.type != "cpu":
        return {}
    return {"options": {"cpp_wrapper": True, "size_asserts": False, "alignment_asserts": False}}


class CompilerFailureWarning(RuntimeWarning):
    """A compiler failed and attnlab goes on without it (eager code, torch's kernels). Its own
    class, so that a caller (or a test) that needs the compiled path can turn it into an error:
    ``warnings.simplefilter("error", CompilerFailureWarning)``."""


def warn_compiler_failure(error: Exception, what: str, instead: str, stacklevel: int) -> None:
    """One CompilerFailureWarning: what failed, the first line of why, and what happens
    instead."""
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    warnings.warn(
        f"{what} failed ({type(error).__name__}: {first_line}); {instead}",
        CompilerFailureWarning,
        stacklevel=stacklevel + 1,
    )


class CompiledRegions:
    """A model run with some of its modules compiled (default: the model itself, whole).

    With regions = its blocks, identical blocks share one compiled graph, so compiling takes
    about one block's time. Measured for the baby GPT from empty caches (two cores of a Xeon
    with AMX): the first training step took 16 s instead of 24 s, the first evaluation 3.8 s
    instead of 8.5 s; but a training step ran at 17.2-17.3 against 15.2-15.5 ms
    (benchmarks/train_throughput.py, by-block variant): the embedding, head and loss run
    eagerly, and each block is a call of its own. The Trainer evaluates by block always, and
    trains by block where asked (TrainConfig.compile_by_block: short runs of deep models).

    Each region is swapped in only for the duration of a call, through the hook that
    ``nn.Module.compile`` uses, so the model is left as it was outside training. Compiling
    falls back to eager as Compiled does, every region at the first failure of one (and those
    of `together`).
    """

    def __init__(self, model: torch.nn.Module, regions=None, together=None, **options):
        self.model = model
        regions = list(regions) if regions is not None else [model]
        together = [] if together is None else together
        self.regions = [
            (region, Compiled(region._call_impl, together, **options)) for region in regions
        ]

    @property
    def active(self) -> bool:
        return any(compiled.active for _, compiled in self.regions)

    def __call__(self, *args, **kwargs):
        for region, compiled in self.regions:
            region._compiled_call_impl = compiled
        try:
            return self.model(*args, **kwargs)
        finally:
            for region, _ in self.regions:
                region._compiled_call_impl = None
