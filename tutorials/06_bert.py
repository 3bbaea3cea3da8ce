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
# # 6. BERT: pre-train by filling in blanks, then fine-tune
#
# BERT (Devlin et al. 2019) keeps only the Transformer's encoder and pre-trains it on plain,
# unlabelled text with a fill-in-the-blanks game, the masked language model; the same encoder
# is then fine-tuned on a labelled task. In this notebook you run attnlab's masking code on a
# sentence and check its statistics, pre-train a small BERT on movie-review sentences, watch
# its guesses for a blank improve, look at what its word vectors learnt, and fine-tune it on
# SST-2 sentiment next to the same model trained from scratch. About 9 minutes on a 2-core CPU
# with the default settings.

# %%
import os

# "default": about 9 minutes on a 2-core CPU; "quick": a small check in 10-30 seconds that
# needs no downloads; "gpu": a bigger run for a CUDA GPU
SIZE = os.environ.get("ATTNLAB_TUTORIAL_SIZE", "default")

# The labelled task: SST-2 (67,349 training phrases, 872 dev sentences), or at quick size a
# tiny made-up one that this notebook writes itself. Pre-training reads the task's training
# sentences with their labels thrown away.
TASK_DATA = {"quick": "runs/tutorials/06_bert/tiny_sst", "default": "sst2", "gpu": "sst2"}[SIZE]
# The encoder: 4 layers of width 128 and 2 heads (1.9M parameters, half of them the embedding
# table); on a GPU, width 256 and 4 heads (BERT-Mini's shape, 5.3M); tiny: 2 layers of width 64.
PRESET = {"quick": "tiny", "default": "small-cpu", "gpu": "small-cpu"}[SIZE]
WIDTH = {"quick": "", "default": "--d-model 128 --n-heads 2", "gpu": ""}[SIZE]
TOKENIZER = {"quick": "bpe:600", "default": "bpe:8192", "gpu": "bpe:8192"}[SIZE]  # BPE, N tokens
CONTEXT = {"quick": 64, "default": 128, "gpu": 128}[SIZE]  # tokens per packed sequence
# Pre-norm blocks and rotary positions for every size: with BERT's own post-norm and learned
# positions a short pre-training run stalls (benchmarks/RESULTS.md tells the story).
SHAPE = (
    f"--preset {PRESET} {WIDTH} --tokenizer {TOKENIZER} --context-length {CONTEXT} "
    "--prenorm --positional rope"
)
EARLY_STEPS = 20  # pre-training stops here once, to ask the model before it has learnt much
PRETRAIN_STEPS = {"quick": 150, "default": 1500, "gpu": 3000}[SIZE]
# warm-up steps, at least EARLY_STEPS: the early stop falls inside the warm-up
PRETRAIN_WARMUP = {"quick": 20, "default": 100, "gpu": 200}[SIZE]
PRETRAIN_BATCH = {"quick": 32, "default": 64, "gpu": 64}[SIZE]
# Compiling takes tens of seconds once and makes each step faster: worth it for the long run only.
COMPILE = {"quick": "--no-compile", "default": "--compile", "gpu": "--compile"}[SIZE]
FINETUNE_STEPS = {"quick": 60, "default": 500, "gpu": 2000}[SIZE]
FINETUNE_WARMUP = {"quick": 10, "default": 40, "gpu": 200}[SIZE]
FINETUNE_LR = {"quick": 1e-3, "default": 2e-4, "gpu": 2e-4}[SIZE]  # the tiny model takes more
FINETUNE_EVAL = {"quick": 10, "default": 50, "gpu": 200}[SIZE]  # dev accuracy every N steps
DEVICE = "cuda" if SIZE == "gpu" else "cpu"

# %% [markdown]
# ## Why blanks?
#
# A GPT reads left to right, so it can be trained to predict every next word. An encoder's
# self-attention has no causal mask: every position sees the whole sentence, both sides. That
# is what we want for understanding a sentence, but it makes next-word prediction trivial (the
# answer is in the input). BERT's way out: hide some words and ask the model to recover them
# from both sides. `the movie was [MASK] good .` needs the left context (`the movie was`) and
# the right one (`good`) to guess `very` or `pretty`.
#
# The recipe (section 3.1 of the paper):
#
# 1. select **15%** of the ordinary tokens (never `[CLS]`, `[SEP]` or padding) at random;
# 2. of the selected tokens, replace **80%** with `[MASK]`, **10%** with a random token, and
#    leave **10%** as they are;
# 3. compute the loss on the selected positions only.
#
# Why not always `[MASK]`? Fine-tuning texts never contain `[MASK]`. If the model only ever
# had to predict at `[MASK]`, it could ignore every other position's own word. With random and
# unchanged tokens among the targets, *any* position may be tested, so the model keeps a good
# representation of every token. And 15% is a trade-off: more masking gives more targets per
# sentence but less context to guess them from.

