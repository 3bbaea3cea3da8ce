"""Integer class labels, numbered from 0 (text classifiers' TSV files, IDX label files)."""

from __future__ import annotations

from collections.abc import Iterable

from attnlab.errors import UserError


def count_classes(labels: Iterable[int], where: str) -> int:
    """How many classes integer labels name: the largest label + 1. When most of those classes
    have no example, a label is stray (a corrupt file, labels that do not start at 0): a
    UserError naming `where`, rather than a model with hundreds of empty classes."""
    numbers = set(labels)
    n_classes = max(numbers) + 1
    if n_classes - len(numbers) > len(numbers):
        raise UserError(
            f"{where}: the labels run to {n_classes - 1}, but only {len(numbers)} of them appear: "
            "labels number the classes from 0"
        )
    return n_classes
