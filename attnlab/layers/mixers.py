"""Token mixers by name: what ``GPTConfig.mixer`` (and any model built of blocks) can choose.

A mixer is registered once, with the dataclass of its own options and a function that builds
one layer of it:

    register_mixer("attention", AttentionOptions, build_attention)

``build(options, context)`` gets the mixer's options (a frozen dataclass) and a MixerContext
(the model's width, heads, positions, layer index, ...) and returns a module that keeps the
TokenMixer contract (contracts.py). Each mixer's module registers itself on import; the package
imports the built-in ones, and a user's own mixer is one file that calls register_mixer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from attnlab.config import config_from_dict, field_names, redefined
from attnlab.errors import ConfigError, NotRegistered


@dataclass(frozen=True)
class MixerContext:
    """What a mixer layer may need to know about the model it sits in."""

    d_model: int  # residual stream width
    context_length: int  # most positions the model reads at once
    n_heads: int  # heads, for mixers that have them
    n_kv_heads: int | None  # key/value heads (attention); None = n_heads
    causal: bool  # position t may only read positions <= t
    bias: bool  # biases in linear layers
    dropout: float
    layer: int  # this block's index, 0-based
    n_layers: int
    relative_position: nn.Module | None = None  # RoPE or ALiBi, shared by every layer


@dataclass(frozen=True)
class MixerSpec:
    name: str
    options: type  # frozen dataclass of the mixer's own options
    build: Callable[[Any, MixerContext], nn.Module]
    relative_positions: bool = False  # takes RoPE / ALiBi (positions inside the mixer)
    check: Callable[[Any], None] | None = None  # validates a model config using this mixer
    reads: frozenset[str] = frozenset()  # model config fields only some mixers read: n_heads


MIXERS: dict[str, MixerSpec] = {}


def register_mixer(
    name: str,
    options: type,
    build: Callable[[Any, MixerContext], nn.Module],
    *,
    relative_positions: bool = False,
    check: Callable[[Any], None] | None = None,
    reads: Iterable[str] = (),
) -> None:
    """Make `name` a token mixer. check(config) may raise ConfigError for a model config that
    the mixer cannot serve (attention: heads that do not divide the width). reads: the model
    config fields it reads that not every mixer does (attention: n_heads, n_kv_heads); given
    for a mixer that does not read them, they are refused (GPTConfig.unread)."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"mixer {name!r}: options must be a dataclass, got {options!r}")
    MIXERS[name] = MixerSpec(name, options, build, relative_positions, check, frozenset(reads))


def mixer_spec(name: str) -> MixerSpec:
    if name not in MIXERS:
        raise NotRegistered("mixer", name, sorted(MIXERS))
    return MIXERS[name]


def mixer_options(name: str, given: Any, owner: str) -> Any:
    """The options of mixer `name` from `given`: None (the defaults), a dict (TOML, JSON, flags)
    or an instance of the mixer's options class. A key that belongs to another mixer is named
    as such."""
    spec = mixer_spec(name)
    if given is None:
        return spec.options()
    if isinstance(given, spec.options):
        return given
    if dataclasses.is_dataclass(given) and redefined(type(given), spec.options):
        given = {f.name: getattr(given, f.name) for f in dataclasses.fields(given)}
    if not isinstance(given, dict):
        raise ConfigError(
            f"{owner}.mixer_options must be a table of {spec.options.__name__} fields, "
            f"got {type(given).__name__}"
        )
    own = set(field_names(spec.options))
    for key in sorted(set(given) - own):
        others = sorted(s.name for s in MIXERS.values() if key in field_names(s.options))
        if others:
            raise ConfigError(
                f"{owner}.mixer_options.{key} is an option of {_mixers(others)}, not of "
                f"{name!r} (whose options are: {', '.join(sorted(own)) or 'none'})"
            )
    try:
        return config_from_dict(spec.options, given, source=f"{owner}.mixer_options ({name})")
    except ConfigError as error:  # "MambaOptions.d_state" read as where it is set
        cls = spec.options.__name__
        raise ConfigError(str(error).replace(f"{cls}.", f"{owner}.mixer_options.")) from None


def unread_fields(name: str) -> set[str]:
    """The model config fields that other mixers read and mixer `name` does not (an LSTM:
    attention's heads)."""
    return {f for s in MIXERS.values() for f in s.reads} - mixer_spec(name).reads


def unread_reasons(name: str, options: Any = None) -> dict[str, str]:
    """unread_fields(name), each with what reads it and what does not, for check_read; and
    mixer_options, where a table of them holds options of other mixers only."""
    reasons = {
        field: f"of {_mixers(sorted(s.name for s in MIXERS.values() if field in s.reads))}, "
        f"not of {name!r}"
        for field in unread_fields(name)
    }
    own = field_names(mixer_spec(name).options)
    if isinstance(options, dict) and options and not options.keys() & own:
        others = sorted(s.name for s in MIXERS.values() if options.keys() & field_names(s.options))
        if others:
            theirs = f"{_mixers(others)} ({', '.join(sorted(options))})"
            reasons["mixer_options"] = f"of {theirs}, not of {name!r}"
    return reasons


def _mixers(names: list[str]) -> str:
    """mixer 'a', or mixers 'a', 'b'."""
    return "mixer" + "s" * (len(names) > 1) + " " + ", ".join(map(repr, names))
