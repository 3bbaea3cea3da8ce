"""Our ViT against Hugging Face's, built offline from small random configs: the same weights
give the same logits and hidden states (fp32, 1e-5), and weights round-trip exactly."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import ViTConfig, ViTForImageClassification, ViTModel  # noqa: E402

from attnlab.interop.huggingface import from_hf, to_hf  # noqa: E402
from attnlab.layers import hook_points  # noqa: E402
from attnlab.models.vision_transformer import VisionTransformer  # noqa: E402
from attnlab.models.vision_transformer import ViTConfig as OurConfig  # noqa: E402

CONFIGS = [
    dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
         num_attention_heads=4, intermediate_size=64, num_labels=5),
    dict(image_size=28, patch_size=7, num_channels=1, hidden_size=24, num_hidden_layers=1,
         num_attention_heads=2, intermediate_size=40, num_labels=10, hidden_act="gelu_new",
         layer_norm_eps=1e-6),
    dict(image_size=12, patch_size=6, num_channels=2, hidden_size=16, num_hidden_layers=3,
         num_attention_heads=1, intermediate_size=16, num_labels=3, hidden_act="relu"),
    dict(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
         num_attention_heads=2, intermediate_size=24, num_labels=2,
         hidden_act="gelu_pytorch_tanh"),
]  # fmt: skip


def randomised(model):
    """HF zero-initialises biases and the class token; randomise everything for a real check."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def images(fields, batch=3):
    size, channels = fields["image_size"], fields["num_channels"]
    return torch.randn(batch, channels, size, size)


def our_hidden_states(model, pixels):
    """The residual stream entering each block and leaving the last (HF's hidden_states)."""
    captured = []
    points = hook_points(model)
    names = [f"blocks.{i}.stream_in" for i in range(len(model.blocks))]
    names.append(f"blocks.{len(model.blocks) - 1}.stream_out")
    handles = [points[n].register_forward_hook(lambda m, i, o: captured.append(o)) for n in names]
    try:
        final = model.encode(pixels)
    finally:
        for handle in handles:
            handle.remove()
    return captured, final


@pytest.mark.parametrize("fields", CONFIGS)
def test_classifier_logits_and_hidden_states_match(fields):
    hf = randomised(ViTForImageClassification(ViTConfig(**fields)))
    ours = from_hf(hf).eval()
    pixels = images(fields)
    with torch.no_grad():
        expected = hf(pixel_values=pixels, output_hidden_states=True)
        logits, _ = ours(pixels)
        hidden, _ = our_hidden_states(ours, pixels)
    torch.testing.assert_close(logits, expected.logits, rtol=0, atol=1e-5)
    assert len(hidden) == len(expected.hidden_states)
    for got, want in zip(hidden, expected.hidden_states, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fields", CONFIGS)
def test_backbone_last_hidden_state_matches(fields):
    hf = randomised(ViTModel(ViTConfig(**fields), add_pooling_layer=False))
    ours = from_hf(hf).eval()
    pixels = images(fields)
    with torch.no_grad():
        expected = hf(pixel_values=pixels).last_hidden_state
        got = ours.encode(pixels)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fields", CONFIGS)
@pytest.mark.parametrize("head", [True, False])
def test_round_trip_is_exact(fields, head):
    config = ViTConfig(**fields)
    hf = randomised(ViTForImageClassification(config) if head else ViTModel(config, False))
    back = to_hf(from_hf(hf), head=head)
    assert type(back) is type(hf)
    original, returned = hf.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    for name, value in original.items():
        assert torch.equal(value, returned[name]), name


def test_ours_to_hf_matches_ours():
    torch.manual_seed(1)
    ours = VisionTransformer(
        OurConfig(image_size=8, patch_size=4, channels=3, n_classes=4, n_layers=2, n_heads=2,
                  d_model=16)
    ).eval()  # fmt: skip
    randomised(ours)
    pixels = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            to_hf(ours)(pixel_values=pixels).logits, ours(pixels)[0], rtol=0, atol=1e-5
        )


def test_to_hf_rejects_models_vit_cannot_express():
    model = VisionTransformer(
        OurConfig(image_size=8, patch_size=4, channels=1, n_classes=2, n_layers=1, n_heads=1,
                  d_model=8, pooling="mean")
    )  # fmt: skip
    with pytest.raises(ValueError, match="ViT-shaped"):
        to_hf(model)


def test_a_non_square_vit_is_refused_in_one_line():
    fields = dict(CONFIGS[0], image_size=(16, 24))
    with pytest.raises(ValueError, match=r"non-square image_size \(16, 24\) does not convert"):
        from_hf(transformers.ViTForImageClassification(transformers.ViTConfig(**fields)))
