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
# # 3. Build and train your own GPT
#
# A GPT is the decoder half of "Attention Is All You Need" on its own: a stack of masked
# self-attention and feed-forward blocks trained to predict the next token. In this notebook you
# build one from attnlab's parts, count where its parameters live, check its loss before
# training, train a character-level "baby GPT" on tiny Shakespeare, sample from it in several
# ways, and measure why every serious sampler keeps a KV cache.
# About 6 minutes on a 2-core CPU with the default settings.

# %%
import os

# "default": about 6 minutes on a 2-core CPU; "quick": seconds, no downloads;
# "gpu": a bigger run for a CUDA GPU
SIZE = os.environ.get("ATTNLAB_TUTORIAL_SIZE", "default")

# The training text: tiny Shakespeare (1.1M characters) or, at the quick size, Python's own
# standard library, which every Python install carries.
DATA = {
    "quick": "stdlib",
    "default": "tinyshakespeare/input.txt",
    "gpu": "tinyshakespeare/input.txt",
}[SIZE]
# The model's shape: the classic CPU baby GPT, or nanoGPT's 10.7M-parameter GPU model.
SHAPE = {
    "quick": dict(context_length=64, n_layers=4, n_heads=4, d_model=128),
    "default": dict(context_length=64, n_layers=4, n_heads=4, d_model=128),
    "gpu": dict(context_length=256, n_layers=6, n_heads=6, d_model=384),
}[SIZE]
DROPOUT = {"quick": 0.0, "default": 0.0, "gpu": 0.2}[SIZE]
BATCH_SIZE = {"quick": 32, "default": 32, "gpu": 64}[SIZE]
ITERS = {"quick": 40, "default": 3000, "gpu": 5000}[SIZE]
WARMUP = {"quick": 4, "default": 100, "gpu": 100}[SIZE]  # warm-up steps: a tenth of a short run
EVAL_INTERVAL = {"quick": 20, "default": 300, "gpu": 500}[SIZE]
EVAL_ITERS = {"quick": 5, "default": 50, "gpu": 200}[SIZE]
# The longest generation timed in the KV-cache experiment.
LONGEST = {"quick": 128, "default": 512, "gpu": 1000}[SIZE]
DEVICE = "cuda" if SIZE == "gpu" else "cpu"
RUN = "runs/tutorials/03_gpt"

# %%
import dataclasses
import json
import math
import shutil
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from attnlab import GPT, GPTConfig
from attnlab.cli import run as attnlab  # attnlab("..."): a command line, as in a shell
from attnlab.generation import generate, generate_text, stream
from attnlab.training.checkpoints import load_checkpoint

# %% [markdown]
# ## The model as the lecture draws it
#
# The Transformer's decoder reads the tokens so far and predicts the next one. A GPT keeps only
# that decoder: no encoder, so no cross-attention sub-layer. What is left is a stack of
# identical blocks between an embedding and a read-out:
#
# ```
# token ids (B, T)
#   -> token embedding (plus a position signal)                  x: (B, T, d)
#   -> N x [ x = x + MaskedMultiHeadAttention(LayerNorm(x))
#            x = x + FeedForward(LayerNorm(x)) ]
#   -> final LayerNorm -> linear head -> logits (B, T, V) -> softmax over the next token
# ```
#
# Two details differ from the 2017 figure, both from GPT-2: the LayerNorm sits *before* each
# sub-layer ("pre-norm") rather than after the residual addition, which trains more stably in
# deep stacks, and there is one more LayerNorm before the head. Positions enter as rotary
# embeddings (RoPE), which rotate queries and keys inside attention, instead of a sinusoid added
# to the input.
#
# Below is the baby GPT: 4 blocks, 4 heads, width d = 128, a context of 64 characters, and a
# vocabulary of V = 65, the number of distinct characters in tiny Shakespeare.

# %%
VOCAB = 65  # tiny Shakespeare's alphabet: letters, digits, punctuation, space and newline
config = GPTConfig(
    vocab_size=VOCAB,
    **SHAPE,
    positional="rope",  # rotary positions, inside attention
    activation="gelu",  # the feed-forward non-linearity
    bias=False,  # no biases in linear layers and norms, as nanoGPT
)
torch.manual_seed(0)
model = GPT(config)
print(model)

