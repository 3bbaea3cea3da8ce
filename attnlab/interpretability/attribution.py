"""Direct logit attribution: a logit split into the direct shares of the parts of the model that
wrote into the residual stream (Elhage et al. 2021, "A Mathematical Framework for Transformer
Circuits"; TransformerLens's logit attribution).

Dimensions: T positions, D model width, H heads, Dh head width, L layers, C components.

In a pre-norm model the stream the final norm reads is a sum: the token embeddings, the position
embeddings, then what each block's token mixer and feed-forward (where it has one) added. An
attention layer's addition is a sum too: each head's output times its columns of the output
projection, plus that projection's bias. The final norm is linear but for its scale,
1/√(variance + eps); held at the value the whole stream gave (the standard linearisation), a
part's share of a token's logit is

    (part, centred as LayerNorm centres (RMSNorm does not), / scale · gain) · the token's row of
    the output head,

and the shares plus the norm's bias (· that row) sum to the model's logit, to float rounding
(Attribution.error). A share is direct: what a part changes in the later layers' inputs, and so
in their outputs, is theirs; ablation measures the whole effect (surgery.py, `inspect heads`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnlab.errors import UserError
from attnlab.interpretability.capture import HEADS, capture
from attnlab.layers.contracts import eval_mode
from attnlab.layers.normalization import RMSNorm

STREAMS = ("stream_in", "stream_after_mixer", "stream_out")  # each block's, read (hooks.py)
LAYER = "blocks.{}.token_mixer"  # an attention layer's path: its key in Recording.heads


@dataclass
class Attribution:
    """One text's attribution, at every position (the computation is in float64)."""

    components: list[str]  # "embed", "pos", "L0H0", ..., "L0 attn bias", "L0 ffn", ...
    contributions: torch.Tensor  # (C, T): each component's direct share of the logit
    heads: torch.Tensor  # (L, H, T): the heads' rows of `contributions`; NaN in other layers
    norm_bias: torch.Tensor  # (T,): the final norm's bias · the token's row (0 for RMSNorm)
    logits: torch.Tensor  # (T,): the model's own logit (or logit difference), float64
    targets: torch.Tensor  # (T,): the token whose logit is split, at each position
    versus: int | None  # the token whose logit is subtracted, for a logit difference

    @property
    def error(self) -> torch.Tensor:
        """(T,): the model's logit less the shares and the norm's bias (float rounding only)."""
        return self.logits - self.contributions.sum(0) - self.norm_bias


@torch.no_grad()
def direct_logit_attribution(
    model: nn.Module, ids: torch.Tensor, target: int | None = None, versus: int | None = None
) -> Attribution:
    """Attribution of the logit of `target` at each position of ids (1, T) (batch of one).

    target: default, the text's next token, and at the last position (which has none) the
    model's top prediction. versus: a token whose logit is subtracted from the target's: the
    logit difference, the measure most used (it cancels what raises every logit alike).
    """
    blocks, norm = _parts(model)
    if ids.dim() != 2 or len(ids) != 1:
        raise ValueError(f"attribution reads token ids (1, T), got shape {tuple(ids.shape)}")
    vocab = model.output_head.weight.size(0)
    for name, token in (("target", target), ("versus", versus)):
        if token is not None and not 0 <= token < vocab:
            raise ValueError(f"{name} {token} is outside the vocabulary (0 to {vocab - 1})")
    streams = [f"blocks.{i}.{leaf}" for i in range(len(blocks)) for leaf in STREAMS]
    heads = [f"{LAYER.format(i)}.{HEADS}" for i, block in enumerate(blocks) if _has_heads(block)]
    with (
        eval_mode(model),
        capture(model, attention=False, heads=True, only=streams + heads) as seen,
    ):
        logits, _ = model(ids)
    logits, ids = logits[0].cpu().double(), ids[0].cpu()  # (T, V), (T,)
    if target is None:
        targets = torch.cat([ids[1:], logits[-1:].argmax(-1)])
    else:
        targets = torch.full_like(ids, target)
    unembed = _float64(model.output_head.weight)  # (V, D)
    row, measured = unembed[targets], logits.gather(-1, targets[:, None])[:, 0]  # (T, D), (T,)
    if versus is not None:
        row, measured = row - unembed[versus], measured - logits[:, versus]
    stream = {path: _float64(seen.streams[path][0]) for path in streams}  # (T, D) each
    direction, norm_bias = _read_direction(norm, stream[streams[-1]], row)  # (T, D), (T,)
    parts, grid = _shares(model, ids, stream, seen.heads, direction)
    contributions = torch.stack(list(parts.values()))
    return Attribution(list(parts), contributions, grid, norm_bias, measured, targets, versus)


