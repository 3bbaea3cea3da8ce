"""attnlab's CPU kernels against torch in float64, and where layers take them."""

import concurrent.futures
import contextlib
import errno
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnlab.kernels import cpu as kernel
from attnlab.layers import MultiHeadAttention, causal_mask, make_feedforward
from attnlab.layers.feedforward import gelu


@pytest.fixture(scope="module", autouse=True)
def _enabled():
    assert kernel.load(), "the CPU kernels did not build"
    with kernel.enabled():
        yield


def test_loading_switches_nothing_on_outside_enabled():
    q, k, _ = strided_qkv(1, 2, 8, 4)
    with kernel.enabled(False):
        assert kernel.load()  # loaded, and still off here
        assert not kernel.attention_applies(q, k, None, 0.0)
    assert kernel.attention_applies(q, k, None, 0.0)


def strided_qkv(batch, heads, length, width):
    """Queries, keys and values as views of one (B, T, 3H, Dh) projection, as attention makes
    them: rows contiguous, the other strides not."""
    qkv = torch.randn(batch, length, 3 * heads, width).transpose(1, 2)
    return [x.requires_grad_() for x in qkv.detach().chunk(3, dim=1)]


def reference(q, k, v, grad, causal):
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out.backward(grad.double())
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "shape", [(2, 4, 64, 32), (1, 3, 17, 24), (3, 1, 5, 8), (1, 2, 1, 4), (2, 2, 100, 40)]
)
def test_output_and_gradients_match_torch_in_float64(shape, causal):
    q, k, v = strided_qkv(*shape)
    grad = torch.randn(shape)
    out = kernel.attention(q, k, v, causal)
    out.backward(grad)
    for mine, theirs in zip(
        (out, q.grad, k.grad, v.grad), reference(q, k, v, grad, causal), strict=True
    ):
        torch.testing.assert_close(mine.double(), theirs, rtol=0, atol=1e-5)


def test_the_ops_registrations_agree_with_the_kernel():
    """Fake shapes for torch.compile, autograd, and schema checks (torch.library.opcheck)."""
    q, k, v = strided_qkv(2, 3, 20, 16)
    torch.library.opcheck(torch.ops.attnlab.attention.default, (q, k, v, True, 0.25))


def test_results_do_not_depend_on_the_thread_count():
    q, k, v = strided_qkv(3, 5, 33, 16)
    grad = torch.randn(3, 5, 33, 16)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for x in (q, k, v):
                x.grad = None
            out = kernel.attention(q, k, v, True)
            out.backward(grad)
            results.append([out, q.grad, k.grad, v.grad])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_compiles_into_one_graph_and_matches_eager():
    q, k, v = strided_qkv(2, 2, 24, 8)
    step = lambda q, k, v: kernel.attention(q, k, v, True).square().sum()  # noqa: E731
    eager = torch.autograd.grad(step(q, k, v), (q, k, v))
    compiled = torch.compile(step, fullgraph=True)
    torch.testing.assert_close(torch.autograd.grad(compiled(q, k, v), (q, k, v)), eager)


@pytest.mark.parametrize("broken", ["no compiler", "a source missing from the install"])
def test_a_failing_build_warns_once_and_leaves_torchs_kernels(tmp_path, monkeypatch, broken):
    monkeypatch.setattr(
        kernel, "_state", {"loaded": False, "failed": False, "enabled": True, "build": None}
    )
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    if broken == "no compiler":
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    else:
        monkeypatch.setattr(kernel, "SOURCES", [*kernel.SOURCES, str(tmp_path / "gone.cpp")])
    with pytest.warns(RuntimeWarning, match="building attnlab's CPU kernels failed"):
        assert not kernel.load()
    assert not kernel.load()  # no second try, no second warning
    q, k, _ = strided_qkv(1, 2, 8, 4)
    assert not kernel.attention_applies(q, k, None, 0.0)


