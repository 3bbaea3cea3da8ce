"""Induction heads (Olsson et al. 2022, "In-context Learning and Induction Heads").

Dimensions: N sequences, L tokens of each copy, T = 2L positions, H heads, V vocabulary size.

On random tokens repeated twice, an induction head at a token of the second copy attends to the
token that followed the same token earlier (prefix matching) and raises that token's logit
(copying), so the model predicts the second copy from the first. The scores:
- prefix matching, per head: the attention from each second-copy position t to the earlier
  positions j whose previous token is the token at t (tokens[j-1] == tokens[t]), summed, and
  averaged over the second copy (Olsson et al., "Key Concepts: Induction Heads", and appendix);
- copying, per head: the head's direct effect on the logits (its output taken out of the final
  residual stream, read through the model's readout) ranks the token it should copy (the next
  one) among all V tokens: 1 = always first, 0.5 = chance. Needs a model with readout();
- in-context learning score: the mean loss at late positions minus the mean at early ones (Olsson
  et al.: the loss at the 500th token minus that at the 50th; here the second copy and the
  first); negative when the context helps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.errors import UserError
from attnlab.interpretability.capture import (
    HEADS,
    WEIGHTS,
    AttentionLayer,
    ablate_heads,
    attention_layers,
    capture,
    why_no_attention,
)
from attnlab.layers.contracts import eval_mode
from attnlab.layers.hooks import hook_points
from attnlab.models.registry import GENERATE, kind_of

CHUNK = 64  # sequences scored in one forward pass


def repeated_random_tokens(
    n_sequences: int, length: int, n_tokens: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(N, 2L) ids: L random tokens, then the same L again. The first copy draws distinct
    tokens when the vocabulary allows, so each second-copy token has one earlier occurrence."""
    if length <= n_tokens:
        noise = torch.rand(n_sequences, n_tokens, generator=generator)
        first = noise.argsort(dim=-1)[:, :length]  # (N, L) distinct
    else:
        first = torch.randint(n_tokens, (n_sequences, length), generator=generator)
    return torch.cat([first, first], dim=1)


