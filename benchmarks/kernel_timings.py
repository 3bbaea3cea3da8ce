"""attnlab's CPU training kernels against torch's, at the baby GPT's shapes.

    python benchmarks/kernel_timings.py [--rounds 5] [--repeats 50] [--threads N]

Rows (fp32, the best of --rounds means over --repeats calls each, the two sides taking turns):
attention forward and backward for 12 sequences x 4 heads of 64 positions x 32 channels, causal
(attnlab's kernel against torch's scaled_dot_product_attention, its CPU flash kernel); exact GELU
forward + backward on the baby GPT's (768, 512) hidden activations (attnlab's kernel against
torch.compile of F.gelu); the token embedding's backward for 768 character ids of 65 into width
128, compiled (attnlab's one scatter-add against Inductor's own code); dropout (p = 0.1)
forward + backward on (2048, 1024) feed-forward activations, the Multi30k translation model's
for a 2048-token batch (attnlab's kernel against F.dropout, eager: compiled it is slower).
Prints a markdown table; benchmarks/RESULTS.md records runs.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from attnlab.kernels import cpu as kernels
from attnlab.layers import TokenEmbedding


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per row")
    parser.add_argument("--repeats", type=int, default=50, help="calls per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    return parser.parse_args()


def mean_us(work: Callable[[], object], repeats: int) -> float:
    """Mean µs per call over `repeats` calls, after one warm-up call."""
    work()
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - start) / repeats * 1e6


def attention_rows() -> dict[str, tuple[Callable, Callable]]:
    q, k, v = (torch.randn(12, 4, 64, 32, requires_grad=True) for _ in range(3))
    grad = torch.randn(12, 4, 64, 32)

    def torch_attention():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def ours_attention():
        return kernels.attention(q, k, v, True)

    def backward(forward):
        out = forward()
        return lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)

    return {
        "attention forward": (ours_attention, torch_attention),
        "attention backward": (backward(ours_attention), backward(torch_attention)),
    }


def gelu_row() -> tuple[Callable, Callable]:
    x = (torch.randn(768, 512) * 2).requires_grad_()
    grad = torch.randn(768, 512)
    compiled_gelu = torch.compile(F.gelu)

    def ours():
        return torch.autograd.grad(kernels.gelu(x), x, grad)

    def theirs():
        return torch.autograd.grad(compiled_gelu(x), x, grad)

    return ours, theirs


def embedding_row() -> tuple[Callable, Callable]:
    ids = torch.randint(0, 65, (12, 64))
    grad = torch.randn(12, 64, 128)
    ours_table, torch_table = TokenEmbedding(65, 128), torch.nn.Embedding(65, 128)
    ours_out = torch.compile(ours_table)(ids)  # compiled: the scatter-add path
    torch_out = torch.compile(torch_table)(ids)

    def ours():
        return torch.autograd.grad(ours_out, ours_table.weight, grad, retain_graph=True)

    def theirs():
        return torch.autograd.grad(torch_out, torch_table.weight, grad, retain_graph=True)

    return ours, theirs


def dropout_row() -> tuple[Callable, Callable]:
    x = torch.randn(2048, 1024, requires_grad=True)
    grad = torch.randn(2048, 1024)

    def ours():
        return torch.autograd.grad(kernels.dropout(x, 0.1), x, grad)

    def theirs():
        return torch.autograd.grad(F.dropout(x, 0.1), x, grad)

    return ours, theirs


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not kernels.load():
        raise SystemExit("attnlab's CPU kernels could not be built")
    rows = {**attention_rows(), "GELU forward + backward": gelu_row()}
    rows["embedding backward, compiled"] = embedding_row()
    rows["dropout forward + backward"] = dropout_row()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, fp32")
    print("\n| what | attnlab µs | torch µs | torch / attnlab |\n|---|---|---|---|")
    with kernels.enabled():
        for name, (ours, theirs) in rows.items():
            mine, other = [], []
            for _ in range(args.rounds):  # the two take turns, so load affects both alike
                mine.append(mean_us(ours, args.repeats))
                other.append(mean_us(theirs, args.repeats))
            print(
                f"| {name} | {min(mine):.0f} | {min(other):.0f} | {min(other) / min(mine):.2f}x |"
            )


if __name__ == "__main__":
    main()
