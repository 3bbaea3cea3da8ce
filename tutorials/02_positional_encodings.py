# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Positional encodings
#
# Nothing in `softmax(Q Kᵀ / √d) V` says *where* a token sits: shuffle the tokens and attention
# shuffles its output the same way. "Attention Is All You Need" (section 3.5) therefore adds
# positional encodings to the embeddings. You will prove the symmetry, build the four position
# schemes attnlab offers (learned, sinusoidal, RoPE, ALiBi) and check the property each one is
# designed for, then train four tiny GPTs that differ only in their positions and compare their
# losses, their attention maps and how they cope with sequences longer than they were trained on.
# About 5 minutes on a 2-core CPU with the default settings.

# %%
import os

# "default": about 5 minutes on a 2-core CPU; "quick": seconds, no downloads;
# "gpu": a bigger run for a CUDA GPU
SIZE = os.environ.get("ATTNLAB_TUTORIAL_SIZE", "default")
ITERS = {"quick": 24, "default": 1200, "gpu": 6000}[SIZE]  # training steps of each GPT
BATCH_SIZE = {"quick": 12, "default": 12, "gpu": 64}[SIZE]  # windows of text per step
EVAL_ITERS = {"quick": 5, "default": 20, "gpu": 50}[SIZE]  # batches per validation loss
LONG_WINDOWS = {"quick": 8, "default": 256, "gpu": 256}[SIZE]  # windows in the length test
DEVICE = "cuda" if SIZE == "gpu" else "cpu"

# %%
import dataclasses
import json
import math
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from attnlab import GPT
from attnlab.cli import run as attnlab  # attnlab("..."): a command line, as in a shell
from attnlab.data import catalog
from attnlab.interpretability import capture
from attnlab.layers import (
    ALiBi,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
)
from attnlab.training.checkpoints import load_checkpoint

torch.manual_seed(0)

# %% [markdown]
# ## 1. Attention alone cannot see order
#
# Write the input as a matrix X with one row per token, and a permutation as a matrix P that
# reorders rows. Queries, keys and values are computed row by row (`Q = X W_Q`, ...), so
# permuting X permutes the rows of Q, K and V. The score matrix `Q Kᵀ` then has its rows *and*
# columns permuted, the softmax runs along each row, and the weighted sum of values follows:
#
# `Attention(P X) = P · Attention(X)`
#
# Self-attention is *permutation-equivariant*: it treats the input as a set. "The dog bit the
# man" and "the man bit the dog" give every word the same output vector, just in another
# order. Let us check it on attnlab's own multi-head attention layer, with no mask.

# %%
attention = MultiHeadAttention(d_model=32, n_heads=4).eval()  # no mask: all tokens see all
x = torch.randn(1, 6, 32)  # one sequence of 6 token vectors of width 32
order = torch.randperm(6)  # a random reordering of the 6 positions

with torch.no_grad():
    out = attention(x)
    out_of_shuffled = attention(x[:, order])

gap = (out_of_shuffled - out[:, order]).abs().max().item()
print("the new order of the tokens:", order.tolist())
print(f"max |attention(shuffled x) - shuffled attention(x)| = {gap:.1e}")
# check: attention without a mask commutes with shuffling (equal up to float rounding)
assert torch.allclose(out_of_shuffled, out[:, order], atol=1e-5)

# %% [markdown]
# Two things do break the symmetry. A **causal mask** (GPT) lets token i see only tokens
# 0..i, so the first token averages over one value and the tenth over ten: a decoder can infer
# some position even with no encoding at all. And a **position scheme inside attention**, such
# as RoPE below, changes the scores themselves. Same test, both layers:

# %%
causal = MultiHeadAttention(d_model=32, n_heads=4, causal=True).eval()
rotary = MultiHeadAttention(
    d_model=32, n_heads=4, relative_position=RotaryEmbedding(head_dim=8)
).eval()
with torch.no_grad():
    for name, layer in [("causal mask", causal), ("RoPE", rotary)]:
        gap = (layer(x[:, order]) - layer(x)[:, order]).abs().max().item()
        print(f"{name:12s} max difference after shuffling: {gap:.3f}")

