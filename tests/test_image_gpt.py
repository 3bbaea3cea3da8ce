"""Image GPT: palettes (binary, grey levels, k-means), images as tokens in raster order, the
start token, the negative log-likelihood in nats per image against a direct sum of log-probs,
and the palette saved with the checkpoint."""

import math
import sys

import pytest
import torch
from helpers import Terminal

from attnlab.data.palette import Palette
from attnlab.errors import UserError
from attnlab.evaluation.image_likelihood import evaluate_image_model
from attnlab.models import ImageGPT, ImageGPTConfig, get_kind
from attnlab.training.checkpoints import load_checkpoint, save_checkpoint


def gray(rows) -> torch.Tensor:
    """One grayscale uint8 image (1, 1, H, W) from a list of pixel rows."""
    return torch.tensor(rows, dtype=torch.uint8)[None, None]


def tiny_image_gpt(palette: Palette, side: int, seed: int = 0) -> ImageGPT:
    torch.manual_seed(seed)
    config = ImageGPTConfig(
        vocab_size=palette.vocab_size + 1,
        context_length=palette.tokens_per_image(side),
        n_layers=2,
        n_heads=2,
        d_model=16,
        image_size=side,
        channels=palette.channels,
    )
    model = ImageGPT(config).eval()
    with torch.no_grad():  # larger weights than the init, so the logits are far from flat
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


def test_binary_palette_sets_pixels_above_127():
    image = gray([[0, 127, 128, 255]])
    palette = Palette.named("binary", image)
    assert palette.colours == ((0,), (255,))
    assert palette.indices(image).tolist() == [[[0, 0, 1, 1]]]


def test_quantised_images_come_back_unchanged():
    palette = Palette.named("grey:4", gray([[0]]))
    assert [c[0] for c in palette.colours] == [0, 85, 170, 255]
    image = gray([[0, 85, 170, 255], [255, 170, 85, 0], [0, 0, 255, 255], [85, 85, 170, 170]])
    assert torch.equal(palette.decode(palette.encode(image), 4), image)
    noisy = (image.int() + torch.tensor([[9, -20, 30, -7]])).clamp(0, 255).to(torch.uint8)
    assert torch.equal(palette.decode(palette.encode(noisy), 4), image)  # the nearest level


def test_kmeans_finds_the_colours_of_an_image_made_of_three():
    colours = torch.tensor([[10, 200, 30], [250, 250, 250], [0, 0, 90]], dtype=torch.uint8)
    which = torch.randint(3, (20, 8, 8), generator=torch.Generator().manual_seed(0))
    images = colours[which].permute(0, 3, 1, 2)  # (20, 3, 8, 8)
    palette = Palette.named("kmeans:3", images)
    assert set(palette.colours) == {tuple(c) for c in colours.tolist()}
    assert palette.channels == 3
    assert torch.equal(palette.decode(palette.encode(images), 8), images)


def test_tokens_follow_raster_order():
    palette = Palette.named("grey:16", gray([[0]]))
    levels = [c[0] for c in palette.colours]
    image = gray([[levels[4 * r + c] for c in range(4)] for r in range(4)])
    assert palette.encode(image).tolist() == [list(range(16))]


def test_grouped_pixels_are_the_digits_of_one_token():
    image = gray([[255, 0, 255, 255], [0, 0, 0, 255]])[:, :, :, :4]
    image = torch.cat([image, image.flip(-1)], dim=2)  # (1, 1, 4, 4)
    palette = Palette.named("binary", image, pixels_per_token=2)
    assert palette.vocab_size == 4 and palette.start_token == 4
    # rows 1011 / 0001 / 1101 / 1000 -> pairs 10 11 00 01 11 01 10 00 -> base 2
    assert palette.encode(image).tolist() == [[2, 3, 0, 1, 3, 1, 2, 0]]
    assert torch.equal(palette.decode(palette.encode(image), 4), image)


def test_inputs_are_the_start_token_then_the_targets_shifted():
    palette = Palette.named("binary", gray([[0]]))
    inputs, targets = palette.sequences(gray([[255, 0], [0, 255]]))
    assert targets.tolist() == [[1, 0, 0, 1]]
    assert inputs.tolist() == [[2, 1, 0, 0]]


@pytest.mark.parametrize("spec", ["grey", "grey:1", "kmeans:x", "colours:4", "binary:2"])
def test_bad_palette_names_are_refused(spec):
    with pytest.raises(Exception, match="palette"):
        Palette.named(spec, gray([[0]]))


