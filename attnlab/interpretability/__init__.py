"""Looking inside models: capture (attention weights, residual streams, patching), the HTML
attention viewer, induction-head scores, the logit lens and layer surgery."""

from attnlab.interpretability.capture import (
    AttentionLayer,
    Recording,
    ablate_heads,
    attention_groups,
    attention_layers,
    capture,
)

__all__ = [
    "AttentionLayer",
    "Recording",
    "ablate_heads",
    "attention_groups",
    "attention_layers",
    "capture",
]
