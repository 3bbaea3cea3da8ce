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
# # 7. Vision: patches are tokens
#
# A Transformer reads a sequence of vectors; it does not care where they came from. The Vision
# Transformer (ViT, Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words") cuts an image into
# square patches and reads them as tokens; image GPT (Chen et al. 2020) reads the pixels
# themselves, one after another, and learns to draw. You will cut digits into patches, train a
# ViT and look at what its position embeddings learned, then train an image GPT and let it
# finish half-drawn digits. About 9 to 10 minutes on a 2-core CPU with the default settings.

# %%
import os

# "default": about 9 to 10 minutes on a 2-core CPU; "quick": a small check in 10-30 seconds
# that needs no downloads; "gpu": a bigger run for a CUDA GPU
SIZE = os.environ.get("ATTNLAB_TUTORIAL_SIZE", "default")

# the images: MNIST digits (28 x 28), or at "quick" the embedded shapes (no files needed)
DATA = {"quick": "shapes", "default": "mnist", "gpu": "mnist"}[SIZE]
# the model shapes attnlab ships for them: "mnist" (7 x 7 patches of a 28 x 28 digit) and
# "tiny" (8 x 8 patches of a 32 x 32 shape; image GPT: 16 x 16 shapes)
PRESET = {"quick": "tiny", "default": "mnist", "gpu": "mnist"}[SIZE]
VIT_ITERS = {"quick": 150, "default": 2400, "gpu": 14000}[SIZE]
VIT_BATCH = {"quick": 32, "default": 128, "gpu": 128}[SIZE]
VIT_EVAL_EVERY = {"quick": 50, "default": 300, "gpu": 1000}[SIZE]
IGPT_ITERS = {"quick": 80, "default": 700, "gpu": 4500}[SIZE]
IGPT_EVAL_EVERY = {"quick": 40, "default": 100, "gpu": 500}[SIZE]
DEVICE = "cuda" if SIZE == "gpu" else "cpu"
# width 64 is too narrow for bf16 to pay off on a CPU; on a GPU it does
VIT_PRECISION = "bf16" if SIZE == "gpu" else "fp32"
RUNS = "runs/tutorials/07_vision"

# %%
import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from PIL import Image

from attnlab.cli import run as attnlab  # attnlab("..."): a command line, as in a shell
from attnlab.data.image_classification import ImageDataConfig, load_image_data
from attnlab.data.images import Normalization
from attnlab.data.palette import Palette
from attnlab.models.image_gpt import PRESETS as IGPT_PRESETS
from attnlab.models.vision_transformer import PRESETS, VisionTransformer
from attnlab.training.checkpoints import load_checkpoint

torch.manual_seed(0)

# %% [markdown]
# ## An image, cut into patches
#
# We load the images the way `attnlab train vit` does: uint8 tensors of shape (N, C, H, W),
# C = 1 channel (grey). A 28 x 28 digit cut into 7 x 7 patches gives a 4 x 4 grid: 16 patches,
# each 49 numbers. (The "quick" size uses a 32 x 32 shape cut into 8 x 8 patches: again 4 x 4.)

# %%
config = PRESETS[PRESET]  # the ViT's shape: image size, patch size, width, layers, heads
SIDE, P, C = config.image_size, config.patch_size, config.channels
GRID = SIDE // P  # patches per row and per column
dataset = load_image_data(ImageDataConfig(data=DATA), SIDE)
print(f"{dataset.name}: {len(dataset.train):,} training and {len(dataset.test):,} test images")
print("one batch of images:", tuple(dataset.train.images[:8].shape), dataset.train.images.dtype)
print("classes:", ", ".join(dataset.classes))

image = dataset.test.images[0]  # (C, SIDE, SIDE)
label = dataset.classes[dataset.test.labels[0]]

fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.5))
left.imshow(image[0], cmap="gray")
for k in range(1, GRID):  # the cuts
    left.axhline(k * P - 0.5, color="tab:orange")
    left.axvline(k * P - 0.5, color="tab:orange")
left.set_title(f"a test image ({label}), {SIDE} x {SIDE}")
# the same image with the patches pulled apart: a white gap between them
gap = 2
spread = torch.full((GRID * (P + gap), GRID * (P + gap)), 255, dtype=torch.uint8)
for row in range(GRID):
    for col in range(GRID):
        patch = image[0, row * P : (row + 1) * P, col * P : (col + 1) * P]
        y, x = row * (P + gap), col * (P + gap)
        spread[y : y + P, x : x + P] = patch
