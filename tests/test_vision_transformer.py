"""The ViT's own pieces: the patch embedding is a stride-P convolution, both poolings classify,
and configs that cannot work are refused with a message naming the field."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.errors import ConfigError
from attnlab.models.vision_transformer import PatchEmbedding, VisionTransformer, ViTConfig

SMALL = dict(image_size=12, patch_size=4, channels=3, n_classes=5, n_layers=2, n_heads=2, d_model=8)


def test_patch_embedding_is_a_strided_convolution():
    config = ViTConfig(**SMALL)
    embedding = PatchEmbedding(config)
    images = torch.randn(2, 3, 12, 12)
    kernel = embedding.projection.weight.reshape(8, 3, 4, 4)
    expected = F.conv2d(images, kernel, embedding.projection.bias, stride=4)  # (B, D, 3, 3)
    torch.testing.assert_close(embedding(images), expected.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_both_poolings_classify_and_start_at_ln_k(pooling):
    model = VisionTransformer(ViTConfig(**SMALL, pooling=pooling))
    assert model.position_embedding.weight.shape[0] == 9 + (pooling == "cls")
    logits, loss = model(torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 3]))
    assert logits.shape == (4, 5) and math.isclose(loss.item(), math.log(5), rel_tol=1e-6)
    loss.backward()
    assert model.head.weight.grad.abs().sum() > 0


def test_images_of_the_wrong_shape_are_refused():
    model = VisionTransformer(ViTConfig(**SMALL))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 12, 12\)"):
        model(torch.randn(1, 1, 12, 12))
    with pytest.raises(TypeError, match="normalised floating-point pixels, got torch.uint8"):
        model(torch.zeros(1, 3, 12, 12, dtype=torch.uint8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_model_in_another_dtype_reads_float32_images(dtype):
    """As the data pipeline gives them: evaluate, classify-image and inspect on a checkpoint
    saved in bf16 or float64."""
    model = VisionTransformer(ViTConfig(**SMALL)).to(dtype)
    logits, loss = model(torch.randn(2, 3, 12, 12), torch.tensor([0, 1]))
    assert logits.dtype == dtype and torch.isfinite(loss)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"patch_size": 5}, "image_size=12 must be divisible by ViTConfig.patch_size=5"),
        ({"n_heads": 3}, "d_model=8 must be divisible by ViTConfig.n_heads=3"),
        ({"pooling": "max"}, "pooling must be one of 'cls', 'mean'"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\), got 1.0"),  # uniform
    ],
)
def test_bad_configs_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        ViTConfig(**{**SMALL, **fields})