@pytest.mark.parametrize(
    "spec, pixels_per_token, message",
    [
        ("grey:300", 1, "give from 2 to 256 grey levels"),
        ("grey:1", 1, "give from 2 to 256 grey levels"),
        ("grey:16", 4, "make 65,536 token values, more than 32,768"),
        ("binary", 0, "pixels_per_token must be >= 1"),
    ],
)
def test_palettes_too_large_or_too_small_are_user_errors(spec, pixels_per_token, message):
    with pytest.raises(UserError, match=message):
        Palette.named(spec, gray([[0]]), pixels_per_token)
    assert len(Palette.named("grey:256", gray([[0]])).colours) == 256


def test_a_bad_saved_palette_is_still_a_value_error():
    with pytest.raises(ValueError, match="token values"):
        Palette.from_dict({"colours": [[0]] * 16, "pixels_per_token": 4})


def test_nll_is_the_sum_of_every_pixels_log_prob_one_prefix_at_a_time(monkeypatch):
    """Each pixel's probability from the model fed only the pixels before it (and the start
    token), summed per image, averaged over images: what evaluate_image_model reports."""
    palette = Palette.named("binary", gray([[0]]))
    images = (torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5) * 255
    images = images.to(torch.uint8)
    model = tiny_image_gpt(palette, 4)
    inputs, targets = palette.sequences(images)
    total = 0.0
    with torch.no_grad():
        for i in range(targets.size(1)):
            logits, _ = model(inputs[:, : i + 1])
            log_probs = torch.log_softmax(logits[:, -1].double(), dim=-1)
            total += log_probs.gather(1, targets[:, i : i + 1]).sum().item()
    result = evaluate_image_model(model, palette, images, batch_size=2)
    assert result["images"] == 3
    monkeypatch.setattr("sys.stderr", Terminal())  # and with a bar: the same figures
    assert evaluate_image_model(model, palette, images, 2, progress=True) == result
    assert "3/3 [" in sys.stderr.getvalue()
    assert result["nats_per_image"] == pytest.approx(-total / 3, rel=1e-5)
    assert result["bits_per_pixel"] == pytest.approx(-total / 3 / 16 / math.log(2), rel=1e-5)


def test_a_model_that_knows_nothing_costs_ln2_per_binary_pixel():
    """All-zero logits: each of the 16 pixels is a coin toss (the start token, never a pixel,
    gets no probability), so an image costs 16 ln 2 nats, 1 bit per pixel."""
    palette = Palette.named("binary", gray([[0]]))
    model = tiny_image_gpt(palette, 4)
    with torch.no_grad():
        model.output_head.weight.zero_()  # every logit is 0
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    result = evaluate_image_model(model, palette, images, batch_size=2)
    assert result["nats_per_image"] == pytest.approx(16 * math.log(2), rel=1e-6)
    assert result["bits_per_pixel"] == pytest.approx(1.0, rel=1e-6)


def test_the_start_token_is_never_predicted():
    palette = Palette.named("binary", gray([[0]]))
    model = tiny_image_gpt(palette, 4)
    logits, _ = model(torch.tensor([[2, 0, 1]]))
    assert torch.isneginf(logits[..., 2]).all() and torch.isfinite(logits[..., :2]).all()


def test_the_palette_is_saved_with_the_checkpoint(tmp_path):
    colours = torch.tensor([[5, 5, 5], [200, 40, 40], [30, 220, 60], [240, 240, 10]])
    which = torch.randint(4, (10, 8, 8), generator=torch.Generator().manual_seed(2))
    images = colours.to(torch.uint8)[which].permute(0, 3, 1, 2)
    palette = Palette.named("kmeans:4", images, pixels_per_token=2)
    model = tiny_image_gpt(palette, 8)
    save_checkpoint(tmp_path / "ckpt", model, {"palette": palette})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.artifacts["palette"] == palette
    assert loaded.kind is get_kind("igpt") and isinstance(loaded.model, ImageGPT)
    assert torch.equal(loaded.artifacts["palette"].encode(images), palette.encode(images))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"context_length": 100}, "context_length"),
        ({"vocab_size": 2}, "vocab_size"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_bad_configs_name_the_field(fields, message):
    base = {"vocab_size": 3, "context_length": 784, "image_size": 28, "n_heads": 4, "d_model": 32}
    with pytest.raises(Exception, match=message):
        ImageGPTConfig(**{**base, **fields})
