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
# # 8. Look inside
#
# A trained Transformer is not a black box: every attention weight and every vector of the
# residual stream can be read, and changed. In this notebook you train a small two-layer GPT
# and watch *induction heads*, the circuit behind in-context copying, form during training;
# then you look at its attention, read its predictions layer by layer (the logit lens), cut
# and reorder its layers, and switch off single heads to see what each is for.
# About 3 to 4 minutes on a 2-core CPU with the default settings.

# %%
import os

# "default": about 3 to 4 minutes on a 2-core CPU; "quick": a small check in 10-30 seconds
# that needs no downloads; "gpu": a bigger run for a CUDA GPU
SIZE = os.environ.get("ATTNLAB_TUTORIAL_SIZE", "default")

DATA = {
    "quick": "stdlib",
    "default": "tinyshakespeare/input.txt",
    "gpu": "tinyshakespeare/input.txt",
}[SIZE]
ITERS = {"quick": 40, "default": 3000, "gpu": 5000}[SIZE]
WARMUP = {"quick": 4, "default": 100, "gpu": 100}[SIZE]  # warm-up steps: a tenth of a short run
EVAL_INTERVAL = {"quick": 10, "default": 50, "gpu": 50}[SIZE]
BATCH_SIZE = {"quick": 32, "default": 32, "gpu": 64}[SIZE]
PRINT_EVERY = {"quick": 10, "default": 500, "gpu": 500}[SIZE]  # steps between log lines shown
DEVICE = "cuda" if SIZE == "gpu" else "cpu"
RUN = "runs/tutorials/08_look_inside"

# %%
import contextlib
import io
import json
import math
import shutil

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from attnlab.cli import run as attnlab  # attnlab("..."): a command line, as in a shell
from attnlab.interpretability import ablate_heads, capture
from attnlab.interpretability.induction import induction_scores
from attnlab.interpretability.lens import logit_lens
from attnlab.training.checkpoints import load_checkpoint


def show_png(path: str, width: float = 9) -> None:
    """Show a PNG file that an attnlab command wrote."""
    image = plt.imread(path)
    height = min(width * image.shape[0] / image.shape[1], 4)
    plt.figure(figsize=(height * image.shape[1] / image.shape[0], height))
    plt.imshow(image)
    plt.axis("off")
    plt.show()


# %% [markdown]
# ## Induction heads
#
# Language models get better at predicting a text the further they read into it: a name, a
# phrase or a spelling that appeared once is likely to appear again. Olsson et al. (2022, "In-
# context Learning and Induction Heads") traced much of this to a two-step circuit that needs
# two attention layers:
#
# 1. a **previous-token head** in an early layer copies into each position the identity of
#    the token *before* it;
# 2. an **induction head** in a later layer, at the current token A, looks for earlier
#    positions whose *previous* token was A (it matches its query against what step 1 wrote
#    there) and copies the token found there, B. In short: `... A B ... A → B`.
#
# They found that these heads form suddenly during training, in a *phase change*: over a few
# hundred steps the loss drops faster than before, and the model's ability to use its context
# jumps. We reproduce that on tiny Shakespeare with a 2-layer, 64-wide character model. To make
# copying pay off within a few minutes, every training window ends with its own beginning
# again (`repeat = true`: the last quarter to half of each window repeats its first
# characters, at a varying distance, so only matching the *content* finds the earlier copy).
#
# `probes = "induction"` makes the trainer score the model at every evaluation, on random
# tokens repeated twice (text it cannot have memorised):
#
# - the **induction score**: for the best head, the attention a second-copy token pays to the
#   token right after its earlier occurrence (1 = all of it);
# - the **in-context score**: the loss on the second copy minus the loss on the first. It is
#   near 0 when the model does not use the earlier copy, and negative when it does.
#
# The whole recipe is one config file (as `configs/induction_shakespeare.toml` in the
# repository); the notebook writes its own copy:

# %%
config_text = f"""\
data = "{DATA}"
tokenizer = "char"
repeat = true  # every window ends with its own beginning again

[model]
context_length = 128
n_layers = 2
n_heads = 4
d_model = 64
positional = "rope"

[training]
batch_size = {BATCH_SIZE}
learning_rate = 3e-3
warmup_iters = {WARMUP}  # attnlab's default is 100
max_iters = {ITERS}
eval_interval = {EVAL_INTERVAL}
eval_iters = 5
probes = "induction"
device = "{DEVICE}"
"""
os.makedirs("runs/tutorials", exist_ok=True)
CONFIG = "runs/tutorials/08_induction.toml"
with open(CONFIG, "w") as f:
    f.write(config_text)
