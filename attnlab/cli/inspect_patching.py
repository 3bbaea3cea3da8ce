"""`attnlab inspect patching CKPT --clean TEXT --corrupt TEXT --target T`: activation patching.

The corrupted text run again with one activation taken from the clean run, for each residual
stream at each position and for each attention head's output; the share of the two texts' gap
in the metric (the logit of --target, less that of --versus, at --position) each restores is
printed, the largest first (interpretability/patching.py).
"""

from __future__ import annotations

import argparse
import sys

from attnlab.cli.options import print_json
from attnlab.errors import UserError

SMALL_GAP = 0.01  # a logit difference below it: a note that the shares magnify small effects
RESTORED = "restored = (patched - corrupt) / (clean - corrupt): 1 = the whole gap, 0 = nothing"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`inspect patching`'s own flags (CKPT, --device and --png: inspect's)."""
    parser.add_argument("--clean", required=True, metavar="TEXT", help="the clean text")
    parser.add_argument(
        "--corrupt",
        required=True,
        metavar="TEXT",
        help="the corrupted text: as many tokens as --clean, a few of them other",
    )
    parser.add_argument(
        "--target",
        dest="target_token",
        required=True,
        metavar="TOKEN",
        help="the token whose logit is the metric, as text of one token",
    )
    parser.add_argument(
        "--versus",
        metavar="TOKEN",
        help="the metric is the logit difference target - this token's logit (default: the "
        "target's logit alone)",
    )
    parser.add_argument(
        "--position",
        type=int,
        default=-1,
        metavar="N",
        help="position whose logits (its prediction of the next token) are read, from 0 "
        "(default: the last)",
    )
    parser.add_argument(
        "--top", type=int, default=10, metavar="K", help="patches printed of each kind, largest"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (full maps)")


def patching_command(args: argparse.Namespace) -> int:
    from attnlab.cli.inspect import _open
    from attnlab.cli.inspect_attribution import logit_tokens, position_in
    from attnlab.interpretability.inputs import token_labels
    from attnlab.interpretability.patching import activation_patching
    from attnlab.models.registry import GENERATE

    if args.top < 1:
        raise UserError(f"--top must be >= 1, got {args.top}")
    checkpoint = _open(args, GENERATE)
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    target, versus = logit_tokens(tokenizer, args.target_token, args.versus)
    clean, corrupt = (_encode(checkpoint, flag, text) for flag, text in
                      (("--clean", args.clean), ("--corrupt", args.corrupt)))  # fmt: skip
    if len(clean) != len(corrupt):
        raise UserError(
            f"--clean is {len(clean)} token(s) and --corrupt {len(corrupt)}: patching pairs their "
            "positions, so give texts of the same token length"
        )
    position = position_in(args.position, len(clean))
    device = next(model.parameters()).device
    clean_ids, corrupt_ids = (_tensor(ids, device) for ids in (clean, corrupt))
    report = activation_patching(model, clean_ids, corrupt_ids, target, versus, position, True)
    labels = token_labels(tokenizer, clean)
    metric = " - ".join(f"logit of {tokenizer.token_text(i)!r}" for i in (target, versus)
                        if i is not None)  # fmt: skip
    summary = {
        "tokens": labels,
        "corrupt_tokens": token_labels(tokenizer, corrupt),
        "differ": [t for t, (a, b) in enumerate(zip(clean, corrupt, strict=True)) if a != b],
        "position": position,
        "metric": metric,
        "clean": report.clean,
        "corrupt": report.corrupt,
        "gap": report.gap,
        "rows": report.rows,
        "residual": report.restored(report.residual).tolist(),
        "heads": None if report.heads is None else report.restored(report.heads).tolist(),
    }
    out = sys.stderr if args.json else None
    if report.heads is None:
        mixer = getattr(getattr(model, "config", None), "mixer", "its")
        print(f"attnlab: note: no attention heads to patch ({mixer} token mixers): the residual "
              "stream alone", file=sys.stderr)  # fmt: skip
    if abs(report.gap) < SMALL_GAP:
        print(f"attnlab: note: the texts' metrics differ by only {report.gap:+.2g}: a share of "
              "so small a gap magnifies small effects; a corruption that moves the prediction "
              "more reads clearer", file=sys.stderr)  # fmt: skip
    if args.json:
        print_json(summary)
    else:
        _print(summary, args.top)
    if args.png:
        print(f"wrote {_png(args.png, summary)}", file=out)
    return 0


def _tensor(ids: list[int], device):
    import torch

    return torch.tensor([ids], dtype=torch.long, device=device)


def _encode(checkpoint, flag: str, text: str) -> list[int]:
    """A text's token ids; a UserError for one of no tokens or longer than the model reads."""
    from attnlab.cli.options import user_text
    from attnlab.tokenizers.char import UnseenCharacters

    try:
        ids = checkpoint.tokenizer.encode(user_text(text))
    except UnseenCharacters as error:  # "text has ...": say which
        raise UserError(f"{flag} {error}") from None
    context = checkpoint.model.config.context_length
    if not ids:
        raise UserError(f"{flag} encodes to no tokens: give a text to look at")
    if len(ids) > context:
        raise UserError(
            f"{flag} is {len(ids)} tokens, longer than the {context} the model reads: shorten it"
        )
    return ids