# %% [markdown]
# Read the printout against the diagram:
#
# - `qkv_projection` holds W_Q, W_K and W_V of all heads in one (3d x d) matrix: one matrix
#   product gives every head's queries, keys and values, which are then split into heads of
#   d / h dimensions each.
# - `output_projection` is W_O, which mixes the concatenated heads back into the stream.
# - `feedforward` is the position-wise FFN(x) = W₂ GELU(W₁ x), with a hidden width of 4d as in
#   the paper (512 = 4 x 128; the paper's base model had 2048 = 4 x 512).
# - `stream_in`, `stream_after_mixer`, `stream_out` and `attention_weights` are `HookPoint`s:
#   identity modules that do nothing unless you attach a hook. Tutorial 8 reads the model
#   through them.
# - There is no separate weight matrix in `output_head`: it is *tied* to the token embedding
#   (the paper, section 3.4), so the same vector both represents a token going in and scores
#   it coming out.
#
# ## Where the parameters live
#
# Each block has 4d² weights in attention (W_Q, W_K, W_V, W_O) and 8d² in the feed-forward
# network (d x 4d, then 4d x d): 12d² per block. Let us count by group.


# %%
def parameter_groups(model: torch.nn.Module) -> dict[str, int]:
    """Parameters by where they live; a tied matrix counts once (named_parameters)."""
    groups = {"embeddings": 0, "attention": 0, "MLP": 0, "norms": 0}
    for name, parameter in model.named_parameters():
        if "norm" in name:
            group = "norms"
        elif "embedding" in name:
            group = "embeddings"
        elif "token_mixer" in name:
            group = "attention"
        else:
            group = "MLP"
        groups[group] += parameter.numel()
    return groups


groups = parameter_groups(model)
total = sum(groups.values())
for group, count in groups.items():
    print(f"{group:<11}{count:>10,}  {count / total:6.1%}")
print(f"{'total':<11}{total:>10,}")
d, n_layers = config.d_model, config.n_layers
print(f"12 * n_layers * d**2 = {12 * n_layers * d**2:,} (attention + MLP)")
assert total == model.num_parameters()

# %% [markdown]
# The formula 12·N·d² accounts for attention and MLP exactly; the embedding table adds V·d.
# Two thirds of every block is the MLP, not attention. How does this compare with a real
# GPT-2? Building GPT-2 small on PyTorch's `meta` device creates the modules with shapes but
# no memory, so counting its 124M parameters costs nothing.

# %%
with torch.device("meta"):  # shapes only: no memory is allocated, no numbers drawn
    gpt2_small = GPT(GPTConfig())  # GPTConfig's defaults are GPT-2 small's
gpt2_groups = parameter_groups(gpt2_small)
print(f"GPT-2 small: {sum(gpt2_groups.values()):,} parameters")

fig, ax = plt.subplots(figsize=(9, 2.6))
colours = {"embeddings": "tab:green", "attention": "tab:blue", "MLP": "tab:orange", "norms": "grey"}
for row, counts in enumerate([groups, gpt2_groups]):
    left = 0.0
    all_of_them = sum(counts.values())
    for group, count in counts.items():
        share = count / all_of_them
        ax.barh(row, share, left=left, color=colours[group], label=group if row == 0 else None)
        if share > 0.05:
            ax.text(left + share / 2, row, f"{share:.0%}", ha="center", va="center", color="w")
        left += share
ax.set_yticks([0, 1], ["this GPT", "GPT-2 small"])
ax.set_xlabel("share of the parameters")
ax.legend(ncols=4, loc="upper center", bbox_to_anchor=(0.5, 1.35))
plt.tight_layout()
plt.show()

