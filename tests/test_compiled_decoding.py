"""Compiled decoding (attnlab/generation/compiled.py): AOTInductor libraries on a CPU, built
once, kept on disk, and equal to eager decoding."""

import errno
import os
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import MUST_COMPILE, step_logits, tiny_gpt

from attnlab.generation import compiled as compiled_steps
from attnlab.generation import generate


@MUST_COMPILE
@pytest.mark.parametrize("positional", ["rope", "learned"])
def test_compiled_decoding_equals_eager(positional, monkeypatch):
    """compile=True: compiled one-token steps on static caches (rope: past the context, a
    sliding window; learned: then compiled full-window recomputes)."""
    model = tiny_gpt(positional, context_length=16)
    prompt = [1, 2, 3, 4, 5]
    compiled_ids, compiled = step_logits(model, prompt, 30, use_cache=True, compile=True)
    eager_ids, eager = step_logits(model, prompt, 30, use_cache=True)
    assert compiled_ids == eager_ids
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    # Another length in a fresh process (nothing in memory) loads the libraries from the disk
    # cache: compiling again would fail, warn and decode eagerly.
    compiled_steps._libraries.cache_clear()
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiler)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert generate(model, [prompt], 25, temperature=0, compile=True) == [eager_ids[:25]]


def no_compiler(*args, **kwargs):
    raise RuntimeError("no C++ compiler")


@MUST_COMPILE
def test_compiled_sampling_equals_eager():
    """Top-k sampling with a repetition penalty, inside the compiled step: the same draws."""
    model = tiny_gpt("rope", context_length=16)
    options = dict(temperature=0.8, top_k=5, repetition_penalty=1.3, seed=3)
    sampled = generate(model, [[1, 2, 3]], 30, compile=True, **options)
    assert sampled == generate(model, [[1, 2, 3]], 30, **options)


def test_the_disk_cache_keeps_the_most_recently_used_libraries(tmp_path):
    for age, name in enumerate("abcde"):
        (tmp_path / f"{name}.pt2").write_bytes(b"")
        os.utime(tmp_path / f"{name}.pt2", (1000 - age, 1000 - age))  # a: the newest
    (tmp_path / ".e.pt2.1.partial.pt2").write_bytes(b"")  # one being written now
    compiled_steps._prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".e.pt2.1.partial.pt2", "a.pt2", "b.pt2"]


def test_a_damaged_library_in_the_disk_cache_is_compiled_again():
    model = tiny_gpt("rope", context_length=16)
    expected = generate(model, [[1, 2, 3]], 8, temperature=0, compile=True)
    libraries = (Path(os.environ["ATTNLAB_CACHE"]) / "decoding").glob("*.pt2")
    library = max(libraries, key=lambda p: p.stat().st_mtime)  # the one just used
    library.write_bytes(library.read_bytes()[:1000])  # cut short
    compiled_steps._libraries.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "decoding without it"
        assert generate(model, [[1, 2, 3]], 8, temperature=0, compile=True) == expected
    assert library.stat().st_size > 1000


def test_each_build_writes_its_library_under_a_name_of_its_own(tmp_path, monkeypatch):
    """Two processes sharing the cache (two machines' on a shared home) may have one PID: a
    temporary name from it would let one rename the other's library half-written."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    written = []
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", zip_package)
    monkeypatch.setattr(
        compiled_steps, "_check_loads", lambda path: written.append(path.name) or no_compiler()
    )
    model = tiny_gpt("rope", context_length=16)
    for _ in range(2):  # as two processes of the same PID would
        compiled_steps._libraries.cache_clear()
        with pytest.warns(RuntimeWarning, match="compiling the decoding step failed"):
            generate(model, [[1, 2, 3]], 2, temperature=0, compile=True)
    compiled_steps._libraries.cache_clear()
    assert len(set(written)) == 2
    assert not list((tmp_path / "decoding").iterdir())  # and none is left behind


def zip_package(program, package_path, **options):
    """A stand-in for AOTInductor: a library archive written to package_path. A path there
    would be written by torch's own writer, which aborts the process on a full disk."""
    if not hasattr(package_path, "write"):
        pytest.fail("the library is written by torch's writer: a full disk would abort")
    with zipfile.ZipFile(package_path, "w") as archive:
        archive.writestr("model.so", b"machine code " * 100)


