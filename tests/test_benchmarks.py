"""The measurement scripts of benchmarks/ that a GPU runs: they must work the first time there."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab import compiling, devices
from attnlab.models.gpt import GPTConfig

REPO = Path(__file__).resolve().parent.parent


def benchmark(name: str):
    """benchmarks/NAME.py as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="it would run: minutes on a GPU")
def test_the_gpu_script_takes_any_python_and_stops_at_once_without_a_gpu(tmp_path):
    """PYTHON: a GPU machine's torch is often not in .venv (a CPU build there, or no .venv)."""
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "benchmarks/gpu.sh", str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (2, "benchmarks/gpu.sh: no CUDA GPU here\n")
    assert not out.exists()


def test_the_throughput_table_says_when_compiling_failed(monkeypatch, capsys):
    """A compiler that fails falls back to eager steps (compiling.Compiled): their row must not
    say "compiled"."""

    def compile_that_fails(module, **options):
        def call(*args, **kwargs):
            raise RuntimeError("no compiler here")

        return call

    throughput = benchmark("train_throughput")
    _, model, training = throughput.VARIANTS["shipped"]
    variant = ("shipped, torch's kernels", model, {**training, "cpu_kernels": False})
    monkeypatch.setitem(throughput.VARIANTS, "shipped", variant)
    monkeypatch.setattr(compiling.torch, "compile", compile_that_fails)
    argv = ["train_throughput.py", "--variants", "shipped", "--batch-size", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--rounds", "1", "--steps", "1", "--warmup", "1"])
    with pytest.warns(compiling.CompilerFailureWarning):
        throughput.main()
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| shipped |")
    assert ", eager (compiling failed) |" in row


def test_the_throughput_tables_mfu_is_against_the_faster_peak_as_trainings(monkeypatch, capsys):
    """A bf16 variant on a CPU emulating bf16 read 405.6% MFU against bf16's peak; training's
    log takes the faster of bf16's and fp32's, and so does the table."""
    cpu = str(torch.device("cpu"))
    monkeypatch.setattr(
        devices, "_PEAK_FLOPS", {(cpu, torch.float32): 1e18, (cpu, torch.bfloat16): 1.0}
    )
    throughput = benchmark("train_throughput")
    tiny = GPTConfig(vocab_size=64, context_length=16, n_layers=1, n_heads=2, d_model=16)
    monkeypatch.setitem(throughput.SHAPES, "tiny", (tiny, 64, 1))
    variant = ("bf16", {}, dict(precision="bf16", compile=False, cpu_kernels=False))
    monkeypatch.setitem(throughput.VARIANTS, "eager-bf16", variant)  # no kernels built
    argv = ["train_throughput.py", "--variants", "eager-bf16", "--shape", "tiny"]
    monkeypatch.setattr(sys, "argv", [*argv, "--rounds", "1", "--steps", "1", "--warmup", "1"])
    throughput.main()
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| eager-bf16 |") and "| bfloat16 |" in row
    assert row.split(" | ")[-2] == "0.0%"  # against fp32's 1e18 FLOP/s, not bf16's 1
