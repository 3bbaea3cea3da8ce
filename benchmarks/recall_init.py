"""How initialisation decides whether a small GPT learns in-context recall: associative recall
(attnlab/data/tasks.py, vocabulary 30) at a short length, the same data and optimiser for
attnlab's GPT with each `weight_init` and for a reference built from torch.nn alone.

    python benchmarks/recall_init.py [--length 32] [--steps 1500] [--width 64] [--layers 2]

Each model: `--layers` pre-norm blocks of width `--width` (4 heads), trained with AdamW (lr 1e-3,
no weight decay) on batches of 64 fresh sequences (every key seen before scored); accuracy on the
final query of 512 held-out sequences every 250 steps. The reference is a causal
torch.nn.TransformerEncoder (norm first, learned positions, PyTorch's default initialisation:
embeddings N(0, 1)). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.data.tasks import SYMBOLS, TASKS, TaskOptions
from attnlab.models.gpt import GPT, GPTConfig

recall = TASKS["associative_recall"]


class Reference(nn.Module):
    def __init__(self, length: int, width: int, layers: int):
        super().__init__()
        self.embedding = nn.Embedding(len(SYMBOLS), width)
        self.positions = nn.Parameter(torch.randn(length, width) * 0.02)
        block = nn.TransformerEncoderLayer(
            width, 4, 4 * width, 0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, len(SYMBOLS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.size(1))
        h = self.embedding(x) + self.positions[: x.size(1)]
        return self.head(self.blocks(h, mask=mask, is_causal=True))


def gpt(length: int, width: int, layers: int, weight_init: str):
    config = GPTConfig(
        vocab_size=len(SYMBOLS),
        context_length=length,
        n_layers=layers,
        n_heads=4,
        d_model=width,
        positional="rope",
        bias=False,
        tie_weights=False,
        weight_init=weight_init,
    )
    model = GPT(config)
    return lambda x: model(x)[0], model


def accuracies(logits_of, parameters, args) -> list[float]:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.0)
    train = torch.Generator().manual_seed(1)
    held_out = recall(torch.Generator().manual_seed(9), 512, args.length, TaskOptions(dense=0))
    scores = []
    for step in range(args.steps + 1):
        if step % 250 == 0:
            with torch.no_grad():
                answers = logits_of(held_out[0])[:, -1].argmax(-1)
            scores.append((answers == held_out[1][:, -1]).float().mean().item())
        x, y = recall(train, 64, args.length, TaskOptions())
        loss = F.cross_entropy(logits_of(x).flatten(0, 1), y.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    rows = {}
    for init in ("gpt2", "fan_in"):
        torch.manual_seed(0)
        logits_of, model = gpt(args.length, args.width, args.layers, init)
        rows[f"attnlab GPT, weight_init={init}"] = accuracies(logits_of, model.parameters(), args)
    torch.manual_seed(0)
    reference = Reference(args.length, args.width, args.layers)
    rows["torch.nn.TransformerEncoder"] = accuracies(reference, reference.parameters(), args)
    steps = range(0, args.steps + 1, 250)
    print(f"\n### Associative recall, length {args.length}, final-query accuracy by step\n")
    print("| model | " + " | ".join(str(s) for s in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    for name, scores in rows.items():
        print(f"| {name} | " + " | ".join(f"{a:.0%}" for a in scores) + " |")


if __name__ == "__main__":
    main()