# %% [markdown]
# GPT-2's 50,257-token vocabulary costs 38.6M parameters in the embedding alone, nearly a third
# of the model; our 65 characters cost almost nothing. As models grow, d² grows faster than
# V·d, and the blocks (mostly their MLPs) take over.
#
# ## One forward pass, and the loss before training
#
# The model maps token ids (B, T) to logits (B, T, V): at *every* position a score for every
# possible next token. Training compares position t's prediction with token t + 1, so the
# targets are the inputs shifted by one, and the loss is the mean cross-entropy
# −log p(correct next token).
#
# What should the loss be before any training? GPT-2's initialisation draws weights from
# N(0, 0.02), so the logits all start close to 0, the softmax is close to uniform, and every
# token gets probability about 1/V. The loss is then −log(1/V) = ln V = ln 65 ≈ 4.17 nats.
# It is the first sanity check of any language model: a much higher starting loss means the
# model starts *confidently wrong* (a broken initialisation), and it wastes its first steps
# undoing that.

# %%
torch.manual_seed(0)
ids = torch.randint(0, VOCAB, (4, config.context_length + 1))  # 4 random sequences
inputs, targets = ids[:, :-1], ids[:, 1:]  # predict each next token
with torch.no_grad():
    logits, loss = model(inputs, targets=targets)
print(f"inputs {tuple(inputs.shape)} -> logits {tuple(logits.shape)}")
print(f"logits: mean {logits.mean():+.4f}, std {logits.std():.4f}")
print(f"initial loss {loss.item():.4f} nats; ln V = ln {VOCAB} = {math.log(VOCAB):.4f}")

# %%
# Check: an untrained model predicts (almost) uniformly, so its loss is within 0.1 of ln V.
assert abs(loss.item() - math.log(VOCAB)) < 0.1, loss.item()

# %% [markdown]
# The decoder's self-attention is *masked*: position t may attend to positions 0..t only (the
# paper: "to prevent leftward information flow"). Otherwise training would be trivial, since
# the answer at position t is the input at t + 1. We can test the mask directly: change a token
# in the middle of a sequence, and no logit before it may move.

# %%
changed = inputs.clone()
middle = config.context_length // 2
changed[:, middle] = (changed[:, middle] + 1) % VOCAB  # another token at one position
with torch.no_grad():
    logits_changed, _ = model(changed)
moved = (logits_changed - logits).abs().amax(dim=(0, 2))  # largest change at each position
print(f"largest change before position {middle}: {moved[:middle].max():.2e}")
print(f"largest change from position {middle} on:  {moved[middle:].max():.2e}")
# Check: the future never leaks into the past (causal mask), while the change does propagate.
assert moved[:middle].max() < 1e-5 and moved[middle:].max() > 1e-3

# %% [markdown]
# ## Train the baby GPT on tiny Shakespeare
#
# `attnlab train gpt` does what you would write by hand: it reads the text, builds a character
# tokenizer (one id per distinct character), keeps the last 10% for validation, and trains on
# random windows of 64 characters with AdamW (a learning rate that warms up for 100 steps, 4
# of the 40 at the quick size, then falls along a cosine to a tenth). Every `--eval-interval`
# steps it prints the mean loss on fixed validation batches and saves a checkpoint.
#
# Each step sees 32 windows of 64 characters, about 2,000 predictions. With the default
# settings, 3,000 steps take about 4 minutes on 2 CPU cores and reach a validation loss around
# 1.6 nats per character (the quick size only checks that the loss falls: its model reads
# Python code, so its samples of "ROMEO:" below are mostly spaces and punctuation).

# %%
shape_flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in SHAPE.items())
command = (
    f"train gpt --data {DATA} --tokenizer char {shape_flags} --positional rope "
    f"--activation gelu --no-bias --dropout {DROPOUT} --batch-size {BATCH_SIZE} "
    f"--learning-rate 1e-3 --min-learning-rate 1e-4 --warmup-iters {WARMUP} --max-iters {ITERS} "
    f"--eval-interval {EVAL_INTERVAL} --eval-iters {EVAL_ITERS} --device {DEVICE} --out {RUN}"
)
print("attnlab", command)
shutil.rmtree(RUN, ignore_errors=True)  # start afresh when the notebook runs again
started = time.perf_counter()
attnlab(command)
print(f"training took {time.perf_counter() - started:.0f} s")

# %% [markdown]
# The run directory holds the weights, the tokenizer and `metrics.jsonl`: one JSON record per
# step (train loss, learning rate, tokens per second), with `val_loss` added at evaluations.
# Reading it ourselves:

