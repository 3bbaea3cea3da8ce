"""Looking inside models: capture (attention weights, residual streams, patching), the HTML
attention viewer, induction-head scores, the logit lens, direct logit attribution and layer
surgery."""

from attnlab.interpretability.attribution import Attribution, direct_logit_attribution
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
    "Attribution",
    "Recording",
    "ablate_heads",
    "attention_groups",
    "attention_layers",
    "capture",
    "direct_logit_attribution",
]