def _print(summary: dict, top: int) -> None:
    from attnlab.interpretability.plots import padded, short

    position, tokens, differ = summary["position"], summary["tokens"], set(summary["differ"])
    print(f"metric: the {summary['metric']} at position {position} ({short(tokens[position])!r})")
    print(f"clean {summary['clean']:+.4f}, corrupt {summary['corrupt']:+.4f}: gap "
          f"{summary['gap']:+.4f}\n{RESTORED}")  # fmt: skip
    cells = [
        (value, f"{row:<12}{t:>8}  {padded(short(tokens[t], 10), 10)}{'*' if t in differ else ''}")
        for row, values in zip(summary["rows"], summary["residual"], strict=True)
        for t, value in enumerate(values)
    ]
    _table(f"{'stream':<12}{'position':>8}  {'token':<11}", cells, top, "(* the texts differ)")
    if summary["heads"] is not None:
        cells = [(value, f"L{i}H{h}") for i, row in enumerate(summary["heads"])
                 for h, value in enumerate(row) if value == value]  # fmt: skip
        _table(f"{'head':<33}", cells, top, "(all positions)")


def _table(header: str, cells: list[tuple[float, str]], top: int, note: str) -> None:
    """The `top` cells that restore most (in size), largest first."""
    from attnlab.interpretability.plots import padded, signed

    print(f"\n{header}{'restored':>10}  {note}")
    for value, where in sorted(cells, key=lambda cell: -abs(cell[0]))[:top]:
        print(f"{padded(where, 33)}{signed(value):>10}")
    if len(cells) > top:
        print(f"({len(cells) - top} smaller not shown: --top, or --json for all)")


def _png(png, summary: dict):
    """The residual-stream map (streams x positions) beside the heads' (layers x heads), on one
    colour scale, the positions where the texts differ marked *."""
    import torch

    from attnlab.interpretability.plots import Heatmap, save_heatmaps, short, signed_cells

    maps = {"residual": torch.tensor(summary["residual"])}
    if summary["heads"] is not None:
        maps["heads"] = torch.tensor(summary["heads"])
    finite = torch.cat([m[m.isfinite()] for m in maps.values()])
    limit = max(float(finite.abs().max()) if finite.numel() else 0.0, 1.0)
    scale = dict(cmap="RdBu_r", vmin=-limit, vmax=limit, scale="share of the gap restored")
    differ = set(summary["differ"])
    positions = [f"{'*' if t in differ else ''}{short(token)}"
                 for t, token in enumerate(summary["tokens"])]  # fmt: skip
    gap = f"{summary['metric']} at position {summary['position']}, gap {summary['gap']:+.3f}"
    panels = [Heatmap(maps["residual"], f"residual stream patched\n({gap})", summary["rows"],
                      positions, "position (clean token; * where the texts differ)", "stream",
                      **scale)]  # fmt: skip
    if "heads" in maps:
        values = maps["heads"]
        panels.append(Heatmap(
            values, "each head's output patched, at all positions",
            [str(i) for i in range(len(values))], [str(h) for h in range(values.size(1))],
            "head", "layer", cells=signed_cells(values, float(values.nan_to_num().abs().max())),
            **scale,
        ))  # fmt: skip
    return save_heatmaps(png, panels, columns=len(panels))