right.imshow(spread, cmap="gray")
right.set_title(f"{GRID * GRID} patches of {P} x {P} pixels")
for ax in (left, right):
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The patches as a sequence
#
# The ViT reads the patches in raster order (row by row, left to right) and flattens each into a
# vector of C·P·P numbers. That gives a (16, 49) matrix for a digit: 16 "words" of 49 features.
# Nothing about two dimensions is left in it: which patches are neighbours, the model would have
# to learn (we will look at what it learns).

# %%
x = image.reshape(C, GRID, P, GRID, P)  # (channel, patch row, row in patch, patch col, col)
patches = x.permute(1, 3, 0, 2, 4).reshape(GRID * GRID, C * P * P)  # (N, C·P·P)
print("patch sequence:", tuple(patches.shape), "(tokens, numbers per token)")

fig = plt.figure(figsize=(9, 3.2))
for i in range(GRID * GRID):  # top: the tokens in the order the model reads them
    ax = fig.add_subplot(2, GRID * GRID, i + 1)
    ax.imshow(patches[i].reshape(P, P), cmap="gray", vmin=0, vmax=255)  # one channel: P x P
    ax.set_title(str(i + 1), fontsize=7)
    ax.axis("off")
ax = fig.add_subplot(2, 1, 2)  # bottom: each token flattened, one column per token
ax.imshow(patches.T, cmap="gray", aspect="auto", interpolation="nearest")
ax.set_xticks(range(GRID * GRID), [str(i + 1) for i in range(GRID * GRID)])
ax.set(xlabel="token (patch)", ylabel="pixel in the patch")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## From patches to the sequence the Transformer sees
#
# Equation 1 of the ViT paper builds the input in three steps:
#
#     z₀ = [x_class ; x¹E ; x²E ; … ; xᴺE] + E_pos
#
# - **Patch embedding**: one linear map E (C·P·P → D) applied to every flattened patch xⁱ, as
#   a word embedding turns a token into a vector. It is the same for every patch, so it is also
#   a convolution with kernel P and stride P.
# - **Class token**: a learned vector x_class put in front. After the last block, its vector is
#   what the classification head reads (as BERT's `[CLS]`). It has no pixels of its own: through
#   attention it gathers what it needs from the patches.
# - **Position embeddings**: a learned table E_pos, one row per position (class token
#   included), added as in GPT. Without it the model would see a bag of patches.
#
# After that it is the encoder of "Attention Is All You Need" (pre-norm, bidirectional
# attention, no mask): every patch may look at every other patch from the first layer on.
# Let us build attnlab's `VisionTransformer` and count where its parameters are.

# %%
model = VisionTransformer(config)
parts = {
    "patch embedding E": model.patch_embedding.parameters(),
    "class token": [model.class_token],
    "position embeddings": model.position_embedding.parameters(),
    "blocks": model.blocks.parameters(),
    "final norm and head": [*model.final_norm.parameters(), *model.head.parameters()],
}
print(f"{PRESET!r} ViT: {config.n_layers} blocks, width {config.d_model}, {config.n_heads} heads")
for name, parameters in parts.items():
    print(f"  {name:<22} {sum(p.numel() for p in parameters):>9,}")
print(f"  {'total':<22} {model.num_parameters():>9,}")
print("position table:", tuple(model.position_embedding.weight.shape), "= (1 + N, D)")

# %% [markdown]
# Almost all the weights sit in the blocks: turning a patch into a vector takes one small
# matrix. What is small here is the sequence: 17 positions, where GPT-2 reads up to 1,024
# tokens. Attention's cost grows with the square of that length, which is why ViTs read patches
# and not pixels: 784 pixel tokens would make every attention map 784 x 784 instead of 17 x 17.
#
# Now the three steps by hand, on our one image (normalised as training does: pixels in [0, 1],
# then minus the mean, over the standard deviation of the training images).