print(config_text)

# %% [markdown]
# With an evaluation every 50 steps the run prints 60 lines; we keep its log and show a line
# every few hundred steps. The default run takes 3 to 4 minutes.

# %%
shutil.rmtree(RUN, ignore_errors=True)  # start afresh when the notebook runs again
log = io.StringIO()
try:
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        attnlab(f"train gpt --config {CONFIG} --out {RUN}")
finally:  # also when it fails: the log says why
    for line in log.getvalue().splitlines():
        is_eval = line.startswith("step ")
        if not is_eval or int(line.split()[1].rstrip(":")) % PRINT_EVERY == 0:
            print(line)

# %% [markdown]
# Every evaluation is a record in `metrics.jsonl` with `val_loss`, `induction_score` and
# `in_context_score`. We plot them against the step and mark where the in-context score falls
# fastest.

# %%
with open(f"{RUN}/metrics.jsonl") as f:
    records = [json.loads(line) for line in f if line.strip()]
evals = [r for r in records if "val_loss" in r]
eval_steps = np.array([r["step"] for r in evals])
val_loss = np.array([r["val_loss"] for r in evals])
induction = np.array([r["induction_score"] for r in evals])
in_context = np.array([r["in_context_score"] for r in evals])

# The phase change: the largest fall of the in-context score over 4 evaluations in a row.
span = min(4, len(evals) - 1)
fall = in_context[span:] - in_context[:-span]
change = int(eval_steps[int(np.argmin(fall)) + span // 2])

fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4), sharex=True)
train_steps = [r["step"] for r in records]
top.plot(train_steps, [r["train_loss"] for r in records], lw=0.5, alpha=0.4, label="train")
top.plot(eval_steps, val_loss, "o-", ms=3, label="validation")
top.set_ylabel("loss")
top.legend()
bottom.plot(eval_steps, in_context, "o-", ms=3, color="tab:purple")
bottom.axhline(0, color="grey", lw=0.8)
bottom.set_xlabel("step")
bottom.set_ylabel("in-context score (nats)", color="tab:purple")
right = bottom.twinx()  # the induction score is an attention share: a scale of its own
right.plot(eval_steps, induction, "o-", ms=3, color="tab:green")
right.set_ylabel("induction score", color="tab:green")
for ax in (top, bottom):
    ax.axvline(change, color="tab:red", ls="--", lw=1)
    ax.grid(alpha=0.3)
top.set_title(f"steepest fall of the in-context score near step {change}")
plt.tight_layout()
plt.show()
print(
    f"first evaluation (step {eval_steps[0]}): induction score {induction[0]:.3f}, "
    f"in-context score {in_context[0]:+.3f}"
)
print(
    f"last evaluation (step {eval_steps[-1]}): induction score {induction[-1]:.3f}, "
    f"in-context score {in_context[-1]:+.3f}"
)

# %%
# Check: the probe's scores were logged at every evaluation, and in range: an attention share
# lies in [0, 1], and a loss difference is a finite number.
assert len(evals) == ITERS // EVAL_INTERVAL, "metrics.jsonl lacks some evaluations"
assert all(0 <= score <= 1 for score in induction), induction
assert all(math.isfinite(score) for score in in_context), in_context

# %% [markdown]
# With the default settings the picture has three parts (the quick run stops long before):
#
# - **Before the change** (to about step 700) the model learns ordinary statistics: letters,
#   common words. The in-context score hovers near zero: a repeated passage is predicted no
#   better the second time than the first.
# - **The change** (around step 800): within a few hundred steps the in-context score falls to
#   −0.3 and beyond, the induction score rises several-fold, and the validation loss drops
#   faster than before, since a quarter to a half of every validation window is a repeat.
# - **After**: the scores keep improving slowly; the circuit is in place and is refined.
#
# The induction score stays small in absolute terms (about 0.1) because it is measured on
# *random* characters, far from what the model trained on. What it shows is the mechanism
# being built, suddenly, at a point in training, which is Olsson et al.'s observation.
#
# `attnlab inspect induction` gives the same scores for every head, plus a *copying* score:
# how much the head's output, read through the model's head, raises the token it should copy
# (0.5 = chance, 1 = always ranks it first).

