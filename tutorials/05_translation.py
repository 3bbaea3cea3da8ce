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
# # 5. The original Transformer: translation
#
# "Attention Is All You Need" introduced the Transformer as an encoder-decoder for machine
# translation: an encoder reads the German sentence, a decoder writes the English one word by
# word while looking back at the encoder's output. In this notebook you look at the three kinds
# of attention and their masks, count the model's parameters, train it on Multi30k
# (German -> English image captions), decode with greedy and beam search, and score the result
# with BLEU, which you also compute by hand. About 8 minutes on a 2-core CPU with the default
# settings.

# %%
import os

# "default": about 8 minutes on a 2-core CPU; "quick": under a minute, no downloads;
# "gpu": a bigger run for a CUDA GPU
SIZE = os.environ.get("ATTNLAB_TUTORIAL_SIZE", "default")

# What to translate: the embedded task (English number words -> digits, no files needed) or
# Multi30k, German -> English captions of Flickr photos (29,000 training pairs).
DATA = {
    "quick": "",
    "default": "--data multi30k --src de --tgt en",
    "gpu": "--data multi30k --src de --tgt en",
}[SIZE]
# The model: 'tiny' is 2+2 layers of width 64; 'small' is width 256, 4 heads, d_ff 1024 and
# 3+3 layers, of which the default keeps 2+2 to fit the time.
PRESET = {"quick": "tiny", "default": "small", "gpu": "small"}[SIZE]
LAYERS = {"quick": 2, "default": 2, "gpu": 3}[SIZE]  # encoder blocks, and as many decoder blocks
MODEL = f"--preset {PRESET} --n-encoder-layers {LAYERS} --n-decoder-layers {LAYERS}"
# The vocabulary V: the joint BPE learned on the training pairs, asked for the preset's size
BPE_VOCAB = {"quick": 512, "default": 8000, "gpu": 8000}[SIZE]
STEPS = {"quick": 500, "default": 1000, "gpu": 3300}[SIZE]
WARMUP = {"quick": 100, "default": 200, "gpu": 500}[SIZE]
PEAK_LR = {"quick": 2e-3, "default": 1e-3, "gpu": 1e-3}[SIZE]
EVAL_EVERY = {"quick": 50, "default": 125, "gpu": 500}[SIZE]
# Validation sentences for greedy against beam search and the beam-size sweep (the test set
# goes to `evaluate`, once)
SWEEP_SENTENCES = {"quick": 100, "default": 100, "gpu": 1000}[SIZE]
DEVICE = "cuda" if SIZE == "gpu" else "cpu"

# %% [markdown]
# ## The architecture in one picture
#
# The encoder-decoder of the paper (its Figure 1) is two stacks of residual blocks:
#
# - **Encoder block**: self-attention over the source, then a feed-forward network. Every
#   source token may look at every other source token.
# - **Decoder block**: *causal* self-attention over the target written so far, then
#   **cross-attention** (queries from the decoder, keys and values from the encoder's output,
#   the "memory"), then a feed-forward network.
#
# All three are the same function, `Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V`
# (section 3.2.1). They differ only in where Q, K and V come from and in the mask M, which
# puts -∞ on the pairs a query may not look at. Each block wraps its sub-layers as
# `LayerNorm(x + Sublayer(x))` (post-norm, section 3.1), and one embedding matrix serves the
# source, the target and the output projection (section 3.4).

# %%
import math
import shutil

import matplotlib.pyplot as plt
import torch

from attnlab.cli import run as attnlab  # attnlab("..."): a command line, as in a shell
from attnlab.layers import causal_mask, padding_mask
from attnlab.layers.attention import merge_masks

torch.manual_seed(0)
RUN = "runs/tutorials/05_translation/model"  # the model's run directory
shutil.rmtree("runs/tutorials/05_translation", ignore_errors=True)  # start afresh every time
os.makedirs("runs/tutorials/05_translation")