# %% [markdown]
# ## 2. Learned positions (GPT-2, BERT)
#
# The simplest fix: a trainable table with one row per position, added to the token
# embedding, `x_t = E[token_t] + P[t]`. The model learns whatever position features help.
# The catch is in the word *table*: it has `context_length` rows, so position 64 of a model
# trained on 64 positions simply does not exist.

# %%
learned = LearnedPositionalEmbedding(max_length=64, d_model=128)
print("rows for positions 0..9:", tuple(learned(10).shape))
try:
    learned(100)  # positions 0..99
except ValueError as error:
    print("100 positions:", error)

# %% [markdown]
# ## 3. Sinusoids (section 3.5 of the paper)
#
# The paper's alternative is a fixed table, nothing to learn:
#
# `PE(pos, 2i) = sin(pos / 10000^(2i/D))`   `PE(pos, 2i+1) = cos(pos / 10000^(2i/D))`
#
# Each pair of channels (2i, 2i+1) is a point going round a circle as the position grows, at
# its own speed `ω_i = 10000^(-2i/D)`: the first pair turns once every 2π ≈ 6 positions, the
# last (for D = 64) once every ~47,000. Read across a row, the channels are like the hands of
# a clock, each slower than the one before. Left: the table; right: the dot products
# `PE(p) · PE(q)`, which depend only on `p - q` (the stripes run parallel to the diagonal).

# %%
sinusoids = SinusoidalPositionalEncoding(max_length=128, d_model=64)
table = sinusoids.table  # (128 positions, 64 channels), computed once, not trained

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
image = left.imshow(table, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
left.set(xlabel="channel", ylabel="position", title="sinusoidal table PE(pos, channel)")
fig.colorbar(image, ax=left)
image = right.imshow(table @ table.T, cmap="viridis")
right.set(xlabel="position q", ylabel="position p", title="PE(p) · PE(q)")
fig.colorbar(image, ax=right)
plt.tight_layout()
plt.show()

# %% [markdown]
# The paper chose sinusoids because "for any fixed offset k, PE(pos+k) can be represented as a
# linear function of PE(pos)". Moving k positions turns pair i by the angle `ω_i·k`, and a
# turn is a 2 × 2 rotation matrix: by the angle-sum formulas,
#
# `[sin ω(p+k), cos ω(p+k)] = [[cos ωk, sin ωk], [-sin ωk, cos ωk]] · [sin ωp, cos ωp]`
#
# Put one such block per pair on the diagonal of a D × D matrix `M_k`. It depends on k only,
# not on the position, so one linear map (which a layer can learn) means "k steps further".


# %%
def shift_matrix(k, d_model, base=10000.0):
    """M_k with PE(pos + k) = M_k · PE(pos) for every pos: one 2 x 2 rotation per pair."""
    speeds = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # ω_i
    matrix = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i, angle in enumerate(speeds * k):
        c, s = math.cos(angle), math.sin(angle)
        matrix[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, s], [-s, c]])
    return matrix


k = 5
predicted = table[:-k].double() @ shift_matrix(k, 64).T  # M_k applied to PE(0), PE(1), ...
error = (predicted - table[k:].double()).abs().max().item()
print(f"max |M_{k} · PE(pos) - PE(pos + {k})| over all positions: {error:.1e}")
# check: one matrix maps every position to the position k further (to float rounding)
assert error < 1e-5

# %% [markdown]
# ## 4. RoPE: rotate the queries and keys (Su et al. 2021)
#
# Sinusoids *add* the position to the input, and the model has to learn to use it. Rotary
# position embeddings (RoPE, used by Llama, Mistral, Qwen and most recent language models)
# put the rotation straight into the score. In every attention layer, the query at position m
# and the key at position n are each turned, pair of channels by pair of channels, by their
# own angles `m·θ_i` and `n·θ_i`. Rotations compose, and the dot product of two rotated
# vectors only sees the *difference* of their angles:
#
# `(R(mθ) q) · (R(nθ) k) = q · R((n - m)θ) k`
#
# The score depends on the content of q and k and on the offset `n - m`, never on m or n
# alone. Nothing is added to the residual stream, and the values are not rotated. Let us put
# the same query and the same key at every position with `attnlab.layers.RotaryEmbedding` and
# fill in the score matrix.

