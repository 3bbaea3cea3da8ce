"""Generation speed: generated tokens per second with and without the KV cache.

    python benchmarks/generation_speed.py [CHECKPOINT_DIR | --config TOML] [--new-tokens 500]
        [--threads N] [--device cuda]

Without a checkpoint it builds the model of --config (default configs/gpt_shakespeare_char.toml,
the baby GPT: RoPE, 4 layers, width 128, a 64-token context) for a 65-character vocabulary with
random weights: speed does not depend on what the weights learned. Each row generates --new-tokens
tokens per sequence from a one-token prompt with the CLI's sampling defaults (temperature 0.8,
top-k 200). The rows take turns, one run each per round after a warm-up run, so a machine whose
speed drifts slows them all alike; the table gives the best and the median of --rounds runs
(other work on a shared machine only ever slows a run down). Prints a markdown table.

Past the context (see attnlab.generation.decoding): "sliding cache" is the default for models
with relative positions (RoPE, ALiBi): each token attends to the last context_length cached
positions, one decoding step per token; "exact window" (`--no-cache`, or the default for learned
positions) re-runs the last context_length tokens every step, which is what nanoGPT's sampler
computes; "crop to N" re-prefills the last N tokens each time the context fills; "compiled"
is `compile=True` (`sample --compile`): a compiled one-token step over static caches (an
AOTInductor library on a CPU, kept in $ATTNLAB_CACHE for the next run; CUDA graphs on a GPU),
timed after the warm-up run that builds or loads it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from attnlab.cli.options import build_config, read_toml
from attnlab.generation import generate
from attnlab.models.gpt import GPT, GPTConfig

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "gpt_shakespeare_char.toml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint directory (default: --config)")
    parser.add_argument(
        "--config", default=str(CONFIG), help="without a checkpoint: this preset, random weights"
    )
    parser.add_argument("--new-tokens", type=int, default=500, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the batched rows")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per row")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    return parser.parse_args()


def load_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint:
        from attnlab.training.checkpoints import load_checkpoint

        model = load_checkpoint(args.checkpoint, device=args.device).model
        return model
    toml = read_toml(args.config)
    config = build_config(GPTConfig, toml["model"], dict(vocab_size=65), source=args.config)
    torch.manual_seed(0)
    return GPT(config).to(args.device).eval()


def rows(model, batch: int, new_tokens: int):
    """(label, batch, new tokens, generate options) for each table row."""
    context = model.config.context_length
    half = context // 2
    within = min(new_tokens, context - 1)
    default = "sliding cache" if getattr(model, "sliding_cache", False) else "exact window"
    for size in (1, batch):
        yield "no cache: exact window, recomputed", size, new_tokens, dict(use_cache=False)
        yield f"KV cache, default ({default})", size, new_tokens, dict()
        yield f"KV cache, crop to {half}", size, new_tokens, dict(crop_to=half)
        yield "KV cache, compiled (compile=True)", size, new_tokens, dict(compile=True)
    yield f"KV cache, within the context ({within} tokens)", 1, within, dict()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args)
    config = model.config
    device = next(model.parameters()).device

    def run(batch: int, new_tokens: int, options: dict) -> float:
        """Seconds for one generate call."""
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        generate(model, [[0]] * batch, new_tokens, temperature=0.8, top_k=200, seed=1, **options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    table = list(rows(model, args.batch, args.new_tokens))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    warm_up = []  # compiling happens here, in the first run of a compiled row
    for _, batch, new_tokens, options in table:
        warm_up.append(run(batch, new_tokens, options))  # also allocator, lazy initialisation
    speeds: list[list[float]] = [[] for _ in table]
    for _ in range(args.rounds):
        for row, (_, batch, new_tokens, options) in enumerate(table):
            speeds[row].append(batch * new_tokens / run(batch, new_tokens, options))

    print(
        f"model: {config.n_layers} layers, d_model {config.d_model}, vocab {config.vocab_size}, "
        f"context {config.context_length}, positions {config.positional}; device {device}, "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(
        f"{args.new_tokens} new tokens per sequence unless stated; {args.rounds} rounds; "
        f"load average before: {load}\n"
    )
    print("| setting | batch | tokens/s, best | tokens/s, median |")
    print("|---|---:|---:|---:|")
    for (label, batch, _, _), measured in zip(table, speeds, strict=True):
        print(f"| {label} | {batch} | {max(measured):,.0f} | {statistics.median(measured):,.0f} |")
    compiling = [
        f"{t:.1f} s" for (_, _, _, o), t in zip(table, warm_up, strict=True) if o.get("compile")
    ]
    print(f"\nFirst run of the compiled rows (building or loading): {', '.join(compiling)}")


if __name__ == "__main__":
    main()
