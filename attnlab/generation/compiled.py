"""Compiled decoding steps, for ``compile=True`` (see decoding.py).

A step is the model on the newest ids over a static cache, then the choice of the next ids
(``decoding_step``). Its shapes stay the same from one token to the next, so it compiles once.

On a CPU the step is compiled ahead of time: exported (torch.export) and built by AOTInductor into
a shared library that Python calls once per token with a list of tensors. torch.compile would
add guards, graph wrappers and Python frames to every call, and for a small model those cost
more than the arithmetic: the baby GPT's step takes 115 µs this way against 330 µs through
torch.compile (two Zen 3 cores). At batch 1 every linear layer is a matrix-vector product; left
to the BLAS library each is a call of its own (about 10 µs of overhead for a few µs of work),
while decomposed into a multiply and a sum Inductor fuses the whole step into one C++ kernel.

The library takes the weights and the cache as inputs, so it does not depend on what the weights
are (the model's buffers, such as RoPE's frequencies, are constants in it). It is saved in
``$ATTNLAB_CACHE/decoding`` under a hash of the exported graph with its constants, the compiler
and the processor's instruction sets (it is built for the native CPU: a cache shared by machines
keeps one for each), and any model of the same architecture, batch size and sampling settings
reuses it. Building one takes 15-30 s; loading it again takes the export, about 2 s. A new
library is loaded in a child process first, where a broken torch build may crash. As native
code, a library is loaded only from a folder of ours that no one else can write to.

On a GPU, torch.compile with CUDA graphs ("reduce-overhead") replays each step as one launch.

When compiling fails (no C++ compiler, say) the steps run eagerly after one RuntimeWarning.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import os
import subprocess
import sys
import uuid
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from attnlab.compiling import Compiled, warn_compiler_failure
from attnlab.devices import cpu_instructions
from attnlab.errors import UserError
from attnlab.files import (
    cache_dir,
    make_private,
    naming,
    private_file,
    private_folder,
    remove_stale,
)
from attnlab.generation.sampling import SamplingConfig

# Inductor's CPU limits for the rewrite: products with one row, other sides up to 2048
INDUCTOR_OPTIONS = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}


def decoding_step(model, sampling, idx, cache, seen, noise):
    """The model on the new ids idx (B, T), then the next ids from the last position's logits:
    returns (B,) ids and the (B, V) logits they were chosen from, in float32 whatever the
    model's precision (the sampler's arithmetic would round in bf16)."""
    logits, _ = model(idx, **({} if cache is None else {"cache": cache}))  # a cacheless model too
    last = logits[:, -1].float()
    return sampling.choose(last, seen, noise=noise), last


def compiled_step(model: nn.Module, sampling: SamplingConfig) -> Callable:
    """The compiled decoding step for one generation: ``step(idx, cache, seen, noise)`` as
    decoding_step computes it, for calls whose shapes never change (one token with a static
    cache, or a whole context window without one)."""
    _check_no_hooks(model)
    if next(model.parameters()).device.type == "cuda":
        return _cuda_graphs(model, sampling)
    return _Generation(_libraries(model, sampling))


def _check_no_hooks(model: nn.Module) -> None:
    """Hooks (capture's, say) would be compiled into the step as they are now: a library kept
    for the model would go on running them after they are removed, and one built before they
    were attached would never run them, recording nothing and patching nothing."""
    hooked = [
        name or "the model"
        for name, module in model.named_modules()
        if module._forward_hooks or module._forward_pre_hooks
    ]
    if hooked:
        raise UserError(
            f"compiled decoding cannot run the hooks on {', '.join(hooked[:3])} (capture's, "
            "say): generate with compile=False while they are attached"
        )


@functools.lru_cache(maxsize=1)
def _cuda_graphs(model: nn.Module, sampling: SamplingConfig) -> Compiled:
    # the latest one is kept, so that generating again replays what the first call recorded;
    # keeping only one keeps no other model alive (the same for _libraries)
    def step(idx, cache, seen, noise):
        return decoding_step(model, sampling, idx, cache, seen, noise)

    return Compiled(step, dynamic=False, mode="reduce-overhead")


class _Libraries:
    """A model's compiled steps: one library per set of input shapes."""

    def __init__(self, model: nn.Module, sampling: SamplingConfig):
        self.model, self.sampling = model, sampling
        # the shapes of the weights and cache buffers -> the shapes of the rest -> library
        self.built: dict[tuple, dict[tuple, Callable]] = {}
        self.failed = False  # then every step runs eagerly

    def build(self, built: dict, key: tuple, build: Callable[[], Callable]) -> Callable | None:
        """built[key] = build(), or None for good when building fails (with one warning)."""
        if self.failed:
            return None
        try:
            built[key] = build()
        except Exception as error:  # noqa: BLE001 - any compiler failure
            warn_compiler_failure(
                error, "compiling the decoding step", "decoding without it", stacklevel=4
            )
            self.failed = True
        return built.get(key)


@functools.lru_cache(maxsize=1)
def _libraries(model: nn.Module, sampling: SamplingConfig) -> _Libraries:
    return _Libraries(model, sampling)


class _Generation:
    """Calls the libraries during one generation. The weights are read once, when it starts
    (reading them takes longer than a step), and a cache's tensors once per cache."""

    def __init__(self, libraries: _Libraries):
        self.libraries = libraries
        # Parameters only: the buffers (RoPE's frequencies) are constants of the graph, hashed
        # into the library's name. (torch.func.functional_call also fails to put back a buffer
        # of a module shared between blocks.)
        parameters = list(libraries.model.named_parameters())
        self.names = [name for name, _ in parameters]
        self.weights = [tensor.detach() for _, tensor in parameters]
        self.cache = self.buffers = self.built = None

    def __call__(self, idx, cache, seen, noise):
        if self.built is None or cache is not self.cache:
            self.cache, self.buffers = cache, cache.buffers() if cache is not None else []
            fixed = tuple((t.shape, t.stride(), t.dtype) for t in self.weights + self.buffers)
            self.built = self.libraries.built.setdefault(fixed, {})
        sampler = [t for t in (seen, noise) if t is not None]
        # idx is contiguous (decoding._fresh); seen and noise are made fresh each generation
        key = (idx.shape, seen is None, *((t.shape, t.dtype) for t in sampler))
        library = self.built.get(key)
        model, sampling = self.libraries.model, self.libraries.sampling
        if library is None:
            library = self.libraries.build(self.built, key, lambda: _build(self, idx, seen, noise))
        if library is None:
            return decoding_step(model, sampling, idx, cache, seen, noise)
        return tuple(library([idx, *self.weights, *self.buffers, *sampler]))


class _ExportedStep(nn.Module):
    """decoding_step as a function of tensors only: the weights and the cache's buffers come in
    as inputs, so the exported graph holds no weights."""

    def __init__(self, model, sampling, names, cache):
        super().__init__()
        self.sampling, self.names, self.cache = sampling, names, cache
        object.__setattr__(self, "model", model)  # not a submodule, whose weights export keeps

    def forward(self, idx, weights, buffers, seen, noise):
        state = dict(zip(self.names, weights, strict=True))
        cache = self.cache.with_buffers(buffers) if self.cache is not None else None

        def model(ids, **cache):
            return torch.func.functional_call(self.model, state, (ids,), cache)

        return decoding_step(model, self.sampling, idx, cache, seen, noise)


def _build(generation: _Generation, idx, seen, noise) -> Callable:
    """Export the step for inputs like these, then load its library from the disk cache,
    compiling it there the first time. Returns a function of the list of input tensors, flat,
    in the order of the export: idx, weights, cache buffers, then seen and noise if given."""
    g = generation
    step = _ExportedStep(g.libraries.model, g.libraries.sampling, g.names, g.cache)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation notices
        inputs = _traceable((idx, g.weights, g.buffers, seen, noise))
        program = torch.export.export(step, inputs, strict=False)
        path = _package_path(program)
        private_folder(path.parent)  # native code: loaded from no folder others write to
        if path.exists() and private_file(path):  # else built again, and replaced
            try:
                _check_whole(path)
                package = torch._inductor.aoti_load_package(str(path))
                os.utime(path)  # recently used: kept by _prune
                return package.loader.run
            except Exception:  # noqa: BLE001 - a damaged file (cut short, changed): built again
                path.unlink(missing_ok=True)
        remove_stale(path.parent, path.name, PARTIAL)
        # a name of its own: processes of two machines sharing the cache may have one PID
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}{PARTIAL}")
        package = io.BytesIO()  # torch's writer, failing on a full disk, aborts the process
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=package,
            inductor_configs=copy.deepcopy(INDUCTOR_OPTIONS),  # Inductor fills it in
        )
        try:
            with naming(path):  # a full disk's error names the library
                partial.write_bytes(package.getbuffer())
            _check_loads(partial)
            make_private(partial)  # else, group-writable under a umask of 002, never loaded again
            os.replace(partial, path)  # whole or absent, for a concurrent run
        finally:
            partial.unlink(missing_ok=True)
        _prune(path.parent)
        package = torch._inductor.aoti_load_package(str(path))
    # The loader's own entry point takes the flat list; the package's __call__ would flatten
    # nested inputs on every call, which costs half as much as the step.
    return package.loader.run


