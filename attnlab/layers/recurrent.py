"""Recurrent token mixers: Elman RNN ("rnn", tanh), LSTM ("lstm") and GRU ("gru").

Dimensions: B batch, T positions, D model width, H hidden width, L stacked layers.

Position t reads positions <= t through a hidden state carried forward one position at a time
(Elman 1990; Hochreiter & Schmidhuber 1997; Cho et al. 2014), so they are causal by
construction and take no position embeddings. Decoding carries that state (a RecurrentState
holding h, and c for an LSTM): each new token costs the same however long the text before it.
torch's recurrent layers run the recurrence (cuDNN's kernels on a GPU). The same pieces serve the
recurrent language model (models/recurrent_lm.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnlab.config import check_choice, check_positive, check_types
from attnlab.layers.caches import RecurrentState
from attnlab.layers.contracts import writes_residual
from attnlab.layers.mixers import MixerContext, register_mixer

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def make_recurrence(
    cell: str, input_size: int, hidden_size: int, n_layers: int = 1, dropout: float = 0.0
) -> nn.RNNBase:
    """torch's recurrent layer of this cell, batch-first; dropout between stacked layers."""
    check_choice("recurrence", "cell", cell, CELLS)
    options = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    return CELLS[cell](
        input_size,
        hidden_size,
        n_layers,
        batch_first=True,
        dropout=dropout if n_layers > 1 else 0.0,
        **options,
    )


def run_recurrence(
    recurrence: nn.RNNBase, x: torch.Tensor, state: RecurrentState | None
) -> torch.Tensor:
    """x: (B, T, D) -> (B, T, H), starting from `state` and leaving the last hidden state (each
    (L, B, H)) in it; without a state, from zeros."""
    lstm = isinstance(recurrence, nn.LSTM)
    hidden = None
    if state is not None and not state.empty:
        hidden = (state.get("h"), state.get("c")) if lstm else state.get("h")
    if lstm and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # Given float32 inputs under autocast, torch picks oneDNN's LSTM and then casts them to
        # bf16, which a CPU without bf16 instructions cannot run (a RuntimeError); given them
        # in bf16 it picks a kernel that runs on any CPU. A GRU and an Elman RNN run as given:
        # a GRU given float32 keeps its hidden state in float32, not rounded at every step
        x = x.to(torch.get_autocast_dtype("cpu"))
    out, hidden = recurrence(x, hidden)
    if state is not None:
        # stored batch-first, as every decoding state: (B, L, H)
        state.set(**dict(zip(("h", "c"), hidden if lstm else (hidden,), strict=False)))
    return out


class _BatchFirstState(RecurrentState):
    """torch's recurrent layers take hidden states as (L, B, H); decoding states keep the batch
    first (beam search reorders dimension 0), so this one transposes on the way in and out."""

    def get(self, name: str) -> torch.Tensor | None:
        held = super().get(name)
        return None if held is None else held.transpose(0, 1).contiguous()

    def set(self, **tensors: torch.Tensor) -> None:
        super().set(**{name: value.transpose(0, 1) for name, value in tensors.items()})


def recurrent_state() -> RecurrentState:
    """An empty decoding state for run_recurrence."""
    return _BatchFirstState()


@dataclass(frozen=True)
class RecurrentOptions:
    hidden_size: int | None = None  # width of the recurrent state; None = the model width

    def __post_init__(self):
        check_types(self)
        check_positive("RecurrentOptions", hidden_size=self.hidden_size)


class RecurrentMixer(nn.Module):
    """One recurrent layer as a token mixer: (B, T, D) -> recurrence -> (B, T, H) -> a linear
    projection back to D (the block's residual write, as attention's output projection)."""

    def __init__(self, cell: str, d_model: int, hidden_size: int | None = None, bias: bool = True):
        super().__init__()
        hidden_size = hidden_size or d_model
        self.recurrence = make_recurrence(cell, d_model, hidden_size)
        self.output_projection = nn.Linear(hidden_size, d_model, bias=bias)
        writes_residual(self.output_projection.weight)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: RecurrentState | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D). mask is ignored: the recurrence is causal by itself."""
        return self.output_projection(run_recurrence(self.recurrence, x, cache))

    def new_cache(self, max_length: int = 0, **options) -> RecurrentState:
        """The hidden state; its size does not depend on max_length (nor on any option)."""
        return recurrent_state()


def _builder(cell: str):
    def build(options: RecurrentOptions, context: MixerContext) -> RecurrentMixer:
        if not context.causal:
            raise ValueError(f"the {cell!r} mixer reads left to right: it is causal only")
        return RecurrentMixer(cell, context.d_model, options.hidden_size, context.bias)

    return build


for _cell in CELLS:
    register_mixer(_cell, RecurrentOptions, _builder(_cell))
