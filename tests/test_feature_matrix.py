"""Where features meet: one command against a checkpoint of another kind or mixer refuses in
one clear line, naming what it needs."""

import pytest
from helpers import tiny_gpt

from attnlab.cli.init_from import init_checkpoint
from attnlab.errors import UserError
from attnlab.models.registry import get_kind
from attnlab.training.checkpoints import save_checkpoint


@pytest.mark.parametrize(
    "kind, needs",
    [
        ("igpt", "starts from an 'igpt' checkpoint"),
        ("classifier", "starts from a 'classifier' or a 'bert' checkpoint"),
    ],
)
def test_init_from_another_kind_names_the_kinds_it_starts_from(kind, needs, tmp_path):
    save_checkpoint(tmp_path, tiny_gpt(), {})
    with pytest.raises(UserError) as refused:
        init_checkpoint(get_kind(kind), str(tmp_path))
    assert str(refused.value).endswith(needs), refused.value
    assert "holds a 'gpt' model" in str(refused.value)


def test_an_image_gpt_of_mamba_layers_is_named_with_its_article_and_its_mixer():
    from attnlab.interpretability.capture import require_attention
    from attnlab.models.image_gpt import ImageGPT, ImageGPTConfig

    config = ImageGPTConfig(
        vocab_size=3, context_length=16, n_layers=1, d_model=16, n_heads=2, image_size=4,
        mixer="mamba", positional="none",
    )  # fmt: skip
    with pytest.raises(UserError, match="an ImageGPT with no attention layers") as refused:
        require_attention(ImageGPT(config), "the checkpoint")
    assert "its mamba token mixers compute no attention weights" in str(refused.value)
