"""Probes: scores of the model itself (not of a data split) that the Trainer logs at every
evaluation, named in TrainConfig.probes. A probe is a function model -> {score: value}, found
by name here and imported on first use, so a run pays only for the probes it asks for. It
raises a UserError for a model it cannot score: the Trainer calls each once when it is built,
so that such a run stops before its first step."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from attnlab.errors import UserError

Probe = Callable[[nn.Module], dict[str, float]]

# name -> "module:function"
PROBES = {
    # the best prefix-matching score of any head, and the in-context learning score, on
    # repeated random tokens: how a run's induction heads form (interpretability/induction.py)
    "induction": "attnlab.interpretability.induction:induction_probe",
}


def parse_probes(spec: str) -> list[str]:
    """Comma-separated probe names, checked."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in PROBES]
    if unknown:
        raise UserError(f"unknown probe(s) {', '.join(unknown)}; known: {', '.join(PROBES)}")
    return names


def load_probe(name: str) -> Probe:
    module, _, function = PROBES[name].partition(":")
    return getattr(importlib.import_module(module), function)