# %% [markdown]
# ## Three masks
#
# Take a batch of two sentence pairs. The shorter source is padded on the right with `<pad>`
# (id 0 here) so both fit in one tensor. The masks are boolean, and in attnlab (as in torch)
# **True means "may attend"**:
#
# - `padding_mask(src, pad_id)`: shape (B, 1, 1, S), no query may look at a padded source key.
#   The encoder's self-attention and the decoder's cross-attention both use it.
# - `causal_mask(T, T)`: shape (T, T), lower triangular: target position i sees positions
#   0..i only. Without it the decoder could copy the next word during training, since
#   the whole target sentence goes in at once (teacher forcing).
#
# Below, the three masks for the *second* sentence pair, built with attnlab's own functions.

# %%
PAD = 0
source_words = ["Zwei", "Hunde", "spielen", "</s>", "<pad>", "<pad>"]
target_words = ["<s>", "Two", "dogs", "are", "playing"]  # what the decoder reads (shifted right)
# token ids (made up: only which ones are <pad> matters for the masks)
src = torch.tensor([[5, 6, 7, 8, 9, 2], [10, 11, 12, 2, PAD, PAD]])  # (B=2, S=6)
S, T = src.size(1), len(target_words)

source_mask = padding_mask(src, PAD)  # (2, 1, 1, S): True on real source tokens
encoder_self = source_mask[1, 0].expand(S, S)  # every source query, every source key
decoder_self = causal_mask(T, T)  # (T, T)
cross = source_mask[1, 0].expand(T, S)  # every target query, every source key
print("padding mask of the batch:\n", source_mask[:, 0, 0].int())

panels = [
    ("encoder self-attention", encoder_self, source_words, source_words),
    ("decoder self-attention (causal)", decoder_self, target_words, target_words),
    ("decoder cross-attention", cross, target_words, source_words),
]
fig, axes = plt.subplots(1, 3, figsize=(9, 3.6))
for ax, (title, mask, queries, keys) in zip(axes, panels, strict=True):
    ax.imshow(mask.int(), cmap="Greens", vmin=0, vmax=1.3)
    ax.set_xticks([x - 0.5 for x in range(len(keys))], minor=True)  # white lines between cells
    ax.set_yticks([y - 0.5 for y in range(len(queries))], minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(keys)), keys, rotation=90, fontsize=7)
    ax.set_yticks(range(len(queries)), queries, fontsize=7)
    ax.set_xlabel("key (attended to)", fontsize=8)