def test_a_full_disk_under_the_cache_decodes_eagerly_and_leaves_no_partial_file(
    tmp_path, monkeypatch
):
    """A full disk aborted `sample --compile` (torch's archive writer failing in a destructor),
    and left a partial library in the cache: now one warning naming the library, then eagerly."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", zip_package)
    write_bytes = Path.write_bytes

    def full_disk(path, data):
        if path.parent.name == "decoding":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    model = tiny_gpt("rope", context_length=16)
    expected = generate(model, [[1, 2, 3]], 6, temperature=0)
    compiled_steps._libraries.cache_clear()
    with pytest.warns(RuntimeWarning, match=r"No space left on device: .*decoding/\w+\.pt2'\)"):
        assert generate(model, [[1, 2, 3]], 6, temperature=0, compile=True) == expected
    compiled_steps._libraries.cache_clear()
    assert not list((tmp_path / "decoding").iterdir())


def test_a_library_is_kept_for_the_instruction_sets_it_was_built_for(monkeypatch):
    """Inductor builds for the CPU it runs on (-march=native): a cache that machines share
    gives each its own library, not one that stops another with an illegal instruction."""
    program = SimpleNamespace(constants={})
    paths = set()
    for flags in (["avx2", "fma"], ["avx2", "avx512f", "fma"]):
        monkeypatch.setattr(compiled_steps, "cpu_instructions", lambda f=flags: frozenset(f))
        paths.add(compiled_steps._package_path(program))
    # the same CPU, its vector width set otherwise (ATEN_CPU_CAPABILITY): Inductor's too
    other = "DEFAULT" if torch.backends.cpu.get_cpu_capability() != "DEFAULT" else "AVX2"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    paths.add(compiled_steps._package_path(program))
    assert len(paths) == 3


def test_a_failing_compiler_decodes_eagerly(monkeypatch):
    model = tiny_gpt("rope", context_length=16)
    expected = generate(model, [[1, 2, 3]], 20, temperature=0)
    monkeypatch.setattr(compiled_steps, "_build", no_compiler)
    compiled_steps._libraries.cache_clear()
    with pytest.warns(RuntimeWarning, match="compiling the decoding step failed .*no C"):
        assert generate(model, [[1, 2, 3]], 20, temperature=0, compile=True) == expected
    with warnings.catch_warnings():  # once: it does not try again
        warnings.simplefilter("error", RuntimeWarning)
        assert generate(model, [[1, 2, 3]], 20, temperature=0, compile=True) == expected
    compiled_steps._libraries.cache_clear()


def test_compiled_decoding_refuses_a_model_with_hooks_attached(monkeypatch):
    """A compiled step would keep capture's patch after the block ends (or, built before it,
    ignore it): an ablated head must not stay ablated, nor a capture record nothing."""
    from attnlab.errors import UserError
    from attnlab.interpretability import ablate_heads, capture

    model = tiny_gpt("rope", context_length=16)
    monkeypatch.setattr(compiled_steps, "_build", no_compiler)  # fast: it must not get there
    compiled_steps._libraries.cache_clear()
    patch = {"blocks.1.token_mixer.attention_weights": ablate_heads([0, 1])}
    refused = r"cannot run the hooks on blocks.0.token_mixer.attention_weights, .*compile=False"
    with pytest.raises(UserError, match=refused), capture(model, patches=patch):
        generate(model, [[1, 2, 3]], 5, temperature=0, compile=True)
    handle = model.blocks[0].register_forward_pre_hook(lambda module, args: None)
    with pytest.raises(UserError, match=r"cannot run the hooks on blocks.0 \("):
        generate(model, [[1, 2, 3]], 5, temperature=0, compile=True)
    handle.remove()
    compiled_steps._libraries.cache_clear()


class Bigram(torch.nn.Module):  # forward(idx) only: no decoding state, as a plugin's may be
    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"vocab_size": 11, "context_length": 8})()
        self.table = torch.nn.Embedding(11, 11)

    def forward(self, idx, targets=None):
        return self.table(idx), None


@MUST_COMPILE
def test_a_model_without_a_decoding_state_decodes_uncached_and_compiled():
    model = Bigram()
    expected = generate(model, [[1, 2]], 12, temperature=0, use_cache=False)
    assert generate(model, [[1, 2]], 12, temperature=0) == expected  # past its context, too
    assert generate(model, [[1, 2]], 12, temperature=0, compile=True) == expected


def test_a_library_is_loaded_only_from_a_folder_and_a_file_of_ours(tmp_path, monkeypatch):
    """A library is native code: one that another user could put in the cache (a shared one,
    or one left open to others) would run as us once loaded, as the kernels' (cpu.py)."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    planted = tmp_path / "decoding" / "planted.pt2"
    planted.parent.mkdir()
    planted.parent.chmod(0o777)
    planted.write_bytes(b"someone else's code")
    planted.chmod(0o666)
    monkeypatch.setattr(compiled_steps, "_package_path", lambda program: planted)
    loaded = []
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path: loaded.append(path))
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiler)
    model = tiny_gpt("rope", context_length=16)
    for uid in (os.getuid(), os.getuid() + 1):  # ours, left open to others; another user's
        monkeypatch.setattr(os, "getuid", lambda uid=uid: uid)
        compiled_steps._libraries.cache_clear()
        with pytest.warns(RuntimeWarning, match="compiling the decoding step failed"):
            generate(model, [[1, 2, 3]], 2, temperature=0, compile=True)
        assert loaded == [] and planted.parent.stat().st_mode & 0o777 == 0o700
    compiled_steps._libraries.cache_clear()


