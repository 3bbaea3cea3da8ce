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
# # 1. Attention by hand
#
# The one equation of "Attention Is All You Need" is `Attention(Q, K, V) = softmax(Q Kᵀ / √d) V`.
# Here you compute it step by step on a five-word sentence, add the causal mask a GPT uses, split
# it into heads, get the same numbers from `attnlab.layers` (and from PyTorch's own
# `nn.MultiheadAttention`), and finally watch one attention layer learn where to look.
# A few seconds on a 2-core CPU with the default settings.

# %%
import os

# "default": a few seconds on a 2-core CPU; "quick": fewer training steps;
# "gpu": the same (this notebook is small)
SIZE = os.environ.get("ATTNLAB_TUTORIAL_SIZE", "default")
TRAIN_STEPS = {"quick": 150, "default": 600, "gpu": 600}[SIZE]

# %%
import math

import matplotlib.pyplot as plt
import torch

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)

# %% [markdown]
# ## Five words, three projections
#
# Every word starts as a vector, its embedding. We make up 8-dimensional embeddings (a trained
# model learns them). Attention then gives every word three roles, each a linear map of its
# embedding: a **query** ("what am I looking for?"), a **key** ("what do I offer?") and a
# **value** ("what do I pass on if chosen?").

# %%
words = ["the", "cat", "sat", "on", "mats"]
d_model = 8
x = torch.randn(len(words), d_model)  # (T, D): one row per word

W_q = torch.randn(d_model, d_model) / math.sqrt(d_model)
W_k = torch.randn(d_model, d_model) / math.sqrt(d_model)
W_v = torch.randn(d_model, d_model) / math.sqrt(d_model)
Q, K, V = x @ W_q, x @ W_k, x @ W_v  # each (T, D)
print("queries:\n", Q)

# %% [markdown]
# ## Scores, scaling, softmax
#
# Word *i* scores word *j* by the dot product of its query with *j*'s key: all of them at once
# are `Q Kᵀ`, a T×T table. Softmax turns each row into weights that sum to 1, and the output of
# word *i* is the weighted average of the values.

# %%
scores = Q @ K.T / math.sqrt(d_model)  # (T, T): row i scores every word j
weights = torch.softmax(scores, dim=-1)  # each row sums to 1
out = weights @ V  # (T, D): a weighted average of values per word
print("weights (rows: queries, columns: keys):\n", weights)
print("row sums:", weights.sum(-1))


