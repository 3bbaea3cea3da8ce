"""The Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

Dimensions: B batch, C channels, S image side (pixels), P patch side, N patches ((S/P)²),
T positions (N, plus one for the class token), D model width, K classes.

images (B, C, S, S) -> non-overlapping P x P patches, each flattened and projected to D (the
paper's "linear projection of flattened patches", eq. 1: the same function as a convolution of
stride P) -> a learned class token in front -> + learned position embeddings -> n_layers pre-norm
blocks of bidirectional attention -> final norm -> the class token's vector (or, pooling="mean",
the mean over the patches, with no class token) -> a linear head to K logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnlab.config import (
    TWO_CLASSES,
    check_at_least,
    check_choice,
    check_divides,
    check_dropout,
    check_positive,
    check_types,
)
from attnlab.data.image_classification import ImageDataConfig, image_training_data
from attnlab.errors import UserError
from attnlab.layers import (
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    ResidualBlock,
    initialize,
    make_feedforward,
    make_norm,
    no_weight_decay,
)
from attnlab.layers.dropout import dropout
from attnlab.layers.feedforward import FEEDFORWARDS
from attnlab.layers.normalization import NORMS
from attnlab.models.registry import CLASSIFY_IMAGE, ModelKind, register_kind
from attnlab.training.sources import DataRequest, TrainingData, token_loss

POOLINGS = ("cls", "mean")


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224  # side of the square input images, in pixels
    patch_size: int = 16  # side of the square patches; divides image_size
    channels: int = 3  # colour channels: 1 grayscale, 3 RGB
    n_classes: int = 1000  # outputs of the classification head
    n_layers: int = 12  # residual blocks
    n_heads: int = 12  # attention heads
    d_model: int = 768  # residual stream width
    d_ff: int | None = None  # feed-forward hidden width; None = 4 * d_model
    pooling: str = "cls"  # cls (a class token, as the paper) | mean (mean over patches)
    activation: str = "gelu"  # relu | gelu | gelu_tanh | silu | swiglu | geglu
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-6  # added to the variance inside each norm
    bias: bool = True  # biases in linear layers and norms
    dropout: float = 0.0  # on embeddings, attention weights, MLP hidden units, residual branches
    label_smoothing: float = 0.0  # epsilon of label smoothing in the loss

    def __post_init__(self):
        check_types(self)
        name = "ViTConfig"
        check_positive(
            name,
            image_size=self.image_size,
            patch_size=self.patch_size,
            channels=self.channels,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            norm_eps=self.norm_eps,
        )
        check_at_least(name, "n_classes", self.n_classes, 2, TWO_CLASSES)
        check_positive(name, d_ff=self.d_ff)
        check_divides(name, "patch_size", self.patch_size, "image_size", self.image_size)
        check_divides(name, "n_heads", self.n_heads, "d_model", self.d_model)
        check_choice(name, "pooling", self.pooling, POOLINGS)
        check_choice(name, "activation", self.activation, FEEDFORWARDS)
        check_choice(name, "norm", self.norm, NORMS)
        check_dropout(name, "dropout", self.dropout)
        check_dropout(name, "label_smoothing", self.label_smoothing)

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def n_positions(self) -> int:
        return self.n_patches + (self.pooling == "cls")


def _shape(n_layers: int, n_heads: int, d_model: int, **fields) -> ViTConfig:
    return ViTConfig(n_layers=n_layers, n_heads=n_heads, d_model=d_model, **fields)


PRESETS: dict[str, ViTConfig] = {
    # ImageNet shapes, 224 x 224 in 16 x 16 patches: ViT-B/16 (86M parameters, Table 1 of the
    # paper), and the smaller Ti and S of DeiT (Touvron et al. 2021, Table 1).
    "vit-ti16": _shape(12, 3, 192),
    "vit-s16": _shape(12, 6, 384),
    "vit-b16": _shape(12, 12, 768),
    # MNIST: 28 x 28 digits in 7 x 7 patches (16 patches + the class token), 0.31M parameters.
    # 4 x 4 patches (49 + 1 positions) cost 3x more per step and learnt more slowly per step.
    "mnist": _shape(6, 4, 64, image_size=28, patch_size=7, channels=1, n_classes=10),
    # The embedded shapes: 32 x 32 in 8 x 8 patches; trains in a minute on a laptop CPU.
    "tiny": _shape(3, 4, 64, image_size=32, patch_size=8, channels=1, n_classes=8),
}


class PatchEmbedding(nn.Module):
    """Images (B, C, S, S) -> patch vectors (B, N, D). Each P x P patch is flattened in the order
    (channel, row, column), the layout of a convolution kernel's weights, and projected by one
    linear layer, so the weights are a stride-P convolution's, reshaped."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        c = config
        self.patch_size, self.channels, self.image_size = c.patch_size, c.channels, c.image_size
        self.projection = nn.Linear(c.channels * c.patch_size**2, c.d_model, bias=c.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, *shape = images.shape
        side, p = self.image_size, self.patch_size
        if shape != [self.channels, side, side]:
            raise ValueError(
                f"expected images of shape (B, {self.channels}, {side}, {side}), "
                f"got {tuple(images.shape)}"
            )
        if not images.is_floating_point():  # uint8 pixels straight from a file, say
            raise TypeError(
                f"images must be normalised floating-point pixels, got {images.dtype}: "
                "normalise them as the training data was (data/images.py: Normalization)"
            )
        n = side // p
        patches = images.reshape(batch, self.channels, n, p, n, p)  # (B, C, S/P, P, S/P, P)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, n * n, -1)  # (B, N, C·P·P)
        # float32 pixels in the weights' dtype: a model saved in bf16 or float64 reads them too
        return self.projection(patches.to(self.projection.weight.dtype))  # (B, N, D)


class VisionTransformer(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        self.patch_embedding = PatchEmbedding(c)
        # The class token (section 3.1): a learned input whose output represents the image.
        self.class_token = (
            nn.Parameter(torch.zeros(1, 1, c.d_model)) if c.pooling == "cls" else None
        )
        self.position_embedding = LearnedPositionalEmbedding(c.n_positions, c.d_model)
        # Position tables and the class token take no weight decay, as in DeiT and timm.
        no_weight_decay(self.position_embedding.weight)
        self.blocks = nn.ModuleList(self._block() for _ in range(c.n_layers))
        self.final_norm = make_norm(c.norm, c.d_model, bias=c.bias, eps=c.norm_eps)
        self.head = nn.Linear(c.d_model, c.n_classes)
        self.reset_parameters()

    def _block(self) -> ResidualBlock:
        c = self.config
        attention = MultiHeadAttention(
            c.d_model, c.n_heads, causal=False, bias=c.bias, dropout=c.dropout
        )
        feedforward = make_feedforward(
            c.activation, c.d_model, c.d_ff or 4 * c.d_model, bias=c.bias, dropout=c.dropout
        )
        norm = lambda: make_norm(c.norm, c.d_model, bias=c.bias, eps=c.norm_eps)  # noqa: E731
        return ResidualBlock(attention, feedforward, norm, prenorm=True, dropout=c.dropout)

    def reset_parameters(self) -> None:
        """N(0, 0.02) truncated at two standard deviations (as TensorFlow's truncated_normal;
        a standard deviation of 0.0176) for the matrices, the position table and the class
        token, where timm and Hugging Face draw N(0, 0.02) cut at ±2, which cuts nothing; the
        head starts at zero (the paper's fine-tuning head, section 3.2), so the first logits are
        all zero and the first loss is ln K."""

        def matrix_init(weight: nn.Parameter, layer: nn.Module) -> None:
            if layer is self.head:
                nn.init.zeros_(weight)
            else:
                nn.init.trunc_normal_(weight, std=0.02, a=-0.04, b=0.04)

        initialize(self, matrix_init)
        if self.class_token is not None:
            nn.init.trunc_normal_(self.class_token, std=0.02, a=-0.04, b=0.04)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, S, S), normalised -> the final, normed residual stream (B, T, D); with
        a class token it is position 0."""
        x = self.patch_embedding(images)  # (B, N, D)
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(x.size(0), -1, -1), x], dim=1)  # (B, T, D)
        x = x + self.position_embedding(x.size(1))
        x = dropout(x, self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images (B, C, S, S); labels (B,) class indices -> logits (B, K) and the mean
        cross-entropy (None without labels)."""
        hidden = self.encode(images)  # (B, T, D)
        pooled = hidden[:, 0] if self.class_token is not None else hidden.mean(1)  # (B, D)
        logits = self.head(pooled)  # (B, K)
        loss = None
        if labels is not None:
            loss = token_loss(logits, labels, self.config.label_smoothing)
        return logits, loss

    def compile_regions(self) -> list[nn.Module]:
        """What training compiles: the blocks, which share one compiled graph."""
        return list(self.blocks)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_image(self) -> int:
        """Training FLOPs per image (forward + backward): 6 per weight per position it is
        applied at (the blocks at T positions, the patch projection at N, the head once), plus
        attention's scores and weighted sums (see MultiHeadAttention.mixing_flops_per_token)."""
        c = self.config
        block_weights = sum(p.numel() for p in self.blocks.parameters() if p.dim() == 2)
        patch, head = self.patch_embedding.projection.weight, self.head.weight
        mixing = sum(b.token_mixer.mixing_flops_per_token(c.n_positions) for b in self.blocks)
        per_position = 6 * block_weights + mixing
        return c.n_positions * per_position + 6 * c.n_patches * patch.numel() + 6 * head.numel()


def training_data(request: DataRequest) -> TrainingData:
    """The images (data/image_classification.py), whose side must be cut into whole patches:
    IDX files (MNIST) come in their own size, which the chosen patches may not divide."""
    if request.model["patch_size"] < 1:
        raise UserError(f"patch_size must be at least 1, got {request.model['patch_size']}")
    data = image_training_data(request)
    side, patch = data.model_fields["image_size"], request.model["patch_size"]
    if side % patch:
        fits = [n for n, c in PRESETS.items() if c.image_size == side]
        sizes = [str(p) for p in range(2, side) if side % p == 0]
        hint = f"--preset {' or --preset '.join(fits)} or " if fits else ""
        raise UserError(
            f"{request.settings.data}: the images are {side}x{side} pixels, which {patch}x{patch} "
            f"patches do not tile: give {hint}a --patch-size that divides {side} "
            f"({', '.join(sizes) or side})"
        )
    return data


register_kind(
    ModelKind(
        name="vit",
        config=ViTConfig,
        model=VisionTransformer,
        presets=PRESETS,
        data_config=ImageDataConfig,
        build_data=training_data,
        data_fields={"n_classes", "channels"},  # image_size: the size folder images get
        capabilities={CLASSIFY_IMAGE},
        description="a Vision Transformer classifying images (default: embedded shapes)",
    )
)