# %%
normalize = Normalization.of(dataset.train.images)
pixels = normalize(image[None])  # (1, C, SIDE, SIDE) float
with torch.no_grad():
    tokens = model.patch_embedding(pixels)  # (1, N, D): E applied to each patch
    class_token = model.class_token.expand(1, -1, -1)  # (1, 1, D)
    sequence = torch.cat([class_token, tokens], dim=1)  # (1, 1 + N, D)
    z0 = sequence + model.position_embedding(sequence.size(1))  # + E_pos
print("patch vectors:", tuple(tokens.shape), " with the class token:", tuple(sequence.shape))
print("the blocks read z0 of shape", tuple(z0.shape))

# %%
# check: the patch embedding is one linear map applied to each flattened patch, and the same
# thing as a convolution with kernel P and stride P (agree to 1e-5)
weight = model.patch_embedding.projection.weight  # (D, C·P·P)
bias = model.patch_embedding.projection.bias  # (D,)
flat = pixels.reshape(C, GRID, P, GRID, P).permute(1, 3, 0, 2, 4).reshape(GRID * GRID, -1)
with torch.no_grad():
    by_hand = flat @ weight.T + bias  # (N, D)
    kernel = weight.reshape(config.d_model, C, P, P)
    as_convolution = F.conv2d(pixels, kernel, bias, stride=P).flatten(2).transpose(1, 2)[0]
assert torch.allclose(by_hand, tokens[0], atol=1e-5), "the linear map on patches differs"
assert torch.allclose(as_convolution, tokens[0], atol=1e-5), "the convolution differs"
print("linear map on patches == stride-P convolution == attnlab's PatchEmbedding")

# %% [markdown]
# ## Train a ViT
#
# The settings follow `configs/vit_mnist.toml` (AdamW at 2e-3 with a cosine decay, weight decay
# 0.05, random shifts of up to 2 pixels as augmentation), with fewer steps: that config's 14,000
# steps reach 99.28% test accuracy in 19 minutes on 2 cores; our 2,400 take about 4 minutes
# (97.4% in our run). Each evaluation line scores the first 2,560 test images.

# %%
VIT_RUN = f"{RUNS}/vit"
shutil.rmtree(VIT_RUN, ignore_errors=True)  # start afresh each time the notebook runs
attnlab(
    f"train vit --data {DATA} --preset {PRESET} --shift 2 --batch-size {VIT_BATCH} "
    f"--max-iters {VIT_ITERS} --learning-rate 2e-3 --min-learning-rate 1e-5 "
    f"--warmup-iters {max(10, VIT_ITERS // 20)} --weight-decay 0.05 "
    f"--eval-interval {VIT_EVAL_EVERY} --eval-iters 20 "
    f"--precision {VIT_PRECISION} --device {DEVICE} --out {VIT_RUN}"
)

# %% [markdown]
# ## Evaluate: accuracy and the confusion matrix
#
# `attnlab evaluate` scores every test image (10,000 digits) and draws the confusion matrix:
# row = the true class, column = the predicted one, so everything off the diagonal is a mistake.

# %%
attnlab(f"evaluate {VIT_RUN} --device {DEVICE}")
plt.figure(figsize=(6, 4))
plt.imshow(plt.imread(f"{VIT_RUN}/confusion_val.png"))
plt.axis("off")
plt.show()

# %% [markdown]
# The same numbers from Python: load the checkpoint (it carries its class names and the pixel
# normalisation it was trained with), classify every test image, and look at some mistakes.

# %%
checkpoint = load_checkpoint(VIT_RUN, device=DEVICE)
vit = checkpoint.model
classes = checkpoint.artifacts["classes"].names
normalize = checkpoint.artifacts["normalization"]
test_images, test_labels = dataset.test.images, dataset.test.labels
with torch.no_grad():
    predicted = torch.cat(
        [vit(normalize(batch.to(DEVICE)))[0].argmax(-1).cpu() for batch in test_images.split(500)]
    )
accuracy = (predicted == test_labels).float().mean().item()
chance = 1 / len(classes)
print(f"test accuracy {accuracy:.2%} over {len(test_labels):,} images (chance: {chance:.1%})")

# check: the trained ViT beats guessing by far (at least twice the chance level)
assert accuracy > 2 * chance, accuracy

