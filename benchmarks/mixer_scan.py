"""Mamba's parallel scan and attnlab's fused scan kernel against the sequential loop, and
generation speed against prefix length for the recurrent mixers.

    python benchmarks/mixer_scan.py [--length 4096] [--widths 16 64 128] [--prefixes 1024 16384]
        [--new-tokens 200] [--rounds 3] [--threads N]

Scan: selective_scan (chunked, work-efficient parallel scan), sequential_scan (one scan_step per
position, the recurrence as decoding runs it) and the CPU kernel (attnlab/kernels/scan.cpp) on
the same random inputs at batch 1, state size 16 and expand 2 (inner width 2·d_model), forward
only, fp32; best of --rounds, taking turns. Then a training step's scan, forward and backward, at
batch 16, length 1024, width 128: the parallel scan under autograd against the kernel.
Generation: greedy decoding of --new-tokens tokens after a prompt of each prefix
length, timed from the first new token (the prompt's prefill excluded), for a Mamba GPT (the tiny
preset's shape: 4 layers, width 128, no positions) and the tiny lstm_lm (2 layers, width 256),
both with random weights and a 256-token vocabulary. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from attnlab.generation import stream
from attnlab.kernels import cpu as cpu_kernels
from attnlab.layers.mamba import selective_scan, sequential_scan
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=4096, help="scan length")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64, 128], help="d_model")
    parser.add_argument("--prefixes", type=int, nargs="+", default=[1024, 16384])
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens timed per prefix")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per row")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    return parser.parse_args()


def best_time(function, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def scan_inputs(batch: int, length: int, width: int) -> tuple[torch.Tensor, ...]:
    inner, n = 2 * width, 16
    u, dt = torch.randn(batch, length, inner), torch.rand(batch, length, inner) * 0.1
    A = -torch.arange(1.0, n + 1).expand(inner, n).contiguous()
    B, C = torch.randn(2, batch, length, n)
    return u, dt, A, B, C


def taking_turns(functions: dict, rounds: int) -> dict[str, float]:
    """Best time of each function over rounds in which they take turns: drift slows all alike."""
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(rounds):
        for name, function in functions.items():
            best[name] = min(best[name], best_time(function, 1))
    return best


def scan_table(args: argparse.Namespace) -> None:
    print(f"\n### Selective scan, T = {args.length}, batch 1, N = 16, fp32, forward\n")
    print(
        "| d_model | inner E | sequential loop (ms) | parallel scan (ms) | speed-up "
        "| fused kernel (ms) | speed-up |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for width in args.widths:
        inputs = scan_inputs(1, args.length, width)
        with torch.no_grad():
            reference = sequential_scan(*inputs)[0]
            for y in (selective_scan(*inputs)[0], cpu_kernels.selective_scan(*inputs)):
                torch.testing.assert_close(y, reference, rtol=1e-4, atol=1e-4)
            t = taking_turns(
                {
                    "loop": lambda i=inputs: sequential_scan(*i),
                    "parallel": lambda i=inputs: selective_scan(*i),
                    "fused": lambda i=inputs: cpu_kernels.selective_scan(*i),
                },
                args.rounds,
            )
        print(
            f"| {width} | {2 * width} | {t['loop'] * 1e3:.1f} | {t['parallel'] * 1e3:.1f} "
            f"| {t['loop'] / t['parallel']:.1f}x | {t['fused'] * 1e3:.1f} "
            f"| {t['loop'] / t['fused']:.0f}x |"
        )
    batch, length, width = 16, 1024, 128
    leaves = [x.requires_grad_() for x in scan_inputs(batch, length, width)]

    def step(scan):
        return lambda: scan(*leaves)[0].sum().backward()

    t = taking_turns(
        {
            "parallel": step(selective_scan),
            "fused": step(lambda *i: (cpu_kernels.selective_scan(*i),)),
        },
        args.rounds,
    )
    print(f"\n### Training: forward + backward, batch {batch}, T = {length}, E = {2 * width}\n")
    print("| parallel scan (ms) | fused kernel (ms) | speed-up |\n|---:|---:|---:|")
    ratio = t["parallel"] / t["fused"]
    print(f"| {t['parallel'] * 1e3:.0f} | {t['fused'] * 1e3:.0f} | {ratio:.0f}x |")


def decoding_rate(model: torch.nn.Module, prefix: int, new_tokens: int) -> float:
    """Tokens per second after the prompt: the first new token (which waits for the prefill)
    starts the clock."""
    prompt = torch.randint(model.config.vocab_size, (prefix,)).tolist()
    tokens = stream(model, prompt, new_tokens + 1, temperature=0)
    next(tokens)
    started = time.perf_counter()
    count = sum(1 for _ in tokens)
    return count / (time.perf_counter() - started)


def generation_table(args: argparse.Namespace) -> None:
    context = max(args.prefixes) + args.new_tokens + 1
    torch.manual_seed(0)
    models = {
        "mamba GPT (4 x 128)": GPT(
            GPTConfig(
                vocab_size=256,
                context_length=context,
                n_layers=4,
                n_heads=4,
                d_model=128,
                mixer="mamba",
                positional="none",
            )
        ),
        "lstm_lm (2 x 256)": RecurrentLM(RecurrentLMConfig(context_length=context)),
    }
    print(f"\n### Greedy decoding after a prefix, {args.new_tokens} tokens timed, batch 1\n")
    header = " | ".join(f"prefix {p} (tokens/s)" for p in args.prefixes)
    print(f"| model | {header} | slowdown {args.prefixes[0]} -> {args.prefixes[-1]} |")
    print("|---|" + "---:|" * (len(args.prefixes) + 1))
    for name, model in models.items():
        model.eval()
        rates = {p: 0.0 for p in args.prefixes}
        for _ in range(args.rounds):
            for prefix in args.prefixes:
                rates[prefix] = max(rates[prefix], decoding_rate(model, prefix, args.new_tokens))
        cells = " | ".join(f"{rates[p]:.0f}" for p in args.prefixes)
        slowdown = rates[args.prefixes[0]] / rates[args.prefixes[-1]]
        print(f"| {name} | {cells} | {slowdown:.2f}x |")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    cpu_kernels.load()
    scan_table(args)
    generation_table(args)


if __name__ == "__main__":
    main()
