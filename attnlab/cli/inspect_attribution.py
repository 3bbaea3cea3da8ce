"""`attnlab inspect attribution CKPT --text TEXT`: direct logit attribution at one position.

The logit of a token (by default the text's next token; at the last position, which has none, the
model's top prediction), or with --versus the difference of two tokens' logits, split into the
direct shares of the embeddings, each attention head, each layer's output-projection bias and
each feed-forward (interpretability/attribution.py). The largest shares are printed, with their
sum beside the model's own logit.
"""

from __future__ import annotations

import argparse
import sys

from attnlab.cli.options import print_json, user_text
from attnlab.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`inspect attribution`'s own flags (CKPT, --device, --png and --text: inspect's)."""
    parser.add_argument(
        "--target",
        dest="target_token",
        metavar="TOKEN",
        help="the token whose logit is split, as text of one token (default: the next token of "
        "the text; at the last position the model's top prediction)",
    )
    parser.add_argument(
        "--versus",
        metavar="TOKEN",
        help="split the logit difference target - this token's logit (default: the logit alone)",
    )
    parser.add_argument(
        "--position",
        type=int,
        default=-1,
        metavar="N",
        help="position looked at, from 0 (default: the last)",
    )
    parser.add_argument("--top", type=int, default=10, metavar="K", help="largest shares printed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def attribution_command(args: argparse.Namespace) -> int:
    from attnlab.cli.inspect import _inputs, _open
    from attnlab.interpretability.attribution import direct_logit_attribution
    from attnlab.interpretability.inputs import TEXT
    from attnlab.models.registry import GENERATE

    if args.top < 1:
        raise UserError(f"--top must be >= 1, got {args.top}")
    checkpoint = _open(args, GENERATE)
    tokenizer = checkpoint.tokenizer
    target, versus = logit_tokens(tokenizer, args.target_token, args.versus)
    inputs = _inputs(checkpoint, args)
    tokens = inputs.sequences[TEXT]
    position = position_in(args.position, len(tokens))
    report = direct_logit_attribution(checkpoint.model, inputs.args[0], target, versus)
    shares = dict(zip(report.components, report.contributions[:, position].tolist(), strict=True))
    measured = _logit(tokenizer, report, position)
    summary = {
        "tokens": tokens,
        "position": position,
        "target": tokenizer.token_text(int(report.targets[position])),
        "versus": None if versus is None else tokenizer.token_text(versus),
        "logit": float(report.logits[position]),
        "sum": float(report.logits[position] - report.error[position]),
        "norm_bias": float(report.norm_bias[position]),
        "components": shares,
        "heads": report.heads[:, :, position].tolist(),
    }
    if args.json:
        print_json(summary)
    else:
        _print(summary, measured, _why(target, position, len(tokens)), args.top)
    if args.png:
        out = sys.stderr if args.json else None
        print(f"wrote {_png(args.png, report, shares, position, measured)}", file=out)
    return 0


def logit_tokens(tokenizer, target: str | None, versus: str | None) -> tuple[int | None, ...]:
    """The ids of --target and --versus, each given as the text of one token (None: not given);
    a UserError unless each is one token, and two different ones."""
    ids = tuple(_one_token(tokenizer, flag, text) for flag, text in
                (("--target", target), ("--versus", versus)))  # fmt: skip
    if ids[1] is not None and ids[1] == ids[0]:
        raise UserError(
            f"--versus {versus!r} is the --target: their difference is 0 everywhere; "
            "give another token"
        )
    return ids


def _one_token(tokenizer, flag: str, text: str | None) -> int | None:
    """The id of a token given as its text; a UserError unless it encodes to exactly one."""
    from attnlab.tokenizers.char import UnseenCharacters

    if text is None:
        return None
    try:
        ids = tokenizer.encode(user_text(text))
    except UnseenCharacters as error:  # else "text has ...", as if --text's
        raise UserError(f"{flag} {text!r} has {error.unseen}: give one of its tokens") from None
    if len(ids) != 1:
        shown = ", ".join(repr(tokenizer.token_text(i)) for i in ids)
        raise UserError(
            f"{flag} {text!r} encodes to {len(ids)} tokens{f' ({shown})' if ids else ''}: "
            "give the text of one token"
        )
    return ids[0]


def position_in(position: int, length: int) -> int:
    """--position (from 0; negative: from the end) in a text of `length` tokens, from 0; a
    UserError when the text has no such position."""
    if not -length <= position < length:
        raise UserError(
            f"--position {position} is out of range: the text has {length} token(s), "
            f"positions 0 to {length - 1}"
        )
    return position % length


def _logit(tokenizer, report, position: int) -> str:
    """What was split, in words: "logit of 'e'", or "logit of 'e' - logit of 'a'"."""
    said = f"logit of {tokenizer.token_text(int(report.targets[position]))!r}"
    if report.versus is not None:
        said += f" - logit of {tokenizer.token_text(report.versus)!r}"
    return said


def _why(target: int | None, position: int, length: int) -> str:
    if target is not None:
        return "--target"
    return "the model's top prediction" if position == length - 1 else "the next token"


def _print(summary: dict, measured: str, why: str, top: int) -> None:
    from attnlab.interpretability.plots import signed

    position = summary["position"]
    print(f"position {position}, token {summary['tokens'][position]!r}: the {measured} "
          f"(target: {why})")  # fmt: skip
    ranked = sorted(summary["components"].items(), key=lambda item: -abs(item[1]))
    print(f"{'component':<14}{'direct share':>12}")
    for name, value in ranked[:top]:
        print(f"{name:<14}{signed(value):>12}")
    if len(ranked) > top:
        print(f"({len(ranked) - top} smaller share(s) not shown: --top, or --json for all)")
    shares, bias = summary["sum"] - summary["norm_bias"], summary["norm_bias"]
    print(f"all shares {signed(shares)}, final norm's bias {signed(bias)}: sum "
          f"{signed(summary['sum'])}, the model's {signed(summary['logit'])}")  # fmt: skip


def _png(png, report, shares: dict, position: int, measured: str):
    """A layers x heads heatmap of the heads' shares beside a one-column map of the other
    components' (embeddings, biases, feed-forwards, other mixers), on one colour scale."""
    import torch

    from attnlab.interpretability.plots import Heatmap, save_heatmaps, signed_cells

    heads = report.heads[:, :, position]  # (L, H)
    layers, n_heads = heads.shape
    head_names = {f"L{i}H{h}" for i in range(layers) for h in range(n_heads)}
    others = {name: v for name, v in shares.items() if name not in head_names}
    widest = max(abs(v) for v in shares.values()) or 1.0
    scale = dict(cmap="RdBu_r", vmin=-widest, vmax=widest, scale=f"direct share of the {measured}")
    panels = []
    if heads.numel():
        panels.append(Heatmap(
            heads, f"attention heads, position {position}", [str(i) for i in range(layers)],
            [str(h) for h in range(n_heads)], "head", "layer",
            cells=signed_cells(heads, widest), **scale,
        ))  # fmt: skip
    column = torch.tensor(list(others.values()))[:, None]
    panels.append(Heatmap(
        column, "the other components", list(others), [""], ylabel="component",
        cells=signed_cells(column, widest), **scale,
    ))  # fmt: skip
    return save_heatmaps(png, panels, columns=len(panels))
