"""Training throughput of the CPU "baby GPT" (configs/gpt_shakespeare_char.toml).

Prints a markdown table: ms/iter, tokens/s, MFU (against this machine's measured matmul peak,
the faster of the variant's precision and fp32, as training logs it) and the speed-up over a
baseline, for these variants of the baby GPT's shape:

- baseline: nanoGPT's recipe for it: learned positions, exact GELU, no biases, fp32, eager,
  torch's kernels only (attnlab's CPU kernels disabled), and torch's default AdamW on a CPU (a
  loop over the parameters: nanoGPT fuses AdamW on CUDA only);
- shipped: the config exactly as `attnlab train gpt --config configs/gpt_shakespeare_char.toml`
  runs it (RoPE, exact GELU, no biases, `auto` precision, compiled);
- ablations between the two: eager/compiled, fp32/bf16, tanh GELU.

Every variant trains the same synthetic tokens (throughput does not depend on the text) through
the real Trainer. The variants run interleaved in one process, a few steps each in turn, so a
machine whose speed drifts (a shared or throttled CPU) slows them all alike, and the speed-ups
stay comparable even when the absolute figures move.

    .venv/bin/python benchmarks/train_throughput.py [--rounds 12] [--variants baseline,shipped]

`--shape gpt2` times GPT-2 small instead (124M parameters, context 1024, GPT-2's vocabulary),
with the shipped training settings (compiled, `auto` precision: bf16 on a GPU), for a GPU:

    .venv/bin/python benchmarks/train_throughput.py --device cuda --shape gpt2 --variants shipped

`--distributed ddp|fsdp` runs each variant as one of torchrun's processes, the batch (then the
global one) split among them; rank 0 prints the table, with MFU per device:

    torchrun --standalone --nproc-per-node 8 benchmarks/train_throughput.py --device cuda \
        --shape gpt2 --batch-size 128 --variants shipped --distributed fsdp
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from attnlab.cli.options import build_config, read_toml
from attnlab.data.text import RandomWindows
from attnlab.devices import (
    mfu_peak_flops,
    pick_device,
    pick_dtype,
)
from attnlab.models.gpt import GPT, PRESETS, GPTConfig
from attnlab.training.distributed import ALONE, MODES, Group
from attnlab.training.trainer import TrainConfig, Trainer

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "gpt_shakespeare_char.toml"
VOCAB = 65  # tiny Shakespeare's characters
SHAPES = {  # name -> (model config, vocabulary, batch size)
    "baby": (None, VOCAB, None),  # the shipped config's
    "gpt2": (PRESETS["gpt2"], 50257, 16),  # GPT-2 small at context 1024
}

# name -> (what it is, model fields, training fields), each over the shipped config
VARIANTS = {
    "baseline": (
        "nanoGPT's recipe: learned positions, fp32, eager, AdamW's loop",
        dict(positional="learned"),
        dict(precision="fp32", compile=False, cpu_kernels=False),
    ),
    "eager-fp32": ("shipped model, fp32, eager", {}, dict(precision="fp32", compile=False)),
    "eager-bf16": ("shipped model, bf16, eager", {}, dict(precision="bf16", compile=False)),
    "compiled-fp32": ("shipped model, fp32, compiled", {}, dict(precision="fp32")),
    "tanh-gelu": ("shipped, with GPT-2's tanh GELU", dict(activation="gelu_tanh"), {}),
    "by-block": ("shipped, compiled block by block", {}, dict(compile_by_block=True)),
    "shipped": ("the shipped config", {}, {}),
}


def shipped(shape: str = "baby", batch_size: int | None = None) -> tuple[GPTConfig, TrainConfig]:
    """The model and training settings timed: the shipped config's, or its training settings
    for another model shape."""
    toml = read_toml(str(CONFIG))
    model = build_config(GPTConfig, toml["model"], dict(vocab_size=VOCAB), source=str(CONFIG))
    training = build_config(TrainConfig, toml["training"], source=str(CONFIG))
    config, vocab, batch = SHAPES[shape]
    if config is not None:
        model = dataclasses.replace(config, vocab_size=vocab)
    batch_size = batch_size or batch or training.batch_size
    return model, dataclasses.replace(training, batch_size=batch_size)


def make_trainer(
    variant: str, out_dir: str, device: str, shape: str, batch_size: int | None, group: Group
) -> Trainer:
    _, model_fields, train_fields = VARIANTS[variant]
    model_config, train_config = shipped(shape, batch_size)
    model_config = dataclasses.replace(model_config, **model_fields)
    train_config = dataclasses.replace(
        train_config, eval_interval=10**9, device=device, **train_fields
    )
    torch.manual_seed(0)
    vocab = model_config.vocab_size
    tokens = np.random.default_rng(0).integers(0, vocab, 2_000_000, dtype=np.uint16)
    data = RandomWindows(tokens, train_config.batch_size, model_config.context_length, seed=0)
    trainer = Trainer(GPT(model_config), train_config, data, {}, out_dir=out_dir, group=group)
    if variant == "baseline":  # torch's default AdamW where the parameters are on a CPU
        groups = [
            {"params": group["params"], "weight_decay": group["weight_decay"]}
            for group in trainer.optimizer.param_groups
        ]
        betas = (train_config.beta1, train_config.beta2)
        trainer.optimizer = torch.optim.AdamW(groups, train_config.learning_rate, betas=betas)
    return trainer


def run_steps(name: str, trainer: Trainer, count: int) -> list[dict]:
    """`count` training steps (the baseline's TrainConfig keeps to torch's kernels, as nanoGPT
    runs)."""
    return [trainer.train_step() for _ in range(count)]


def default_variants(device: str) -> list[str]:
    """Every variant, less those forcing bf16 where `auto` precision would not pick it: there
    bf16 is slower than fp32 (emulated, about 100x slower, on a CPU without AVX512-BF16 or AMX;
    0.55x as fast a matrix product on Emerald Rapids cores without AMX)."""
    if pick_dtype(pick_device(device), "auto") == torch.bfloat16:
        return list(VARIANTS)
    skipped = [name for name, (_, _, train) in VARIANTS.items() if train.get("precision") == "bf16"]
    print(f"skipped {', '.join(skipped)}: bf16 is not faster than fp32 on this {device}")
    return [name for name in VARIANTS if name not in skipped]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=12, help="turns each variant takes")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per turn")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=SHAPES, default="baby", help="model shape timed")
    parser.add_argument("--batch-size", type=int, help="sequences per step (default: the shape's)")
    parser.add_argument("--distributed", choices=MODES, help="as one of torchrun's processes")
    parser.add_argument(
        "--variants",
        help="comma-separated names (default: all; those forcing bf16 only where it is native)",
    )
    args = parser.parse_args()
    names = args.variants.split(",") if args.variants else default_variants(args.device)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")

    load = os.getloadavg()  # before the runs, which load the machine themselves
    group = Group.for_run(args.distributed) if args.distributed else ALONE
    group.start()
    model_config, train_config = shipped(args.shape, args.batch_size)
    with tempfile.TemporaryDirectory() as out:
        trainers = {
            name: make_trainer(name, f"{out}/{i}", args.device, args.shape, args.batch_size, group)
            for i, name in enumerate(names)
        }
        started = time.perf_counter()
        for name, trainer in trainers.items():
            run_steps(name, trainer, args.warmup)
        warmup_s = time.perf_counter() - started
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                for record in run_steps(name, trainer, args.steps):
                    tokens = train_config.batch_size * model_config.context_length
                    seconds[name].append(tokens / record["tokens_per_s"])

    group.close()
    if not group.is_writer:
        return
    tokens = train_config.batch_size * model_config.context_length
    processes = f", {group.world} processes ({args.distributed})" if group.world > 1 else ""
    print(
        f"{args.shape} GPT {model_config.n_layers}L/{model_config.n_heads}H/"
        f"{model_config.d_model}D, "
        f"context {model_config.context_length}, batch {train_config.batch_size}, "
        f"{args.device}{processes}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; "
        f"{args.rounds} rounds x {args.steps} steps per variant after {args.warmup} warm-up "
        f"steps ({warmup_s:.0f} s, compilation included); load average before: "
        + ", ".join(f"{x:.1f}" for x in load)
        + "\n"
    )
    print("| variant | | precision | ms/iter (median) | tokens/s | MFU | speed-up |")
    print("|---|---|---|---:|---:|---:|---:|")
    base = statistics.median(seconds[names[0]])
    for name, trainer in trainers.items():
        median = statistics.median(seconds[name])
        peak = mfu_peak_flops(trainer.device, trainer.dtype)
        mfu = trainer.model.flops_per_token() * tokens / median / (peak * group.world)
        precision = str(trainer.dtype).removeprefix("torch.")
        if trainer.compiled is not None:  # compiling may have failed: then the steps ran eagerly
            precision += ", compiled" if trainer.compiled.active else ", eager (compiling failed)"
        print(
            f"| {name} | {VARIANTS[name][0]} | {precision} | {median * 1e3:.1f} | "
            f"{tokens / median:,.0f} | {mfu:.1%} | {base / median:.2f}x |"
        )


if __name__ == "__main__":
    main()
