"""`attnlab inspect layers|heads CKPT`: the loss of a language model with parts of it taken out.

Both score the same windows of text (the validation tenth of a long enough text: the run's own
data unless given --data, as for `attnlab evaluate`), so their baselines agree and their changes
can be read side by side: `layers` drops, duplicates and swaps whole layers; `heads` zeroes one
attention head at a time.
"""

from __future__ import annotations

import argparse
import math
import sys

from attnlab.cli.options import print_json
from attnlab.errors import UserError

WINDOWS, TOKENS = 32, 8192  # the default: 32 windows, at most 8,192 tokens where they are long


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `inspect layers` and `inspect heads` share (CKPT, --device, --png: inspect's)."""
    parser.add_argument(
        "--data",
        help="text file, folder (its *.txt), DIR:GLOB, stdlib or task:NAME (default: the run's "
        "own data, as for evaluate)",
    )
    parser.add_argument(
        "--windows",
        type=int,
        help=f"context windows evaluated (default: {WINDOWS}, or for a context over "
        f"{TOKENS // WINDOWS} tokens as many as hold {TOKENS:,} tokens)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _checkpoint(args):
    """The language model to score, once --windows, its kind and its data are known good."""
    from attnlab.cli.checkpoint import check_serves
    from attnlab.cli.inspect import _open
    from attnlab.cli.runs import run_data
    from attnlab.models.registry import GENERATE

    if args.windows is not None and args.windows < 1:
        raise UserError(f"--windows must be >= 1, got {args.windows}")
    check_serves(f"inspect {args.what}", GENERATE, args.checkpoint)  # before its run is looked for
    args.data = run_data(args.checkpoint, args.data, required=True)  # --png spares it too
    checkpoint = _open(args, GENERATE)
    if args.windows is None:  # a long context's windows cost hours on a CPU: fewer of them
        args.windows = max(1, min(WINDOWS, TOKENS // checkpoint.model.config.context_length))
    return checkpoint


def _loss(args, checkpoint, passes: int):
    """A function of no arguments: the model's mean loss per scored target on --windows windows
    of --data, read and tokenized once (every call scores the same tokens); a progress bar on a
    terminal counts its `passes` calls (a big model takes a while)."""
    import torch

    from attnlab.cli.options import resolve_data_path
    from attnlab.cli.runs import note, run_train_config
    from attnlab.data.corpus import Corpus
    from attnlab.data.tasks import evaluation_batches
    from attnlab.data.text import TextSplits, sequential_windows, tokenize_cached
    from attnlab.progress import progress_bar
    from attnlab.training.config import TrainConfig
    from attnlab.training.sources import IGNORE_INDEX

    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    length = model.config.context_length
    if args.data.startswith("task:"):  # scored where it asks
        # the sequences its training evaluated on (seed + 1), never those it trained on (seed)
        seed = run_train_config(args.checkpoint).get("seed", TrainConfig.seed) + 1
        batches = evaluation_batches(args.data, -(-args.windows // 16), 16, length, seed)
        x, y = (torch.cat(part)[: args.windows] for part in zip(*batches, strict=True))
        windows = zip(x.split(16), y.split(16), strict=True)
    else:
        tokens = tokenize_cached(Corpus(resolve_data_path(args.data), note), tokenizer)
        tokens = TextSplits.from_tokens(tokens).val if len(tokens) > 20 * (length + 1) else tokens
        tokens = tokens[: args.windows * length + 1]
        if len(tokens) <= length:
            raise UserError(
                f"{args.data} has {len(tokens)} token(s), fewer than one window of {length + 1}"
            )
        windows = sequential_windows(tokens, length, 16)
    device = next(model.parameters()).device
    batches = [(x.to(device), y.to(device)) for x, y in windows]
    scored = [int((y != IGNORE_INDEX).sum()) for _, y in batches]

    bar = progress_bar(True, total=passes, desc=f"inspect {args.what}", unit=" passes", leave=False)

    def loss() -> float:  # the mean over scored targets
        with torch.no_grad():
            losses = [model(x, y)[1].item() * n for (x, y), n in zip(batches, scored, strict=True)]
        bar.update(1)
        if bar.n >= passes:
            bar.close()
        return sum(losses) / sum(scored)

    return loss


def _wrote(args, path) -> None:
    """Say which plot was written: on stderr under --json, whose stdout is the one object."""
    print(f"wrote {path}", file=sys.stderr if args.json else None)


# ------------------------------------------------------------------------------------ layers
def layers_command(args: argparse.Namespace) -> int:
    from attnlab.interpretability.surgery import arrangements, block_stack, layer_surgery

    checkpoint = _checkpoint(args)
    n_layers = len(block_stack(checkpoint.model))  # refused before the data is read
    loss = _loss(args, checkpoint, 1 + len(arrangements(n_layers)))
    baseline, results = layer_surgery(checkpoint.model, loss)
    if args.json:
        print_json({"baseline": baseline, "loss": results})
    else:
        print(f"{'baseline':<14}{baseline:8.4f}")
        for name, value in results.items():
            print(f"{name:<14}{value:8.4f}  {value - baseline:+8.4f}")
    if args.png:
        _wrote(args, _layers_png(args.png, baseline, results, n_layers))
    return 0


def _layers_png(png, baseline, results, n_layers):
    from attnlab.interpretability.plots import Heatmap, save_heatmaps
    from attnlab.interpretability.surgery import change_maps

    swaps, single = change_maps(baseline, results, n_layers)
    layers = [str(i) for i in range(n_layers)]
    limit = float(max(swaps.nan_to_num().abs().max(), single.abs().max(), 1e-6))
    common = dict(cmap="RdBu_r", vmin=-limit, vmax=limit, scale="loss change (nats per token)")
    swapped = f"loss change, layers swapped\n(baseline {baseline:.3f}; grey: none)"
    panels = [Heatmap(swaps, swapped, layers, layers, "layer", "layer", **common,
                      empty="one layer: no pair to swap"),
              Heatmap(single, "loss change, one layer dropped or duplicated",
                      ["drop", "duplicate"], layers, "layer", **common)]  # fmt: skip
    return save_heatmaps(png, panels, columns=2)


# ------------------------------------------------------------------------------------- heads
def heads_command(args: argparse.Namespace) -> int:
    from attnlab.interpretability.capture import attention_groups, require_attention
    from attnlab.interpretability.surgery import head_ablation

    checkpoint = _checkpoint(args)
    layers = require_attention(checkpoint.model, args.checkpoint)  # before the data is read
    heads = sum(checkpoint.model.get_submodule(layer.name).n_heads for layer in layers)
    baseline, results = head_ablation(checkpoint.model, _loss(args, checkpoint, 1 + heads))
    changes = {  # group title -> (its layers' indices, loss changes (layers, heads))
        title: ([layer.index for layer in layers],
                [[value - baseline for value in results[layer.name]] for layer in layers])
        for title, layers in attention_groups(checkpoint.model).items()
    }  # fmt: skip
    if args.json:
        print_json({"baseline": baseline, "loss": results})
    else:
        _print_heads(baseline, changes)
    if args.png:
        _wrote(args, _heads_png(args.png, baseline, changes))
    return 0


def _print_heads(baseline: float, changes) -> None:
    print(f"baseline loss {baseline:.4f} nats per token")
    for title, (layers, rows) in changes.items():
        print(f"loss change with one head zero-ablated ({title}), layers by heads")
        print("layer " + "".join(f"{h:>9}" for h in range(max(map(len, rows)))))
        for index, row in zip(layers, rows, strict=True):
            print(f"{index:>5} " + "".join(f"{round(v, 4) + 0.0:+9.4f}" for v in row))  # no -0
        cells = [(v, i, h) for i, row in zip(layers, rows, strict=True) for h, v in enumerate(row)]
        cells = [cell for cell in cells if math.isfinite(cell[0])]  # max() is lost among NaNs
        if cells and max(cells)[0] > 0:
            change, index, head = max(cells)
            print(f"most needed: layer {index}, head {head} (loss {change:+.4f} without it)")
        elif cells:
            print("most needed: none (no head's ablation raises the loss)")


def _heads_png(png, baseline, changes):
    import torch

    from attnlab.interpretability.plots import Heatmap, save_heatmaps, signed_cells

    maps = {title: torch.tensor(rows) for title, (_, rows) in changes.items()}
    finite = torch.cat([m[m.isfinite()] for m in maps.values()])  # a model that overflows: NaN
    limit = max(float(finite.abs().max()) if finite.numel() else 0.0, 1e-6)
    panels = [
        Heatmap(
            values,
            (f"{title}: " if len(maps) > 1 else "")
            + f"loss change, one head zero-ablated\n(baseline {baseline:.3f} nats per token)",
            [str(i) for i in changes[title][0]],
            [str(h) for h in range(values.size(1))],
            "head",
            "layer",
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            cells=signed_cells(values, limit),
            scale="loss change (nats per token)",
        )
        for title, values in maps.items()
    ]
    return save_heatmaps(png, panels, columns=len(panels))