@pytest.mark.parametrize(
    "stderr, reason",
    [  # the linker's reason, not collect2's "ld returned 1 exit status"
        (
            ["/usr/bin/ld: final link failed: No space left on device", "collect2: error: ld"],
            "final link failed: No space left on device",
        ),
        (
            ["In file included from unity.cpp:1:", "attention.cpp:3:1: error: expected a type"],
            "c..: attention.cpp:3:1: error: expected a type$",
        ),
    ],
)
def test_a_failed_compile_is_named_by_its_reason(tmp_path, monkeypatch, stderr, reason):
    compiler = tmp_path / "c++"
    echoes = "".join(f"echo '{line}' >&2\n" for line in stderr)
    compiler.write_text(f"#!/bin/sh\n{echoes}exit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    with pytest.raises(RuntimeError, match=reason):
        kernel._compile(str(tmp_path / "kernels.so"), [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c++"]  # no unity source left


def test_a_full_disk_writing_the_unity_source_leaves_no_part_of_it(tmp_path, monkeypatch):
    write_text = Path.write_text

    def full(path, text):
        write_text(path, text[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)):
        kernel._compile(str(tmp_path / "kernels.so"), [])
    assert not any(tmp_path.iterdir())


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    """A cache of our own in tmp_path and a 'compiler' that writes b"built" (nothing is loaded):
    returns the list of builds it made."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    builds = []

    def compile(output, flags):
        builds.append(output)
        Path(output).write_bytes(b"built")

    monkeypatch.setattr(kernel, "_compile", compile)
    return builds


def test_a_library_in_the_cache_is_loaded_only_while_it_is_ours(fake_compiler, monkeypatch):
    library = Path(kernel._build())
    assert library.read_bytes() == b"built" and len(fake_compiler) == 1
    assert kernel._build() == str(library) and len(fake_compiler) == 1  # ours: reused
    for tamper in (
        lambda: library.write_bytes(b"evil"),  # replaced by someone else's code
        lambda: library.with_suffix(".sha256").unlink(),  # from no build of ours
        lambda: library.chmod(0o666),  # writable by anyone
    ):
        tamper()
        assert kernel._build() == str(library) and library.read_bytes() == b"built"
    assert len(fake_compiler) == 4  # each tampered library was built again
    library.parent.chmod(0o777)  # a folder of ours others could write to is closed to them
    kernel._build()
    assert library.parent.stat().st_mode & 0o777 == 0o700 and len(fake_compiler) == 4


def test_a_library_a_compiler_left_group_writable_is_reused(fake_compiler, monkeypatch):
    """A linker gives its output 0o777 less the umask: 0o775 under a umask of 002 (Ubuntu's for
    a user's own group), a library _trusted would refuse, built again at every start."""

    def linker(output, flags):
        fake_compiler.append(output)
        Path(output).write_bytes(b"built")
        Path(output).chmod(0o775)

    monkeypatch.setattr(kernel, "_compile", linker)
    library = Path(kernel._build())
    assert kernel._build() == str(library) and len(fake_compiler) == 1
    assert library.stat().st_mode & 0o777 == 0o755


def test_processes_starting_at_once_build_once_and_all_take_that_build(fake_compiler, monkeypatch):
    """Each build differs in bytes: two at once could leave one's digest beside the other's
    library, which the next process would distrust and build again."""

    def slow_compile(output, flags):  # a build of its own bytes, taking a while
        fake_compiler.append(output)
        time.sleep(0.3)
        Path(output).write_bytes(f"built {len(fake_compiler)}".encode())

    monkeypatch.setattr(kernel, "_compile", slow_compile)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # a lock file opened by each
        (library,) = set(pool.map(lambda _: kernel._build(), range(3)))
    library = Path(library)
    assert len(fake_compiler) == 1 and kernel._trusted(library, library.with_suffix(".sha256"))


def test_a_builder_that_holds_the_lock_too_long_is_built_around(fake_compiler, monkeypatch):
    """A process stopped mid-build (Ctrl-Z) keeps the lock: the others build their own after a
    while rather than wait for ever."""
    monkeypatch.setattr(kernel, "BUILD_WAIT_S", 0.3)
    folder = Path(kernel._build()).parent  # the cache's folder, then emptied of the library
    for built in folder.glob("*.s*"):
        built.unlink()
    pool = concurrent.futures.ThreadPoolExecutor(1)  # shut down after the lock is freed
    with pool, open(folder / ".build.lock", "a") as stopped:  # freed first, come what may
        fcntl.flock(stopped, fcntl.LOCK_EX)
        library = pool.submit(kernel._build).result(timeout=30)
    assert Path(library).read_bytes() == b"built" and len(fake_compiler) == 2


def test_a_kernels_folder_of_another_user_is_refused_with_one_warning(fake_compiler, monkeypatch):
    monkeypatch.setattr(
        kernel, "_state", {"loaded": False, "failed": False, "enabled": True, "build": None}
    )
    kernel._build()
    other = os.getuid() + 1
    monkeypatch.setattr(os, "getuid", lambda: other)  # we are someone else now
    with pytest.warns(RuntimeWarning, match="belongs to another user"):
        assert not kernel.load()
    assert len(fake_compiler) == 1


def test_taken_only_for_unmasked_training_attention_over_short_sequences():
    q, k, _ = strided_qkv(1, 2, 8, 4)
    assert kernel.attention_applies(q, k, None, 0.0)
    assert not kernel.attention_applies(q, k, causal_mask(8, 8), 0.0)
    assert not kernel.attention_applies(q, k, None, 0.1)
    assert not kernel.attention_applies(q.detach(), k, None, 0.0)
    with torch.no_grad():
        assert not kernel.attention_applies(q, k, None, 0.0)
    long_q, long_k, _ = strided_qkv(1, 1, kernel.MAX_LENGTH + 1, 4)
    assert not kernel.attention_applies(long_q, long_k, None, 0.0)
    for dtype in (torch.float64, torch.float16):  # torch's kernels, in their precision
        wide = q.detach().to(dtype).requires_grad_()
        assert not kernel.attention_applies(wide, wide, None, 0.0)
        assert torch.equal(gelu(wide), F.gelu(wide))  # no kernel: no error


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_layer_trains_alike_with_torchs_kernels(dtype, monkeypatch):
    calls = []
    attention = kernel.attention
    monkeypatch.setattr(kernel, "attention", lambda *a: calls.append(1) or attention(*a))
    x = torch.randn(2, 16, 32)
    grads = {}
    for kernels in ("attnlab", "torch"):
        torch.manual_seed(1)
        layer = MultiHeadAttention(32, 4, causal=True)
        with (
            kernel.enabled(False) if kernels == "torch" else contextlib.nullcontext(),
            torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32),
        ):
            out = layer(x)
        out.float().square().mean().backward()
        grads[kernels] = [out.float()] + [p.grad for p in layer.parameters()]
    assert len(calls) == 1  # taken, except where disabled
    # Measured: at most 1.2e-7 in either dtype (seeds 0-5). In bf16 both paths compute attention
    # in fp32 from the same bf16 projections and round its output alike.
    for mine, theirs in zip(grads["attnlab"], grads["torch"], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(768, 512), (3, 5, 7), (1,), (33,)])
def test_gelu_and_its_gradient_match_torch_in_float64(shape):
    x = (torch.randn(shape) * 3).requires_grad_()
    grad = torch.randn(shape)
    y = kernel.gelu(x)
    y.backward(grad)
    x64 = x.detach().double().requires_grad_()
    reference = F.gelu(x64)
    reference.backward(grad.double())
    torch.testing.assert_close(y.double(), reference.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)


def test_gelu_in_bfloat16_rounds_like_torch():
    x = (torch.randn(4, 100) * 3).bfloat16().t().requires_grad_()  # not contiguous
    grad = torch.randn(100, 4).bfloat16()
    y = kernel.gelu(x)
    y.backward(grad)
    x32 = x.detach().float().requires_grad_()
    reference = F.gelu(x32)
    reference.backward(grad.float())
    assert y.dtype == x.grad.dtype == torch.bfloat16
    # Measured: at most 1.2e-7 (seeds 0-4), a last-bit difference of values near 0; elsewhere
    # the kernel rounds its fp32 result to the same bf16 value as torch.
    torch.testing.assert_close(y, reference.bfloat16(), rtol=0, atol=1e-6)
    torch.testing.assert_close(x.grad, x32.grad.bfloat16(), rtol=0, atol=1e-6)


def test_the_gelu_registrations_agree_with_the_kernel():
    x = torch.randn(6, 40, requires_grad=True)
    torch.library.opcheck(torch.ops.attnlab.gelu.default, (x,))


def test_feedforward_takes_the_gelu_kernel_only_in_training(monkeypatch):
    calls = []
    gelu = kernel.gelu
    monkeypatch.setattr(kernel, "gelu", lambda x: calls.append(1) or gelu(x))
    ff = make_feedforward("gelu", 8, 32)
    x = torch.randn(2, 5, 8)
    out = ff(x)
    out.square().sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(ff(x), out)
    with kernel.enabled(False):
        torch.testing.assert_close(ff(x), out)
    assert len(calls) == 1


def test_import_bounds_the_cpu_kernel_caches_unless_the_user_set_them():
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    env["LRU_CACHE_CAPACITY"] = "7"  # the user's
    caches = "os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY']"
    code = f"import os, attnlab\nprint({caches})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.split() == ["32", "7"], result.stderr


def test_a_steps_time_leaves_out_waiting_for_the_kernels_build(tmp_path, monkeypatch):
    """The first step waits for the kernels' build, which is not training: counted, it made a
    machine's first run report wrong tokens/s and elapsed_s, and end a --time-limit early."""
    import numpy as np

    from attnlab.data.text import TextSplits, language_model_data
    from attnlab.models.gpt import GPT, GPTConfig
    from attnlab.training.trainer import TrainConfig, Trainer

    building, real, waited = kernel.load, time.perf_counter, []

    def slow_load():  # a build of an hour on the clock steps are timed by (a wall clock's
        waited.append(3600)  # bound would fail on a busy machine)
        return building()

    monkeypatch.setattr(time, "perf_counter", lambda: real() + sum(waited))
    monkeypatch.setattr(kernel, "load", slow_load)
    config = TrainConfig(max_iters=1, batch_size=2, eval_iters=1, precision="fp32", device="cpu")
    model = GPT(GPTConfig(vocab_size=8, context_length=8, n_layers=1, n_heads=2, d_model=16))
    splits = TextSplits.from_tokens(np.arange(400, dtype=np.uint16) % 8)
    train, evaluation = language_model_data(splits, 2, 8, config.seed, 1)
    trainer = Trainer(model, config, train, evaluation, out_dir=tmp_path)
    assert trainer.kernels_on and trainer.train_step()["elapsed_s"] < 3600


FIRST_IMPORTS = """
import concurrent.futures, os, sys
from pathlib import Path
from attnlab.kernels import cpu
seen = []
def submit(self, build):  # the build's thread is not started: what it would import is noted
    seen.append("torch.utils.cpp_extension" in sys.modules)
concurrent.futures.ThreadPoolExecutor.submit = submit
if sys.argv[1] == "cached":
    library = cpu._library()[0]
    library.parent.mkdir(parents=True)
    library.touch()
cpu.start_building()
print(seen)
"""


@pytest.mark.parametrize("cache", ["empty", "cached"])
def test_a_build_imports_setuptools_before_its_thread_starts(tmp_path, cache):
    """Importing setuptools (cpp_extension's) inserts and removes a finder in sys.meta_path:
    in the build's thread, it made an import of the main thread skip the finder of files now
    and then (a first run's ModuleNotFoundError). Where the library is cached, none is paid."""
    env = {**os.environ, "ATTNLAB_CACHE": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", FIRST_IMPORTS, cache], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("[True]" if cache == "empty" else "[False]")
