"""The contracts every layer and model keeps, in one place.

Dimensions: B batch, T positions, D model width.

- A **token mixer** moves information between positions (attention, and recurrent, Hyena or
  Mamba layers). ``forward(x, mask=None, cache=None)`` maps (B, T, D) to (B, T, D);
  ``new_cache(max_length, **options)`` returns its decoding state. Options: ``sliding`` (keep
  only the last max_length positions, for mixers that attend to positions) and ``static``
  (fixed shapes, for a compiled decoding step); a mixer ignores those that mean nothing to it.
- A **decoding state** (a KV cache, a recurrent state) holds what a mixer keeps between decoding
  steps. ``reorder(index)`` keeps batch rows ``index`` (beam search). A static state also gives
  ``buffers()``, the tensors a compiled step reads and updates in place, and
  ``with_buffers(tensors)``, a copy holding other tensors in their place (an exported step takes
  them as inputs). A recurrent state is as much a decoding state as a KV cache.
- A **model** computes: ``forward(*batch) -> (logits, loss)``, loss None without targets.
  Training, generation, evaluation and inspection are procedures over that contract.
- **Parameters**: each layer initialises its own (``reset_parameters``). A model's scheme
  (``initialize``) covers only the weights of linear and embedding layers, and leaves alone what
  a layer marks ``keep_init``. Weight decay applies to those same weights, and to the weight
  matrices of recurrent layers, unless a layer marks them ``no_weight_decay``; biases, norm
  gains and a mixer's own parameters (its dynamics, such as Mamba's A and D) are never
  decayed. A layer may give some parameters a ``learning_rate_scale``: they form an optimizer
  group of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class DecodingState(Protocol):
    def reorder(self, index: torch.Tensor) -> None: ...
    def buffers(self) -> list[torch.Tensor]: ...
    def with_buffers(self, tensors: list[torch.Tensor]) -> DecodingState: ...


@runtime_checkable
class TokenMixer(Protocol):
    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: DecodingState | None = None
    ) -> torch.Tensor: ...
    def new_cache(self, max_length: int = 0, **options) -> DecodingState: ...


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) for the duration, then in the caller's mode again:
    what every procedure over a model (generation, evaluation, inspection) runs it in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ------------------------------------------------------------------- parameter marks
def no_weight_decay(*params: nn.Parameter) -> None:
    """Keep these parameters out of weight decay (a mixer's dynamics, such as Mamba's A and D:
    shrinking them towards zero changes what the layer computes, not how large it is)."""
    for param in params:
        param._no_weight_decay = True


def learning_rate_scale(scale: float, *params: nn.Parameter) -> None:
    """Train these parameters at `scale` times the scheduled learning rate, in an optimizer
    group of their own (Hyena's filter networks, as in the paper)."""
    for param in params:
        param._lr_scale = scale


def keep_init(*params: nn.Parameter) -> None:
    """The model's initialisation scheme leaves these as their layer set them."""
    for param in params:
        param._keep_init = True


def writes_residual(*params: nn.Parameter) -> None:
    """These weights project into the residual stream (attention's output, the feed-forward's
    down projection): schemes such as GPT-2's scale them by depth."""
    for param in params:
        param._writes_residual = True


def decayed(model: nn.Module) -> set[int]:
    """The ids of the parameters that weight decay applies to: the weight matrices of linear,
    embedding and recurrent layers, unless marked no_weight_decay."""
    matrices = [
        weight
        for module in model.modules()
        for name, weight in module.named_parameters(recurse=False)
        if (isinstance(module, MATRIX_LAYERS) and name == "weight")
        or (isinstance(module, nn.RNNBase) and name.startswith("weight_"))
    ]
    return {id(w) for w in matrices if not getattr(w, "_no_weight_decay", False)}


def is_residual_output(param: nn.Parameter) -> bool:
    return getattr(param, "_writes_residual", False)


MATRIX_LAYERS = (nn.Linear, nn.Embedding)


def initialize(model: nn.Module, matrix_init: Callable[[nn.Parameter, nn.Module], None]) -> None:
    """A model's initialisation: every layer first initialises its own parameters (norm gains,
    position tables, a mixer's dynamics); then ``matrix_init(weight, layer)`` sets the weights of
    linear and embedding layers and linear biases start at zero, except where a layer marked
    them keep_init. Layers own what they know; the model owns only its scheme for matrices."""
    for module in model.modules():
        if module is not model and not isinstance(module, MATRIX_LAYERS):
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    for module in _unique(model.modules()):
        if not isinstance(module, MATRIX_LAYERS):
            continue
        if not getattr(module.weight, "_keep_init", False):
            matrix_init(module.weight, module)
        bias = getattr(module, "bias", None)
        if bias is not None and not getattr(bias, "_keep_init", False):
            nn.init.zeros_(bias)


def _unique(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """Modules whose weight is not one already seen (a tied output head is initialised once,
    as the embedding it shares)."""
    seen, unique = set(), []
    for module in modules:
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and id(weight) in seen:
            continue
        if isinstance(weight, torch.Tensor):
            seen.add(id(weight))
        unique.append(module)
    return unique
