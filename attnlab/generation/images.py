"""Images from an image GPT (models/image_gpt.py): unconditional samples and completions of the
top rows of images, decoded with the KV cache one token at a time (decoding.py).

Dimensions: B images, P tokens given, L tokens per image.
"""

from __future__ import annotations

import torch
from torch import nn

from attnlab.generation.decoding import generate, make_generator


def complete_images(
    model: nn.Module,
    palette,
    prompts: torch.Tensor | None = None,
    *,
    count: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Whole images as tokens (B, L): continuations of `prompts`, the first P tokens (B, P) of
    each image, kept as given; or, when prompts is None, `count` images drawn from nothing.
    `palette` (data/palette.py) gives the start token and turns tokens back into pixels."""
    length = model.config.context_length
    if prompts is None:
        prompts = torch.zeros(count, 0, dtype=torch.long)
    start = torch.full((len(prompts), 1), palette.start_token, dtype=torch.long)
    given = torch.cat([start, prompts.long()], dim=1)  # (B, 1 + P)
    new = generate(
        model,
        given,
        length + 1 - given.size(1),
        temperature=temperature,
        top_k=top_k,
        generator=make_generator(model, seed),
    )
    return torch.cat([given[:, 1:], torch.tensor(new, dtype=torch.long)], dim=1)