# %%
attnlab(f"inspect induction {RUN}")

# %% [markdown]
# ## The attention viewer
#
# `attnlab inspect attention` runs a text through the model and records every head's weights
# softmax(Q Kᵀ / √d) in every layer. It writes one self-contained HTML page: open it from disk
# in any browser (it fetches nothing) to see every head as a thumbnail; hover over a token to
# see where it looks and what looks at it, click to keep it. `--png` also draws all heads as
# heatmaps: a row is a query (the character attending), a column a key (the character attended
# to).
#
# A text that repeats itself is the induction head's favourite input. In training, the repeat
# came 65 to 97 characters after the original, so our text repeats a 76-character line at that
# distance:

# %%
LINE = "Whether 'tis nobler in the mind to suffer the slings and arrows of fortune, "
TEXT = LINE + LINE[:50]  # 126 characters: the line, then its first 50 again
attnlab(f'inspect attention {RUN} --text "{TEXT}" --out {RUN}/view.html --png {RUN}/heads.png')
print("open this file in a browser:", os.path.abspath(f"{RUN}/view.html"))
show_png(f"{RUN}/heads.png")

# %% [markdown]
# Every map is lower-triangular: the causal mask lets a query see only the keys at or before
# it. In a trained run, look for two shapes:
#
# - in layer 0, weight on the line just below the diagonal: each character attends to the one
#   before it. These are **previous-token heads**, the first step of the circuit;
# - in layer 1, a head with a second line parallel to the diagonal, 75 columns to the left of
#   it, in the bottom rows: each character of the repeat attends to the character *after* its
#   earlier occurrence in the first line. That is the **induction head**.
#
# We can pull the same weights out in Python with `capture`, which records what passes through
# every hook point during a forward pass, and find the heads by measurement rather than by
# eye: how much weight each layer-0 head puts on the previous position, and which head the
# induction probe ranks best.

# %%
checkpoint = load_checkpoint(RUN)
model, tokenizer = checkpoint.model, checkpoint.tokenizer
ids = torch.tensor([tokenizer.encode(TEXT)])
with torch.no_grad(), capture(model) as seen:
    model(ids)
print({name: tuple(weights.shape) for name, weights in seen.attention.items()})

first_layer = seen.attention["blocks.0.token_mixer"][0]  # (H, T, T)
to_previous = first_layer.diagonal(offset=-1, dim1=1, dim2=2).mean(-1)  # (H,) weight on t - 1
shares = ", ".join(f"{share:.0%}" for share in to_previous.tolist())
print(f"layer 0, share of each head's weight on the previous character: {shares}")
previous_head = int(to_previous.argmax())
n_ordinary = tokenizer.vocab_size - len(tokenizer.special_tokens)
report = induction_scores(model, n_tokens=n_ordinary)  # the probe, on random characters
induction_layer, induction_head, best_score = report.best
print(f"induction head: layer {induction_layer}, head {induction_head} (score {best_score:.3f})")

fig, axes = plt.subplots(1, 2, figsize=(9, 4))
panels = [(0, previous_head, "previous-token"), (induction_layer, induction_head, "induction")]
for ax, (layer, head, name) in zip(axes, panels, strict=True):
    weights = seen.attention[f"blocks.{layer}.token_mixer"][0, head]
    ax.imshow(weights, cmap="Blues", vmin=0, vmax=weights.max().item())
    ax.set(title=f"{name} head: layer {layer}, head {head}", xlabel="key", ylabel="query")
plt.tight_layout()
plt.show()

# %% [markdown]
# In the trained model, the induction head's stripe starts where the repeat starts (row 76)
# and keeps a constant distance of 75 from the diagonal: at each character of the repeat, the
# head finds the same character in the first line and attends to the one after it, which is
# exactly the character to predict next. Where the text does not repeat yet (the first 76
# rows), the head has nothing to match and falls back to a few earlier positions, the vertical
# stripes (keys that many queries read).
#
# ## The logit lens: reading the residual stream layer by layer
#
# Each block *adds* its output to the residual stream, and the model reads the stream only at
# the end (final LayerNorm, then the output matrix). The logit lens (nostalgebraist, 2020)
# applies that same read-out to the stream after *every* layer (attnlab: after every
# sub-layer), as if the model stopped there, to see where each prediction forms. `attnlab
# inspect lens` prints each row's top prediction at each position and draws it coloured by its
# probability.