def test_a_library_built_under_a_umask_of_002_is_loaded_again_not_rebuilt(tmp_path, monkeypatch):
    """A umask of 002 (Ubuntu's for a user's own group) made each new library group-writable:
    distrusted by the next process, which spent 15-30 s building it again."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    done = []

    def compile_and_package(program, package_path, **_):
        done.append("built")
        with zipfile.ZipFile(package_path, "w") as archive:  # as any new file: 0o666 less umask
            archive.writestr("model.so", b"a library")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_and_package)
    monkeypatch.setattr(compiled_steps, "_check_loads", lambda path: None)
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path: done.append(path))
    model = tiny_gpt("rope", context_length=16)
    umask = os.umask(0o002)
    try:
        for _ in range(2):  # the second as in a new process: from the disk
            compiled_steps._libraries.cache_clear()
            with pytest.warns(RuntimeWarning, match="compiling the decoding step failed"):
                generate(model, [[1, 2, 3]], 2, temperature=0, compile=True)  # no real library
    finally:
        os.umask(umask)
        compiled_steps._libraries.cache_clear()
    library = done[1]
    assert done[:3] == ["built", library, library]  # loaded from the disk before any build
    assert not Path(library).stat().st_mode & 0o022


def test_a_library_changed_in_place_is_built_again_not_loaded(tmp_path, monkeypatch):
    """A library damaged on disk at its own size (a disk fault) crashed every later process
    that loaded it (a segmentation fault): its archive's checksums now say so first."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    done = []

    def compile_and_package(program, package_path, **_):
        done.append("built")
        with zipfile.ZipFile(package_path, "w") as archive:
            archive.writestr("model.so", b"machine code " * 100)

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_and_package)
    monkeypatch.setattr(compiled_steps, "_check_loads", lambda path: None)
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path: done.append("loaded"))
    model = tiny_gpt("rope", context_length=16)
    for damage in (False, True):  # each as in a new process: from the disk
        if damage:
            (library,) = (tmp_path / "decoding").glob("*.pt2")
            data = library.read_bytes()
            library.write_bytes(data.replace(b"machine code", b"machine_code", 1))
        compiled_steps._libraries.cache_clear()
        with pytest.warns(RuntimeWarning, match="compiling the decoding step failed"):
            generate(model, [[1, 2, 3]], 2, temperature=0, compile=True)  # no real library
    compiled_steps._libraries.cache_clear()
    assert done == ["built", "loaded", "built", "loaded"]  # not loaded while damaged
