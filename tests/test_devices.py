"""attnlab/devices.py and compiling.py: what compiling shows a user; TF32 kept to the work that
asks for it; the memory a model trains in."""

import logging
import os
import warnings

import pytest
import torch

from attnlab import devices
from attnlab.compiling import Compiled, CompilerFailureWarning
from attnlab.devices import TooLarge, build_on_meta, memory_bytes, tf32


def test_compiling_leaves_out_inductors_notes_for_its_own_developers():
    """Inductor's C++ wrapper logs a line for each operator it calls through its fallback (two
    dozen in a Hyena model's first compile); its other messages pass."""
    log = logging.getLogger("torch._inductor.ir")

    def record(message: str, *args) -> logging.LogRecord:
        return log.makeRecord(log.name, logging.WARNING, "ir.py", 1, message, args, None)

    note = record("%s is missing a c-shim implementation, using proxy executor as fallback", "op")
    Compiled(torch.nn.Identity())
    assert not log.filter(note) and log.filter(record("something a user should read"))


def test_compiling_leaves_out_dynamos_recompile_limit_warning_where_it_is_handled():
    """Compiled's calls start the compiler afresh after one past the recompile limit: dynamo's
    warning of a fall back to eager code for good would be untrue there, and only there."""
    from attnlab import compiling

    log = logging.getLogger("torch._dynamo.convert_frame")
    hit = log.makeRecord(log.name, logging.WARNING, "f.py", 1, "torch._dynamo hit config.%s (%s)",
                         ("recompile_limit", 8), None)  # fmt: skip
    Compiled(torch.nn.Identity())
    calling = compiling._CALLING.set(True)
    try:
        assert not log.filter(hit)
    finally:
        compiling._CALLING.reset(calling)
    assert log.filter(hit)


def test_compiling_leaves_out_inductors_warning_of_complex_operators():
    """An FFT (Hyena's) runs as torch's own kernel in a compiled graph, no slower than eager."""
    from torch._inductor import lowering

    Compiled(torch.nn.Identity())
    with warnings.catch_warnings(record=True) as caught:
        lowering._warn_complex_not_supported.__wrapped__()  # once a process, where compiled
        warnings.warn("something a user should read", stacklevel=1)
    assert [str(warning.message) for warning in caught] == ["something a user should read"]


def test_tf32_is_on_inside_only():
    """A bf16 Trainer on a GPU computes its fp32 matmuls in TF32 in its own steps; a notebook's
    fp32 work after training keeps full precision (it was turned on for the whole process)."""
    backends = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [backend.allow_tf32 for backend in backends]
    try:
        for backend in backends:
            backend.allow_tf32 = False
        with tf32(True):
            assert all(backend.allow_tf32 for backend in backends)
        assert not any(backend.allow_tf32 for backend in backends)
        torch.backends.cudnn.allow_tf32 = True  # the user's own: not turned off
        with tf32(False):
            assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        for backend, allowed in zip(backends, saved, strict=True):
            backend.allow_tf32 = allowed


def test_a_containers_memory_limit_is_the_memory_there(tmp_path, monkeypatch):
    """A cgroup's limit (v2 or v1) below the machine's memory is what a model trains in; "max",
    a huge number (v1's none) or no file leaves the machine's."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    monkeypatch.setattr(devices, "CGROUP_LIMITS", (str(v2), str(v1)))
    cpu = torch.device("cpu")
    assert memory_bytes(cpu) == physical  # neither file
    v2.write_text("max\n")
    v1.write_text("9223372036854771712\n")
    assert memory_bytes(cpu) == physical
    v2.write_text(f"{2**30}\n")
    assert memory_bytes(cpu) == 2**30
    v2.write_text("max\n")
    v1.write_text(f"{2**31}\n")
    assert memory_bytes(cpu) == 2**31


def test_a_tied_weight_counts_once_in_the_size_a_model_trains_in():
    """GPT-2 small's 124M parameters (its head tied to the embedding) need 16 bytes each: the
    head's own weight, replaced by the tied one, and the tie itself are not counted again (they
    were: 202M, so 124M numbers in 2.5 GiB were refused)."""
    from attnlab.models.gpt import GPT, PRESETS

    config = PRESETS["gpt2"]
    size = sum(p.numel() for p in build_on_meta(lambda: GPT(config)).parameters())
    assert size == 124_439_808
    build_on_meta(lambda: GPT(config), max_numbers=size)
    with pytest.raises(TooLarge):
        build_on_meta(lambda: GPT(config), max_numbers=size - 1)


def test_a_hyena_builds_on_meta_after_a_library_swapped_torch_linspace(monkeypatch):
    """transformers swaps torch.linspace for its own while from_pretrained builds a model; had
    torch listed its factory functions for the first time then, linspace was left off the list
    and built on the CPU inside a meta build, so a Hyena (whose filters use it) failed to build
    ("Tensor on device meta is not on the expected device cpu")."""
    from torch.utils import _device

    from attnlab.models.gpt import GPT, GPTConfig

    original = torch.linspace
    _device._device_constructors.cache_clear()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(torch, "linspace", lambda *args, **kwargs: original(*args, **kwargs))
            _device._device_constructors()  # made now, with the swapped function
        assert torch.linspace not in _device._device_constructors()
        config = GPTConfig(vocab_size=11, context_length=16, n_layers=1, d_model=32,
                           mixer="hyena", positional="none")  # fmt: skip
        model = build_on_meta(lambda: GPT(config))
        assert {t.device.type for t in (*model.parameters(), *model.buffers())} == {"meta"}
    finally:
        _device._device_constructors.cache_clear()


def test_a_call_past_the_recompile_limit_after_a_graph_break_runs_once():
    """Dynamo meets its recompile limit at each frame it compiles, a graph break's resumed code
    too, where part of the call has run (a cache appended to): the call is not made again, and
    the next one compiles."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    appended = []

    @torch._dynamo.disable  # eager code mid-call: a graph break
    def append(x):
        appended.append(x)
        return "abc"[len(appended) % 3]  # what the code after it specialises on

    def step(x):
        x = x + 1
        return x * (2 if append(x) == "a" else 3)

    compiled = Compiled(step, backend="eager")
    with torch._dynamo.config.patch(recompile_limit=1):
        for calls in (1, 2):  # the second past the limit, in the code after the graph break
            compiled(torch.ones(2))
            assert len(appended) == calls
        before = counters["frames"]["ok"]
        compiled(torch.ones(2))
    assert counters["frames"]["ok"] > before, "the call after the limit ran eagerly"


def test_a_model_that_needs_more_versions_than_the_recompile_limit_runs_eagerly_said():
    """The compiler starts afresh once for a Compiled past the limit; a model that reaches it
    again (a new shape at every call) runs eagerly from then on, with one warning, rather than
    compiling everything again every other call."""
    import torch._dynamo

    linear = torch.nn.Linear(4, 4)
    compiled = Compiled(linear, backend="eager", dynamic=False)
    with torch._dynamo.config.patch(recompile_limit=1):
        for rows in (2, 3, 4):  # 3: past the limit, afresh; 4: compiled anew
            assert torch.equal(compiled(torch.ones(rows, 4)), linear(torch.ones(rows, 4)))
        assert compiled.active
        with pytest.warns(CompilerFailureWarning, match="recompile_limit reached again"):
            compiled(torch.ones(5, 4))
    assert not compiled.active
