"""Config is data: validation helpers and dict/JSON conversion shared by every config dataclass.

Configs are frozen dataclasses. They validate themselves in ``__post_init__`` with the helpers
here, so every bad value ends in a :class:`~attnlab.errors.ConfigError` that names the field and
what is allowed. ``config_from_dict`` is the one way TOML files, JSON checkpoints and CLI flags
become configs: unknown keys and wrong types are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from attnlab.errors import ConfigError

C = TypeVar("C")
TWO_CLASSES = " (with one class the cross-entropy is 0: nothing to learn)"


def check_types(config: Any) -> None:
    """Raise ConfigError for a field whose value is not of its declared type, as
    config_from_dict would (a config built in Python: GPTConfig(n_layers="2")); an int given
    for a float becomes a float, a list for a tuple a tuple."""
    cls = type(config)
    for name, hint in _hints(cls).items():
        value = getattr(config, name)
        coerced = _coerce(cls.__name__, name, value, hint)
        if coerced is not value:
            object.__setattr__(config, name, coerced)  # frozen dataclasses too


def field_names(cls: type) -> list[str]:
    """The fields a config dataclass takes (those of its __init__), in order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    names = set(field_names(cls))
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


def check_positive(owner: str, **fields: int | float) -> None:
    """Raise ConfigError unless every given field that is set (not None) is > 0 (and finite:
    NaN is not positive)."""
    for name, value in fields.items():
        if value is not None and not 0 < value < math.inf:
            raise ConfigError(f"{owner}.{name} must be a positive number, got {value!r}")


def check_at_least(owner: str, name: str, value: int, low: int, why: str = "") -> None:
    """Raise ConfigError unless value >= low (why: a reason, for the message)."""
    if not value >= low:
        raise ConfigError(f"{owner}.{name} must be at least {low}{why}, got {value!r}")


def check_dropout(owner: str, name: str, value: float) -> None:
    """Raise ConfigError unless 0 <= value < 1: a dropout rate of 1 drops everything, a label
    smoothing of 1 makes every target uniform; either way nothing learns."""
    if not 0 <= value < 1:
        raise ConfigError(f"{owner}.{name} must be in [0, 1), got {value!r}")


def check_range(owner: str, name: str, value: float, low: float, high: float) -> None:
    """Raise ConfigError unless low <= value <= high."""
    if not low <= value <= high:
        raise ConfigError(f"{owner}.{name} must be in [{low}, {high}], got {value!r}")


def check_choice(owner: str, name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ConfigError unless value is one of allowed, listing the allowed values."""
    allowed = tuple(allowed)
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{owner}.{name} must be one of {choices}; got {value!r}")


def check_divides(owner: str, divisor_name: str, divisor: int, name: str, value: int) -> None:
    """Raise ConfigError unless divisor divides value."""
    if value % divisor:
        raise ConfigError(
            f"{owner}.{name}={value} must be divisible by {owner}.{divisor_name}={divisor}"
        )


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def check_read(reasons: dict[str, str], given: Iterable[str], owner: str) -> None:
    """Refuse the fields given (by a file or a flag: presets and defaults are not `given`) that
    a config would not read, `reasons` saying why for each (n_heads: "of mixer 'attention', not
    of 'lstm'"): set, they would change nothing."""
    fields = sorted(reasons.keys() & set(given))
    if fields:
        same = [f for f in fields if reasons[f] == reasons[fields[0]]]
        many = len(same) > 1
        raise ConfigError(
            f"{', '.join(f'{owner}.{f}' for f in same)}: {'settings' if many else 'a setting'} "
            f"{reasons[fields[0]]}: leave {'them' if many else 'it'} unset"
        )


def config_from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
    """Build ``cls`` from a dict, rejecting unknown keys and values of the wrong type.

    ``source`` names where the dict came from (a file, "--flags") for the error message.
    """
    return cls(**check_fields(cls, data, source=source))


def check_fields(cls: type, data: dict[str, Any], *, source: str = "config") -> dict[str, Any]:
    """The dict's values coerced to ``cls``'s field types; a ConfigError names an unknown key or
    a value of the wrong type (what config_from_dict checks before the class's own checks)."""
    fields = field_names(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"known keys: {', '.join(fields)}"
        )
    hints = _hints(cls)
    return {name: _coerce(cls.__name__, name, value, hints[name]) for name, value in data.items()}


def replace(config: C, **changes: Any) -> C:
    """A copy of ``config`` with some fields changed, type-checked like ``config_from_dict``."""
    merged = {**config_to_dict(config), **changes}
    return config_from_dict(type(config), merged)


def _coerce(owner: str, name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type hint; widen int to float and lists to tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(owner, name, value, option)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{owner}.{name} must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        items = [_coerce(owner, name, v, item) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        check_choice(owner, name, value, typing.get_args(hint))
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) <= sys.float_info.max else math.inf  # TOML: 10**400
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{owner}.{name} must be a finite number, got {value!r}")
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(
            f"{owner}.{name} must be {hint.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def redefined(one: type, other: type) -> bool:
    """Two classes of one name in one module: one defined, then defined again (a notebook's
    cell run twice); an object of the first is not an instance of the second."""
    return (one.__module__, one.__qualname__) == (other.__module__, other.__qualname__)
