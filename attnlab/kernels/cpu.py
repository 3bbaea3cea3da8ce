"""attnlab's CPU kernels for training small models, built on first use.

- Attention over short sequences (cpu.cpp). torch's CPU flash-attention kernel pays a fixed
  cost per block, which dominates at the baby GPT's context of 64; this one computes each
  (batch, head) whole in cache and keeps the attention weights for the backward pass. For
  12 x 4 heads of 64 x 32 on two cores of a Xeon with AMX: forward 194 µs against torch's
  224 µs, backward 210 µs against 500 µs.
- Exact GELU with its slope (cpu.cpp), computed together in the forward pass, so that the
  backward pass is one multiplication. Compiled, torch computes GELU in one kernel and its
  derivative (erf and one more exponential) in another: 184 + 292 µs for the baby GPT's
  (768, 512) activations in a profile of its compiled step, against 128-158 µs here (timed
  alone), and a step 1.05-1.07x as fast.
- Dropout (dropout.cpp) whose mask is a hash of each element's index and one seed per call:
  1-3 ms for 4M elements against 23-25 ms for torch's (which draws from a Mersenne Twister),
  and no mask kept: the backward pass recomputes it from the seed.
- Mamba's selective scan (scan.cpp): the recurrence walked along T with each channel's states
  in vector registers, keeping one state in 32 for the backward pass, which recomputes the rest.

`python benchmarks/kernel_timings.py` times the first three against torch's.

`load()` compiles them once with the C++ compiler torch.compile also uses on a CPU (the library
lands in the cache, keyed by the sources, the flags and the torch version, and is loaded from
there only while it is ours: see _trusted) and registers the ops ``attnlab::attention``,
``attnlab::gelu``, ``attnlab::dropout`` and ``attnlab::selective_scan`` (with their backward
ops), which autograd and torch.compile then treat like any other op. Layers take them only
inside ``enabled()`` (the Trainer's steps, when ``TrainConfig.cpu_kernels`` is on, the default)
and only where gradients are wanted: for inference alone, torch's attention and GELU are as
fast and keep less, dropout is off, and Mamba keeps its parallel scan, which carries a decoding
state.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import math
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

from attnlab.compiling import warn_compiler_failure
from attnlab.files import (
    atomic_write_bytes,
    cache_dir,
    make_private,
    private_file,
    private_folder,
    remove_stale,
)

SOURCES = [
    os.path.join(os.path.dirname(__file__), name) for name in ("cpu.cpp", "scan.cpp", "dropout.cpp")
]
# The kernel keeps the (T, T) weights of every head: beyond this, torch's flash kernel, which
# keeps only a row statistic, is the better trade.
MAX_LENGTH = 128

# torch's CPU capability -> the flags its own vectorized kernels are built with
_VECTOR_FLAGS = {
    "AVX512": [
        "-DCPU_CAPABILITY=AVX512",
        "-DCPU_CAPABILITY_AVX512",
        *("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"),
    ],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}

_lock = threading.Lock()
_state = {"loaded": False, "failed": False, "enabled": False, "build": None}


KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # what the kernels compute in


def training_on_cpu(x: torch.Tensor) -> bool:
    """Whether the kernels are enabled (and loaded) and x is a float32 or bfloat16 CPU tensor
    that gradients will flow through (float64 keeps torch's kernels, and its precision)."""
    usable = _state["loaded"] and _state["enabled"] and x.dtype in KERNEL_DTYPES
    return usable and x.device.type == "cpu" and torch.is_grad_enabled() and x.requires_grad


@contextlib.contextmanager
def enabled(on: bool = True):
    """Inside, layers training on a CPU take attnlab's kernels (built and loaded on first use);
    enabled(False) keeps them to torch's kernels."""
    if on:
        load()
    previous, _state["enabled"] = _state["enabled"], on
    try:
        yield
    finally:
        _state["enabled"] = previous


def attention_applies(q: torch.Tensor, k: torch.Tensor, mask, dropout_p: float) -> bool:
    """Whether the attention kernel computes this: training on a CPU, self attention over at
    most MAX_LENGTH positions, without a mask or dropout."""
    return (
        training_on_cpu(q)
        and mask is None
        and not dropout_p
        and q.size(-2) == k.size(-2) <= MAX_LENGTH
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(Q Kᵀ / √Dh) V for (B, H, T, Dh) inputs, computed in fp32, returned in q's dtype."""
    with torch.autocast("cpu", enabled=False):
        out, _ = torch.ops.attnlab.attention(
            q.float(), k.float(), v.float(), causal, 1 / math.sqrt(q.size(-1))
        )
    return out.to(q.dtype)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, x Φ(x), of a float32 or bfloat16 tensor; its slope is kept for backward."""
    return torch.ops.attnlab.gelu(x)[0]


def dropout_applies(x: torch.Tensor, p: float) -> bool:
    """Whether the dropout kernel computes this: training on a CPU, 0 < p < 1, a float32 or
    bfloat16 tensor of fewer than 2^32 elements."""
    return training_on_cpu(x) and 0 < p < 1 and x.numel() < 2**32


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x with each element zeroed with probability p and the others divided by 1 - p. The mask
    comes from one seed per call, drawn from torch's generator (so torch.manual_seed repeats
    it), and is recomputed from it for the backward pass instead of being kept."""
    return torch.ops.attnlab.dropout(x, p, torch.randint(2**62, (), dtype=torch.int64))


SCAN_CHUNK = 32  # positions between the states the scan keeps for its backward pass
SCAN_MAX_STATE = 64  # states per channel it holds (scan.cpp's kMaxState)


def scan_applies(u: torch.Tensor, A: torch.Tensor) -> bool:
    """Whether the scan kernel computes this: training on a CPU, with at most SCAN_MAX_STATE
    states per channel (it keeps them in registers)."""
    return training_on_cpu(u) and A.size(1) <= SCAN_MAX_STATE


def selective_scan(u, dt, A, B, C) -> torch.Tensor:
    """y of Mamba's recurrence from h = 0 (see attnlab.layers.mamba.sequential_scan): u, dt
    (B, T, E), A (E, N), B, C (B, T, N), all float32."""
    return torch.ops.attnlab.selective_scan(u, dt, A, B, C, SCAN_CHUNK)[0]


def start_building() -> None:
    """Start building the library in a background thread (a C++ compiler process), so that a
    caller can prepare its data and model meanwhile; load() then waits for it."""
    with _lock:
        if _state["build"] is None and not (_state["loaded"] or _state["failed"]):
            with contextlib.suppress(OSError):  # sources unreadable: the build says so
                if not _library()[0].exists():  # a build: what it imports is imported here
                    from torch.utils import cpp_extension  # noqa: F401  (see _compile)
            _state["build"] = concurrent.futures.ThreadPoolExecutor(1).submit(_build)


def load() -> bool:
    """Build (once per machine) and register the kernels; False, with one warning, where building
    fails (no C++ compiler, say): layers then stay with torch's kernels."""
    start_building()
    with _lock:
        if not (_state["loaded"] or _state["failed"]):
            try:
                torch.ops.load_library(_state["build"].result())
                _register()
                _state["loaded"] = True
            except (OSError, RuntimeError) as error:  # no compiler, or it failed
                _state["failed"] = True
                warn_compiler_failure(
                    error, "building attnlab's CPU kernels", "using torch's", stacklevel=3
                )
        return _state["loaded"]


def _library() -> tuple[Path, list[str]]:
    """The cached library's path for this machine and these sources, and its compiler flags."""
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
    vector = next((f for name, f in _VECTOR_FLAGS.items() if capability.startswith(name)), [])
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = ["-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    flags += vector
    source = b"".join(Path(path).read_bytes() for path in SOURCES)
    key = hashlib.sha256(source + " ".join([torch.__version__, *flags]).encode()).hexdigest()
    return cache_dir() / "kernels" / f"cpu_kernels-{key[:24]}.so", flags


def _build() -> str:
    """The library's path, built unless the cache holds one that is ours (see _trusted)."""
    library, flags = _library()
    private_folder(library.parent)
    digest = library.with_suffix(".sha256")  # of the library, written when we built it
    if library.exists() and _trusted(library, digest):
        return str(library)
    # One builder at a time (the ranks of a run starting at once, say), the others then taking
    # its library: two builds differ in bytes, and one's digest beside the other's library
    # would be distrusted, built again by the next process. The kernel frees a killed one's.
    with open(library.parent / ".build.lock", "a") as lock:
        _wait_for_lock(lock)
        if library.exists() and _trusted(library, digest):
            return str(library)
        for suffix in (".so", ".cpp"):  # what a process killed while building left
            remove_stale(library.parent, library.name, suffix)
        fd, temporary = tempfile.mkstemp(
            dir=library.parent, prefix=f".{library.name}.", suffix=".so"
        )
        os.close(fd)
        try:
            _compile(temporary, flags)
            make_private(temporary)  # as _trusted requires, whatever the umask
            atomic_write_bytes(digest, _sha256(temporary).encode())
            os.replace(temporary, library)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    return str(library)


BUILD_WAIT_S = 120  # a build takes 7-10 s; a builder stopped longer (Ctrl-Z) is built around


def _wait_for_lock(lock) -> None:
    """The build lock, or after BUILD_WAIT_S without it a build of this process's own (whole
    or not at all, as every build is), rather than a wait on a stopped process for ever."""
    deadline = time.monotonic() + BUILD_WAIT_S
    while True:
        try:
            return fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)


def _compile(output: str, flags: list[str]) -> None:
    """Build the sources as one translation unit: most of a build is parsing ATen's headers
    (5-6 s for each source compiled alone, about 7 s for the three together)."""
    # 0.1-0.2 s to import (setuptools): building only, and first in the thread that starts the
    # build: setuptools, as it loads, inserts and removes a finder in sys.meta_path, and an
    # import of another thread walking that list meanwhile could skip the finder of files
    # (ModuleNotFoundError: No module named 'numpy.random._generator', on a first run)
    from torch.utils import cpp_extension

    (torch_lib,) = cpp_extension.library_paths()
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    compiler = os.environ.get("CXX", "c++")
    unity = Path(output).with_suffix(".cpp")
    try:  # a full disk may stop the write itself: nothing is left behind
        unity.write_text("".join(f'#include "{source}"\n' for source in SOURCES))
        built = subprocess.run(
            [compiler, str(unity), "-o", output, *flags, *includes]
            + [f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}", "-lc10", "-ltorch_cpu"],
            capture_output=True,
            text=True,
        )
    finally:
        unity.unlink(missing_ok=True)
    if built.returncode:
        # the linker says why first ("final link failed: No space left on device"), then
        # collect2 that it failed ("ld returned 1 exit status")
        lines = built.stderr.splitlines()
        errors = [line for line in lines if "error" in line or "failed:" in line]
        raise RuntimeError(f"{compiler}: {(errors or lines or ['?'])[0]}")


def _trusted(library: Path, digest: Path) -> bool:
    """Whether the library is ours, writable by no one else, and hashes as when we built it."""
    if not private_file(library):
        return False
    try:
        return digest.read_text() == _sha256(library)
    except OSError:
        return False


def _sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _register() -> None:
    @torch.library.register_fake("attnlab::attention")
    def _(q, k, v, causal, scale):
        batch, heads, length, width = q.shape
        return q.new_empty(batch, heads, length, width), q.new_empty(batch, heads, length, length)

    @torch.library.register_fake("attnlab::attention_backward")
    def _(grad, q, k, v, probs, causal, scale):
        return tuple(q.new_empty(q.shape) for _ in range(3))

    def setup_context(ctx, inputs, output):
        q, k, v, ctx.causal, ctx.scale = inputs
        ctx.save_for_backward(q, k, v, output[1])

    def backward(ctx, grad_out, _grad_weights):
        q, k, v, weights = ctx.saved_tensors
        grads = torch.ops.attnlab.attention_backward(
            grad_out, q, k, v, weights, ctx.causal, ctx.scale
        )
        return *grads, None, None

    torch.library.register_autograd("attnlab::attention", backward, setup_context=setup_context)

    @torch.library.register_fake("attnlab::gelu")
    def _(x):
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        return y, x.new_empty(x.shape, dtype=torch.float)

    def keep_slope(ctx, inputs, output):
        ctx.save_for_backward(output[1])

    def gelu_backward(ctx, grad, _grad_slope):
        (slope,) = ctx.saved_tensors
        return (grad * slope).to(grad.dtype)

    torch.library.register_autograd("attnlab::gelu", gelu_backward, setup_context=keep_slope)

    @torch.library.register_fake("attnlab::dropout")
    def _(x, p, seed):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def keep_seed(ctx, inputs, output):
        _, ctx.p, seed = inputs
        ctx.save_for_backward(seed)

    def dropout_backward(ctx, grad):
        (seed,) = ctx.saved_tensors
        return torch.ops.attnlab.dropout(grad, ctx.p, seed), None, None

    torch.library.register_autograd("attnlab::dropout", dropout_backward, setup_context=keep_seed)

    @torch.library.register_fake("attnlab::selective_scan")
    def _(u, dt, A, B, C, chunk):
        batch, length, inner = u.shape
        return u.new_empty(u.shape), u.new_empty(batch, -(-length // chunk), A.size(1), inner)

    @torch.library.register_fake("attnlab::selective_scan_backward")
    def _(grad, u, dt, A, B, C, starts, chunk):
        return tuple(t.new_empty(t.shape) for t in (u, dt, A, B, C))

    def keep_scan(ctx, inputs, output):
        *tensors, ctx.chunk = inputs
        ctx.save_for_backward(*tensors, output[1])

    def scan_backward(ctx, grad, _grad_starts):
        grads = torch.ops.attnlab.selective_scan_backward(grad, *ctx.saved_tensors, ctx.chunk)
        return *grads, None

    torch.library.register_autograd(
        "attnlab::selective_scan", scan_backward, setup_context=keep_scan
    )


if __name__ == "__main__":  # `python -m attnlab.kernels.cpu`: build now (make setup does)
    print(_build() if load() else "attnlab's CPU kernels could not be built; torch's are used")
