"""Capture: what a model computes inside, read (and, for patching, replaced) at its hook points.

Dimensions: B batch, H heads, Tq query positions, Tk key positions, T positions, D model width,
Dh head width.

Every attention layer routes its weights (B, H, Tq, Tk) through a hook point named
``attention_weights`` and its heads' outputs (B, H, Tq, Dh) through ``head_outputs``, and every
residual block marks its residual stream (B, T, D) before and after each sub-layer
(layers/hooks.py). Capturing only attaches forward hooks that return what they are given, so the
model computes what it computes without them; the one difference is that attention takes its
eager path while its weights are watched (the same function, to float rounding:
tests/test_interpretability.py).

    with capture(model) as seen:
        logits, _ = model(ids)
    seen.attention["blocks.1.token_mixer"]   # (B, H, T, T)
    seen.streams["blocks.1.stream_out"]      # (B, T, D)
    seen.heads["blocks.1.token_mixer"]       # (B, H, T, Dh), with capture(model, heads=True)
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from attnlab.errors import UserError
from attnlab.layers.hooks import hook_points

WEIGHTS = "attention_weights"  # the hook point of an attention layer's weights
HEADS = "head_outputs"  # ... and of its heads' outputs, before the output projection
Patch = Callable[[torch.Tensor], torch.Tensor]  # a tensor at a hook point -> its replacement


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer, found by its weights' hook point."""

    name: str  # module path: "decoder_blocks.1.cross_attention"
    stack: str  # the list of blocks it is in: "decoder_blocks"
    index: int  # its block's place in that list
    cross: bool  # keys come from a context (the encoder's output), not from the queries
    causal: bool  # a query sees only the keys up to its own position

    @property
    def group(self) -> str:
        """The layers shown together: one stack's self (or cross) attention."""
        return f"{self.stack} {'cross' if self.cross else 'self'}-attention"


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every attention layer of `model`, in the order of its modules (inputs first)."""
    layers = []
    for path in hook_points(model):
        owner, _, leaf = path.rpartition(".")
        if leaf != WEIGHTS:
            continue
        module = model.get_submodule(owner)
        parts = owner.split(".")
        numbers = [i for i, part in enumerate(parts) if part.isdigit()]
        at = numbers[-1] if numbers else len(parts)
        layers.append(
            AttentionLayer(
                name=owner,
                stack=".".join(parts[:at]) or "model",
                index=int(parts[at]) if numbers else 0,
                cross=bool(getattr(module, "cross", False)),
                causal=bool(getattr(module, "causal", False)),
            )
        )
    return layers


def attention_groups(model: nn.Module) -> dict[str, list[AttentionLayer]]:
    """attention_layers grouped as they are shown: {"blocks self-attention": [...], ...}."""
    groups: dict[str, list[AttentionLayer]] = {}
    for layer in attention_layers(model):
        groups.setdefault(layer.group, []).append(layer)
    return groups


def require_attention(model: nn.Module, what: str) -> list[AttentionLayer]:
    """attention_layers, or a UserError naming the model when it has none."""
    layers = attention_layers(model)
    if not layers:
        name = type(model).__name__
        article = "an" if name[:1] in "AEIOU" else "a"
        raise UserError(f"{what} holds {article} {name} with {_no_attention(model)}")
    return layers


def why_no_attention(model: nn.Module) -> str:
    """Why a model without attention layers has none: "its hyena token mixers compute no
    attention weights" (a GPT's mixer by name), else "it computes no attention weights"."""
    mixer = getattr(getattr(model, "config", None), "mixer", None)
    return f"{f'its {mixer} token mixers compute' if mixer else 'it computes'} no attention weights"


def _no_attention(model: nn.Module) -> str:
    return f"no attention layers ({why_no_attention(model)})"


@dataclass
class Recording:
    """What one forward pass showed; a later pass in the same `capture` replaces it."""

    attention: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H, Tq, Tk)
    streams: dict[str, torch.Tensor] = field(default_factory=dict)  # hook path -> (B, T, D)
    heads: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H, Tq, Dh)


