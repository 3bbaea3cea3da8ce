"""The attention viewer: one self-contained HTML file (no network: inline script, style and
data, and a content security policy that forbids fetching anything), which works from file://.

The page shows every attention layer's heads as thumbnails, grouped as the model has them (a
GPT's blocks; an encoder-decoder's encoder self-attention, decoder self-attention and cross
attention), and the tokens of the focused head: where a token attends and what attends to it,
its strongest weights also written out as numbers. Every head and token is a named control the
keyboard reaches (one Tab stop per list, arrow keys along it, Enter or Space to keep).
Token text only ever reaches the page as JSON inside a data block, with <, > and & escaped, and
the script writes it with textContent: a text holding markup shows as text and runs nothing.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from typing import Any

import torch

from attnlab.errors import UserError
from attnlab.interpretability.capture import AttentionLayer, Recording
from attnlab.interpretability.inputs import IMAGE, Inputs

SCALE = 1000  # weights are stored as integers in thousandths: a smaller file, as exact as shown
# Weights one page may hold: about two bytes each in the page, and a browser reads the page's
# data as one string, which Chromium caps near 512 MB (GPT-2 small at its full context of
# 1024 tokens: 151M weights, a 300 MB page that opens in seconds).
MAX_WEIGHTS = 160_000_000


def panels(groups: dict[str, list[AttentionLayer]], recording: Recording, inputs: Inputs):
    """The viewer's panels: per group of layers, its query and key sequences and the weights
    of each layer and head (row i: where query i attends), in thousandths: a (Tq, Tk) tensor
    per head, made a list only as the page is written (script_json), one head at a time."""
    result = []
    for title, layers in groups.items():
        queries, keys = inputs.sides(layers[0])
        weights = [recording.attention[layer.name][0] for layer in layers]  # each (H, Tq, Tk)
        result.append(
            {
                "title": title,
                "queries": queries,
                "keys": keys,
                "layers": [list((w.float() * SCALE).round().short()) for w in weights],
            }
        )
    return result


def viewer_data(
    title: str,
    groups: dict[str, list[AttentionLayer]],
    recording: Recording,
    inputs: Inputs,
    selected: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """Everything the page shows; selected: (panel, layer, head) kept in focus at the start."""
    weights = [recording.attention[layer.name] for layers in groups.values() for layer in layers]
    check_size(weights, inputs.sequences)
    data = {
        "title": title,
        "sequences": inputs.sequences,
        "panels": panels(groups, recording, inputs),
        "selected": None,
    }
    if selected is not None:
        data["selected"] = dict(zip(("panel", "layer", "head"), selected, strict=True))
    return data


def check_size(weights: list[torch.Tensor], sequences: dict[str, list[str]]) -> None:
    """A UserError when the page would hold more than MAX_WEIGHTS weights (too large for a
    browser to open), with what would fit: a shorter text (and target, for a translation
    model), or for an image model (whose inputs have the one size it reads) none."""
    total = sum(w.numel() for w in weights)
    if total <= MAX_WEIGHTS:
        return
    longest = max(w.size(-1) for w in weights)
    if IMAGE in sequences:
        advice = (
            f"this model reads every image as {longest} positions, too many for one page of "
            "all its layers and heads (in Python, attnlab.interpretability.capture reads them)"
        )
    else:
        text = "a text and a --target" if "target" in sequences else "a text"
        fits = math.isqrt(MAX_WEIGHTS * longest**2 // total)
        advice = f"give {text} of at most about {fits} tokens"
    raise UserError(
        f"the page would hold {total:,} attention weights, more than a browser opens "
        f"({MAX_WEIGHTS:,}): {advice}"
    )


def script_json(data: Any) -> str:
    """JSON safe inside an HTML `<script>` element: no `<`, `>` or `&` that could end it or open a
    comment (each stays a \\u escape inside a string, where JSON.parse reads it back). A tensor
    is written as its nested list: one Python int per weight (some 16 bytes) only while it is
    written, not for every weight of the page at once."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), default=_as_list)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _as_list(value: Any) -> list:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def render_html(data: dict[str, Any]) -> str:
    template = resources.files("attnlab.interpretability").joinpath("viewer.html").read_text()
    head, tail = template.split("__DATA__")  # one pass: no user text is read as a placeholder
    return head.replace("__TITLE__", html.escape(data["title"])) + script_json(data) + tail