axes[0].set_ylabel("query (attending)", fontsize=8)
fig.suptitle("Green: may attend. Each row is one query.", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# Look at the rows: in the encoder every real word sees every real word, in both directions
# (this is why an encoder gives *contextual* representations); the rows of the two `<pad>`
# queries are computed too, and then ignored, since no loss or later query reads them. In the
# decoder, `playing` sees only itself and the words before it. In cross-attention every target
# position sees the whole source sentence: the decoder may "look up" any German word at any
# moment. That look-up, attention over the source, had already replaced the fixed-size summary
# vector of RNN encoder-decoders (Bahdanau et al. 2015); the Transformer kept it and dropped the
# recurrence.
#
# The decoder needs no padding mask of its own: targets are padded on the right too, and the
# causal mask already keeps every real position from seeing the pads after it. When two masks
# do apply, they are combined with a logical AND:

# %%
# A causal mask on a padded sequence of 6: the pads (columns 4 and 5) are masked for everyone,
# and the future is masked as well.
both = merge_masks(causal_mask(S, S), source_mask[1, 0])
print(both.int())

# %% [markdown]
# ## The model and its parameters
#
# `attnlab.models.EncoderDecoder` builds the model from a config; the presets are the paper's
# `base` and `big` (its Table 3) and the CPU sizes `small` and `tiny`. Where do the parameters
# sit? The function below sorts them by part. A tied matrix is counted once (the shared
# embedding is also the output projection, so the projection adds nothing).
#
# A preset's vocabulary size V is only what the BPE is asked for. `attnlab train translation`
# learns a BPE vocabulary on the training text (`--bpe-vocab-size`, the preset's V unless told)
# and gives the model exactly as many embeddings as it learned. We give the size anyway,
# and the last column, "this run", is the model trained below: its preset, its layers, and
# the vocabulary it asks for. (The check after training compares it with the trained model.)

# %%
import dataclasses

from attnlab.models.encoder_decoder import PRESETS, EncoderDecoder

SUBLAYERS = {"token_mixer": "self-attention", "cross_attention": "cross-attention"}


def part_of(name):
    """The part of the model a parameter belongs to, from its name, for example
    'decoder_blocks.1.cross_attention.qkv_projection.weight' -> 'decoder cross-attention'."""
    parts = name.split(".")
    if "embedding" in parts[0]:
        return "embeddings (shared with the output)"
    if parts[0] == "output_projection":
        return "output projection (when not shared)"
    if "norm" in name:
        return "layer norms"
    stack = parts[0].removesuffix("_blocks")  # encoder or decoder
    return f"{stack} {SUBLAYERS.get(parts[2], 'feed-forward')}"


ROWS = [
    "embeddings (shared with the output)",
    "encoder self-attention",
    "encoder feed-forward",
    "decoder self-attention",
    "decoder cross-attention",
    "decoder feed-forward",
    "layer norms",
]


def parameters_by_part(model):
    counts = dict.fromkeys(ROWS, 0)
    # named_parameters() lists a tied matrix once, under the first name it has
    for name, parameter in model.named_parameters():
        counts[part_of(name)] = counts.get(part_of(name), 0) + parameter.numel()
    return counts


# Built on the "meta" device: shapes only, no memory, so even 'base' costs nothing.
models = {}
with torch.device("meta"):
    for preset in ("tiny", "small", "base"):
        models[preset] = EncoderDecoder(PRESETS[preset])
    this_run = dataclasses.replace(
        PRESETS[PRESET], vocab_size=BPE_VOCAB, n_encoder_layers=LAYERS, n_decoder_layers=LAYERS
    )
    models["this run"] = EncoderDecoder(this_run)
counts = {preset: parameters_by_part(m) for preset, m in models.items()}
header = "".join(f"{f'{p} (V={m.config.vocab_size:,})':>20}" for p, m in models.items())
print(f"{'part':<36}{header}")
for row in counts["small"]:
    print(f"{row:<36}" + "".join(f"{counts[p][row]:>20,}" for p in models))
print(f"{'total':<36}" + "".join(f"{m.num_parameters():>20,}" for m in models.values()))
print(f"this run: the {PRESET} preset with {LAYERS}+{LAYERS} layers")

# %% [markdown]
# Things to notice:
#
# - A decoder block holds about 4/3 of an encoder block: the same self-attention and
#   feed-forward, plus a cross-attention of the same size (4·d² weights: Q, K, V and output).
# - The feed-forward holds 2/3 of every encoder block (2·d·d_ff = 8·d² against 4·d²).
# - `small` has 3+3 layers; the default run below keeps 2+2 of them (5.7M parameters, the
#   "this run" column at the default size).
# - The `base` model has 63M parameters here (the paper's Table 3 says 65M; the count depends
#   on the vocabulary), and 19M of them are the embedding table of 37,000 tokens. In a small
#   model the embedding is an even larger share, which is one reason to tie it to the output.
#
# ## The data
#
# The model reads subword tokens: one BPE vocabulary is learned on both languages at once (a
# "joint" vocabulary, so the shared embedding makes sense: names and numbers are the same
# tokens on both sides). Each source ends in `</s>`; the decoder reads `<s> y1 .. yn` and
# learns to predict `y1 .. yn </s>`, one position later.

# %%
from attnlab.data import catalog
from attnlab.data.translation import EMBEDDED_SEED, EMBEDDED_VAL_PAIRS, embedded_split, load_split

if DATA:  # Multi30k: the files live in $ATTNLAB_DATA (downloaded on first use)
    folder = catalog.resolve("multi30k")
    train_pairs = load_split(folder, "train", "de", "en")
    val_pairs = load_split(folder, "val", "de", "en")
    test_pairs = load_split(folder, "test_2016_flickr", "de", "en")
else:  # the embedded task, one task whatever a run's --seed; its 500 validation numbers (100
    # and up) are never trained on
    train_pairs, val_pairs = embedded_split(20000, EMBEDDED_VAL_PAIRS, EMBEDDED_SEED)
    val_pairs, test_pairs = val_pairs[200:], val_pairs[:200]
print(
    f"{len(train_pairs):,} training pairs, {len(val_pairs):,} validation, {len(test_pairs):,} "
    "test; for example:"
)
for source, target in train_pairs[:3]:
    print(f"  {source}  ->  {target}")

# %% [markdown]
# ## Training
#
# The recipe follows section 5 of the paper, scaled down:
#
# - batches of sentences of similar length, filled up to a budget of **tokens** (here 2,048,
#   padding included) rather than a fixed number of sentences;
# - Adam with β2 = 0.98, a linear **warmup** of the learning rate, then a cosine decay (the
#   paper's 1/√step, "Noam", is `--lr-schedule inverse_sqrt`; post-norm diverges without warmup);
# - **label smoothing** ε = 0.1: the target distribution puts about 0.9 on the right token
#   and spreads 0.1 evenly over the whole vocabulary. The paper notes it "hurts perplexity
#   ... but improves accuracy and BLEU". (So the loss below never goes near 0.)
#
# The full recipe (`configs/translation_multi30k.toml`: 3+3 layers, 3,300 steps) takes about
# 40 minutes on 2 cores and reaches BLEU 40 on the test set. The default here keeps 2+2 layers
# and 1,000 steps (about 7 minutes); expect a test BLEU of about 35 (a trial run of this
# setting scored 35.0 at beam 4, benchmarks/RESULTS.md). The quick size trains the tiny model
# on the numbers task for 500 steps, 100 of them warm-up, in under a minute: enough to get
# nearly every held-out number exactly right.

# %%
attnlab(
    f"train translation {DATA} {MODEL} --bpe-vocab-size {BPE_VOCAB} --max-batch-tokens 2048 "
    f"--max-iters {STEPS} --warmup-iters {WARMUP} --learning-rate {PEAK_LR} "
    f"--min-learning-rate 1e-5 --beta2 0.98 --weight-decay 0.1 --eval-interval {EVAL_EVERY} "
    f"--eval-iters 50 --device {DEVICE} --out {RUN}"
)

# %% [markdown]
# The run directory holds the weights, the config, the tokenizer and `metrics.jsonl`, one
# JSON record per step. We plot it ourselves, with two reference lines: ln V, the loss of a
# model that guesses uniformly over the vocabulary (roughly where training starts), and the
# lowest loss label smoothing allows. With ε = 0.1 the target is not one-hot but puts
# 1 − ε + ε/V on the right token and ε/V on each other one, and a cross-entropy can never be
# lower than the entropy of its target: even a perfect model scores about 1.2 nats with the
# default size's V = 8,000 (the dotted line gives the floor for this run's V).

# %%
import json

from attnlab.training.checkpoints import load_checkpoint

with open(f"{RUN}/metrics.jsonl") as log:
    records = [json.loads(line) for line in log]
steps = [r["step"] for r in records]
train_loss = [r["train_loss"] for r in records]
evals = [r for r in records if "val_loss" in r]

checkpoint = load_checkpoint(RUN, device=DEVICE)
model, tokenizer = checkpoint.model, checkpoint.tokenizer
vocab = model.config.vocab_size
print(f"the trained model: V = {vocab:,}, {model.num_parameters():,} parameters")
# Check: it is the table's "this run" column, unless the BPE came out smaller than asked (the
# text ran out of pairs to merge), and V with it
if vocab == BPE_VOCAB:
    assert model.num_parameters() == models["this run"].num_parameters(), "not the table's model"
else:
    print(f"(the BPE stopped at {vocab:,} tokens: the table counted {BPE_VOCAB:,})")

fig, ax = plt.subplots(figsize=(8, 3.5))
ax.plot(steps, train_loss, lw=0.6, alpha=0.5, label="train loss (each batch)")
ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation loss")
ax.axhline(math.log(vocab), ls="--", c="gray", label=f"uniform guess, ln {vocab}")
eps = model.config.label_smoothing
p_right, p_other = 1 - eps + eps / vocab, eps / vocab  # the smoothed target distribution
floor = -p_right * math.log(p_right) - (vocab - 1) * p_other * math.log(p_other)
ax.axhline(floor, ls=":", c="black", label=f"best possible with ε = {eps}: {floor:.2f}")
ax.set_xlabel("step")
ax.set_ylabel("label-smoothed cross-entropy (nats)")
ax.legend()
plt.show()

# %%
# Check: training worked, the validation loss ended well below its first evaluation
first, last = evals[0]["val_loss"], evals[-1]["val_loss"]
print(f"validation loss: {first:.3f} at step {evals[0]['step']} -> {last:.3f} at the end")
assert last < first - 0.3, "the validation loss did not go down"

# %% [markdown]
# ## The masks at work inside the trained model
#
# `attnlab.interpretability.capture` records every attention layer's weights (B, H, Tq, Tk)
# during a forward pass. Feed the model a padded batch of two sentences and check that the
# masks did their job: zero weight on every padded key and on every future position. A second
# check: padding must not change anything for the real tokens, so the shorter sentence gets
# the same logits alone as in the padded batch.

# %%
from attnlab.generation.beam_search import encode_sources
from attnlab.interpretability import capture

c = model.config
two = [test_pairs[0][0], test_pairs[1][0] + " " + test_pairs[2][0]]  # a short and a long one
batch_src = encode_sources(two, tokenizer, model).to(DEVICE)  # (2, S), right-padded
batch_tgt = torch.full((2, 6), c.bos_id, device=DEVICE)  # any 6 target tokens will do
with torch.no_grad(), capture(model) as seen:
    batch_logits, _ = model(batch_src, batch_tgt)
pads = batch_src[0] == c.pad_id  # the short sentence's padded source positions
print(f"source lengths {(batch_src != c.pad_id).sum(1).tolist()}; recorded layers:")
for name, weights in seen.attention.items():
    print(f"  {name:<36} {tuple(weights.shape)}")

for name, weights in seen.attention.items():
    if name.startswith("decoder_blocks") and "cross" not in name:  # causal: no future
        future = ~causal_mask(weights.size(-2), weights.size(-1), weights.device)
        assert weights[..., future].abs().max() == 0, name
    else:  # encoder self-attention and cross-attention: no padded source key
        assert weights[0, :, :, pads].abs().max() == 0, name

with torch.no_grad():
    alone_src = batch_src[:1, : int((~pads).sum())]  # the short sentence, without padding
    alone_logits, _ = model(alone_src, batch_tgt[:1])
gap = (alone_logits - batch_logits[:1]).abs().max().item()
print(f"largest logit difference, alone vs. padded: {gap:.2e}")
assert gap < 1e-4

# %% [markdown]
# ## Decoding: greedy search and beam search
#
# At test time there is no target to feed in. The decoder starts from `<s>` and produces one
# token at a time; each new token is appended and fed back (the keys and values of earlier
# positions are kept in a cache, so each step costs one position).
#
# - **Greedy search** takes the single most likely token at every step. Cheap, but a choice
#   that looks best now can lead to a worse sentence overall.
# - **Beam search** keeps the K best partial translations (the "beam"), extends each by every
#   token, and keeps the K best of those by total log-probability. Finished hypotheses are
#   compared by `log P(Y|X) / lp(Y)` with the length penalty `lp(Y) = ((5 + |Y|) / 6)^α`
#   (Wu et al. 2016), because a raw sum of log-probabilities favours shorter outputs (each
#   token adds a negative term). The paper used K = 4 and α = 0.6, attnlab's defaults.
#
# From the shell this is `attnlab translate RUN "sentence" --beam-size 1` (greedy) or `4`:

# %%
import shlex  # quotes a sentence for the command line

sentence = test_pairs[3][0]
print("source:   ", sentence)
print("reference:", test_pairs[3][1])
print("greedy:   ", end=" ", flush=True)
attnlab(f"translate {RUN} {shlex.quote(sentence)} --beam-size 1")
print("beam 4:   ", end=" ", flush=True)
attnlab(f"translate {RUN} {shlex.quote(sentence)} --beam-size 4")

# %% [markdown]
# In Python, `attnlab.generation.beam_search.translate` does the same for a list of sentences.
# Translate some validation sentences both ways (settings are compared on validation data; the
# test set is scored once, by `evaluate` below) and look for ones where the two disagree:

# %%
from attnlab.generation.beam_search import translate

sources = [s for s, _ in val_pairs[:SWEEP_SENTENCES]]
references = [r for _, r in val_pairs[:SWEEP_SENTENCES]]
greedy = translate(model, tokenizer, sources, beam_size=1)
beam = translate(model, tokenizer, sources, beam_size=4)
differ = [i for i in range(len(sources)) if greedy[i] != beam[i]]
print(f"greedy and beam 4 differ on {len(differ)} of {len(sources)} sentences")
for i in differ[:3]:
    print(f"\nsource:    {sources[i]}\nreference: {references[i]}")
    print(f"greedy:    {greedy[i]}\nbeam 4:    {beam[i]}")

# %% [markdown]
# Why did beam search choose differently? Score both outputs under the model. With teacher
# forcing, one forward pass gives `log P(Y|X) = Σ log P(y_t | y_<t, X)`, the number beam search
# maximises (divided by the length penalty).

# %%
from attnlab.generation.beam_search import gnmt_length_penalty


@torch.no_grad()
def log_probability(source, target):
    """log P(target | source) under the model: every target token, and </s>."""
    src_ids = encode_sources([source], tokenizer, model).to(DEVICE)
    ids = tokenizer.encode(target)
    tgt_in = torch.tensor([[c.bos_id, *ids]], device=DEVICE)
    tgt_out = torch.tensor([[*ids, c.eos_id]], device=DEVICE)
    logits, _ = model(src_ids, tgt_in)
    log_probs = logits.float().log_softmax(-1)
    return log_probs.gather(-1, tgt_out[..., None]).sum().item(), len(ids) + 1


for i in differ[:3]:
    print(f"\nsource: {sources[i]}")
    for name, output in (("greedy", greedy[i]), ("beam 4", beam[i])):
        total, length = log_probability(sources[i], output)
        normalised = total / gnmt_length_penalty(length, 0.6)
        print(f"  {name}: log P = {total:7.3f}, {length} tokens, / lp = {normalised:7.3f}")

# %% [markdown]
# Usually beam search finds an output with a higher (length-normalised) score: greedy committed
# early to a token that was locally best. Note that a higher model score is not a promise of a
# better translation; it is only a better answer to the question the model was trained on.
#
# ## What BLEU measures
#
# BLEU (Papineni et al. 2002) compares a translation with a reference by counting shared
# n-grams, n = 1..4:
#
# - **modified n-gram precision** p_n: of the hypothesis's n-grams, the share that also occur
#   in the reference, each reference n-gram usable at most as often as it occurs there
#   ("clipping": "the the the the" does not get 4 matches for one "the");
# - the **geometric mean** of p_1..p_4;
# - a **brevity penalty** `BP = min(1, exp(1 − r / c))` for a hypothesis length c shorter than
#   the reference length r, because precision alone rewards saying very little.
#
# `BLEU = BP · exp((log p_1 + log p_2 + log p_3 + log p_4) / 4)`, times 100. Over a test set
# the counts are summed over all sentences first (a *corpus* score, not an average of
# sentence scores). Here it is by hand:

# %%
from collections import Counter


def ngrams(words, n):
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu_by_hand(hypotheses, refs, show=False):
    """Corpus BLEU (0-100) of whitespace-tokenized sentences, one reference each."""
    matches, totals = [0] * 4, [0] * 4
    hyp_length = ref_length = 0
    for hypothesis, reference in zip(hypotheses, refs, strict=True):
        h, r = hypothesis.split(), reference.split()
        hyp_length, ref_length = hyp_length + len(h), ref_length + len(r)
        for n in range(1, 5):
            h_grams, r_grams = ngrams(h, n), ngrams(r, n)
            matches[n - 1] += sum(min(k, r_grams[g]) for g, k in h_grams.items())  # clipped
            totals[n - 1] += sum(h_grams.values())
    precisions = [m / t if t else 0.0 for m, t in zip(matches, totals, strict=True)]
    brevity = min(1.0, math.exp(1 - ref_length / hyp_length))
    log_mean = sum(math.log(p) if p else -math.inf for p in precisions) / 4  # log 0 = -inf
    score = 100 * brevity * math.exp(log_mean)  # 0 when some precision is 0
    if show:
        shown = ", ".join(f"p{n}={matches[n - 1]}/{totals[n - 1]}" for n in range(1, 5))
        print(f"  {shown}; c={hyp_length}, r={ref_length}, BP={brevity:.4f} -> BLEU {score:.2f}")
    return score


reference = "a man is riding a bicycle down the street"
close = "a man is riding a bike down the road"
short = "a man is riding"
print(f"reference:  {reference}\nhypothesis: {close}")
bleu_by_hand([close], [reference], show=True)
print(f"hypothesis: {short}   (every n-gram matches, but it is short)")
_ = bleu_by_hand([short], [reference], show=True)
silly = "the the the the"
print(f"hypothesis: {silly}   (one 'the' in the reference)")
assert bleu_by_hand([silly], [reference], show=True) == 0  # no 2-gram matches

# %% [markdown]
# The first: 7 of 9 words match (`a` twice, clipped to the two in the reference); 5 of 8
# bigrams; 3 of 7 trigrams; 2 of 6 4-grams. Same length, so BP = 1, and
# BLEU = (7/9 · 5/8 · 3/7 · 2/6)^(1/4) = 51.3. The second has perfect precision at every n,
# yet scores 28.7: BP = exp(1 − 9/4) = 0.29. The third shows the clipping: one `the` of four
# counts, and with no matching 2-gram (p_2 = 0) the geometric mean, and BLEU, is 0. Now the
# same numbers from sacreBLEU, the standard implementation that `attnlab evaluate` uses (its 13a
# tokenizer leaves these plain lower-case words as they are):

# %%
from sacrebleu.metrics import BLEU

for hypotheses in ([close], [short], [close, short]):  # the last: a two-sentence corpus
    ours = bleu_by_hand(hypotheses, [reference] * len(hypotheses))
    theirs = BLEU().corpus_score(hypotheses, [[reference] * len(hypotheses)]).score
    print(f"{len(hypotheses)} sentence(s): by hand {ours:.4f}, sacreBLEU {theirs:.4f}")
    # Check: our formula is BLEU exactly as sacreBLEU computes it
    assert abs(ours - theirs) < 1e-6, "BLEU by hand differs from sacreBLEU"

# %% [markdown]
# BLEU is a corpus-level, surface-form metric: a correct synonym (`bike` for `bicycle`) earns
# nothing, and a single sentence's BLEU is noisy (one 4-gram more or less moves it a lot). It is
# still the number the paper reports (28.4 on WMT 2014 English-German for the big model), and
# sacreBLEU's *signature* records exactly how it was computed, so that scores compare.
#
# ## BLEU on the test set
#
# `attnlab evaluate RUN --src FILE --ref FILE` translates every source line (beam 4 by
# default) and scores the output with sacreBLEU (BLEU and chrF, a character n-gram F-score)
# and the exact-match rate. On the embedded task the outputs are single "words" such as
# `412,007`, which have no 2-grams: BLEU reads 0 there, and exact match is the score to read.

# %%
if DATA:
    test_src, test_ref = "multi30k/test_2016_flickr.de.gz", "multi30k/test_2016_flickr.en.gz"
else:  # write the held-out numbers as two line-aligned files
    test_src = "runs/tutorials/05_translation/numbers_test.words"
    test_ref = "runs/tutorials/05_translation/numbers_test.digits"
    with open(test_src, "w") as f_src, open(test_ref, "w") as f_ref:
        for source, target in test_pairs:
            f_src.write(source + "\n")
            f_ref.write(target + "\n")
attnlab(f"evaluate {RUN} --src {test_src} --ref {test_ref} --beam-size 4")

# %% [markdown]
# Read the BLEU line: after the score come p_1..p_4 in percent and the brevity penalty, the
# numbers you computed by hand above, summed over the whole test set. A BP below 1 says the
# translations are, in total, shorter than the references (the full recipe's line in
# benchmarks/RESULTS.md: `BLEU = 39.97 73.3/49.8/34.5/24.3 (BP = 0.955 ratio = 0.956)`).
#
# ## Does a wider beam help?
#
# Score the validation sentences with beam sizes 1 to 8. `attnlab.evaluation.bleu` has
# `corpus_scores(hypotheses, references)`, the same sacreBLEU call that `evaluate` makes.

# %%
from attnlab.evaluation.bleu import corpus_scores

beam_sizes = [1, 2, 4, 8]
sweep = {}
done_already = {1: greedy, 4: beam}  # translated above
for k in beam_sizes:
    outputs = done_already.get(k) or translate(model, tokenizer, sources, beam_size=k)
    sweep[k] = corpus_scores(outputs, references)
    print(
        f"beam {k}: BLEU {sweep[k]['bleu']:5.2f}, chrF {sweep[k]['chrf']:5.2f}, "
        f"exact {sweep[k]['exact_match']:5.1f}%"
    )

fig, ax = plt.subplots(figsize=(6, 3.2))
for key, label in (("bleu", "BLEU"), ("chrf", "chrF"), ("exact_match", "exact match (%)")):
    ax.plot(beam_sizes, [sweep[k][key] for k in beam_sizes], "o-", label=label)
ax.set_xscale("log", base=2)
ax.set_xticks(beam_sizes, [str(k) for k in beam_sizes])
ax.set_xlabel("beam size")
ax.set_title(f"{len(sources)} validation sentences", fontsize=9)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Typically most of the gain comes from the first few beams, and wider beams add little or
# even lose a little (the "beam search curse": a better search finds outputs that the model
# likes but that are not better translations, often shorter ones). On 100 sentences the
# differences are within the noise: choose the beam on a larger validation set, and score the
# test set once with the choice (a setting picked by its test score flatters that score).
#
# ## Where does the decoder look? A cross-attention map
#
# Cross-attention lets each target position read the source. Take the sentence translated with
# `attnlab translate` above, capture the weights while the decoder reads the model's own
# (beam-search) translation, and average over the heads of each decoder layer:
# row t shows where the decoder looked while predicting the token *after* target position t.

# %%
example = sentence  # the sentence translated with `attnlab translate` above
output_ids = tokenizer.encode(translate(model, tokenizer, [example], beam_size=4)[0])
src_ids = encode_sources([example], tokenizer, model).to(DEVICE)
tgt_in = torch.tensor([[c.bos_id, *output_ids]], device=DEVICE)
with torch.no_grad(), capture(model) as seen:
    model(src_ids, tgt_in)

source_labels = [tokenizer.decode([i]) for i in src_ids[0].tolist()]
target_labels = [tokenizer.decode([i]) for i in tgt_in[0].tolist()]
cross_layers = [name for name in seen.attention if "cross_attention" in name]
fig, axes = plt.subplots(1, len(cross_layers), figsize=(9, 4), squeeze=False)
for ax, name in zip(axes[0], cross_layers, strict=True):
    weights = seen.attention[name][0].mean(0).float().cpu()  # (T, S), averaged over heads
    ax.imshow(weights, cmap="viridis", aspect="auto")
    ax.set_title(name.replace("_blocks.", " block ").replace(".cross_attention", ""), fontsize=9)
    ax.set_xticks(range(len(source_labels)), source_labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(target_labels)), target_labels, fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# In a trained model the last layer often shows a rough diagonal: the decoder reads the German
# word it is about to translate, and jumps where the word order differs (German puts verbs
# late). Earlier layers may spread their attention or park it on `</s>`, a common "no-op"
# place. Attention maps are a hint, not an explanation: the residual stream carries
# information that the map does not show.
#
# ## Try this
#
# 1. Translate your own German sentences (or, on the numbers task, your own numbers) with
#    `attnlab(f'translate {RUN} "..." --beam-size 4')`. What breaks first: rare words, long
#    sentences, or word order?
# 2. At the default size (Multi30k; BLEU is 0 on the numbers task): train without label
#    smoothing (`--label-smoothing 0`). Its logged loss is plain cross-entropy, the run above
#    logged a smoothed one: compare perplexities with `log_probability` (each model loaded as
#    `model`) on validation pairs. Which is lower, and which test BLEU higher? See section 5.4.
# 3. At the default size: set `--length-penalty 0` and then `2` on `evaluate`: how do the
#    brevity penalty and the BLEU change, and why?
# 4. In `bleu_by_hand`, drop the clipping (count every matching n-gram). Which silly hypothesis
#    now gets a high score against the reference above? (Repeating one word is not enough: its
#    2-grams match nothing.)