PARTIAL = ".partial.pt2"  # a library being written (.NAME.RANDOM.partial.pt2), renamed once whole


def _prune(directory: Path, keep: int = 32) -> None:
    """Delete all but the `keep` most recently used libraries (2-3 MB each for small models;
    each new sampling setting or model shape adds one)."""
    libraries = [p for p in directory.glob("*.pt2") if not p.name.startswith(".")]  # no partial
    libraries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in libraries[keep:]:
        old.unlink(missing_ok=True)


def _check_whole(path: Path) -> None:
    """Raise unless each file in the library's archive reads back as written (its CRC-32): a
    damaged library, loaded, can crash the process, with no exception to fall back on."""
    with zipfile.ZipFile(path) as archive:
        if (damaged := archive.testzip()) is not None:
            raise zipfile.BadZipFile(f"{damaged} is damaged")


def _check_loads(path: Path) -> None:
    """Load a new library in a child process first: with some torch builds loading one kills
    the process outright (a segmentation fault with torch 2.11 for CUDA 13), and no exception
    handler could then fall back to eager decoding."""
    load = "import sys, torch; torch._inductor.aoti_load_package(sys.argv[1])"
    child = subprocess.run([sys.executable, "-c", load, str(path)], capture_output=True)
    if child.returncode != 0:
        path.unlink()
        raise RuntimeError(f"the compiled library fails to load (exit code {child.returncode})")


def _traceable(inputs):
    """Copies of the inference tensors in inputs (the prompt ran under inference_mode), which
    export cannot trace."""
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_traceable(x) for x in inputs)
    return inputs.clone() if isinstance(inputs, torch.Tensor) and inputs.is_inference() else inputs


def _package_path(program: torch.export.ExportedProgram) -> Path:
    """Where the library of this exported step is kept: a hash of everything it depends on."""
    key = hashlib.sha256()
    for part in (
        torch.__version__,
        # the instructions the library may use: Inductor builds for the CPU it runs on
        # (-march=native), so another CPU must not load it (an illegal instruction); and the
        # vector width it chose, which ATEN_CPU_CAPABILITY may lower on the same CPU
        " ".join(sorted(cpu_instructions())),
        torch.backends.cpu.get_cpu_capability(),
        repr(INDUCTOR_OPTIONS),
        str(program),  # the graph with every shape, dtype and Python constant
    ):
        key.update(part.encode())
    for name, value in sorted(program.constants.items()):  # tensors made inside the step
        key.update(name.encode())
        if isinstance(value, torch.Tensor):
            key.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return cache_dir() / "decoding" / f"{key.hexdigest()[:32]}.pt2"
