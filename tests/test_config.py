import pytest

from attnlab.config import config_from_dict, config_to_dict, replace
from attnlab.errors import ConfigError
from attnlab.models.gpt import GPTConfig


def test_round_trip_through_a_dict():
    config = GPTConfig(vocab_size=10, n_kv_heads=4)
    assert config_from_dict(GPTConfig, config_to_dict(config)) == config


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="unknown key.*n_layer\\b"):
        config_from_dict(GPTConfig, {"n_layer": 3}, source="gpt.toml")


@pytest.mark.parametrize(
    "key, value",
    [("n_layers", "4"), ("n_layers", 4.5), ("bias", 1), ("dropout", "0.1"), ("n_kv_heads", True)],
)
def test_wrong_types_are_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        config_from_dict(GPTConfig, {key: value})


def test_ints_widen_to_floats_and_none_is_allowed_where_optional():
    config = config_from_dict(GPTConfig, {"dropout": 0, "d_ff": None})
    assert config.dropout == 0.0 and isinstance(config.dropout, float)


def test_replace_validates():
    with pytest.raises(ConfigError, match="d_model"):
        replace(GPTConfig(), d_model=100)
