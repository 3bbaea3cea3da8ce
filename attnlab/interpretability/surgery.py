"""Layer surgery: the model evaluated with its blocks dropped, repeated or reordered, to see
which layers matter and which could trade places; and head ablation, the same question asked
of each attention head (head_ablation).

A model's blocks run in the order of their ``nn.ModuleList``; surgery runs them in another order
for a while (``rearranged``) and puts them back. Every arrangement keeps the weights: dropping
layer i runs the others; duplicating it runs it twice in a row; swapping i and j exchanges them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from attnlab.errors import UserError
from attnlab.interpretability.capture import HEADS, ablate_heads, capture, require_attention
from attnlab.layers.blocks import ResidualBlock
from attnlab.layers.contracts import eval_mode


def block_stack(model: nn.Module) -> nn.ModuleList:
    """The model's one list of residual blocks (UserError if it has none, or several, as an
    encoder-decoder has)."""
    stacks = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and m and all(isinstance(b, ResidualBlock) for b in m)
    ]
    if len(stacks) != 1:
        found = ", ".join(name for name, _ in stacks) or "none"
        raise UserError(
            f"layer surgery needs a model with one list of residual blocks; "
            f"{type(model).__name__} has {found}"
        )
    return stacks[0][1]


@contextmanager
def rearranged(stack: nn.ModuleList, order: list[int]) -> Iterator[None]:
    """Run the blocks of `stack` in `order` (indices into it, repeats allowed) inside the block."""
    original = list(stack)
    stack._modules.clear()
    for i, index in enumerate(order):
        stack._modules[str(i)] = original[index]
    try:
        yield
    finally:
        stack._modules.clear()
        for i, block in enumerate(original):
            stack._modules[str(i)] = block


def arrangements(n_layers: int) -> dict[str, list[int]]:
    """Every surgery on n layers, by name: "drop i", "duplicate i", "swap i j" (i < j)."""
    layers = list(range(n_layers))
    result = {}
    for i in layers:
        result[f"drop {i}"] = [j for j in layers if j != i]
    for i in layers:
        result[f"duplicate {i}"] = layers[: i + 1] + layers[i:]
    for i in layers:
        for j in layers[i + 1 :]:
            order = list(layers)
            order[i], order[j] = j, i
            result[f"swap {i} {j}"] = order
    return result


@torch.no_grad()
def layer_surgery(model: nn.Module, loss: Callable[[], float]) -> tuple[float, dict[str, float]]:
    """The loss of the model as it is, and of every arrangement (arrangements()), each computed
    by `loss()` (the mean loss of the model on fixed data)."""
    stack = block_stack(model)
    with eval_mode(model):
        baseline = loss()
        results = {}
        for name, order in arrangements(len(stack)).items():
            with rearranged(stack, order):
                results[name] = loss()
        return baseline, results


@torch.no_grad()
def head_ablation(
    model: nn.Module, loss: Callable[[], float]
) -> tuple[float, dict[str, list[float]]]:
    """The loss of the model as it is, and with each attention head zero-ablated alone (its
    output zeroed by ablate_heads, so it adds nothing to its layer's output): by layer (its
    module path, in attention_layers' order), the loss without head 0, head 1, ...

    `loss()` is the mean loss of the model on fixed data, as for layer_surgery. A zero output is
    one the later layers never saw in training: a change says how much the model relies on the
    head, not what the head does (activation patching, with capture, asks that).
    """
    layers = require_attention(model, "the model")
    with eval_mode(model):
        baseline = loss()
        results = {}
        for layer in layers:
            point = f"{layer.name}.{HEADS}"  # not its weights: attention stays fused
            results[layer.name] = []
            for head in range(model.get_submodule(layer.name).n_heads):
                patch = {point: ablate_heads([head])}
                with capture(model, attention=False, streams=False, patches=patch):
                    results[layer.name].append(loss())
        return baseline, results


def change_maps(
    baseline: float, results: dict[str, float], n_layers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss changes as maps: swaps (n, n), [i, j] = swapping layers i and j (symmetric, NaN on
    the diagonal); and single layers (2, n), row 0 dropping and row 1 duplicating layer i."""
    swaps = torch.full((n_layers, n_layers), float("nan"))
    for i in range(n_layers):
        for j in range(i + 1, n_layers):
            swaps[i, j] = swaps[j, i] = results[f"swap {i} {j}"] - baseline
    single = torch.tensor(
        [
            [results[f"{what} {i}"] - baseline for i in range(n_layers)]
            for what in ("drop", "duplicate")
        ]
    )
    return swaps, single
