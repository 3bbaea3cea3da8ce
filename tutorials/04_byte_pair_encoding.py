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
# # 4. Byte-pair encoding from scratch
#
# A Transformer never sees text, only a sequence of token ids, and someone has to decide what
# a token is. "Attention Is All You Need" encoded its English-German sentences with byte-pair
# encoding (BPE, Sennrich et al. 2016, after Gage's 1994 compression trick), a shared
# vocabulary of about 37,000 tokens: start from single symbols and repeatedly merge the most
# frequent adjacent pair into a new symbol. You will run BPE by hand on the classic example,
# train attnlab's byte-level BPE on real text, watch a sentence's tokens grow as the vocabulary
# does, measure compression, and compare with GPT-2's own vocabulary.
# A few seconds on a 2-core CPU with the default settings.

# %%
import os

# "default": a few seconds on a 2-core CPU; "quick": seconds, no downloads;
# "gpu": a bigger run for a CUDA GPU
SIZE = os.environ.get("ATTNLAB_TUTORIAL_SIZE", "default")
MAX_VOCAB = {"quick": 4096, "default": 4096, "gpu": 8192}[SIZE]  # the largest vocabulary
USE_GPT2 = SIZE != "quick"  # GPT-2's vocabulary files (dataset gpt2-bpe) are not embedded

# %%
import shutil
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt

from attnlab.cli import run as attnlab  # attnlab("..."): a command line, as in a shell
from attnlab.data import catalog
from attnlab.errors import UserError
from attnlab.tokenizers import CharTokenizer, load_tokenizer
from attnlab.tokenizers.bpe import BPETokenizer

# %% [markdown]
# ## 1. BPE by hand: "aaabdaaabac"
#
# The algorithm fits in a sentence: **count every adjacent pair of symbols, replace the most
# frequent pair everywhere by a new symbol, repeat.** We work with integer ids as a real
# tokenizer does: the 256 byte values are ids 0..255 ('a' is 97), and each merge creates the
# next id, 256, 257, ... To print them we call the new symbols Z, Y, X.
#
# One detail matters for reproducibility: when two pairs are equally frequent, which wins? We
# take the pair with the smallest ids, so pairs of older symbols go first (attnlab's trainer
# uses the same rule).