# %%
import itertools
import json
import random
import shlex  # quotes a text for the command line
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from attnlab.cli import run as attnlab  # attnlab("..."): a command line, as in a shell
from attnlab.data import catalog
from attnlab.data.classification import read_tsv
from attnlab.data.corpus import Corpus
from attnlab.data.masked_lm import (
    CLS,
    IGNORE_INDEX,
    MASK,
    PAD,
    SEP,
    SPECIALS,
    Masking,
    encode_lines_cached,
    encode_sentence,
    pack_sentences,
)
from attnlab.data.text import tokenizer_cached
from attnlab.training.checkpoints import load_checkpoint

OUT = "runs/tutorials/06_bert"  # every run and file of this notebook goes here
shutil.rmtree(OUT, ignore_errors=True)  # start afresh every time the notebook runs
os.makedirs(OUT)

# %% [markdown]
# ## The data: labelled sentences, and the same sentences without labels
#
# SST-2 (Socher et al. 2013; GLUE) holds short movie-review sentences labelled 1 (positive)
# or 0 (negative), in a `sentence<TAB>label` file; its training set also keeps every phrase of
# each sentence's parse tree, so many lines are pieces of longer ones. At quick size the
# notebook writes a tiny task of the same format (the cell below writes it at every size; only
# quick uses it).
#
# Pre-training needs only text. The real BERT read 3.3 billion words of books and Wikipedia;
# with a few CPU minutes we pre-train on text of the task's own kind instead: the training
# sentences, labels removed (Gururangan et al. 2020 call this task-adaptive pre-training). The
# dev sentences stay unseen until evaluation.

# %%
rng = random.Random(0)
subjects = ["the movie", "the film", "the plot", "the acting", "the script", "the ending"]
verbs = ["is", "was", "feels", "seems"]
adverbs = ["very", "really", "quite", "so", "truly", "pretty"]
good = ["good", "great", "wonderful", "funny", "moving", "clever", "superb", "charming"]
bad = ["bad", "dull", "boring", "awful", "clumsy", "tedious", "silly", "weak"]


def review(label):
    """A short made-up review sentence; its adjectives all lean one way."""
    words = good if label else bad
    first = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(adverbs)} {rng.choice(words)}"
    second = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(words)}"
    return f"{first} and {second} ." if rng.random() < 0.5 else f"{first} ."


made_up = [(review(label), label) for label in [0, 1] * 300]
os.makedirs(f"{OUT}/tiny_sst")
for split, part in (("train", made_up[:500]), ("dev", made_up[500:])):
    with open(f"{OUT}/tiny_sst/{split}.tsv", "w") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{text}\t{label}\n" for text, label in part)

# The pre-training text: one training sentence a line, no labels
task_folder = catalog.resolve(TASK_DATA)  # sst2 lives in $ATTNLAB_DATA (fetched on first use)
train_texts, train_labels = read_tsv(Path(task_folder) / "train.tsv")
PRETRAIN_TEXT = f"{OUT}/pretrain_text.txt"
with open(PRETRAIN_TEXT, "w") as f:
    f.writelines(text + "\n" for text in train_texts)
print(f"{len(train_texts):,} training sentences, for example:")
for text, label in list(zip(train_texts, train_labels, strict=True))[:4]:
    print(f"  {label}  {text}")

# %% [markdown]
# ## The masking recipe on one sentence
#
# First the tokenizer: a BPE vocabulary learned on the pre-training text, with BERT's four
# special tokens added at the end. `train bert` learns exactly this one (the same call, cached),
# so the ids below are the ones the model will see.

# %%
corpus = Corpus(PRETRAIN_TEXT)  # the text, read in pieces
tokenizer = tokenizer_cached(TOKENIZER, corpus, special_tokens=SPECIALS)
specials = tokenizer.special_tokens  # {"[PAD]": id, "[CLS]": id, ...}
print(f"vocabulary: {tokenizer.vocab_size:,} tokens; special tokens: {specials}")

