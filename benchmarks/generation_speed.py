"""Generation speed: generated tokens per second with and without the KV cache.

    python benchmarks/generation_speed.py [CHECKPOINT_DIR] [--new-tokens 500] [--threads N]

Without a checkpoint it builds the baby GPT (models.gpt.PRESETS["tiny"] with a 65-character
vocabulary and a 64-token context) with random weights: speed does not depend on what the
weights learned. Each row generates --new-tokens tokens per sequence from a one-token prompt
with the CLI's sampling defaults (temperature 0.8, top-k 200), and reports the best of
--repeats timed runs after one warm-up run (the best, not the median, because other work on a
shared machine only ever slows a run down; the load average is printed with the table). Prints a
markdown table.

The rows past the context slide the window (see attnlab.generation.decoding): "exact" re-runs
the last context_length tokens every step once the context is full (what nanoGPT's sampler
computes); "crop to N" re-prefills the last N tokens each time the context fills.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import torch

from attnlab.generation import generate
from attnlab.models.gpt import GPT, PRESETS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint directory (default: baby GPT)")
    parser.add_argument("--new-tokens", type=int, default=500, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the batched rows")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    return parser.parse_args()


def load_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint:
        from attnlab.training.checkpoints import load_checkpoint

        model, _ = load_checkpoint(args.checkpoint, device=args.device)
        return model
    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS["tiny"], vocab_size=65, context_length=64)
    return GPT(config).to(args.device).eval()


def tokens_per_second(model, batch: int, new_tokens: int, repeats: int, **options) -> float:
    """Generated tokens/s (all rows of the batch counted) of the fastest of `repeats` runs."""
    prompts = [[0]] * batch

    def run():
        generate(model, prompts, new_tokens, temperature=0.8, top_k=200, seed=1, **options)

    run()  # warm-up: allocator, kernels, lazy initialisation
    timings = []
    for _ in range(repeats):
        if model_device(model).type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return batch * new_tokens / min(timings)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def rows(context: int, batch: int, new_tokens: int):
    """(label, batch, new tokens, generate options) for each table row."""
    half = context // 2
    within = min(new_tokens, context - 1)
    yield "no cache (full recompute)", 1, new_tokens, dict(use_cache=False)
    yield "KV cache, exact window", 1, new_tokens, dict()
    yield f"KV cache, crop to {half}", 1, new_tokens, dict(crop_to=half)
    yield f"KV cache, within the context ({within} tokens)", 1, within, dict()
    yield "no cache (full recompute)", batch, new_tokens, dict(use_cache=False)
    yield "KV cache, exact window", batch, new_tokens, dict()
    yield f"KV cache, crop to {half}", batch, new_tokens, dict(crop_to=half)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args)
    config = model.config
    print(
        f"model: {config.n_layers} layers, d_model {config.d_model}, vocab {config.vocab_size}, "
        f"context {config.context_length}; device {args.device}, {torch.get_num_threads()} "
        f"thread(s), torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{args.new_tokens} new tokens per sequence unless stated; best of {args.repeats}; "
        f"load average before: {load}\n"
    )
    print("| setting | batch | tokens/s |")
    print("|---|---:|---:|")
    for label, batch, new_tokens, options in rows(
        config.context_length, args.batch, args.new_tokens
    ):
        speed = tokens_per_second(model, batch, new_tokens, args.repeats, **options)
        print(f"| {label} | {batch} | {speed:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