wrong = (predicted != test_labels).nonzero()[:, 0][:8]
if len(wrong):
    fig, axes = plt.subplots(1, len(wrong), figsize=(9, 1.8), squeeze=False)
    for ax, i in zip(axes[0], wrong.tolist(), strict=True):
        ax.imshow(test_images[i, 0], cmap="gray")
        ax.set_title(f"{classes[test_labels[i]]}\n→ {classes[predicted[i]]}", fontsize=8)
        ax.axis("off")
    fig.suptitle("some mistakes: true → predicted", fontsize=9)
    plt.show()

# %% [markdown]
# ## Classify one image file
#
# `attnlab classify-image` reads image files (PNG, JPEG, ...) the way training read the data.
# We save a test image as a PNG and ask for its three most probable classes.

# %%
png = Path(RUNS) / "one_image.png"
Image.fromarray(test_images[1, 0].numpy()).save(png)
print("true class:", classes[test_labels[1]])
attnlab(f"classify-image {VIT_RUN} {png} --top-k 3 --device {DEVICE}")

# %% [markdown]
# ## What did the position embeddings learn?
#
# The model was never told that patch 5 sits below patch 1. It only got one learned vector per
# position, and if it needs the geometry, it has to put it into those vectors. Figure 7 (centre)
# of the ViT paper compares each patch's position embedding with every other's (cosine
# similarity): in their large models trained on millions of images, each patch's map is bright
# around the patch itself and along its row and column, so the 2-D grid has been rebuilt from
# nothing but the data. Let us draw the same maps for our model:
#
# - left, the full (N, N) table of similarities;
# - middle, the same numbers laid out as the image: the small square at grid cell (r, c) shows
#   how similar the position of patch (r, c) is to each other patch's position;
# - right, the mean similarity of two patches against their distance on the grid (rows plus
#   columns apart), for the trained table and for a random one, as the model started with.


# %%
def similarities(table):
    """(N, D) position embeddings -> (N, N) cosine similarities."""
    unit = F.normalize(table, dim=-1)
    return unit @ unit.T


def by_grid_distance(similarity):
    """Mean similarity of two different patches, by their distance on the grid (1, 2, ...)."""
    patch = torch.arange(grid * grid)
    row, col = patch // grid, patch % grid
    distance = (row[:, None] - row).abs() + (col[:, None] - col).abs()  # (N, N)
    return {k: similarity[distance == k].mean().item() for k in range(1, 2 * grid - 1)}


grid = vit.config.image_size // vit.config.patch_size  # the trained model's grid, not GRID
patch_rows = slice(-grid * grid, None)  # the table's rows for the patches (no class token)
trained = similarities(vit.position_embedding.weight[patch_rows].detach().cpu())
untrained = similarities(VisionTransformer(vit.config).position_embedding.weight[patch_rows])

mosaic = torch.full((grid * (grid + 1), grid * (grid + 1)), float("nan"))
for i in range(grid * grid):  # one grid x grid map per patch, in its place, with a gap
    row, col = divmod(i, grid)
    y, x = row * (grid + 1), col * (grid + 1)
    mosaic[y : y + grid, x : x + grid] = trained[i].reshape(grid, grid)

fig, (left, middle, right) = plt.subplots(1, 3, figsize=(9, 3.3), layout="constrained")
shown = left.imshow(trained, cmap="viridis", vmin=-1, vmax=1)
left.set(title="similarity", xlabel="patch", ylabel="patch")
middle.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1)
middle.set_title("maps in place")
middle.axis("off")
fig.colorbar(shown, ax=[left, middle], shrink=0.8)
for name, similarity in (("trained", trained), ("untrained", untrained)):
    profile = by_grid_distance(similarity)
    right.plot(list(profile), list(profile.values()), "o-", label=name)
right.axhline(0, color="gray", lw=0.5)
right.set(title="by distance", xlabel="distance on the grid", ylabel="mean similarity")
right.set_ylim(-0.6, 0.6)
right.legend(fontsize=8)
plt.show()