# %%
names = {i: chr(i) for i in range(256)}  # how to print each id: bytes as characters
ids = list(b"aaabdaaabac")  # the text as byte values: [97, 97, 97, 98, ...]
hand_merges = []  # the pairs merged, in order: this list *is* the tokenizer
print("start:", "".join(names[i] for i in ids))
for new_name in "ZYX":
    # every adjacent pair, overlapping ("aaa" holds "aa" twice)
    counts = Counter(zip(ids, ids[1:], strict=False))
    pair = min(counts, key=lambda p: (-counts[p], p))  # most frequent; ties: smallest ids
    new_id = 256 + len(hand_merges)
    merged, i = [], 0
    while i < len(ids):  # rewrite left to right, replacing each occurrence of the pair
        if tuple(ids[i : i + 2]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    ids, names[new_id] = merged, new_name
    hand_merges.append(pair)
    shown = "".join(names[i] for i in ids)
    print(f"{names[pair[0]]}{names[pair[1]]} -> {new_name} (count {counts[pair]}): {shown}")

# %% [markdown]
# Three merges took 11 symbols down to 5:
#
# - `aa` comes first (the count of 4 includes overlaps; replacing left to right, `aaa` becomes
#   `Za`, not `aZ`).
# - In "ZabdZabac", `Za` and `ab` both occur twice: the tie goes to `ab`, the pair of two
#   bytes, which are older than Z.
# - `ZY` is "aaab": merges build on earlier merges, so tokens get longer and longer.
#
# Now every pair occurs once, and merging one more would save a single symbol. A real
# tokenizer keeps going anyway until it reaches the vocabulary size it was asked for.
#
# The same text through attnlab's trainer: a vocabulary of 259 = 256 bytes + 3 merges.

# %%
tiny = BPETokenizer.train(["aaabdaaabac"], vocab_size=259)
hand_as_bytes = [
    (tiny.token_bytes(left), tiny.token_bytes(right)) for left, right in hand_merges
]  # ids 0..258 mean the same in both: bytes, then the merges in order
print("attnlab's merges:", tiny.merges)
print("attnlab's encoding:", tiny.encode("aaabdaaabac"), "= X d X a c")
# check: attnlab's trainer learns exactly the merges we made by hand
assert tiny.merges == hand_as_bytes

# %% [markdown]
# ## 2. Real text, and pre-tokenization
#
# At the default size we train on tiny Shakespeare (1.1 MB); the quick check uses 1 MB of
# Python's own standard library instead, so that nothing is downloaded. We keep the last 10%
# of the text out of training, to measure how well the vocabulary fits text it has not seen.

# %%
RUN = Path("runs/tutorials/04_byte_pair_encoding")
shutil.rmtree(RUN, ignore_errors=True)  # start afresh each time the notebook runs
RUN.mkdir(parents=True)
if SIZE == "quick":
    from attnlab.data.corpus import Corpus

    text = next(iter(Corpus("stdlib")))[:1_000_000]  # the first 1M characters of the stdlib
else:
    # catalog.resolve finds the dataset's file (and fetches it on first use), as --data does
    text = Path(catalog.resolve("tinyshakespeare/input.txt")).read_text()
cut = int(0.9 * len(text))
train_text, held_out = text[:cut], text[cut:]
(RUN / "train.txt").write_text(train_text)
print(f"{len(train_text.encode()):,} bytes to train on, {len(held_out.encode()):,} held out")

# %% [markdown]
# Running BPE over a whole book as one string would create tokens such as "g. The", spanning
# words and punctuation. GPT-2's tokenizer (and attnlab's, which follows it) first cuts the
# text into **pre-tokens** with a regular expression: runs of letters with their leading space,
# runs of digits, runs of punctuation, contractions such as `'s`. Merges never cross these
# boundaries. It also makes training fast: the corpus becomes a table of distinct words and
# their counts.

# %%
no_merges = BPETokenizer([])  # only the 256 bytes, with GPT-2's pre-tokenization pattern
print(no_merges.pre_tokenize("The king's 2 horses, said I, can't run!"))

# %% [markdown]
# Now train: `attnlab tokenize train` counts the pre-tokens, then merges until the vocabulary
# has `MAX_VOCAB` entries. It runs the same algorithm as our loop, with bookkeeping so that each
# merge only revisits the words containing the pair (see `attnlab/tokenizers/bpe_training.py`).

# %%
attnlab(
    f"tokenize train --data {RUN / 'train.txt'} --vocab-size {MAX_VOCAB} --out {RUN / 'bpe.json'}"
)
tokenizer = load_tokenizer(RUN / "bpe.json")


def visible(token: bytes) -> str:
    """A token's text with its spaces and line breaks made visible."""
    return token.decode("utf-8", "backslashreplace").replace(" ", "␣").replace("\n", "↵")


print("first 24 merges:")
for i, (left, right) in enumerate(tokenizer.merges[:24]):
    print(f"  {256 + i}: {visible(left)} + {visible(right)} -> {visible(left + right)}")
print(
    "the last 8 tokens learned:", [visible(left + right) for left, right in tokenizer.merges[-8:]]
)

# %% [markdown]
# On English (the default size) the first merges join a space to the commonest first letters
# and build the commonest short words: "␣t", "he", then "␣the" from the two. On Python code
# (the quick size) runs of spaces come first: indentation is the most frequent "word" there.
# The last merges make rarer words, or pieces of them. A token starts with a space or not:
# "␣the" (a word) and "the" (the end of "bathe") are different tokens.
#
# ## 3. Watching a sentence as the vocabulary grows
#
# BPE is greedy: merge number 300 is chosen knowing nothing of the merges after it. So a
# tokenizer with a vocabulary of 512 is exactly the first 256 merges of our 4096 one, and we
# can get every smaller vocabulary by cutting the list. Let us check that claim by training a
# 512 vocabulary from scratch.


# %%
def first_merges(tokenizer, vocab_size):
    """The tokenizer of a smaller vocabulary: the first vocab_size - 256 merges."""
    return BPETokenizer(tokenizer.merges[: vocab_size - 256], pattern=tokenizer.pattern)


direct = BPETokenizer.train([train_text], vocab_size=512)
# check: training a smaller vocabulary gives the first merges of the larger one
assert direct.merges == first_merges(tokenizer, 512).merges
print("a 512 vocabulary trained on its own = the first 256 merges of the", MAX_VOCAB, "one")

# %%
SENTENCES = ["To be, or not to be: that is the question.", "The transformer attends to every word."]
VOCAB_STEPS = [256, 260, 512, 2048, MAX_VOCAB]


def pieces(tokenizer, text):
    """The text as its tokens, separated by |."""
    return "|".join(visible(tokenizer.token_bytes(i)) for i in tokenizer.encode(text))


for sentence in SENTENCES:
    for vocab_size in VOCAB_STEPS:
        small = first_merges(tokenizer, vocab_size)
        n = len(small.encode(sentence))
        print(f"{vocab_size:5d} vocab, {n:2d} tokens: {pieces(small, sentence)}")
    print()

# %% [markdown]
# With 256 entries every byte is its own token. The first few merges catch spaces before
# common letters; by 512 the frequent short words are single tokens; by the largest vocabulary
# the common words of the training text are whole, while a word the text rarely uses is still
# assembled from pieces ("trans|for|mer" on Shakespeare). Nothing is ever unknown: a word the
# tokenizer has no token for falls apart into smaller tokens, down to single bytes.
#
# ## 4. Encoding new text
#
# Training produced an ordered list of merges. To encode a pre-token, start from its bytes and
# merge, again and again, the adjacent pair whose merged token was learned *earliest* (its id
# is its rank), until no adjacent pair forms a token. Here it is in a few lines, checked on
# the whole held-out text against attnlab's encoder (which hands the same ranks to OpenAI's
# tiktoken library, written in Rust).

# %%
rank = {tokenizer.token_bytes(i): i for i in range(tokenizer.vocab_size)}  # token -> its id


def encode_word(word: str) -> list[int]:
    parts = [bytes([b]) for b in word.encode("utf-8")]  # start from single bytes
    while len(parts) > 1:
        # the rank of the token each adjacent pair would make (None: not a token)
        ranks = [rank.get(a + b) for a, b in zip(parts, parts[1:], strict=False)]
        learned = [(r, i) for i, r in enumerate(ranks) if r is not None]
        if not learned:
            break
        _, i = min(learned)  # the earliest-learned merge (the leftmost, on a tie)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return [rank[p] for p in parts]


by_hand = [i for word in tokenizer.pre_tokenize(held_out) for i in encode_word(word)]
print(f"{len(by_hand):,} tokens for the held-out text, e.g. {by_hand[:8]}")
# check: our ten-line encoder gives attnlab's (tiktoken's) ids on the whole held-out text
assert by_hand == tokenizer.encode(held_out)

# %% [markdown]
# ## 5. Compression against vocabulary size
#
# Why not stay with bytes? Self-attention costs grow with the square of the sequence length,
# and a model's context is counted in tokens: fewer, longer tokens mean cheaper steps and more
# text in view. But each extra token adds a row to the embedding and to the output softmax, and
# rarer tokens are seen less often in training. The curve below is **bytes per token**: how
# many bytes of text one token covers on average, on the training text and on the held-out 10%.

# %%
doublings = [256, 260, 300, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192]
vocab_sizes = [v for v in doublings if v <= MAX_VOCAB]
held_bytes, train_bytes = len(held_out.encode()), len(train_text.encode())
held_ratio, train_ratio = [], []
for vocab_size in vocab_sizes:
    small = first_merges(tokenizer, vocab_size)
    held_ratio.append(held_bytes / len(small.encode_array(held_out)))
    train_ratio.append(train_bytes / len(small.encode_array(train_text)))

fig, ax = plt.subplots(figsize=(8, 3.8))
ax.plot(vocab_sizes, train_ratio, "o--", label="training text")
ax.plot(vocab_sizes, held_ratio, "o-", label="held-out text")
ax.set_xscale("log", base=2)
ax.set(xlabel="vocabulary size (log scale)", ylabel="bytes per token")
ax.set_title("Compression against vocabulary size")
ax.legend()
plt.tight_layout()
plt.show()
for vocab_size, ratio in zip(vocab_sizes, held_ratio, strict=True):
    print(f"vocab {vocab_size:5d}: {ratio:.2f} bytes/token on held-out text")

# %% [markdown]
# After the first few hundred merges the curve is close to a straight line on this log scale:
# each *doubling* of the vocabulary adds about the same compression, so each new token buys
# less than the one before. The first merges catch pairs that occur tens of thousands of
# times, the last ones words that occur a few dozen times. The gap between the two curves is
# the vocabulary fitting its own training text: names and words that only occur there got
# tokens of their own, which the held-out text cannot use.
#
# ## 6. GPT-2's vocabulary
#
# GPT-2, a model trained on 40 GB of web pages (WebText), uses the same byte-level BPE with
# 50,000 merges (50,257 tokens: 256 bytes, the merges, and `<|endoftext|>`). `attnlab tokenize
# show --tokenizer gpt2` reads its `vocab.bpe` and `encoder.json` (the dataset `gpt2-bpe`). The
# quick check skips this part: those files are not embedded.

# %%
if USE_GPT2:
    for sentence in SENTENCES:
        attnlab(f'tokenize show --tokenizer gpt2 --no-color "{sentence}"')
    gpt2_folder = Path(catalog.resolve("gpt2-bpe"))
    gpt2 = BPETokenizer.from_gpt2_files(gpt2_folder / "vocab.bpe", gpt2_folder / "encoder.json")
    print("GPT-2's first merges:", [visible(a + b) for a, b in gpt2.merges[:10]])
    gpt2_ratio = held_bytes / len(gpt2.encode_array(held_out))
    print(f"held-out text: GPT-2 ({gpt2.vocab_size:,} tokens) {gpt2_ratio:.2f} bytes/token,")
    print(f"               ours ({tokenizer.vocab_size:,} tokens) {held_ratio[-1]:.2f} bytes/token")
else:
    print("quick size: GPT-2's vocabulary skipped (it needs the gpt2-bpe dataset)")

# %% [markdown]
# At the default size: GPT-2's first merges are nearly ours ("␣t", "␣a", "he", "in", ...):
# English is English. On Shakespeare, its vocabulary of 50,257 tokens compresses only a little
# better than our 4,096 learned on Shakespeare itself: most of its tokens are spent on words
# of the modern web.
# A tokenizer is part of a model's training data, fixed before the first gradient step.
#
# ## 7. Byte-level fallback: no unknown tokens
#
# Because the base vocabulary is all 256 byte values, *any* Unicode string can be encoded:
# characters the training text never contained are written as their UTF-8 bytes, 1 to 4
# tokens each. A character-level vocabulary, by contrast, has no id for a character it never
# saw (older word-level models mapped such words to `<unk>` and lost them).

# %%
strange = "naïve café, 日本語, emoji 🤖👍🏽, math ∀x∈ℝ, Ελληνικά, a tab\tand a NUL\x00!"
for vocab_size in [256, 260, 2048, MAX_VOCAB]:
    small = first_merges(tokenizer, vocab_size)
    round_trip = small.decode(small.encode(strange))
    # check: byte-level BPE gives back any Unicode string exactly, whatever the vocabulary
    assert round_trip == strange, vocab_size
print("every vocabulary size gave the string back")
print("the robot emoji as tokens:", pieces(tokenizer, "🤖"))

characters = CharTokenizer.from_text(train_text)  # one id per character of the training text
try:
    characters.encode("🤖")
except UserError as error:
    print("a character-level tokenizer:", error)

# %% [markdown]
# The emoji is 4 bytes (`\xf0\x9f\xa4\x96`) and our vocabulary has no merge for them, so it
# costs 4 tokens. A token may therefore hold *part* of a character, which is why attnlab
# decodes whole sequences of tokens to bytes first and only then to text.
#
# ## Try this
#
# - Train with `--pattern gpt4` (GPT-4's pre-tokenizer: digits in groups of at most three,
#   case-insensitive contractions) and compare `pre_tokenize` and `pieces` of `"In 1623, 36 plays
#   were printed."` (Shakespeare has hardly a digit, so its numbers stay single bytes either way;
#   the quick size's Python code merges them). Why would arithmetic prefer short digit groups?
# - Train a vocabulary on the stdlib (`--data stdlib`) and measure its bytes per token on the
#   held-out Shakespeare, and Shakespeare's on Python code. How much does the domain matter?
# - In the hand-made loop, break ties by the *largest* ids instead. Which merges change? Does
#   the final number of symbols change?
# - Train a GPT on the same text with `--tokenizer char` and `--tokenizer bpe:1024` and
#   compare `attnlab evaluate`'s bits per byte rather than the loss. Why is the loss per
#   token not comparable between the two?