sentence = "the acting is superb and the story is moving , but the ending is weak ."
ids = [specials[CLS], *encode_sentence(tokenizer, sentence), specials[SEP]]
print([tokenizer.decode([i]) for i in ids])

# %% [markdown]
# `attnlab.data.masked_lm.Masking` is the rule training applies to every batch. It takes the
# id of `[MASK]` and the number of ordinary tokens (the special tokens come after them) and
# returns the model's input and its targets: the original token where a position was
# selected, `IGNORE_INDEX` (-100, skipped by the loss) everywhere else. One sentence has few
# tokens, so we draw the masks five times; each row is a fresh draw, as in training, where the
# same sentence is masked differently every time it comes round.

# %%
masking = Masking(mask_id=specials[MASK], n_ordinary=min(specials.values()), probability=0.15)
generator = torch.Generator().manual_seed(3)
batch = torch.tensor([ids] * 5)  # (5, L): the same sentence five times
inputs, targets = masking(batch, generator)


def show(token_id):
    return tokenizer.decode([token_id]).strip() or "␣"


for row in range(5):
    shown = []
    for position, token_id in enumerate(ids):
        if targets[row, position] == IGNORE_INDEX:
            shown.append(show(token_id))  # not selected: no loss here
        elif inputs[row, position] == specials[MASK]:
            shown.append(f"[{show(token_id)}→MASK]")
        elif inputs[row, position] != token_id:
            shown.append(f"[{show(token_id)}→{show(inputs[row, position].item())}]")
        else:
            shown.append(f"[{show(token_id)}=kept]")
    print(" ".join(shown[1:-1]))

# %% [markdown]
# Brackets mark the selected positions, the only ones the loss looks at: `→MASK` (80%),
# `→other token` (10%; any ordinary token of the vocabulary, which may be a piece of a word or
# a lone byte, shown as �) and `=kept` (10%). Five draws of one sentence are far too few to see
# the proportions. Count them instead over a few hundred thousand tokens of the pre-training text,
# packed as training packs it: `[CLS] sentence sentence ... [SEP] [PAD] ...`, sentences kept
# whole, up to the context length.

# %%
line_tokens, line_starts = encode_lines_cached(corpus, tokenizer)  # every line, encoded
rows = pack_sentences(
    line_tokens, line_starts, CONTEXT, specials[CLS], specials[SEP], specials[PAD]
)
print(f"{len(line_starts) - 1:,} lines, {len(line_tokens):,} tokens -> {len(rows):,} rows")
print("one packed row:", tokenizer.decode(rows[0].tolist())[:300], "...")