# %%
rope = RotaryEmbedding(head_dim=16)
length = 48
q = torch.randn(16).expand(1, 1, length, 16)  # (batch, heads, positions, head width):
k = torch.randn(16).expand(1, 1, length, 16)  # one query and one key, copied to every position
q_rotated = rope.rotate(q, 0)  # row m is turned by m·θ (positions start at offset 0)
k_rotated = rope.rotate(k, 0)
scores = (q_rotated @ k_rotated.transpose(-1, -2))[0, 0]  # scores[m, n] = q at m · k at n

# Along each diagonal n - m is fixed; if RoPE does its job, each diagonal is one number.
spread = max(scores.diagonal(d).max() - scores.diagonal(d).min() for d in range(-47, 48))
print(f"largest spread of a score along a diagonal: {spread:.1e}")
print(
    f"|q| = {q[0, 0, 0].norm():.4f}, |rotated q at position 40| = {q_rotated[0, 0, 40].norm():.4f}"
)
# check: the RoPE score depends only on the offset n - m (to float rounding)
assert spread < 1e-4

# %%
offsets = torch.arange(-47, 48)
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
image = left.imshow(scores, cmap="RdBu")
left.set(xlabel="key position n", ylabel="query position m", title="RoPE score q·k")
fig.colorbar(image, ax=left)
right.plot(offsets, [scores.diagonal(int(d)).mean() for d in offsets])
right.axhline((q[0, 0, 0] @ k[0, 0, 0]).item(), color="grey", ls="--", label="q·k, no rotation")
right.set(xlabel="offset n - m", ylabel="score", title="the score is a function of the offset")
right.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# attnlab pairs channel i with channel i + Dh/2 (the layout of GPT-NeoX and of Hugging Face's
# Llama) rather than neighbours 2i and 2i+1, as the RoPE paper and Meta's own Llama code do;
# it is the same rotation with the channels listed in another order, which is why converting
# Meta's Llama weights permutes the rows of W_Q and W_K. The frequencies `θ_i = 10000^(-2i/Dh)`
# are the sinusoids'.

# %% [markdown]
# ## 5. ALiBi: a distance penalty per head (Press et al. 2022)
#
# ALiBi ("attention with linear biases") has no embedding and no rotation at all. Head h adds
# `-m_h · |i - j|` to the score of query i and key j, so far-away keys lose attention in
# proportion to their distance. The slopes form a geometric sequence, `m_h = 2^(-8(h+1)/H)`
# for heads h = 0..H-1 (1/2, 1/4, ..., 1/256 with 8 heads): some heads look only at the last
# few tokens, others are nearly flat and read the whole context.
# With equal content scores, head h's weights fall like `exp(-m_h · distance)`: the
# distribution on the right, for a query at position 31 under a causal mask.

# %%
alibi = ALiBi(n_heads=8)
bias = alibi.bias(32, 32)  # (heads, query positions, key positions): -m_h·|i - j|
print("slopes m_h:", [round(m, 4) for m in alibi.slopes.tolist()])
print(
    "distance at which weight halves, ln 2 / m_h:",
    [round(math.log(2) / m, 1) for m in alibi.slopes.tolist()],
)

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
distance = torch.arange(32)
for h in range(8):
    left.plot(distance, bias[h, 31].flip(0), label=f"head {h}")  # query 31, keys 31, 30, ...
    right.plot(distance, torch.softmax(bias[h, 31], dim=-1).flip(0))
