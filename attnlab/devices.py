"""Devices and dtypes, decided in one place.

Layers never name a device: models are moved with ``.to(device)`` and everything else follows
the parameters. This module picks the device (cuda -> mps -> cpu), the autocast dtype, and seeds
every random generator.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import random
import re
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from attnlab.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")


def is_device_name(name: str) -> bool:
    """Whether `name` is one of DEVICES or a numbered GPU (cuda:1)."""
    return name in DEVICES or re.fullmatch(r"cuda:\d+", name) is not None


def pick_device(name: str = "auto") -> torch.device:
    """The device named, or the best available one for "auto" (cuda, then mps, then cpu)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not is_device_name(name):
        raise UserError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)} or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but MPS is not available here")
    return torch.device(name)


@contextlib.contextmanager
def meta_device():
    """Inside, modules are built on the meta device: shapes without storage or values. Their
    normal draws are skipped: PyTorch computes them there in Python, whose first call imports
    torch._dynamo (1-2 s of a command that only checks shapes)."""
    with torch.device("meta"), _Undrawn():
        yield


class TooLarge(Exception):
    """The model build_on_meta builds passed its limit."""


def build_on_meta(
    build: Callable[[], torch.nn.Module], max_parameters: float = math.inf, max_numbers=math.inf
) -> torch.nn.Module:
    """build() on the meta device; TooLarge if it has more than `max_parameters` parameter
    tensors, or more than `max_numbers` numbers in its parameters and buffers (a tied weight
    counted once). Stopped as soon as it registers more than max_parameters tensors or twice
    max_numbers numbers (a head's own weight, about to be replaced by the tied one, is counted
    until it is), or by one tensor too large for PyTorch's sizes at all: a config of an absurd
    size (n_layers 10**6, d_model 10**12, d_ff 10**20) costs no memory and little time."""
    parameters = numbers = 0
    places: collections.Counter[int] = collections.Counter()  # a tensor's id -> where it is held

    def count(module, name, tensor, parameter=True):
        """A tensor's numbers count once, however many modules hold it, and no longer once
        none does (the head's own weight, replaced by the tied one)."""
        nonlocal parameters, numbers
        parameters += parameter
        replaced = (module._parameters if parameter else module._buffers).get(name)
        if replaced is not None and places[id(replaced)]:
            places[id(replaced)] -= 1
            numbers -= 0 if places[id(replaced)] else replaced.numel()
        if tensor is not None:
            places[id(tensor)] += 1
            numbers += tensor.numel() if places[id(tensor)] == 1 else 0
        if parameters > max_parameters or numbers > 2 * max_numbers:
            raise TooLarge("tensors" if parameters > max_parameters else "numbers")

    registry = torch.nn.modules.module
    hooks = [
        registry.register_module_parameter_registration_hook(count),
        registry.register_module_buffer_registration_hook(functools.partial(count, parameter=0)),
    ]
    try:
        with meta_device():
            model = build()
    except (TypeError, RuntimeError) as error:
        # a tensor of more numbers than an int64 counts (d_ff 10**20): PyTorch's sizes overflow
        if "overflow" not in str(error).lower():
            raise
        raise TooLarge from None
    finally:
        for hook in hooks:
            hook.remove()
    held = {id(t): t.numel() for t in (*model.parameters(), *model.buffers())}
    if sum(held.values()) > max_numbers:
        raise TooLarge
    return model


