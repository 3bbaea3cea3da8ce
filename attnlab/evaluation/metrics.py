"""Metrics: perplexity and bits per byte from a mean cross-entropy, and accuracy."""

from __future__ import annotations

import math

import torch


def perplexity(mean_loss: float) -> float:
    """exp(mean cross-entropy in nats per token)."""
    return math.exp(mean_loss)


def bits_per_byte(mean_loss: float, n_tokens: int, n_bytes: int) -> float:
    """Cross-entropy per UTF-8 byte in bits: comparable across tokenizers, unlike per-token loss."""
    return mean_loss * n_tokens / (n_bytes * math.log(2))


def accuracy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> float:
    """Fraction of positions where the argmax equals the target. logits (..., V), targets (...)."""
    keep = targets != ignore_index
    return (logits.argmax(-1)[keep] == targets[keep]).float().mean().item()
