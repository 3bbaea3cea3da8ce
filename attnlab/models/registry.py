"""Model kinds by registration: what `attnlab train KIND`, checkpoints and the commands know.

A kind is registered once, usually at the end of its model's file:

    register_kind(ModelKind(name="gpt", config=GPTConfig, model=GPT, presets=PRESETS,
                            data_config=TextDataConfig, build_data=text_training_data,
                            capabilities={GENERATE}, description="..."))

``config`` and ``presets`` give the model's shape, ``data_config`` the kind's data settings
(top-level keys of a TOML config, and flags), ``build_data`` turns them into batches
(training/sources.py), and ``capabilities`` say which commands serve its checkpoints. Nothing
else in attnlab names a kind: the train command, checkpoints and the other commands read this.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from attnlab.config import config_from_dict, config_to_dict, redefined
from attnlab.devices import TooLarge, build_on_meta
from attnlab.errors import NotRegistered, UserError

# Capabilities: what a kind's checkpoints can do, and so which commands serve them.
GENERATE = "generate"  # continues token sequences: sample, evaluate --data (generation/decoding.py)
TRANSLATE = "translate"  # maps a source sentence to a target one: translate, evaluate --src
FILL_MASK = "fill-mask"  # predicts hidden tokens of a text: fill-mask
CLASSIFY = "classify"  # labels a text: classify
CLASSIFY_IMAGE = "classify-image"  # labels an image: classify-image, evaluate (accuracy, confusion)
GENERATE_IMAGE = "generate-image"  # draws and completes images: sample-images, evaluate (NLL)
ABILITIES = {  # each capability in words
    GENERATE: "generate text",
    TRANSLATE: "translate",
    FILL_MASK: "fill in masked words",
    CLASSIFY: "classify texts",
    CLASSIFY_IMAGE: "classify images",
    GENERATE_IMAGE: "generate images",
}


def a_kind(name: str) -> str:
    """A kind's name in a sentence: a 'gpt', an 'igpt'."""
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name!r}"


@dataclass(frozen=True)
class ModelKind:
    name: str  # the word in `attnlab train NAME`, and "kind" in a checkpoint's config.json
    config: type  # the model's config dataclass
    model: type[nn.Module]  # built as model(config)
    presets: Mapping[str, Any]  # name -> config
    data_config: type  # the kind's data settings (a frozen dataclass)
    build_data: Callable[..., Any]  # DataRequest -> TrainingData
    capabilities: frozenset[str] = frozenset()
    default_preset: str = "tiny"
    description: str = ""  # one line for `attnlab train --help`
    aliases: tuple[str, ...] = ()  # earlier names still found in checkpoints
    init_from: tuple[str, ...] = ()  # other kinds whose checkpoints can start it (train --init)
    data_fields: frozenset[str] = frozenset()  # config fields its data sets: no flag
    unused_fields: frozenset[str] = frozenset()  # model or training fields it ignores: no flag

    def __post_init__(self):
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        object.__setattr__(self, "data_fields", frozenset(self.data_fields))
        object.__setattr__(self, "unused_fields", frozenset(self.unused_fields))
        if self.default_preset not in self.presets:
            raise ValueError(f"kind {self.name!r}: no preset {self.default_preset!r}")

    def __repr__(self) -> str:  # not every preset's config, data class and function in full
        return f"ModelKind({self.name!r}, model={self.model.__name__})"


KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    """Make `kind` known to `attnlab train`, checkpoints and the commands; returns it. Each
    kind has a model class of its own: a checkpoint's kind is found from its model's class."""
    for other in KINDS.values():
        if other.model is kind.model and other.name != kind.name:
            raise ValueError(
                f"{kind.model.__name__} is already kind {other.name!r} (a checkpoint's kind is "
                f"its model's class): to rename the kind, first `del KINDS[{other.name!r}]` "
                "(attnlab.models.registry)"
            )
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> ModelKind:
    for kind in KINDS.values():
        if name == kind.name or name in kind.aliases:
            return kind
    raise NotRegistered("model kind", name, list(KINDS))