left.set(xlabel="distance i - j", ylabel="bias added to the score", title="ALiBi biases")
left.legend(fontsize=7, ncol=2)
right.set(xlabel="distance i - j", ylabel="attention weight", title="softmax of the bias alone")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. What each does to a language model
#
# Now the real test: four GPTs identical in everything (4 layers, 4 heads, width 128, context
# 64 characters, the same data, batches, seed and number of steps) except `--positional`.
# At the default size they read tiny Shakespeare; the quick check uses a piece of Python's
# standard library, written to a file here, so that nothing has to be downloaded.
#
# One detail needs a word. GPT-2 starts its embeddings tiny, N(0, 0.02): fine for learned
# positions, which start just as small, but a sinusoid has amplitude 1, and added to such
# embeddings it would drown the tokens: the model would see mostly *where* a character is, not
# *which* it is. The paper avoids this by multiplying the embeddings by √d_model (section 3.4).
# attnlab's GPT instead multiplies its sinusoid table by one learned number, its `gain`, that
# starts where the embeddings start (√2·0.02, so that the table's root mean square is 0.02);
# training then sets the balance between position and token.

# %%
RUNS = Path("runs/tutorials/02_positional_encodings")
shutil.rmtree(RUNS, ignore_errors=True)  # start afresh each time the notebook runs
RUNS.mkdir(parents=True)
if SIZE == "quick":
    from attnlab.data.corpus import Corpus

    DATA = str(RUNS / "stdlib_sample.txt")  # the first 300,000 characters of the stdlib
    Path(DATA).write_text(next(iter(Corpus("stdlib")))[:300_000])
else:
    DATA = "tinyshakespeare/input.txt"  # a dataset name: found in (or fetched to) ATTNLAB_DATA
SCHEMES = ["learned", "sinusoidal", "rope", "alibi"]
CONTEXT = 64  # the tiny preset's context length: positions seen in training

# %%
for scheme in SCHEMES:
    print(f"=== --positional {scheme}", flush=True)  # before the run's own lines
    attnlab(
        f"train gpt --data {DATA} --positional {scheme} --context-length {CONTEXT} "
        f"--max-iters {ITERS} --batch-size {BATCH_SIZE} --warmup-iters {ITERS // 10} "
        f"--eval-interval {ITERS // 6} --eval-iters {EVAL_ITERS} --device {DEVICE} "
        f"--out {RUNS / scheme}"
    )

# %% [markdown]
# Every run logged its validation loss (cross-entropy in nats per character, on the same held
# out 10% of the text) to `metrics.jsonl`. Lower is better; `ln(vocabulary size)` is the loss
# of a uniform guess.


# %%
def validation_losses(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]


curves = {scheme: validation_losses(RUNS / scheme) for scheme in SCHEMES}
final = {scheme: curve[-1][1] for scheme, curve in curves.items()}

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
for scheme, curve in curves.items():
    steps, losses = zip(*curve, strict=True)
    left.plot(steps, losses, marker="o", label=scheme)
left.set(xlabel="step", ylabel="validation loss", title="validation loss during training")
left.legend()
right.bar(SCHEMES, [final[s] for s in SCHEMES], color=["C0", "C1", "C2", "C3"])
right.set(ylabel="validation loss", title=f"after {ITERS} steps")
right.set_ylim(min(final.values()) - 0.1, max(final.values()) + 0.05)
for i, scheme in enumerate(SCHEMES):
    right.text(i, final[scheme], f"{final[scheme]:.3f}", ha="center", va="bottom")
plt.tight_layout()
plt.show()

# %%
models = {s: load_checkpoint(RUNS / s, device=DEVICE).model for s in SCHEMES}
tokenizer = load_checkpoint(RUNS / "learned").tokenizer  # all four share one tokenizer
uniform = math.log(tokenizer.vocab_size)
print(f"uniform guess: {uniform:.3f}")
for scheme in SCHEMES:
    print(f"{scheme:10s} final validation loss {final[scheme]:.3f}")
gain = models["sinusoidal"].position_embedding.gain.item()
print(f"sinusoid gain: started at {math.sqrt(2) * 0.02:.3f}, trained to {gain:.3f}")
# check: every model has learned something: far better than a uniform guess over the vocabulary
assert all(loss < uniform - 0.5 for loss in final.values()), "a model learned almost nothing"