sample = torch.from_numpy(rows[:2000])
sample = sample.repeat(max(1, 300_000 // sample.numel()), 1)  # enough tokens for tight counts
inputs, targets = masking(sample, torch.Generator().manual_seed(0))
ordinary = sample < masking.n_ordinary  # everything but [CLS], [SEP] and [PAD]
selected = targets != IGNORE_INDEX
masked = selected & (inputs == specials[MASK])
kept = selected & (inputs == sample)
replaced = selected & ~masked & ~kept
n = selected.sum().item()
share = {
    "selected, of the ordinary tokens": n / ordinary.sum().item(),
    "-> [MASK]": masked.sum().item() / n,
    "-> another token": replaced.sum().item() / n,
    "-> kept": kept.sum().item() / n,
}
for what, value in share.items():
    print(f"{what:<34} {value:7.2%}")

# %%
# Check: attnlab's masking follows BERT's recipe (binomial noise on ~40k picks is ~0.2%; a
# random token equal to the original counts as kept)
assert not (selected & ~ordinary).any(), "a special token or padding was selected"
assert abs(share["selected, of the ordinary tokens"] - 0.15) < 0.005, "not 15% selected"
assert abs(share["-> [MASK]"] - 0.80) < 0.015, "not 80% of the selected became [MASK]"
assert abs(share["-> another token"] - 0.10) < 0.015, "not 10% became another token"
assert abs(share["-> kept"] - 0.10) < 0.015, "not 10% of the selected were kept"
assert (targets[selected] == sample[selected]).all(), "a target is not the original token"

# %% [markdown]
# ## Pre-training
#
# `attnlab train bert` packs the text, masks every batch afresh with the rule above, and
# trains the encoder plus a small masked-LM head (a dense layer, GELU, LayerNorm, and the
# output projection tied to the token embeddings). We stop early once, to see what the model
# guesses before it has learnt much, then `--resume` the same run.
#
# The stop must not bend the learning-rate schedule. A cosine schedule planned for 20 steps
# would decay to its minimum by step 20, and the resumed run (planned for all the steps) would
# then jump back up. So the first run stops inside the warm-up (at least 20 steps at every
# size) and uses `--lr-schedule constant`, which is the same linear warm-up without a decay
# after it: its 20 learning rates are exactly the first 20 of the full cosine run, and the
# resumed run, given `--lr-schedule cosine` (a resumed run keeps its own settings unless told),
# carries on from there as if it had never stopped.
#
# For scale: BERT-Base pre-trained for 1M steps of 256 sequences (mostly 128 tokens long) on 3.3
# billion words, days on 16 TPU chips. The default here is 1,500 steps of 64 sequences of 128
# tokens on 0.8M tokens of text, about 5 minutes.

# %%
PRETRAIN = f"{OUT}/pretrain"
pretrain_flags = (
    f"--data {PRETRAIN_TEXT} {SHAPE} --batch-size {PRETRAIN_BATCH} --learning-rate 1e-3 "
    f"--warmup-iters {PRETRAIN_WARMUP} --weight-decay 0.01 --beta2 0.98 "
    f"--eval-iters 10 --device {DEVICE} --out {PRETRAIN}"
)
attnlab(
    f"train bert {pretrain_flags} --max-iters {EARLY_STEPS} --eval-interval {EARLY_STEPS} "
    "--lr-schedule constant --no-compile"
)

# %% [markdown]
# `attnlab fill-mask RUN "text with [MASK]"` prints the model's top guesses for each blank,
# with their probabilities. After so few steps:

# %%
PROMPTS = [
    "the movie was [MASK] good .",
    "this is one of the [MASK] films of the year .",
    "i [MASK] this movie .",
    "it 's a [MASK] and often affecting journey .",  # the first SST-2 dev sentence: never seen
]
for prompt in PROMPTS:
    print(prompt)
    attnlab(f"fill-mask {PRETRAIN} {shlex.quote(prompt)} --top-k 5")

# %% [markdown]
# The same few tokens for every blank, the most frequent ones of the text (`the`, `a`, `,`),
# with tiny probabilities: the first thing a model learns is how often each token occurs,
# which already lowers the loss from ln V (uniform guessing) towards the entropy of the token
# frequencies. Using the context comes later. Now the rest of the pre-training:

# %%
attnlab(
    f"train bert {pretrain_flags} --resume --max-iters {PRETRAIN_STEPS} "
    "--lr-schedule cosine --min-learning-rate 1e-4 "
    f"--eval-interval {PRETRAIN_STEPS // 6} {COMPILE}"
)
for prompt in PROMPTS:
    print(prompt)
    attnlab(f"fill-mask {PRETRAIN} {shlex.quote(prompt)} --top-k 5")

# %% [markdown]
# At the default size the guesses now fit their slots: a degree word before `good` (`so`,
# `really`), superlatives before `films` (`best`, `worst`), verbs after `i` (`know`, `see`,
# `liked`), and words of praise in the dev sentence, which the model never read. (At quick
# size there is too little text and time for this.) The loss curve of the whole run:


# %%
def read_metrics(run):
    with open(f"{run}/metrics.jsonl") as log:
        return [json.loads(line) for line in log]


records = read_metrics(PRETRAIN)
evals = [r for r in records if "val_loss" in r]
fig, ax = plt.subplots(figsize=(8, 3.2))
ax.plot([r["step"] for r in records], [r["train_loss"] for r in records], lw=0.6, alpha=0.6,
        label="train (each batch)")  # fmt: skip
ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
ax.axhline(torch.log(torch.tensor(tokenizer.vocab_size)).item(), ls="--", c="gray",
           label="uniform guess, ln V")  # fmt: skip
ax.axvline(EARLY_STEPS, c="gray", lw=0.8)
ax.text(EARLY_STEPS, ax.get_ylim()[1] * 0.97, " first fill-mask", fontsize=8, va="top")
ax.set_xlabel("step")
ax.set_ylabel("masked-LM loss (nats)")
ax.legend()
plt.show()

# %%
# Check: pre-training learnt something, the validation loss fell by at least a nat
assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0, "the masked-LM loss did not fall"
# and the stop at EARLY_STEPS left the schedule whole: no step moved the learning rate by more
# than one warm-up step does (1e-3 / PRETRAIN_WARMUP)
rates = [r["lr"] for r in records]
largest_move = max(abs(later - now) for now, later in itertools.pairwise(rates))
assert largest_move <= 1.01e-3 / PRETRAIN_WARMUP, f"the learning rate jumped by {largest_move:.3g}"

# %% [markdown]
# (The validation rows are the last tenth of the packed text. Since SST-2's phrases overlap,
# some validation phrases are pieces of training ones, so this loss is a little optimistic.)
#
# ## What did the word vectors learn?
#
# The input embedding is also the masked-LM head's output matrix, so two tokens get similar
# vectors when they fit the same blanks. Look at the nearest neighbours (cosine similarity) of
# a few words in the embedding table:


# %%
def neighbours(run, words, k=5):
    """Each word's k nearest tokens in a checkpoint's embedding table (cosine similarity)."""
    checkpoint = load_checkpoint(run)
    vocab = checkpoint.tokenizer
    table = checkpoint.model.encoder.token_embedding.weight.detach().float()
    table = torch.nn.functional.normalize(table, dim=-1)
    special = list(vocab.special_tokens.values())
    for word in words:
        word_ids = encode_sentence(vocab, word)
        if len(word_ids) != 1:
            print(f"  {word:<9} is {len(word_ids)} tokens here")
            continue
        similarity = table @ table[word_ids[0]]
        similarity[[word_ids[0], *special]] = -1  # not itself, not a special token
        nearest = similarity.topk(k).indices.tolist()
        print(f"  {word:<9} " + ", ".join(vocab.decode([i]).strip() for i in nearest))


WORDS = ["good", "bad", "boring", "funny", "film", "actress"]
print("pre-trained embeddings:")
neighbours(PRETRAIN, WORDS)

# %% [markdown]
# Filling blanks groups words by the *slots* they fit: `film` lands next to `movie`, `story`
# and `documentary`, and adjectives next to adjectives. Notice `good` and `bad`: they fit exactly
# the same blanks ("the movie was really ___"), so a masked LM puts them close together.
# Pre-training teaches what kind of word a token is; whether it is praise or blame is left for
# the labels to teach.
#
# ## Fine-tuning: the same encoder, a new head
#
# For classification, BERT reads `[CLS] sentence [SEP]` and takes the final hidden state of
# `[CLS]`, the first position, as the summary of the sentence: a *pooler* (dense + tanh) and a
# linear layer to the classes follow. Every layer is trained, the encoder too, with a small
# learning rate. `attnlab train classifier --init PRETRAIN` copies the encoder's weights and its
# tokenizer from the pre-training run; the pooler and classifier start new (the masked-LM head
# is dropped).
#
# To see what pre-training buys, train the same classifier twice with the same settings and
# batches: once from the pre-trained weights and once from random ones. The dev accuracy is
# evaluated every few steps on the 872 SST-2 dev sentences, which neither run trains on.

# %%
FINETUNE, SCRATCH = f"{OUT}/finetuned", f"{OUT}/scratch"
finetune_flags = (
    f"--data {TASK_DATA} --label-names negative,positive {SHAPE} --dropout 0.1 "
    f"--batch-size 32 --learning-rate {FINETUNE_LR} --min-learning-rate 2e-5 --weight-decay 0.01 "
    f"--warmup-iters {FINETUNE_WARMUP} --max-iters {FINETUNE_STEPS} "
    f"--eval-interval {FINETUNE_EVAL} --device {DEVICE}"
)
attnlab(f"train classifier {finetune_flags} --init {PRETRAIN} --out {FINETUNE}")

# %%
attnlab(f"train classifier {finetune_flags} --out {SCRATCH}")

# %% [markdown]
# (From scratch, the tokenizer is learnt on the labelled training sentences: the same text.)
# Both runs wrote the dev accuracy at each evaluation into `metrics.jsonl`, and kept the
# checkpoint with the best dev accuracy in `RUN/best`.

# %%
fig, ax = plt.subplots(figsize=(8, 3.5))
for run_dir, label in ((FINETUNE, "pre-trained, then fine-tuned"), (SCRATCH, "from scratch")):
    points = [r for r in read_metrics(run_dir) if "val_accuracy" in r]
    steps = [r["step"] for r in points]
    accuracy = [100 * r["val_accuracy"] for r in points]
    ax.plot(steps, accuracy, "o-", label=f"{label} (best {max(accuracy):.1f}%)")
ax.axhline(50, ls="--", c="gray", label="chance")
ax.set_xlabel("fine-tuning step (batches of 32)")
ax.set_ylabel("dev accuracy (%)")
ax.legend()
plt.show()

# %% [markdown]
# ## What to expect, honestly
#
# At the default size both classifiers end at about 75% dev accuracy, within a point or two of
# each other, and either may come out ahead (a trial run of exactly this setting: 73.3%
# pre-trained against 75.0% from scratch; the pre-trained run led at the first evaluation
# only). Five minutes of pre-training on 0.8M tokens buy good fill-ins, but not a better
# classifier: SST-2 has 67,349 labelled phrases, plenty for a 2M-parameter model to learn word
# polarity from scratch, and, as the neighbours showed, the masked LM has not learnt polarity
# itself.
#
# Pre-training pays when it is big. `benchmarks/bert_sst2.py` pre-trains BERT-Mini's shape for
# 10,000 steps (66 minutes; 82M token positions read, from 3M tokens of movie reviews, SST-2
# sentences and image captions) and then fine-tunes both ways for 2,000 steps: 85.6% pre-trained
# against 81.4% from scratch (benchmarks/RESULTS.md), and the pre-trained run leads at every
# evaluation. BERT-Base, pre-trained on 3.3 billion words, reaches 93.5% on SST-2 (GLUE's test
# set). Those are the scales at which "pre-train, then fine-tune" changed the field.
#
# For contrast, the embedding table of the classifier trained from scratch. It only ever had
# to help with the labels, in a few hundred steps: expect mostly noise from its random start,
# with perhaps a few words of the same polarity drawn together.

# %%
print("embeddings of the classifier trained from scratch:")
neighbours(f"{SCRATCH}/best", WORDS)

# %% [markdown]
# ## Classify
#
# `attnlab classify RUN/best "text" ...` prints the label, its probability and the text. The
# classifier reads lower-cased, tokenised text like SST-2's (spaces around punctuation).

# %%
reviews = [
    "a gorgeous , witty , seductive movie .",
    "the plot is predictable and the jokes fall flat .",
    "not as bad as i had feared , but not good either .",
    "an instant classic that i will watch again and again .",
]
quoted = " ".join(shlex.quote(text) for text in reviews)  # one argument each
print("pre-trained, then fine-tuned:")
attnlab(f"classify {FINETUNE}/best {quoted}")
print("from scratch:")
attnlab(f"classify {SCRATCH}/best {quoted}")

# %% [markdown]
# Negation and contrast ("not as bad as ..., but not good") are the hard cases: a small model
# leans on single words such as `bad` and `good`. Large pre-trained encoders handle them far
# better, which is much of why BERT moved the field.
#
# ## Try this
#
# 1. Fine-tune with few labels: copy SST-2's `dev.tsv` and the first 1,001 lines of its
#    `train.tsv` (a header line, then 1,000 sentences) from `task_folder` (at the default size,
#    `catalog.resolve("sst2")`) into a folder, and train both classifiers on it (`--data
#    FOLDER`). Which one wins now, and at which step?
# 2. Pre-train with `--mask-probability 0.4` instead of 0.15 (Wettig et al. 2023 found 40%
#    better for large models). How do the fill-ins and the neighbours change?
# 3. Zero-shot sentiment from the masked LM alone: append `it was [MASK] .` to a few dev
#    sentences and compare the probabilities of `great` and `terrible` at the blank:
#
#     ```python
#     from attnlab.evaluation.predict import masked_ids  # [CLS] text [SEP], as ids
#     ids = masked_ids(tokenizer, "a gorgeous , witty movie . it was [MASK] .")
#     logits, _ = load_checkpoint(PRETRAIN).model(torch.tensor([ids]))
#     p = logits[0, ids.index(specials[MASK])].softmax(-1)  # the blank's probabilities
#     print({w: p[encode_sentence(tokenizer, w)].tolist() for w in ("great", "terrible")})
#     ```
#
#     A word must be one token to fill one blank: at quick size `encode_sentence(tokenizer,
#     "terrible")` may give several ids. How far above chance does this get, with no labels?
#
# 4. Train BERT's own shape (`--no-prenorm --positional learned` instead of pre-norm and RoPE)
#    and compare its masked-LM loss curve with the one above.
# 5. With a network: `attnlab convert bert-base-uncased --out runs/bert-base` brings Google's
#    BERT in, and `train classifier --init runs/bert-base --data sst2 --context-length 128`
#    fine-tunes it (slow on a CPU: try `--time-limit 20`). How much does pre-training at scale add?