def kind_of(model: nn.Module) -> ModelKind:
    """The kind whose class the model is: exactly, for a subclass (a GPT with another loss,
    say) would save as its parent's kind and load back as the parent. FSDP shards a model by
    giving it a class of its own, FSDPModule and the model's: that one is the model's kind."""
    cls = type(model)
    if any(base.__name__ == "FSDPModule" for base in cls.__bases__):
        cls = cls.__bases__[-1]
    for kind in KINDS.values():
        if cls is kind.model:
            return kind
    for kind in KINDS.values():  # a notebook's cell that defines and registers it, run again
        if redefined(cls, kind.model):
            raise ValueError(
                f"{cls.__name__} was defined again since this model was built (its cell run "
                f"again?): kind {kind.name!r} is the new class; build the model anew from it"
            )
    parents = [k.name for c in cls.__mro__[1:] for k in KINDS.values() if c is k.model]
    as_parent = f", and would load back as its parent kind {parents[0]!r}" if parents else ""
    raise ValueError(
        f"{cls.__name__} is not a registered model kind{as_parent}: register_kind (models/"
        "registry.py) names its config and data, so that its checkpoints save and load"
    )


def check_capable(model: nn.Module, what: str, *capabilities: str) -> None:
    """Refuse, in one line, a model whose kind declares capabilities, none of these (a kind
    that declares none, or an unregistered model, is left to try)."""
    try:
        kind = kind_of(model)
    except ValueError:
        return
    if kind.capabilities and not kind.capabilities & set(capabilities):
        can = " or ".join(ABILITIES[c] for c in sorted(kind.capabilities))
        needs = " or ".join(ABILITIES[c] for c in capabilities)
        raise UserError(f"{what} needs a model that can {needs}; {a_kind(kind.name)} can {can}")


def model_kind(model: nn.Module) -> str:
    return kind_of(model).name


def build_model(kind: str, config: dict[str, Any] | Any) -> nn.Module:
    """A model of `kind` from its config (a config object or a dict, as in config.json)."""
    spec = get_kind(kind)
    return spec.model(kind_config(spec, config) if isinstance(config, dict) else config)


def kind_config(kind: ModelKind, config: dict[str, Any]) -> Any:
    """The kind's config object from a dict (as in config.json), checked."""
    return config_from_dict(kind.config, config, source=f"{kind.name} config")


def describe(model: nn.Module) -> dict[str, Any]:
    """The JSON-ready description saved beside weights: kind and config."""
    return {"kind": model_kind(model), "config": config_to_dict(model.config)}


TRAINING_BYTES = 16  # a parameter in training, at least: float32 weight, gradient, Adam's moments
# GPT-2 XL holds 580 weight tensors (a GPT layer 12); building 20,000 on the meta device takes
# seconds, and a model of tiny layers by the million would take minutes to be found too large
MAX_TENSORS = 20_000


def check_trainable(kind: ModelKind, config: Any, memory: int) -> None:
    """Refuse, in one line, a model whose parameters alone could not train in `memory` bytes,
    or of more than MAX_TENSORS weight tensors, before any is allocated: a config of n_layers
    10**6 or d_model 10**12 would otherwise fill the machine's memory, or end in a traceback."""
    most = memory // TRAINING_BYTES
    try:
        build_on_meta(lambda: kind.model(config), MAX_TENSORS, most)
    except TooLarge as error:
        if error.args == ("tensors",):
            raise UserError(
                f"this model holds more than {MAX_TENSORS:,} weight tensors (layers by the "
                "thousand): make it smaller (n_layers, ...)"
            ) from None
        raise UserError(
            f"this model holds more than {most:,} numbers: training it needs more than the "
            f"{memory / 2**30:,.0f} GiB of memory here ({TRAINING_BYTES} bytes a parameter: "
            "weight, gradient, Adam's two moments); make it smaller (d_model, n_layers, ...)"
        ) from None


# the least each field a kind's data sets can be, valid in every kind's config: a model of them
# is no larger than the one its data gives (a vocabulary holds three tokens at least: pad, start
# and end, or an image GPT's two colours and its start token; a classifier two classes)
LEAST_DATA = {
    "vocab_size": 3,
    "pad_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "n_classes": 2,
    "channels": 1,
    "context_length": 1,
}


def check_trainable_before_data(
    kind: ModelKind, fields: dict[str, Any], memory: int, source: str
) -> None:
    """The model config `fields` (from `source`) checked before the data is read (and perhaps
    tokenized, minutes) in vain: valid, and small enough to train (check_trainable), with the
    least its data can set, valid with any settings: an error is the settings', whatever the
    data. A kind with data fields LEAST_DATA lacks is checked once its data set them."""
    if not kind.data_fields <= LEAST_DATA.keys():
        return
    least = {k: LEAST_DATA[k] for k in kind.data_fields}
    check_trainable(kind, config_from_dict(kind.config, {**fields, **least}, source=source), memory)