# %%
LENS_TEXT = "to be, or not to be"
attnlab(f'inspect lens {RUN} --text "{LENS_TEXT}" --png {RUN}/lens.png')
show_png(f"{RUN}/lens.png")

# %% [markdown]
# The rows, top to bottom: the embeddings alone, then the stream after layer 0's attention
# ("0 mixer") and MLP ("0 out"), then after layer 1's. The last row is the model's real
# prediction. The embeddings row mostly "predicts" the input character itself: the output
# matrix is tied to the embedding, and a vector scores highest against itself. The guess of
# the *next* character is built by the blocks, most of it by layer 0 already.
#
# Now the lens on the repeated line, in numbers: the loss of the correct next character read at
# each row, on the first line and on the repeat. `logit_lens` is the Python function behind the
# command.

# %%
lens = logit_lens(model, (ids,))  # lens.logits: (rows, T, V)
log_probs = lens.logits[:, :-1].float().log_softmax(-1)  # predictions of characters 1..T-1
targets = ids[0, 1:].expand(len(lens.rows), -1)  # (rows, T-1)
row_losses = -log_probs.gather(-1, targets[..., None])[..., 0]  # (rows, T-1)
repeat_start = len(LINE)  # the first character predicted from inside the repeat
first_line = row_losses[:, : repeat_start - 1].mean(-1)
repeat = row_losses[:, repeat_start:].mean(-1)
for name, first, second in zip(lens.rows, first_line, repeat, strict=True):
    print(f"{name:<11} loss on the first line {first:6.3f}, on the repeat {second:6.3f}")

fig, ax = plt.subplots(figsize=(9, 3))
where = np.arange(len(lens.rows))
ax.bar(where - 0.2, first_line, width=0.4, label="first line")
ax.bar(where + 0.2, repeat, width=0.4, label="repeat")
ax.set_xticks(where, lens.rows)
ax.set(xlabel="residual stream read after", ylabel="loss (nats)", yscale="log")
ax.legend()
plt.show()

# %% [markdown]
# Up to "0 out" the repeat is no easier than the first line: nothing so far has looked back
# far enough. The gap opens at "1 mixer", the output of layer 1's attention, where the
# induction head writes: the repeat becomes several times easier to predict than the first
# line. The lens shows *where* in the network the copy happens.
#
# ## Layer surgery
#
# What if a layer were missing, ran twice, or ran in the other order? Residual networks often
# survive such surgery better than you would expect, because each layer only adds to a shared
# stream. `attnlab inspect layers` evaluates the loss on the data's validation text (plain
# text, no repeats) with every layer dropped, duplicated, and every pair swapped.

# %%
attnlab(f"inspect layers {RUN} --data {DATA} --png {RUN}/layers.png")
show_png(f"{RUN}/layers.png", width=8)

# %% [markdown]
# With only two layers, every change costs loss, and not evenly. In our default run, dropping
# layer 0 more than doubled the loss, while dropping layer 1 cost about half a nat: layer 0
# turns the raw embeddings (which, as the lens showed, predict nothing) into the features that
# everything after it reads, and layer 1 refines them. Duplicating layer 0 hurts too: layer 1
# was trained on layer 0's output, not on layer 0 applied twice. And swapping the two breaks
# the induction circuit by construction: the induction head can only read what a
# previous-token head has written *before* it.
#
# ## Switching off heads: ablation in Python
#
# The strongest evidence that a head does something is to remove it and measure. `capture`
# accepts `patches`: functions that replace the tensor at a hook point. `ablate_heads([h])`
# zeroes head h's attention weights, so it adds nothing to its layer's output (zero
# ablation). We switch off each of the 8 heads in turn and measure the loss on the first line
# and on the repeat.


# %%
def copy_losses(patches: dict | None = None) -> tuple[float, float]:
    """Mean loss on the first line and on the repeat of TEXT, with these patches in place."""
    with torch.no_grad(), capture(model, attention=False, streams=False, patches=patches):
        logits, _ = model(ids)
    losses = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")
    return losses[: repeat_start - 1].mean().item(), losses[repeat_start:].mean().item()


