import argparse
import dataclasses
import json

import pytest

from attnlab.cli import build_parser
from attnlab.config import config_from_dict, config_to_dict, replace
from attnlab.data.translation import TranslationDataConfig
from attnlab.errors import ConfigError
from attnlab.generation.sampling import SamplingConfig
from attnlab.layers.mamba import MambaOptions
from attnlab.models.gpt import GPTConfig
from attnlab.training.config import TrainConfig


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
@pytest.mark.parametrize(
    "build",
    [lambda fields: config_from_dict(GPTConfig, fields), lambda fields: GPTConfig(**fields)],
)
def test_wrong_types_are_errors(key, value, build):
    """From a dict (a file, flags) as from Python: a config never holds a value of another type."""
    with pytest.raises(ConfigError, match=key):
        build({key: value})


@pytest.mark.parametrize(
    "config", [TrainConfig, SamplingConfig, MambaOptions, TranslationDataConfig]
)
def test_every_config_checks_its_types(config):
    field = next(f for f in dataclasses.fields(config) if f.type in ("int", "float", int, float))
    with pytest.raises(ConfigError, match=f"{config.__name__}.{field.name} must be"):
        config(**{field.name: "1"})


def test_ints_widen_to_floats_and_none_is_allowed_where_optional():
    config = config_from_dict(GPTConfig, {"dropout": 0, "d_ff": None})
    assert config.dropout == 0.0 and isinstance(config.dropout, float)
    assert isinstance(GPTConfig(dropout=0).dropout, float)


def test_an_int_too_large_for_a_float_is_refused_as_not_finite():
    """TOML ints have no bound: 10**400 for a float field is "not finite", no OverflowError."""
    with pytest.raises(ConfigError, match="dropout must be a finite number"):
        config_from_dict(GPTConfig, {"dropout": -(10**400)})


def test_replace_validates():
    with pytest.raises(ConfigError, match="d_model"):
        replace(GPTConfig(), d_model=100)


def test_every_flag_of_every_command_says_what_it_sets():
    """A config field's flag takes its help from the field's comment: a field without one would
    show its default alone (`--seed SEED (default: 1337)`)."""
    parsers = [build_parser()]
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings:
                help_text = (action.help or "").strip()
                assert help_text and not help_text.startswith("(default:"), (
                    parser.prog,
                    action.option_strings,
                )


def test_a_files_setting_a_flag_leaves_unread_is_left_out_with_a_note(tmp_path, corpus, capsys):
    from helpers import one_line_error, run
    from test_run_directory import train

    config = tmp_path / "c.toml"
    config.write_text("[model]\nn_heads = 2\n[training]\nmin_learning_rate = 0.25\n")
    flags = ["--config", str(config), "--max-iters", "1", "--n-layers", "1", "--d-model", "8"]
    out, lstm = tmp_path / "run", ["--mixer", "lstm", "--positional", "none"]
    code, _, err = train(capsys, corpus, out, *flags, *lstm, "--lr-schedule", "constant")
    assert code == 0, err
    assert f"n_heads in {config} left out: a setting of mixer 'attention', not of 'lstm'" in err
    assert f"min_learning_rate in {config} left out: a setting of the cosine" in err
    saved = json.loads((out / "trainer_state.json").read_text())["train_config"]
    assert saved["min_learning_rate"] == TrainConfig.min_learning_rate  # not the file's 0.25
    # the file's own schedule reads it: kept; the flags' own settings are refused as before
    code, _, err = train(capsys, corpus, tmp_path / "b", *flags, "--max-iters", "1")
    assert code == 0 and "left out" not in err
    code, _, err = train(capsys, corpus, tmp_path / "c", *flags, *lstm, "--n-heads", "2")
    assert "n_heads: a setting of mixer 'attention'" in one_line_error(code, err)
    # resumed with the file, again and again: the run's own constant schedule leaves it unread
    resume = ["train", "gpt", "--out", str(out), "--resume", "--config", str(tmp_path / "t.toml")]
    (tmp_path / "t.toml").write_text("[training]\nmin_learning_rate = 0.25\n")
    for steps in ("2", "3"):
        code, _, err = run([*resume, "--max-iters", steps, "--lr-schedule", "constant"], capsys)
        assert code == 0 and f"min_learning_rate in {tmp_path / 't.toml'} left out" in err


def test_a_files_mixer_options_for_a_mixer_a_flag_replaces_are_left_out(tmp_path, corpus, capsys):
    from helpers import one_line_error
    from test_run_directory import train

    (tmp_path / "m.toml").write_text(
        '[model]\nmixer = "mamba"\n[model.mixer_options]\nd_state = 4\n'
    )
    flags = ["--config", str(tmp_path / "m.toml"), "--max-iters", "1", "--positional", "none"]
    code, _, err = train(capsys, corpus, tmp_path / "a", *flags, "--mixer", "lstm")
    assert code == 0 and "mixer_options in" in err and "not of 'lstm'" in err
    lstm = ["--mixer", "lstm", "--mixer-options", "d_state=4"]
    code, _, err = train(capsys, corpus, tmp_path / "b", *flags, *lstm)
    assert "options: a setting of mixer 'mamba' (d_state), not of 'lstm'" in one_line_error(
        code, err
    )
