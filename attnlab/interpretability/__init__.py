"""Looking inside models: capture (attention weights, residual streams, patching), the HTML
attention viewer, induction-head scores, the logit lens, direct logit attribution, activation
patching and layer surgery."""

from attnlab.interpretability.attribution import Attribution, direct_logit_attribution
from attnlab.interpretability.capture import (
    AttentionLayer,
    Recording,
    ablate_heads,
    attention_groups,
    attention_layers,
    capture,
)
from attnlab.interpretability.patching import Patching, activation_patching

__all__ = [
    "AttentionLayer",
    "Attribution",
    "Patching",
    "Recording",
    "ablate_heads",
    "activation_patching",
    "attention_groups",
    "attention_layers",
    "capture",
    "direct_logit_attribution",
]
