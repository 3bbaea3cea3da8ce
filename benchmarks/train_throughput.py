"""Training throughput of the CPU "baby GPT" (configs/gpt_shakespeare_char.toml's shape).

Prints a markdown table: ms/iter, tokens/s and MFU (against this machine's measured matmul peak)
for eager and compiled models, fp32 and bf16. Synthetic tokens: throughput does not depend on
the text.

    .venv/bin/python benchmarks/train_throughput.py [--iters 100] [--variants eager,compile]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from attnlab.data.text import RandomWindows
from attnlab.devices import measure_peak_flops
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.tokenizers import ByteTokenizer
from attnlab.training.trainer import TrainConfig, Trainer

BABY = GPTConfig(vocab_size=65, context_length=64, n_layers=4, n_heads=4, d_model=128)
VARIANTS = {
    "eager-fp32": dict(compile=False, precision="fp32"),
    "compile-fp32": dict(compile=True, precision="fp32"),
    "eager-bf16": dict(compile=False, precision="bf16"),
    "compile-bf16": dict(compile=True, precision="bf16"),
}


def measure(variant: dict, iters: int, warmup: int, device: str, batch_size: int) -> dict:
    config = TrainConfig(
        max_iters=iters + warmup,
        batch_size=batch_size,
        eval_interval=10**9,
        eval_iters=1,
        device=device,
        **variant,
    )
    torch.manual_seed(0)
    model = GPT(BABY)
    tokens = np.random.default_rng(0).integers(0, 65, 200_000, dtype=np.uint16)
    data = RandomWindows(tokens, batch_size, BABY.context_length, seed=0)
    records = []
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model,
            config,
            data,
            {},
            tokenizer=ByteTokenizer(),
            out_dir=out,
            on_record=records.append,
        )
        trainer.save = lambda: None  # measure steps, not checkpoint writes
        start = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - start
    timed = [r for r in records[warmup:]]
    seconds = statistics.median(batch_size * BABY.context_length / r["tokens_per_s"] for r in timed)
    peak = measure_peak_flops(trainer.device, trainer.dtype)
    tokens_per_s = batch_size * BABY.context_length / seconds
    return {
        "ms_per_iter": seconds * 1e3,
        "tokens_per_s": tokens_per_s,
        "mfu": model.flops_per_token() * tokens_per_s / peak,
        "peak_tflops": peak / 1e12,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=100, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    args = parser.parse_args()
    print(
        f"baby GPT {BABY.n_layers}L/{BABY.n_heads}H/{BABY.d_model}D, context "
        f"{BABY.context_length}, batch {args.batch_size}, {args.device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}\n"
    )
    print("| variant | ms/iter (median) | tokens/s | MFU | peak TFLOP/s | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.variants.split(","):
        r = measure(VARIANTS[name], args.iters, args.warmup, args.device, args.batch_size)
        print(
            f"| {name} | {r['ms_per_iter']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{r['mfu']:.1%} | {r['peak_tflops']:.2f} | {r['wall_s']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