# a container's memory limit: cgroup v2's, v1's ("max", or a huge number in v1: none)
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_bytes(device: torch.device) -> int:
    """The memory a device has: a GPU's own, else the machine's, or a container's limit on it
    where that is less."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(physical, *map(_cgroup_limit, CGROUP_LIMITS))


def _cgroup_limit(path: str) -> float:
    """The limit in bytes a cgroup file sets, or infinity where it sets none (no such file,
    "max")."""
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return math.inf


class _Undrawn(TorchFunctionMode):
    """Leaves a tensor that nn.init.normal_ or Tensor.normal_ would fill as it is, and puts
    torch.linspace's on the meta device too: torch's device context finds its factory functions
    in a list it makes once per process, and a library that had swapped torch.linspace for its
    own while that list was made (transformers does, while from_pretrained builds a model)
    leaves linspace out of it, so that it would build on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.normal_ or func is torch.nn.init.normal_:
            return args[0] if args else kwargs["tensor"]
        if func is torch.linspace and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The compute dtype for autocast: bf16 where the hardware runs it fast, else fp32.

    "auto" picks bf16 on CUDA GPUs that support it, and on CPUs whose bf16 matrix products are
    measured to be clearly faster than their fp32 ones (see `_cpu_has_fast_bf16`).
    """
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise UserError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and _cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def _cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices at least 1.25x as fast as fp32 ones.

    Measured, because the instruction set does not tell: two Zen 4 cores and two virtual
    Emerald Rapids cores both show AVX512-BF16 and no AMX, yet in bf16 the first train the baby
    GPT 1.4x as fast (34.8 vs 49.4 ms/iter, benchmarks/train_throughput.py) and the second 0.75x
    as fast (their bf16 matrix products run at 0.55x the fp32 rate). CPUs with neither
    instruction set emulate bf16, far slower, and are not measured.
    """
    if not _cpu_has_bf16_instructions():
        return False
    cpu = torch.device("cpu")
    return measure_peak_flops(cpu, torch.bfloat16) >= 1.25 * measure_peak_flops(cpu, torch.float32)


def _cpu_has_bf16_instructions() -> bool:
    if "AMX" in torch.backends.cpu.get_cpu_capability():  # e.g. "AVX512", "AVX2"
        return True
    return bool({"amx_bf16", "avx512_bf16"} & cpu_instructions())


@functools.cache
def cpu_instructions() -> frozenset[str]:
    """The instruction sets of this machine's CPU, as Linux lists them ("avx512_bf16", ...);
    empty where it does not (macOS). What code compiled for "the native CPU" may use, so what
    a library built for it (Inductor's, `-march=native`) is keyed by."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return frozenset()
    named = (line.partition(":") for line in lines)  # x86's "flags", ARM's "Features"
    flags = (v for k, _, v in named if k.strip() in ("flags", "Features"))
    return frozenset(next(flags, "").split())


def autocast(device: torch.device, dtype: torch.dtype):
    """A context manager running matmuls in ``dtype``; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def tf32(on: bool):
    """Inside, when `on`, a GPU's fp32 matrix products and convolutions in TF32 (10 bits of
    mantissa, several times as fast); after, the caller's settings again."""
    backends = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [backend.allow_tf32 for backend in backends]
    for backend in backends:
        backend.allow_tf32 = backend.allow_tf32 or on
    try:
        yield
    finally:
        for backend, allowed in zip(backends, saved, strict=True):
            backend.allow_tf32 = allowed


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (all devices') random numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_PEAK_FLOPS: dict[tuple[str, torch.dtype], float] = {}


def measure_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.25) -> float:
    """FLOP/s of a large square matrix product on this device and dtype: the denominator of MFU.

    Measured rather than looked up, so MFU is honest on any machine (a laptop, a shared CPU, a
    GPU at whatever clock it runs). Cached per process.
    """
    key = (str(device), dtype)
    if key not in _PEAK_FLOPS:
        n = 4096 if device.type == "cuda" else 1024
        # On a GPU a product takes about 0.2 ms (bf16, an H100): waiting for each one would
        # leave the GPU idle while the next is launched, so several are queued between waits.
        per_wait = 8 if device.type == "cuda" else 1
        # a generator of its own: drawing from the global one would change the training run
        # that happens to measure first (its dropout masks, say)
        generator = torch.Generator(device=device).manual_seed(0)
        a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=generator) for _ in "ab")
        a @ b  # warm-up
        _synchronize(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(per_wait):
                a @ b
            count += per_wait
            _synchronize(device)
        _PEAK_FLOPS[key] = 2 * n**3 * count / (time.perf_counter() - start)
    return _PEAK_FLOPS[key]


def mfu_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """What MFU is against: the faster of `dtype`'s and fp32's peak, the most the hardware can
    do (a CPU that emulates bf16 multiplies bf16 matrices far slower than fp32 ones, and
    a small model's small products faster than that: against bf16's peak MFU came out above 1).
    A GPU's bf16 is never the slower: fp32's is not measured there."""
    dtypes = {dtype} if device.type == "cuda" else {dtype, torch.float32}
    return max(measure_peak_flops(device, d) for d in dtypes)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