# %%
with open(f"{RUN}/metrics.jsonl") as f:
    records = [json.loads(line) for line in f if line.strip()]
steps = np.array([r["step"] for r in records])
train_loss = np.array([r["train_loss"] for r in records])
evals = [r for r in records if "val_loss" in r]
window = max(1, min(50, len(records) // 5))  # a moving average: the trend under the noise
smooth = np.convolve(train_loss, np.ones(window) / window, mode="valid")

vocab = load_checkpoint(RUN).model.config.vocab_size  # the trained model's V
fig, ax = plt.subplots(figsize=(9, 4))
ax.plot(steps, train_loss, color="tab:blue", alpha=0.25, lw=0.8, label="train (each step)")
ax.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"train ({window}-step mean)")
ax.plot(
    [r["step"] for r in evals],
    [r["val_loss"] for r in evals],
    "o-",
    color="tab:red",
    label="validation",
)
ax.axhline(math.log(vocab), color="grey", ls="--", label=f"ln V = ln {vocab} (uniform guess)")
ax.set(xlabel="step", ylabel="loss (nats per character)", title="The baby GPT learning")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

final_val = evals[-1]["val_loss"]
speed = np.median([r["tokens_per_s"] for r in records])
print(f"final val loss {final_val:.3f} nats = {final_val / math.log(2):.2f} bits per character")
print(f"median speed {speed:,.0f} tokens/s")

# %%
# Check: training took the validation loss at least 1 nat below the uniform guess ln V.
assert final_val < math.log(vocab) - 1.0, final_val

# %% [markdown]
# The curve falls fast at first: the model learns which characters are common, then which
# follow which (bigrams: "q" before "u"), then words, then the layout of a play, where a name
# in capitals ends with a colon and a line break. A val loss near 1.6 nats is about 2.3 bits
# per character: far from an English writer, but enough for text that *looks* like
# Shakespeare. The validation loss ends a little above the training loss: partly the model
# fitting its training text more closely, partly because the validation text is the last
# tenth of the file, scenes and characters the training windows never showed.
#
# ## Sampling: from logits to text
#
# Generation is the forward pass in a loop: feed the text so far, take the logits z of the
# last position, turn them into probabilities, draw the next token, append it, repeat. How we
# turn logits into a choice changes the text a lot:
#
# - **greedy**: always the most likely token (argmax).
# - **temperature T**: sample from softmax(z / T). T < 1 sharpens the distribution towards
#   the top tokens, T > 1 flattens it towards uniform; T → 0 becomes greedy.
# - **top-k**: keep only the k most likely tokens, renormalise, sample.
# - **top-p** (nucleus sampling, Holtzman et al. 2020): keep the smallest set of most likely
#   tokens whose probability adds up to at least p; the set is small when the model is sure
#   and large when it is not.
#
# First, the distribution itself: the model's probabilities for the character after a prompt,
# at three temperatures, and its entropy as the temperature changes.

# %%
checkpoint = load_checkpoint(RUN, DEVICE)
model, tokenizer = checkpoint.model, checkpoint.tokenizer
PROMPT = "ROMEO:\nI will "
prompt_ids = torch.tensor([tokenizer.encode(PROMPT)], device=DEVICE)
with torch.no_grad():
    logits, _ = model(prompt_ids)
last = logits[0, -1].float().cpu()  # (V,): scores for the next character


def shown(token_id: int) -> str:
    """A character as a readable label: space and newline made visible."""
    return {" ": "␣", "\n": "\\n"}.get(tokenizer.decode([token_id]), tokenizer.decode([token_id]))


top = torch.argsort(last, descending=True)[:12]  # the 12 likeliest characters
temperatures = np.linspace(0.05, 2.5, 50)
entropies = [
    float(-(p * p.clamp_min(1e-12).log()).sum())
    for p in (torch.softmax(last / t, dim=-1) for t in temperatures)
]
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
for offset, temperature in zip((-0.27, 0.0, 0.27), (0.5, 1.0, 1.5), strict=True):
    probabilities = torch.softmax(last / temperature, dim=-1)[top]
    left.bar(np.arange(12) + offset, probabilities, width=0.27, label=f"T = {temperature}")
left.set_xticks(range(12), [shown(int(i)) for i in top])
left.set(title=f"next character after {PROMPT!r}", ylabel="probability")
left.legend()
right.plot(temperatures, entropies)
right.axhline(math.log(len(last)), color="grey", ls="--", label="ln V (uniform)")
right.set(xlabel="temperature T", ylabel="entropy (nats)", title="Temperature dials the entropy")
right.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Now whole samples, the same prompt and the same random seed for each setting, so only the
# decoding rule differs. `generate_text` is the Python side of `attnlab sample`.

# %%
settings = {
    "greedy": dict(temperature=0),
    "T = 0.5": dict(temperature=0.5),
    "T = 1.0": dict(temperature=1.0),
    "T = 1.5": dict(temperature=1.5),
    "T = 1.5, top-k 10": dict(temperature=1.5, top_k=10),
    "T = 1.5, top-p 0.9": dict(temperature=1.5, top_p=0.9),
}
for name, options in settings.items():
    text = generate_text(model, tokenizer, PROMPT, 160, seed=1, **options)
    words = text.split()
    distinct = len(set(words)) / max(len(words), 1)
    print(f"----- {name} (distinct words: {distinct:.0%})")
    print(PROMPT + text)

# %% [markdown]
# What to look for:
#
# - **Greedy** is deterministic and soon falls into a loop: once the likeliest continuation
#   leads back to a text it has seen, it repeats forever. Its share of distinct words is the
#   lowest.
# - **T = 0.5** stays close to the model's favourite words: safe, plausible, a little dull.
# - **T = 1.0** samples the distribution the model learned; this is what its loss measures.
# - **T = 1.5** flattens the distribution so much that rare characters are drawn often, and
#   words fall apart into invented spellings.
# - **top-k and top-p** cut off the *tail* of the distribution, the many individually unlikely
#   characters whose total probability is what spoils the T = 1.5 text. With the tail gone,
#   even a high temperature writes mostly real words again.
#
# ## The KV cache: why generation need not be quadratic
#
# At step t the model needs the keys and values of all t tokens so far, in every layer. A
# naive sampler feeds the whole sequence again at each step, so step t does the work of t
# tokens and N steps do 1 + 2 + ... + N ≈ N²/2 token-passes: **quadratic**. But with the causal
# mask, the keys and values of earlier positions never change when a token is appended. A KV
# cache keeps them, and each step runs only the newest token through the model, attending over
# the cached keys: roughly constant work per step, **linear** in N in total (plus a small
# attention term that grows with t).
#
# The cost of a step does not depend on what the weights have learned, so to measure it over
# longer texts than our 64-character context we use an untrained model of the same shape with
# a context of 1024 positions. `stream` yields each new token as soon as it is chosen, so one
# run gives the time of every step; `use_cache=False` is what `attnlab sample --no-cache` does.
# Timings on a shared machine are noisy, so each is taken 3 times and the fastest kept.


# %%
def step_times(model: torch.nn.Module, n_tokens: int, use_cache: bool) -> np.ndarray:
    """Seconds each of n_tokens greedy decoding steps took, from a one-token prompt."""
    times = [time.perf_counter()]
    for _ in stream(model, [0], n_tokens, temperature=0, use_cache=use_cache):
        times.append(time.perf_counter())  # stream yields an int: the step has finished
    return np.diff(times)


torch.manual_seed(0)
long_config = dataclasses.replace(config, vocab_size=vocab, context_length=1024)
long_model = GPT(long_config).to(DEVICE).eval()
step_times(long_model, 8, use_cache=True)  # warm-up: first calls pay one-off costs
# the fastest of 3 runs for each step: other programs can only ever make a step slower
with_cache = np.min([step_times(long_model, LONGEST, use_cache=True) for _ in range(3)], axis=0)
without_cache = np.min([step_times(long_model, LONGEST, use_cache=False) for _ in range(3)], 0)
print(f"{LONGEST} tokens: {with_cache.sum():.2f} s with the KV cache, {without_cache.sum():.2f} s")
print(f"without it: {without_cache.sum() / with_cache.sum():.1f} times as long")

# %%
n = np.arange(1, LONGEST + 1)
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
left.plot(n, np.cumsum(without_cache), label="no cache: recompute everything")
left.plot(n, np.cumsum(with_cache), label="KV cache")
left.set(xlabel="tokens generated N", ylabel="total time (s)", title="Time to generate N tokens")
left.legend()
right.plot(n, 1000 * without_cache, lw=0.8, label="no cache")
right.plot(n, 1000 * with_cache, lw=0.8, label="KV cache")
right.set(xlabel="position of the new token", ylabel="time of that step (ms)", title="Each step")
right.legend()
for ax in (left, right):
    ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# On the right, each step without the cache costs more than the one before: it reprocesses
# every earlier token, so its time grows linearly with the position, and the total on the left
# bends up like a parabola. With the cache the step time stays nearly flat (it grows only
# slightly, as attention reads a longer cache), and the total is close to a straight line. At
# short lengths the two are similar, because a one-token step is dominated by fixed costs
# (about a hundred small PyTorch calls), not arithmetic.
#
# The price is memory: the cache holds a key and a value vector per token per layer,
# 2 x N_layers x d numbers per token. For this model that is 2 x 4 x 128 = 1,024 numbers
# (4 KiB in float32) per token; for GPT-2 small 2 x 12 x 768 = 18,432 (72 KiB), so 72 MiB for one
# 1024-token sequence. For big models serving many users, this cache, not the weights, is
# often what fills the GPU (and why grouped-query attention shares keys and values between
# heads).
#
# The cache must change *only* the speed. Inside the context, greedy decoding with and without
# it must choose exactly the same tokens:

# %%
within = 48  # new tokens: prompt and all stay inside the 64-character context
prompt_tokens = [tokenizer.encode(PROMPT)]
cached = generate(model, prompt_tokens, within, temperature=0, use_cache=True)
recomputed = generate(model, prompt_tokens, within, temperature=0, use_cache=False)
print(repr(tokenizer.decode(cached[0])))
# Check: the KV cache gives the same greedy tokens as recomputing every step.
assert cached == recomputed

# %% [markdown]
# Past the context window the two differ slightly by design: a model with relative positions
# (RoPE) keeps a *sliding* cache, so each new token attends to the last 64 cached keys, which
# were computed from their own earlier windows; recomputing re-reads the last 64 tokens from
# scratch. Both are legitimate ways to go beyond the context.
#
# The same from the command line, with the settings of the samples above (`--no-cache` turns
# the cache off; the last line, on stderr, gives the time):

# %%
attnlab(f'sample {RUN} --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8 --top-k 10')

# %% [markdown]
# ## Try this
#
# 1. Make the model deeper or wider (`SHAPE`), or train longer: how does the final val loss
#    change, and how many parameters did each improvement cost? Where do the new parameters
#    go, by the formula 12·N·d²?
# 2. Train once with `--positional learned` instead of `rope` into a folder of its own (set
#    `RUN = "runs/tutorials/03_gpt_learned"` before the training cell, so the first model
#    stays) and compare the val loss. Then time `step_times(model, 300, use_cache=True)` on
#    both trained models: past 64 characters the learned-positions model re-runs its whole
#    window at every step, even with the cache. Why can its cached keys not simply slide
#    along, as RoPE's do?
# 3. Sample at T = 0.8 with `top_p` from 0.5 to 1.0. At which p does the text start to
#    degrade? Count how many characters the nucleus keeps at a few positions of a sample (those
#    that `attnlab.generation`'s `top_p_filter(apply_temperature(logits, 0.8), p)` keeps finite).
# 4. Replace `generate_text` by your own loop: the model's logits at the last position,
#    `attnlab.generation.sample_next`, append, repeat. Add a KV cache with `model.new_cache()`
#    and `model(ids, cache=cache)`, and check you get the same greedy text.
# 5. With a network: `attnlab convert gpt2 --out runs/gpt2` brings GPT-2 (124M parameters) in;
#    `train gpt --init runs/gpt2 --data tinyshakespeare --context-length 256 --batch-size 8
#    --time-limit 10` fine-tunes it (about 15 s a step on 2 cores). Compare its samples with
#    the baby GPT's.
