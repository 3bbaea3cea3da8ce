"""A classifier scored over a whole set of images: accuracy, loss and the confusion matrix."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.data.images import ImageSet, Normalization
from attnlab.evaluation.metrics import confusion_matrix
from attnlab.layers.contracts import eval_mode


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, data: ImageSet, normalize: Normalization, batch_size: int = 256
) -> dict[str, Any]:
    """Every image of `data` once. Returns accuracy, loss (mean cross-entropy, nats; not
    label-smoothed, whatever training smoothed), the count, and confusion (K, K) int64:
    confusion[true, predicted]."""
    device = next(model.parameters()).device
    n_classes = model.config.n_classes
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    total_loss = 0.0
    with eval_mode(model):
        for start in range(0, len(data), batch_size):
            images = normalize(data.images[start : start + batch_size].to(device))
            labels = data.labels[start : start + batch_size]
            logits, _ = model(images)
            total_loss += F.cross_entropy(logits.float().cpu(), labels, reduction="sum").item()
            confusion += confusion_matrix(logits.argmax(-1).cpu(), labels, n_classes)
    count = int(confusion.sum())
    return {
        "accuracy": confusion.diag().sum().item() / count,
        "loss": total_loss / count,
        "images": count,
        "confusion": confusion,
    }


@torch.no_grad()
def top_k(model: nn.Module, images: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most probable classes of each normalised image (B, C, S, S): probabilities (B, k)
    and class indices (B, k), most probable first."""
    with eval_mode(model):
        logits, _ = model(images)
    probabilities = torch.softmax(logits.float(), dim=-1)
    return probabilities.topk(min(k, probabilities.size(-1)), dim=-1)