baseline_first, baseline_repeat = copy_losses()
print(f"no head switched off: loss {baseline_first:.3f} on the first line,", end=" ")
print(f"{baseline_repeat:.3f} on the repeat")
n_layers, n_heads = model.config.n_layers, model.config.n_heads
change_first = np.zeros((n_layers, n_heads))
change_repeat = np.zeros((n_layers, n_heads))
for layer in range(n_layers):
    point = f"blocks.{layer}.token_mixer.attention_weights"  # this layer's hook point
    for head in range(n_heads):
        first, second = copy_losses({point: ablate_heads([head])})
        change_first[layer, head] = first - baseline_first
        change_repeat[layer, head] = second - baseline_repeat

# %%
# Check: a patch that ablates no head leaves the loss as it was, to float rounding (patching
# makes attention take its written-out path instead of the fused kernel: the same function).
last_layer = f"blocks.{n_layers - 1}.token_mixer.attention_weights"
unchanged = copy_losses({last_layer: ablate_heads([])})
assert abs(unchanged[1] - baseline_repeat) < 1e-4, (unchanged, baseline_repeat)

# %%
limit = max(np.abs(change_repeat).max(), np.abs(change_first).max(), 1e-3)
fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
for ax, change_map, name in zip(
    axes, (change_first, change_repeat), ("the first line", "the repeat"), strict=True
):
    image = ax.imshow(change_map, cmap="RdBu_r", vmin=-limit, vmax=limit)
    for (layer, head), value in np.ndenumerate(change_map):
        ax.text(head, layer, f"{value:+.2f}", ha="center", va="center", fontsize=9)
    ax.set(title=f"loss change on {name}", xlabel="head switched off", ylabel="layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
fig.colorbar(image, ax=axes, label="nats")
plt.show()

# %% [markdown]
# Switching off the induction head barely changes the loss on the first line, where there is
# nothing to copy, and sends the loss on the repeat up by more than a nat: without it the model
# predicts the repeat about as badly as the original. Layer 0's heads matter for both parts of
# the text, since they do general work; some matter more for the repeat, as heads whose
# output the induction head reads should. (In our run the one that mattered most was not the
# clearest previous-token head: an attention pattern hints at a head's role, it does not prove
# it.) Switching off is a causal test, stronger than "this head's attention looks like
# copying": remove the induction head, and the copying is gone. (`attnlab inspect heads RUN`
# does the same on the data's validation text, the windows `inspect layers` scores; `attnlab
# inspect attribution RUN --text ...` splits one logit into each head's direct share; `attnlab
# inspect patching` runs a corrupted text with one activation at a time taken from a clean one.)
#
# ## Try this
#
# Items 2 and 3 train again: first set `RUN` to a new folder, or the run above is overwritten.
#
# 1. Repeat a shorter line: `LINE = LINE[:40]` in its cell makes `TEXT` those 40 characters
#    twice. Does the induction head still find the copy? Compare with the distances the
#    training windows used (65 to 97 characters) and explain.
# 2. Train again with `repeat = false` in the config. Does the phase change still happen
#    within 3,000 steps? What do the induction and in-context scores do?
# 3. Change `n_layers` to 1. Can a single attention layer form an induction head? Explain with
#    the two-step circuit.
# 4. Run `inspect attention`, `lens` and `layers` on your baby GPT from tutorial 3: this needs
#    `runs/tutorials/03_gpt`, which tutorial 3 writes when run at the default size from the
#    same folder as this notebook. With 4 layers, which ones can be dropped or swapped cheaply?
# 5. Activation patching: which activations carry the copy? `CLEAN = TEXT[:120]` ends in
#    "to suffer th"; the repeat copies its next character, `e`, from character 44 of the first
#    line. Let `CORRUPT = CLEAN[:44] + "a" + CLEAN[45:]` change that one, and run
#    `attnlab(f'inspect patching {RUN} --clean "{CLEAN}" --corrupt "{CORRUPT}" --target e
#    --versus a --png {RUN}/patching.png')`. Which head restores most of the gap, and at which
#    positions of which layers does the residual stream carry it? Does that fit the circuit?