# %% [markdown]
# The untrained table is flat at zero: random vectors in 64 dimensions are nearly orthogonal.
# Training moved the vectors far from that (look at the colours on the left), so the model does
# use positions: it must, to tell a 6 from a 9. But in a run of a few minutes on 16 positions,
# the paper's picture does not appear (it did not in our runs): neighbours are not clearly more
# alike than distant patches, and the maps look patchy rather than smooth. The model only needs
# *some* code that tells positions apart, and nothing in its architecture prefers a smooth one.
# That is the price of the Transformer's generality: a convolutional network has locality built
# in, a ViT must learn it from data, which is why ViTs need more data, or more augmentation,
# than CNNs of the same size (the ViT paper's models only beat CNNs after pre-training on 14 to
# 300 million images). Question 2 of "Try this" asks whether a finer grid and longer training
# change the picture.
#
# ## Image GPT: pixels as tokens
#
# The ViT classifies. Can a Transformer also *draw*? Image GPT treats an image like a text: it
# quantises each pixel to a small palette, reads the pixels in raster order and trains a GPT to
# predict the next one. With a binary palette (a pixel > 127 is white) a digit becomes 784
# tokens of 0 or 1. attnlab can pack G neighbouring pixels into one token: with G = 4 a token is
# a 4-bit number (16 values) and a digit is 196 tokens. The softmax over 16 values is the joint
# probability of the 4 pixels, so nothing is approximated; the sequence is just 4 times shorter.

# %%
igpt_side = IGPT_PRESETS[PRESET].image_size  # 28 for digits; the "tiny" preset draws 16 x 16
igpt_data = load_image_data(ImageDataConfig(data=DATA), igpt_side)
palette = Palette.named("binary", igpt_data.train.images, pixels_per_token=4)
digit = igpt_data.test.images[:1]  # (1, C, S, S)
codes = palette.encode(digit)  # (1, L): raster order, 4 pixels a token
inputs, targets = palette.sequences(digit)
print(f"{igpt_side} x {igpt_side} pixels -> {codes.shape[1]} tokens with values 0..15;")
print(f"the start token is {palette.start_token}: inputs begin with it, targets are the tokens")
print("inputs :", inputs[0, :12].tolist(), "...")
print("targets:", targets[0, :12].tolist(), "...")

row = igpt_side // 2  # a row through the middle of the image
per_row = igpt_side // 4
middle = codes[0, row * per_row : (row + 1) * per_row].tolist()
print(f"row {row} as tokens: {middle}")
print(f"  as pixels:        {' '.join(format(t, '04b') for t in middle)}")

fig, axes = plt.subplots(1, 3, figsize=(8, 3))
axes[0].imshow(digit[0, 0], cmap="gray")
axes[0].set_title("grey levels")
axes[1].imshow(palette.decode(codes, igpt_side)[0, 0], cmap="gray")
axes[1].set_title("binary palette")
axes[2].imshow(codes.reshape(igpt_side, per_row), cmap="magma", aspect=0.25, interpolation="none")
axes[2].set_title("tokens (4 pixels each)")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# A start token goes in front, so even the first pixel is predicted: the model gives a
# probability to every pixel of the image, and the sum of the cross-entropies over the tokens is
# the image's negative log-likelihood (NLL), in nats. Two baselines tell us what a number means:
#
# - a coin flip per pixel: S·S·ln 2 nats (543 for a digit);
# - each pixel on its own, with the probability that this pixel is white in the training images:
#   this knows where digits usually have ink, but nothing about the pixels already drawn.
#
# Whatever image GPT does better than the second baseline, it owes to reading the context.

# %%
white = palette.indices(igpt_data.train.images).float()  # (N, S, S): 1 where the pixel is white
p_white = white.mean(0).clamp(1e-3, 1 - 1e-3)  # (S, S)
test_white = palette.indices(igpt_data.test.images).float()
per_pixel = -(test_white * p_white.log() + (1 - test_white) * (1 - p_white).log())
coin_nats = igpt_side * igpt_side * torch.log(torch.tensor(2.0)).item()
independent_nats = per_pixel.sum((1, 2)).mean().item()
print(f"coin flip per pixel:           {coin_nats:6.1f} nats per image")
print(f"each pixel alone (its average): {independent_nats:6.1f} nats per image")

# %% [markdown]
# ## Train image GPT
#
# The settings follow `configs/igpt_mnist.toml` (4 causal blocks of width 128, 0.8M parameters,
# 4 pixels a token), with a few minutes instead of its 18: that run reaches 57.7 nats per test
# digit after 4,500 steps; we take 700. The evaluation lines report `val nats per image` on the
# first 256 test images.

