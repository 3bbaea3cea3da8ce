"""Metrics: perplexity and bits per byte from a mean cross-entropy; classification scores."""

from __future__ import annotations

import math

import torch


def perplexity(mean_loss: float) -> float:
    """exp(mean cross-entropy in nats per token); infinite past a float's range (a loss over
    709 nats: a diverged model)."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


def bits_per_byte(mean_loss: float, n_tokens: int, n_bytes: int) -> float:
    """Cross-entropy per UTF-8 byte in bits: comparable across tokenizers, unlike per-token loss."""
    return mean_loss * n_tokens / (n_bytes * math.log(2))


def classification_scores(predicted: torch.Tensor, labels: torch.Tensor, n_classes: int):
    """Accuracy and macro-averaged F1 (the mean over classes of 2·precision·recall /
    (precision + recall), a class never predicted nor present left out) of class predictions."""
    confusion = confusion_matrix(predicted, labels, n_classes)
    true_positive = confusion.diag().double()
    predicted_count, actual_count = confusion.sum(0).double(), confusion.sum(1).double()
    present = (predicted_count + actual_count) > 0
    f1 = 2 * true_positive[present] / (predicted_count[present] + actual_count[present])
    return {
        "accuracy": (true_positive.sum() / max(len(labels), 1)).item(),
        "f1": f1.mean().item() if present.any() else 0.0,
    }


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, n_classes: int):
    """(C, C) counts: row = true class, column = predicted class."""
    flat = labels.long().flatten() * n_classes + predicted.long().flatten()
    return torch.bincount(flat, minlength=n_classes * n_classes).view(n_classes, n_classes)


class ClassificationMetrics:
    """Accumulates a classifier's evaluation batches: update(logits (B, C), batch), whose last
    tensor holds the labels (B,); compute() -> {"accuracy", "f1"}."""

    def __init__(self):
        self.predicted, self.labels, self.n_classes = [], [], 0

    def update(self, logits: torch.Tensor, batch) -> None:
        self.n_classes = logits.size(-1)
        self.predicted.append(logits.argmax(-1).cpu())
        self.labels.append(batch[-1].cpu())

    def compute(self) -> dict[str, float]:
        return classification_scores(
            torch.cat(self.predicted), torch.cat(self.labels), self.n_classes
        )