def _shares(model: nn.Module, ids, stream: dict, heads: dict, direction: torch.Tensor):
    """Each component's share (T,) by name, and the heads' as a grid (L, H, T)."""

    def share(part: torch.Tensor) -> torch.Tensor:  # (T, D) -> (T,)
        return (part * direction).sum(-1)

    tokens = _float64(model.token_embedding.weight)[ids]  # (T, D)
    parts = {"embed": share(tokens)}
    if getattr(model, "position_embedding", None) is not None:
        parts["pos"] = share(stream["blocks.0.stream_in"] - tokens)
    rows = []  # (H, T) per layer: its heads' shares; None for a layer without heads
    for i, block in enumerate(model.blocks):
        before, after = stream[f"blocks.{i}.stream_in"], stream[f"blocks.{i}.stream_after_mixer"]
        if _has_heads(block):
            attention = block.token_mixer
            rows.append(_head_shares(attention, heads[LAYER.format(i)][0], direction))
            parts.update({f"L{i}H{h}": head for h, head in enumerate(rows[-1])})
            if attention.output_projection.bias is not None:
                parts[f"L{i} attn bias"] = direction @ _float64(attention.output_projection.bias)
        else:  # another mixer: its whole addition to the stream
            rows.append(None)
            parts[f"L{i} mixer"] = share(after - before)
        if block.feedforward is not None:  # a block without one (Mamba's) adds no more
            parts[f"L{i} ffn"] = share(stream[f"blocks.{i}.stream_out"] - after)
    n_heads = max((len(r) for r in rows if r is not None), default=0)
    missing = torch.full((n_heads, len(ids)), torch.nan, dtype=torch.float64)
    return parts, torch.stack([missing if r is None else r for r in rows])


def _has_heads(block: nn.Module) -> bool:
    return hasattr(block.token_mixer, HEADS)


def _float64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().double()


def _head_shares(attention: nn.Module, outputs: torch.Tensor, direction: torch.Tensor):
    """(H, T): each head's output (H, T, Dh) through its columns of the output projection, read
    along direction (T, D)."""
    n_heads, _, head_dim = outputs.shape
    columns = _float64(attention.output_projection.weight).view(-1, n_heads, head_dim)  # (D, H, Dh)
    return torch.einsum("htk,dhk,td->ht", _float64(outputs), columns, direction)


def _read_direction(norm: nn.Module, final: torch.Tensor, row: torch.Tensor):
    """What a part (T, D) is dotted with to give its share: the token's row through the final
    norm held at its scale for `final` (T, D); and the norm's bias · row (T,)."""
    gain = _float64(norm.weight)
    if isinstance(norm, RMSNorm):
        scale = (final.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()  # (T, 1)
        return gain * row / scale, torch.zeros(len(row), dtype=row.dtype)
    scale = (final.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    read = gain * row
    # centring is a symmetric projection: (part - mean) · read == part · (read - mean)
    direction = (read - read.mean(-1, keepdim=True)) / scale
    bias = (
        torch.zeros(len(row), dtype=row.dtype) if norm.bias is None else row @ _float64(norm.bias)
    )
    return direction, bias


def _parts(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    """The blocks and the final norm, or a UserError saying why the logit is no sum of parts."""
    name = type(model).__name__
    blocks, norm = getattr(model, "blocks", None), getattr(model, "final_norm", None)
    if not all(hasattr(model, a) for a in ("output_head", "token_embedding")) or blocks is None:
        raise UserError(
            f"direct logit attribution needs a language model of residual blocks between token "
            f"embeddings and an output head (a GPT); {name} is not one"
        )
    if not isinstance(norm, nn.LayerNorm | RMSNorm) or not all(b.prenorm for b in blocks):
        raise UserError(
            f"direct logit attribution needs pre-norm blocks and a final norm, which make the "
            f"stream the head reads a sum of parts; this {name} is post-norm (prenorm = false)"
        )
    return blocks, norm
