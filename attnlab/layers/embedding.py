"""Token embeddings."""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.errors import TokenIdError

# True while decoding: its ids are a checked prompt and the ids the model chose (trusted_ids)
_TRUSTED = contextvars.ContextVar("trusted_ids", default=False)


class TokenEmbedding(nn.Embedding):
    """A (V, D) table: row i is the embedding of token i (`nn.Embedding`, same state dict).

    Compiled for a CPU, its backward sums each token's gradient rows with one scatter-add.
    Inductor would otherwise write that sum as atomic adds, which contend when a batch holds few
    distinct tokens: for the baby GPT's 768 character tokens, 310 µs against 58 µs per step (two
    cores of a Xeon with AMX).
    """

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Ids on a GPU go unchecked: the host would wait for each batch's min and max (an id
        # outside is torch's device-side assert there); decoding skips its own (trusted_ids).
        # is_compiling() first: the compiler cannot trace ContextVar.get
        if ids.device.type == "cpu" and not (torch.compiler.is_compiling() or _TRUSTED.get()):
            check_token_ids(ids, self.num_embeddings)
        if torch.compiler.is_compiling() and self.weight.device.type == "cpu":
            return _ScatterAddLookup.apply(ids, self.weight)
        return super().forward(ids)


def check_token_ids(ids: torch.Tensor, vocab_size: int) -> None:
    """A TokenIdError naming an id of `ids` outside [0, vocab_size), rather than an IndexError
    inside the lookup. One min and max, read by the host."""
    if ids.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(ids))
    if low < 0 or high >= vocab_size:
        raise TokenIdError(
            f"token id {low if low < 0 else high} is outside the model's vocabulary of "
            f"{vocab_size} ids (0 to {vocab_size - 1})"
        )


@contextlib.contextmanager
def trusted_ids():
    """Within: token embeddings do not check their ids. For decoding loops, whose prompt was
    checked once and whose other ids the model chose."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


class _ScatterAddLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.rows = weight.size(0)
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        grad = grad.reshape(-1, grad.size(-1))
        index = ids.reshape(-1, 1).expand_as(grad)
        return None, grad.new_zeros(ctx.rows, grad.size(-1)).scatter_add_(0, index, grad)
