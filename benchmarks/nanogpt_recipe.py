"""nanoGPT's CPU "baby GPT" recipe as one standalone process: the anchor of cold_start.py.

Written here from the recipe nanoGPT documents for tiny Shakespeare on a CPU (its
config/train_shakespeare_char.py with the README's CPU flags: --device=cpu --compile=False
--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0): characters as tokens, the
first 90% to train; learned positions, pre-norm blocks without biases, exact GELU, a tied head,
N(0, 0.02) weights with the residual projections scaled by 1/sqrt(2L); fp32, eager; torch's
default AdamW (lr 1e-3, betas 0.9/0.99, weight decay 0.1 on matrices), 100 warm-up steps then a
cosine to 1e-4, gradient clipping at 1.0; every 250 steps the mean loss of eval_iters batches
on both splits, and a checkpoint when the validation loss improves. Only torch and numpy, so
the text is a path (cold_start.py finds it by its dataset name):

    python benchmarks/nanogpt_recipe.py $ATTNLAB_DATA/tinyshakespeare/input.txt --out /tmp/nanogpt
"""

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BLOCK, BATCH, LAYERS, HEADS, WIDTH = 64, 12, 4, 4, 128


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH, bias=False), nn.LayerNorm(WIDTH, bias=False)
        self.qkv, self.proj = (
            nn.Linear(WIDTH, 3 * WIDTH, bias=False),
            nn.Linear(WIDTH, WIDTH, bias=False),
        )
        self.up, self.down = (
            nn.Linear(WIDTH, 4 * WIDTH, bias=False),
            nn.Linear(4 * WIDTH, WIDTH, bias=False),
        )

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, HEADS, d // HEADS).transpose(1, 2)
            for z in self.qkv(self.ln1(x)).split(d, 2)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class Model(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, WIDTH), nn.Embedding(BLOCK, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln, self.head = nn.LayerNorm(WIDTH, bias=False), nn.Linear(WIDTH, vocab, bias=False)
        self.head.weight = self.tokens.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                residual = name.endswith(("proj.weight", "down.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * LAYERS) if residual else 0.02)

    def forward(self, idx, targets):
        x = self.tokens(idx) + self.positions(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", help="the path of tiny Shakespeare's input.txt")
    parser.add_argument("--out", required=True, help="checkpoint directory")
    parser.add_argument("--max-iters", type=int, default=2000)
    parser.add_argument("--eval-iters", type=int, default=20)
    parser.add_argument("--eval-interval", type=int, default=250)
    args = parser.parse_args()
    text = Path(args.text).read_text(encoding="utf-8")
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.array([lookup[c] for c in text], dtype=np.uint16)
    cut = int(0.9 * len(ids))
    splits = {"train": ids[:cut], "val": ids[cut:]}

    def batch(split):
        data = splits[split]
        starts = torch.randint(len(data) - BLOCK, (BATCH,)).tolist()
        x = torch.stack([torch.from_numpy(data[i : i + BLOCK].astype(np.int64)) for i in starts])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + BLOCK].astype(np.int64)) for i in starts]
        )
        return x, y

    torch.manual_seed(1337)
    model = Model(len(chars))
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99))
    os.makedirs(args.out, exist_ok=True)
    best, started = float("inf"), time.time()
    for step in range(args.max_iters + 1):
        if step % args.eval_interval == 0:
            model.eval()
            with torch.no_grad():
                losses = {
                    s: np.mean([model(*batch(s)).item() for _ in range(args.eval_iters)])
                    for s in splits
                }
            model.train()
            print(
                f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}",
                flush=True,
            )
            if losses["val"] < best:
                best = losses["val"]
                if step:
                    torch.save(
                        {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                        f"{args.out}/ckpt.pt",
                    )
        if step == args.max_iters:
            break
        warm = step < 100
        progress = (step - 100) / (args.max_iters - 100)
        lr = (
            1e-3 * step / 100
            if warm
            else 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * progress))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model(*batch("train"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    print(f"done: {args.max_iters} iterations in {time.time() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