# %% [markdown]
# With the default settings the relative schemes usually come out ahead: an earlier version of
# the baby GPT of `configs/gpt_shakespeare_char.toml` (with biases) reached 1.752 with RoPE
# against 1.882 with learned positions after 2,000 steps (benchmarks/RESULTS.md, Zen 4).
# Relative positions help a small model because character statistics depend on *offsets*
# ("what came two characters ago"), which RoPE and ALiBi hand over directly, while a learned
# table must discover the same fact separately at each of the 64 positions.
#
# ## 7. Their attention maps
#
# `attnlab.interpretability.capture` records every layer's attention weights during one
# forward pass. Below: the first layer of each model on one sentence, averaged over its four
# heads (each row is a query; it can only look left, the mask is causal).

# %%
SENTENCE = "To be, or not to be, that is the question."
ids = torch.tensor([tokenizer.encode(SENTENCE)], device=DEVICE)
maps = {}
with torch.no_grad():
    for scheme, model in models.items():
        with capture(model) as seen:
            model(ids)
        maps[scheme] = {name: w[0].cpu() for name, w in seen.attention.items()}  # (H, T, T)

fig, axes = plt.subplots(1, 4, figsize=(9, 2.7))
for ax, scheme in zip(axes, SCHEMES, strict=True):
    ax.imshow(maps[scheme]["blocks.0.token_mixer"].mean(0), cmap="Blues", vmin=0, vmax=0.5)
    ax.set_title(scheme)
    ax.set_xticks([])
    ax.set_yticks([])
axes[0].set(xlabel="key", ylabel="query")
plt.tight_layout()
plt.show()

# %% [markdown]
# A number summarises each map: the **mean attention distance**, how many tokens back the
# attention weight sits on average (`Σ_j w_ij·(i - j)`, averaged over queries and heads), for
# every layer. Small means local heads (the last character or two), large means heads that
# spread over the whole window. ALiBi's value is not automatically the smallest: with 4 heads
# its slopes are 1/4, 1/16, 1/64 and 1/256, and the two slow heads are nearly flat over 64
# positions. Which model's later layers are the most local?

# %%
positions = torch.arange(ids.size(1))
behind = (positions[:, None] - positions[None, :]).clamp(min=0)  # (T, T): i - j, or 0
print("mean attention distance (tokens back), layers 0..3")
for scheme in SCHEMES:
    distances = [(w * behind).sum(-1).mean().item() for w in maps[scheme].values()]
    print(f"{scheme:10s}", "  ".join(f"{d:5.1f}" for d in distances))

# %% [markdown]
# ## 8. Longer than trained
#
# All four models saw windows of 64 characters. What happens at position 100? The model's
# weights do not depend on the context length for three of the schemes: RoPE and ALiBi compute
# their angles and biases for any distance, and the sinusoid table is a formula that can be
# extended. So we can build the same GPT with a longer context and load the trained weights
# into it. A learned table has exactly 64 rows; there is nothing to load for row 64.

# %%
LONG = 4 * CONTEXT


def stretched(model, length):
    """The same weights in a GPT that accepts `length` positions."""
    longer = GPT(dataclasses.replace(model.config, context_length=length)).to(DEVICE).eval()
    longer.load_state_dict(model.state_dict())
    return longer


try:
    stretched(models["learned"], LONG)
except RuntimeError as error:
    print("learned:", str(error).splitlines()[1].strip())
long_models = {s: stretched(models[s], LONG) for s in ["sinusoidal", "rope", "alibi"]}

# %% [markdown]
# Now score windows of `LONG` = 256 characters from the validation text and average the loss
# at each position. Up to position 63 we are in familiar territory; past it, each model meets
# angles, distances or table rows it never trained on. (The learned model is scored on the
# first 64 positions of the same windows, as far as it can go.)

# %%
text = Path(catalog.resolve(DATA)).read_text()
validation = tokenizer.encode(text[int(0.9 * len(text)) :])  # the held-out last 10%
starts = torch.linspace(0, len(validation) - LONG - 2, LONG_WINDOWS).long().tolist()
windows = torch.tensor([validation[s : s + LONG + 1] for s in starts], device=DEVICE)
inputs, targets = windows[:, :-1], windows[:, 1:]