def prefix_matching(weights: torch.Tensor, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """(H,) prefix-matching scores of one layer: weights (N, H, T, T), tokens (N, T); queries
    from position `start` on."""
    length = tokens.size(1)
    match = torch.zeros(tokens.size(0), length, length, dtype=torch.bool, device=tokens.device)
    match[:, :, 1:] = tokens[:, None, :-1] == tokens[:, :, None]  # [n, t, j]: t[j-1] == t[t]
    match &= torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
    scores = (weights.float() * match[:, None]).sum(-1)  # (N, H, T)
    return scores[:, :, start:].mean(dim=(0, 2))


def position_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(N, T-1) loss of predicting each next token."""
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")


@dataclass
class InductionReport:
    layers: list[str]  # the self-attention layers scored, in order
    prefix_matching: torch.Tensor  # (layers, H)
    copying: torch.Tensor | None  # (layers, H); None without a readout
    loss_first: float  # mean loss over the first copy
    loss_second: float  # ... and over the second

    @property
    def in_context_score(self) -> float:
        return self.loss_second - self.loss_first

    @property
    def best(self) -> tuple[int, int, float]:
        """(layer, head, score) of the highest prefix-matching score."""
        flat = int(self.prefix_matching.argmax())
        layer, head = divmod(flat, self.prefix_matching.size(1))
        return layer, head, float(self.prefix_matching[layer, head])


def _scored_layers(model: nn.Module, length: int | None) -> tuple[list[AttentionLayer], int]:
    """The self-attention layers of a causal language model, and the length of each copy
    (default: half the context, at most 128); a UserError for a model that cannot be scored."""
    kind = kind_of(model)
    if GENERATE not in kind.capabilities:
        raise UserError(f"induction scores need a causal language model, which {kind.name} is not")
    layers = [layer for layer in attention_layers(model) if not layer.cross]
    if not layers:
        raise UserError(
            f"{type(model).__name__} has no self-attention layers to score "
            f"({why_no_attention(model)})"
        )
    context = model.config.context_length
    if context < 4:
        raise UserError(f"a context of {context} is too short: two copies of 2 tokens need 4")
    length = min(context // 2, 128) if length is None else length
    if not 2 <= length <= context // 2:
        raise UserError(
            f"length (the tokens of each copy, --length) must be 2 to {context // 2} (two "
            f"copies fill at most the context of {context}), got {length}"
        )
    return layers, length


@torch.no_grad()
def induction_scores(
    model: nn.Module,
    *,
    n_sequences: int = 16,
    length: int | None = None,
    n_tokens: int | None = None,
    seed: int = 0,
    copying: bool = True,
) -> InductionReport:
    """Scores of every head of a causal language model (forward(ids) -> (logits, loss)) on
    repeated random tokens. length: of each copy (default: half the context, at most 128);
    n_tokens: draw ids below this (default: the model's vocabulary)."""
    layers, length = _scored_layers(model, length)
    vocab_size = model.config.vocab_size
    n_tokens = vocab_size if n_tokens is None else n_tokens
    if not 1 <= n_tokens <= vocab_size:
        raise UserError(f"n_tokens must be 2 to the vocabulary size {vocab_size}, got {n_tokens}")
    if n_tokens == 1:  # every position the same token: no prefix to match, no rank (0/0)
        raise UserError("induction scores need 2 or more token values to draw from, got 1")
    if n_sequences < 1:
        raise UserError(f"n_sequences must be at least 1, got {n_sequences}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    total, parts = 0, []
    with eval_mode(model):
        while total < n_sequences:  # a chunk at a time: memory bounded, whatever N is
            count = min(CHUNK, n_sequences - total)
            tokens = repeated_random_tokens(count, length, n_tokens, generator)
            parts.append((count, _chunk_scores(model, tokens.to(device), layers, length, copying)))
            total += count

    def mean(i: int):
        values = [part[i] for _, part in parts]
        if values[0] is None:
            return None
        return sum(count * value for (count, _), value in zip(parts, values, strict=True)) / total

    return InductionReport([layer.name for layer in layers], mean(0), mean(1), mean(2), mean(3))


def _chunk_scores(model, tokens, layers, length, copying) -> tuple:
    """Prefix matching (layers, H), copying (layers, H) or None, and the mean losses over each
    copy, of one chunk of sequences."""
    with capture(model) as seen:
        logits, _ = model(tokens)
    prefix = torch.stack([prefix_matching(seen.attention[l.name], tokens, length) for l in layers])
    losses = position_losses(logits, tokens)  # (N, 2L-1)
    copy = _copying(model, tokens, layers, seen, length) if copying else None
    first, second = float(losses[:, : length - 1].mean()), float(losses[:, length:].mean())
    return prefix.cpu(), copy, first, second


def _copying(model, tokens, layers, seen, start) -> torch.Tensor | None:
    """(layers, H) copying scores (module docstring), from one ablated forward pass per head."""
    points = [p for p in hook_points(model) if not p.endswith(WEIGHTS)]
    readout = getattr(model, "readout", None)
    if readout is None or not points:
        return None
    final = seen.streams[points[-1]]  # (N, T, D), the stream the readout reads
    logits = readout(final)
    targets = tokens[:, start + 1 :]  # the next token of each second-copy position
    scores = torch.zeros(len(layers), seen.attention[layers[0].name].size(1))
    for i, layer in enumerate(layers):
        after = layer.name.rpartition(".")[0] + ".stream_after_mixer"
        if after not in seen.streams:
            return None
        for head in range(scores.size(1)):
            patch = {f"{layer.name}.{HEADS}": ablate_heads([head])}
            with capture(model, attention=False, patches=patch, only=[after]) as ablated:
                model(tokens)
            output = seen.streams[after] - ablated.streams[after]  # the head's output (N, T, D)
            effect = (logits - readout(final - output))[:, start:-1]  # (N, L-1, V)
            target = effect.gather(-1, targets[..., None])
            rank = (effect < target).float().sum(-1) / (effect.size(-1) - 1)
            scores[i, head] = rank.mean()
    return scores


def induction_probe(model: nn.Module) -> dict[str, float]:
    """For the Trainer's probes: the best prefix-matching score and the in-context score."""
    report = induction_scores(model, n_sequences=8, copying=False)
    return {"induction_score": report.best[2], "in_context_score": report.in_context_score}
