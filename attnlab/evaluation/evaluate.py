"""Evaluation procedures over whole datasets (not sampled estimates)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from attnlab.data.text import sequential_windows
from attnlab.evaluation.metrics import bits_per_byte, perplexity
from attnlab.layers.contracts import eval_mode
from attnlab.progress import progress_bar
from attnlab.tokenizers import Tokenizer

PIECE = 1 << 20  # tokens whose bytes are counted at a time


@torch.no_grad()
def evaluate_language_model(
    model: nn.Module,
    tokens: np.ndarray,
    tokenizer: Tokenizer,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, float]:
    """Loss over non-overlapping context-length windows of `tokens` (the last one shorter, the
    tokens left after the full ones), in which every token but the first is a target once;
    progress: a bar on stderr when it is a terminal.

    Returns loss (nats/token), perplexity, bits per byte and the counts behind them. Bytes are
    those the evaluated tokens stand for, so bits/byte compares models with different tokenizers;
    they are counted a piece at a time, without decoding the text (so in the form the tokenizer
    puts it: NFC, for a converted Mamba's).
    """
    device = next(model.parameters()).device
    length = model.config.context_length
    total_loss, total_tokens = 0.0, 0
    bar = progress_bar(progress, total=len(tokens) - 1, desc="scoring", unit=" tokens")
    with eval_mode(model), bar:
        for inputs, targets in sequential_windows(tokens, length, batch_size):
            _, loss = model(inputs.to(device), targets.to(device))
            total_loss += loss.item() * targets.numel()
            total_tokens += targets.numel()
            bar.update(targets.numel())
    if total_tokens == 0:
        raise ValueError(f"{len(tokens)} token(s): none follows another to be predicted")
    evaluated, lengths = tokens[1 : total_tokens + 1], tokenizer.byte_lengths()
    n_bytes = sum(
        int(lengths[evaluated[i : i + PIECE]].sum()) for i in range(0, total_tokens, PIECE)
    )
    mean = total_loss / total_tokens
    return {
        "loss": mean,
        "perplexity": perplexity(mean),
        "bits_per_byte": bits_per_byte(mean, total_tokens, n_bytes),
        "tokens": total_tokens,
        "bytes": n_bytes,
    }