def loss_by_position(model, length):
    """Mean cross-entropy at each of the first `length` positions of the windows."""
    with torch.no_grad():
        logits, _ = model(inputs[:, :length])
    losses = F.cross_entropy(logits.transpose(1, 2), targets[:, :length], reduction="none")
    return losses.mean(0).cpu()  # (length,)


position_loss = {"learned": loss_by_position(models["learned"], CONTEXT)}
position_loss.update({s: loss_by_position(m, LONG) for s, m in long_models.items()})


# %%
def smooth(values, width=8):
    """Running mean over `width` positions: per-position losses are noisy."""
    kernel = torch.ones(1, 1, width) / width
    return F.conv1d(values[None, None], kernel)[0, 0]


fig, ax = plt.subplots(figsize=(9, 3.6))
for scheme in SCHEMES:
    values = smooth(position_loss[scheme])
    ax.plot(torch.arange(len(values)) + 4, values, label=scheme)
ax.axvline(CONTEXT, color="grey", ls="--")
ax.text(CONTEXT + 2, ax.get_ylim()[0], " trained up to here", va="bottom")
ax.set(xlabel="position in the window", ylabel="loss (running mean of 8)")
ax.set_title(f"Loss at each position, windows of {LONG} (trained on {CONTEXT})")
ax.legend()
plt.tight_layout()
plt.show()

for scheme in SCHEMES:
    inside = position_loss[scheme][:CONTEXT].mean().item()
    beyond = position_loss[scheme][CONTEXT:]
    beyond_text = f"{beyond.mean().item():.3f}" if len(beyond) else "  -  (no rows)"
    print(f"{scheme:10s} positions 0-63: {inside:.3f}   positions 64-{LONG - 1}: {beyond_text}")

# %% [markdown]
# How to read it. Inside the trained range the loss falls a little along the window: later
# predictions have more text to read. Past position 64 each scheme meets something new. The
# **sinusoidal** rows for positions 64+ are valid sinusoids, but the model never learned what
# they mean. **RoPE** meets rotation angles, and offsets, that no training batch produced.
# **ALiBi** meets only longer distances, whose penalty keeps growing, so far keys are simply
# attended to less and each head keeps the reach it had in training. The **learned** model
# cannot even be asked.
#
# In the ALiBi paper (Press et al. 2022, word-level models trained on 512 or 1024 tokens)
# sinusoidal models broke down within a few dozen extra tokens, rotary ones degraded more
# slowly, and ALiBi kept its loss flat up to several times the training length: "train short,
# test long". A small character model is gentler on all of them, since most of what it
# predicts depends on the last few characters, which look the same at any position. Which of
# your three keeps its loss past 64? Long-context language models that use RoPE stretch it
# with tricks such as position interpolation (Chen et al. 2023) or YaRN (Peng et al. 2023).
#
# ## Try this
#
# - Why would unit sinusoids drown the tokens? Compare the norm of a row of
#   `token_embedding.weight` with that of a row of `position_embedding(64)` (the table times
#   its gain) in a fresh `GPT(models["sinusoidal"].config)` and in the trained model. What
#   ratio did training settle on, and how far is it from what a gain of 1 would give?
# - Train a fifth model with `--positional none`. The causal mask is its only source of
#   order (see the first section). How far behind the others is it? Why could a BERT-style
#   encoder (no mask) not learn anything about order this way?
# - Position interpolation (Chen et al. 2023): give the stretched RoPE model rotations 4 times
#   slower, so that 256 positions span the angles that 64 did in training:
#   `slow = RotaryEmbedding(32, scale=4)`, then set
#   `block.token_mixer.relative_position = slow` for every block of `long_models["rope"]`.
#   Does the loss past position 64 improve? What happens before 64?
# - Train the ALiBi model with `--context-length 32` and evaluate it at 256. Does "train
#   short, test long" still hold? What does it cost inside the window?