@contextmanager
def capture(
    model: nn.Module,
    *,
    attention: bool = True,
    streams: bool = True,
    heads: bool = False,
    patches: dict[str, Patch] | None = None,
    only: Iterable[str] | None = None,
) -> Iterator[Recording]:
    """Record attention weights (keyed by the layer's module path) and residual streams (keyed
    by the hook point's path) of every forward pass inside the block; tensors are detached.
    heads: also each attention head's output (keyed by the layer's path), off by default: few
    uses need them, and they take as much memory as a stream per layer.

    patches: hook path -> a function whose result replaces the tensor there (an ablation, or a
    value from another run: activation patching), a tensor of the same shape and dtype; or that
    changes the tensor in place and returns None. An attention layer's output follows weights
    patched either way. only: record just these hook paths (less memory on a big model).
    """
    points = hook_points(model)
    if not points:
        raise ValueError(
            f"{type(model).__name__} has no hook points (attention weights or residual "
            "streams): there is nothing to capture"
        )
    if isinstance(only, str):  # else set() would make a hook path of each of its characters
        raise TypeError(f"only= takes a list of hook paths, got the string {only!r}")
    patches = dict(patches or {})
    wanted = set(only) if only is not None else None
    unknown = sorted((set(patches) | (wanted or set())) - set(points))
    if unknown:
        shown = ", ".join(list(points)[:4])
        hint = (
            f"attention weights are at LAYER.{WEIGHTS}"
            if any(_leaf(p) == WEIGHTS for p in points)
            else f"it has {_no_attention(model)}"
        )
        raise KeyError(
            f"no hook point {', '.join(unknown)} in {type(model).__name__}; it has {shown}, ... "
            f"(hook_points(model) lists them; {hint})"
        )
    wants = {WEIGHTS: attention, HEADS: heads}
    if off := sorted(p for p in wanted or () if not wants.get(_leaf(p), streams)):
        raise ValueError(
            f"only= names {', '.join(off)}, which attention=, heads= or streams= turn off"
        )
    _check_not_compiled(model)
    recording = Recording()
    handles = []
    for path, point in points.items():
        owner, _, leaf = path.rpartition(".")
        keep = wants.get(leaf, streams) and (wanted is None or path in wanted)
        if keep or path in patches:
            by_layer = {WEIGHTS: recording.attention, HEADS: recording.heads}
            store, key = (by_layer[leaf], owner) if leaf in by_layer else (recording.streams, path)
            hook = _hook(store if keep else None, key, patches.get(path), path)
            handles.append(point.register_forward_hook(hook))
    try:
        yield recording
    finally:
        for handle in handles:
            handle.remove()


def _leaf(path: str) -> str:
    return path.rpartition(".")[2]


def _check_not_compiled(model: nn.Module) -> None:
    """Compiled code does not see hooks attached after it was compiled: capturing from it
    would record nothing and patch nothing, without a word."""
    compiled = [
        name or "the model"
        for name, module in model.named_modules()
        if getattr(module, "_compiled_call_impl", None) is not None
    ]
    dynamo = sys.modules.get("torch._dynamo")  # loaded by any compiling; 1-2 s to load to ask
    if compiled or (dynamo and isinstance(model, dynamo.eval_frame.OptimizedModule)):
        raise RuntimeError(
            f"capture needs the model uncompiled; compiled: {', '.join(compiled[:3]) or 'it'} "
            "(capture from the model before compiling it, or from an uncompiled copy)"
        )


def _hook(store: dict | None, key: str, patch: Patch | None, path: str):
    def hook(module, inputs, output):
        if patch is not None:  # on a copy where autograd may need the original (softmax's)
            given = output.clone() if torch.is_grad_enabled() else output
            result = patch(given)  # None: it changed `given` in place
            output = given if result is None else _replacement(result, output, path)
        if store is not None:  # a copy: a later patch in place must not change the record
            store[key] = output.detach().clone()
        return output

    return hook


def _replacement(result, output: torch.Tensor, path: str) -> torch.Tensor:
    """A patch's result, if it can stand in for `output`: a tensor of its shape and dtype (a
    smaller batch or another width would flow on downstream, or fail far from the patch)."""
    if isinstance(result, torch.Tensor):
        if (result.shape, result.dtype) == (output.shape, output.dtype):
            return result
        got = f"{result.dtype} {tuple(result.shape)}"
    else:
        got = type(result).__name__
    raise ValueError(
        f"the patch at {path} returned {got}; it must return a {output.dtype} tensor of the "
        f"shape it was given, {tuple(output.shape)} (or None, having changed it in place)"
    )


def ablate_heads(heads: Iterable[int]) -> Patch:
    """A patch that zeroes these heads, so they add nothing to their layer's output (zero
    ablation): at a ``head_outputs`` hook point their outputs (B, H, Tq, Dh), at an
    ``attention_weights`` one their weights (B, H, Tq, Tk), the same ablation; only the weights'
    hook point takes attention off its fused path."""
    chosen = list(heads) if isinstance(heads, Iterable) else [None]
    if not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) for h in chosen):
        raise TypeError(f"ablate_heads takes head indices, a list of ints, got {heads!r}")
    heads = sorted(set(chosen))

    def patch(weights: torch.Tensor) -> torch.Tensor:  # (B, H, Tq, Tk) or (B, H, Tq, Dh)
        if wrong := [h for h in heads if not 0 <= h < weights.size(1)]:
            raise ValueError(
                f"ablate_heads: head {wrong[0]} is out of range: the layer has heads 0 to "
                f"{weights.size(1) - 1}"
            )
        index = torch.tensor(heads, dtype=torch.long, device=weights.device)
        return weights.index_fill(1, index, 0.0)

    return patch