# %%
IGPT_RUN = f"{RUNS}/igpt"
shutil.rmtree(IGPT_RUN, ignore_errors=True)
attnlab(
    f"train igpt --data {DATA} --preset {PRESET} --palette binary --pixels-per-token 4 "
    f"--batch-size 32 --max-iters {IGPT_ITERS} --learning-rate 2e-3 --min-learning-rate 1e-4 "
    f"--warmup-iters {max(10, IGPT_ITERS // 20)} --weight-decay 0.05 "
    f"--eval-interval {IGPT_EVAL_EVERY} --eval-iters 8 --device {DEVICE} --out {IGPT_RUN}"
)

# %% [markdown]
# `attnlab evaluate` scores every test image: nats per image and bits per pixel.

# %%
attnlab(f"evaluate {IGPT_RUN} --batch-size 64 --device {DEVICE}")

lines = Path(IGPT_RUN, "metrics.jsonl").read_text().splitlines()
records = [json.loads(line) for line in lines]  # one record per step and evaluation
nats = [r["val_nats_per_image"] for r in records if "val_nats_per_image" in r]
print(f"NLL at the evaluations: {', '.join(f'{n:.1f}' for n in nats)}")

# check: image GPT is far better than a coin flip per pixel, and it improved while training
assert nats[-1] < 0.5 * coin_nats and nats[-1] < nats[0], nats

# %% [markdown]
# ## Where is the model surprised?
#
# The NLL is a sum over tokens, so we can see where in the image the bits are spent: the
# cross-entropy of each token of a test image, drawn at its place.

# %%
igpt_checkpoint = load_checkpoint(IGPT_RUN, device=DEVICE)
igpt = igpt_checkpoint.model
inputs, targets = igpt_checkpoint.artifacts["palette"].sequences(digit)
with torch.no_grad():
    logits, _ = igpt(inputs.to(DEVICE))  # (1, L, V)
surprise = F.cross_entropy(logits[0].float(), targets[0].to(DEVICE), reduction="none").cpu()

fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.2), layout="constrained")
left.imshow(palette.decode(codes, igpt_side)[0, 0], cmap="gray")
left.set_title("a test image")
shown = right.imshow(
    surprise.reshape(igpt_side, per_row), cmap="magma", aspect=0.25, interpolation="none"
)
right.set_title(f"nats per token ({surprise.sum():.0f} in all)")
fig.colorbar(shown, ax=right)
for ax in (left, right):
    ax.axis("off")
plt.show()

# %% [markdown]
# The background costs almost nothing: the bits go to the strokes, most of all to the first ink
# of the digit (nothing above it says where the digit begins) and to the places where a stroke
# could go more than one way.
#
# ## Drawing and completing
#
# Sampling works as in a language model: draw a token from the softmax, append it, repeat (with
# the KV cache, one token per step). `attnlab sample-images` writes one PNG: two rows of images
# drawn from nothing, then, for 8 test images, the image, its top half (the rest grey) and the
# model's completion of the bottom half.

# %%
grid_png = f"{RUNS}/samples.png"
attnlab(f"sample-images {IGPT_RUN} --samples 16 --completions 8 --seed 0 --out {grid_png}")
plt.figure(figsize=(9, 4))
plt.imshow(plt.imread(grid_png))
plt.axis("off")
plt.show()

# %% [markdown]
# After a few minutes of CPU training the samples are stroke-like scribbles, with some digits
# among them; the completions are better, since the top half already says which digit it is.
# A completion is one sample of many: run it with another `--seed` and the bottom halves change.
#
# ## Try this
#
# 1. Train the ViT with `--pooling mean` (average the patch vectors, no class token). Does the
#    accuracy change? What does the class token buy, if anything?
# 2. Change the patch size to 4 (`--patch-size 4` in `train vit`: 49 patches of 4 x 4 instead
#    of 16 of 7 x 7). How much slower is a training step? Predict the factor first from the cost
#    of attention and of the rest of a block, then measure it (`images_per_s` of each step in
#    the run's `metrics.jsonl`). Train longer (`--max-iters 14000`, the full recipe: at patch
#    size 4, over an hour on 2 cores) and draw the position maps again: does the grid come back?
# 3. Shuffle the patches of every test image in the same fixed order, then evaluate the trained
#    ViT on them. If position embeddings were removed, would the accuracy change? (Hint: what is
#    attention without positions?)
# 4. Train image GPT with `--pixels-per-token 1` for the same minutes (`--time-limit`). Compare the
#    nats per image: is one pixel a token better per step, or per minute?
