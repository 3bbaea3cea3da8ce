"""Hook points: named places in a model where inspection tools read or replace a tensor.

Every attention layer routes its weights (B, H, Tq, Tk) through ``attention_weights`` and its
heads' outputs (B, H, Tq, Dh), before the output projection mixes them, through
``head_outputs``; every residual block marks the residual stream (B, T, D) before and after each
of its sub-layers (``stream_in``, ``stream_after_mixer``, ``stream_after_cross`` in decoder
blocks, ``stream_out``). The module path names the place, e.g. ``blocks.2.stream_after_mixer``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module


class HookPoint(nn.Identity):
    """An identity module marking a tensor that hooks may read or replace.

    Register an ordinary ``register_forward_hook`` on it: the hook receives the tensor as the
    output, and what it returns replaces it. Attention takes the eager path while a hook is
    attached to its weights, so inspection tools see exactly the weights the model used; and
    while a global module hook is registered (register_module_forward_hook: a profiler's, a
    tracer's), which sees every module's call, these ones' too (slower: docs/reference.md).
    """

    @property
    def active(self) -> bool:
        return bool(
            self._forward_hooks
            or self._forward_pre_hooks
            or _module._global_forward_hooks  # register_module_forward_hook's: every module's
            or _module._global_forward_pre_hooks
        )

    def tap(self, x: torch.Tensor) -> torch.Tensor:
        """x through the hooks when any is attached; otherwise x itself, without a module call
        (decoding one token is dominated by per-call overhead)."""
        return self(x) if self.active else x


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every hook point of a model by its module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}