# %%
def show_weights(ax, weights, title, labels=words):
    ax.imshow(weights.detach(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title)


fig, ax = plt.subplots(figsize=(4, 4))
show_weights(ax, weights, "attention weights")
plt.show()

# %% [markdown]
# **Why divide by √d?** If queries and keys have entries of variance 1, their dot product over
# d dimensions has variance d. Large scores push softmax into a near one-hot corner where its
# gradient vanishes. Dividing by √d keeps the variance at 1 whatever the width:

# %%
widths = [4, 16, 64, 256, 1024]
peak_unscaled, peak_scaled = [], []
for d in widths:
    q, k = torch.randn(1000, d), torch.randn(1000, 10, d)
    s = (q[:, None, :] * k).sum(-1)  # 1000 queries, 10 keys each
    peak_unscaled.append(torch.softmax(s, -1).max(-1).values.mean().item())
    peak_scaled.append(torch.softmax(s / math.sqrt(d), -1).max(-1).values.mean().item())

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(widths, peak_unscaled, "o-", label="softmax(q·k)")
ax.plot(widths, peak_scaled, "o-", label="softmax(q·k / √d)")
ax.set_xscale("log", base=2)
ax.set_xlabel("head width d")
ax.set_ylabel("largest weight (mean)")
ax.set_title("Without scaling, attention saturates as d grows")
ax.legend()
plt.show()

# %% [markdown]
# ## The causal mask
#
# A language model predicts the next word, so word *i* may not look at words after it. Setting
# those scores to −∞ before the softmax gives them weight exactly 0: the lower triangle is all
# that is left.

# %%
causal = torch.ones(len(words), len(words), dtype=torch.bool).tril()  # True = may attend
masked_scores = scores.masked_fill(~causal, float("-inf"))
causal_weights = torch.softmax(masked_scores, dim=-1)

fig, axes = plt.subplots(1, 2, figsize=(8, 4))
show_weights(axes[0], causal.float(), "causal mask (1 = may attend)")
show_weights(axes[1], causal_weights, "causal attention weights")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Many heads
#
# One softmax can only make one mixture per word. Multi-head attention splits the width into
# H heads of width D/H, attends in each separately (each head can look somewhere else), puts the
# heads side by side again and mixes them with one more linear map, `W_o`.

# %%
n_heads = 2
head_dim = d_model // n_heads
W_o = torch.randn(d_model, d_model) / math.sqrt(d_model)


def split(t):  # (T, D) -> (H, T, D/H): head h owns columns h·D/H to (h+1)·D/H
    return t.view(len(words), n_heads, head_dim).transpose(0, 1)


heads_q, heads_k, heads_v = split(Q), split(K), split(V)
head_scores = heads_q @ heads_k.transpose(-2, -1) / math.sqrt(head_dim)  # (H, T, T)
head_weights = torch.softmax(head_scores.masked_fill(~causal, float("-inf")), dim=-1)
heads_out = head_weights @ heads_v  # (H, T, D/H)
by_hand = heads_out.transpose(0, 1).reshape(len(words), d_model) @ W_o  # (T, D)

fig, axes = plt.subplots(1, n_heads, figsize=(8, 4))
for h, ax in enumerate(axes):
    show_weights(ax, head_weights[h], f"head {h}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The same numbers from attnlab
#
# `attnlab.layers.scaled_dot_product_attention` is the equation above, taking tensors shaped
# (batch, heads, positions, head width); `MultiHeadAttention` is the whole layer. Its input
# projection stacks the query, key and value weights (rows `[W_qᵀ; W_kᵀ; W_vᵀ]`, as
# `nn.Linear` stores `y = x Wᵀ`), and its output projection is `W_oᵀ`. Load our matrices into it
# and the outputs must agree.

# %%
from attnlab.layers import MultiHeadAttention, scaled_dot_product_attention

out_sdpa, weights_sdpa = scaled_dot_product_attention(
    heads_q[None], heads_k[None], heads_v[None], causal=True, return_weights=True
)
layer = MultiHeadAttention(d_model, n_heads, causal=True, bias=False)
with torch.no_grad():
    layer.qkv_projection.weight.copy_(torch.cat([W_q, W_k, W_v], dim=1).T)
    layer.output_projection.weight.copy_(W_o.T)
    from_attnlab = layer(x[None])[0]  # (1, T, D) in, (1, T, D) out

print("largest difference, weights:", (weights_sdpa[0] - head_weights).abs().max().item())
print("largest difference, layer output:", (from_attnlab - by_hand).abs().max().item())

# %% [markdown]
# PyTorch ships its own multi-head attention, written by other people. Give it the same
# weights: a third implementation, and a check nobody here could have tuned to agree.

# %%
reference = torch.nn.MultiheadAttention(d_model, n_heads, bias=False, batch_first=True)
with torch.no_grad():
    reference.in_proj_weight.copy_(torch.cat([W_q, W_k, W_v], dim=1).T)
    reference.out_proj.weight.copy_(W_o.T)
    from_torch, _ = reference(x[None], x[None], x[None], attn_mask=~causal)  # True = blocked

# check: by hand, attnlab and torch.nn compute the same attention (to float32 rounding)
assert torch.allclose(from_attnlab, by_hand, atol=1e-5), "attnlab differs from the by-hand result"
assert torch.allclose(from_torch[0], by_hand, atol=1e-5), "torch.nn differs from the by-hand result"
print("by hand == attnlab == torch.nn.MultiheadAttention")

# %% [markdown]
# ## Watch attention learn where to look
#
# Random weights attend anywhere. Give one attention layer a job, **"output the token you saw
# two steps ago"**, and training has to make each query find the key two positions back. A
# word's embedding alone does not say where it is, so we add a learned position embedding
# (the next tutorial is about those). Everything else is the layer from above.

# %%
vocab, length, width = 16, 12, 32


class LookBack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, width)
        self.positions = torch.nn.Embedding(length, width)
        self.attention = MultiHeadAttention(width, n_heads=1, causal=True)
        self.readout = torch.nn.Linear(width, vocab)

    def forward(self, ids):
        h = self.tokens(ids) + self.positions(torch.arange(ids.size(1)))
        return self.readout(self.attention(h))


def batch(size=64):
    ids = torch.randint(0, vocab, (size, length))
    targets = torch.roll(ids, 2, dims=1)  # the token two positions back
    targets[:, :2] = -100  # the first two positions have nothing to copy: not scored
    return ids, targets


model = LookBack()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
losses = []
for _ in range(TRAIN_STEPS):
    ids, targets = batch()
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, vocab), targets.view(-1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())

ids, targets = batch(1000)
with torch.no_grad():
    accuracy = (model(ids).argmax(-1) == targets)[:, 2:].float().mean().item()
print(f"after {TRAIN_STEPS} steps: loss {losses[-1]:.3f}, accuracy {accuracy:.1%}")
print(f"(chance: {1 / vocab:.1%}; the loss of a uniform guess: ln {vocab} = {math.log(vocab):.2f})")

# %% [markdown]
# attnlab's `capture` records every attention layer's weights during a forward pass, by the
# layer's name in the model. On a new
# sequence, the learned pattern should be a stripe two places left of the diagonal.

# %%
from attnlab.interpretability.capture import capture

ids, _ = batch(1)
with torch.no_grad(), capture(model) as seen:
    model(ids)
learned = seen.attention["attention"][0, 0]  # the layer named "attention"; row 0, head 0

fig, axes = plt.subplots(1, 2, figsize=(9, 4))
axes[0].plot(losses)
axes[0].set_xlabel("step")
axes[0].set_ylabel("loss")
axes[0].set_title("training")
show_weights(axes[1], learned, "learned attention", labels=[str(i) for i in ids[0].tolist()])
plt.tight_layout()
plt.show()

# %%
# check: the loss fell well below a uniform guess's, and the queries from position 2 on put
# most of their weight two positions back
two_back = learned[range(2, length), range(0, length - 2)]
print("weight on the token two back, per position:", two_back)
assert losses[-1] < 0.5 * math.log(vocab), "the loss did not fall far enough: train longer?"
assert two_back.mean() > 0.5, "attention did not settle on the token two back"

# %% [markdown]
# ## Try this
#
# - Remove the `/ math.sqrt(d_model)` in the scores and make `d_model` 512: how do the rows of
#   `weights` look?
# - Drop the position embedding from `LookBack.forward`. Can the layer still learn the task? Why
#   not? (Hint: without positions, attention cannot tell "two back" from any other earlier word.
#   It still beats chance by far, at every position: the answer is always one of the earlier
#   words, and at positions 2 and 3 there are only two or three of them.)
# - Change the task in `batch` to "the token three back", or to "the largest token so far".
#   Which can one attention layer learn, and what does its pattern look like?
# - Give `LookBack` two heads and the task "the sum of the tokens one and two back (mod 16)".
#   Do the two heads split the work?
