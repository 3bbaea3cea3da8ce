"""`attnlab inspect WHAT CKPT`: look inside a checkpoint.

    attention    the attention of every layer and head over a text: an interactive HTML page
                 (one self-contained file) and, with --png, static heatmaps
    induction    induction-head scores on repeated random tokens (Olsson et al. 2022)
    lens         the logit lens: each layer's top prediction at each position
    layers       layer surgery: the loss with layers dropped, duplicated or swapped
    heads        head ablation: the loss with each attention head zeroed in turn
    attribution  direct logit attribution: each head's and layer's share of a token's logit
    patching     activation patching: what restores a clean text's prediction to a corrupted one

A text longer than the model reads is cut to fit, with a note on stderr.
"""

from __future__ import annotations

import argparse
import sys

from attnlab.cli import inspect_attribution, inspect_patching, inspect_surgery
from attnlab.cli.options import add_device_flag, check_seed, print_json
from attnlab.devices import pick_device
from attnlab.errors import UserError

WHAT = {
    "attention": "an interactive HTML view (and PNG heatmaps) of every head's attention",
    "induction": "induction-head scores of a language model on repeated random tokens",
    "lens": "the logit lens: each layer's top prediction at each position of a text",
    "layers": "layer surgery: the loss change with layers dropped, duplicated or swapped",
    "heads": "which heads matter: the loss change with each attention head zero-ablated alone",
    "attribution": "direct logit attribution: each head's and layer's share of a token's logit",
    "patching": "activation patching: how much of the clean text's logit difference each "
    "activation restores in a corrupted one",
}
EXAMPLES = {  # shown under each one's --help
    "attention": 'attention runs/shakespeare_char --text "To be, or not to be" --out view.html',
    "induction": "induction runs/shakespeare_char --png induction.png",
    "lens": 'lens runs/shakespeare_char --text "To be, or not to be" --png lens.png',
    "layers": "layers runs/shakespeare_char --png layers.png\n\nHeads one at a time: `attnlab "
    "inspect heads`. Several at once, or activations patched,\nin Python: capture(model, "
    "patches=...) and ablate_heads (attnlab.interpretability;\ntutorial 8; docs/reference.md, "
    "Looking inside).",
    "heads": "heads runs/shakespeare_char --png heads.png",
    "attribution": 'attribution runs/shakespeare_char --text "To be, or not to b" --target e '
    "--versus a --png dla.png",
    "patching": 'patching runs/shakespeare_char --clean "To be, or not to b" --corrupt "To be, '
    'or not so b" \\\n    --target e --versus a --png patching.png\n\nThe corrupted text is run '
    "with one activation (a residual stream at one position, a\nhead's output) taken from the "
    f"clean run;\n{inspect_patching.RESTORED}.",
}


def register(subparsers) -> None:
    from attnlab.cli import COMMANDS, HelpFormatter

    parser = subparsers.add_parser(
        "inspect", help=COMMANDS["inspect"][1], description=__doc__,
        formatter_class=HelpFormatter,
    )  # fmt: skip
    commands = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    handlers = {"attention": attention_command, "induction": induction_command,
                "lens": lens_command, "layers": inspect_surgery.layers_command,
                "heads": inspect_surgery.heads_command,
                "attribution": inspect_attribution.attribution_command,
                "patching": inspect_patching.patching_command}  # fmt: skip
    sub = {
        name: commands.add_parser(
            name,
            help=text,
            description=f"{text[0].upper()}{text[1:]}.\n\nexample:\n  attnlab inspect "
            + EXAMPLES[name],
            formatter_class=HelpFormatter,
        )  # fmt: skip
        for name, text in WHAT.items()
    }
    for name, command in sub.items():
        command.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory")
        add_device_flag(command, "cpu", "; one text is read sooner than a GPU starts")
        command.add_argument(
            "--png",
            metavar="FILE",
            help="also draw a PNG here, or the plot type its name ends in "
            "(.svg, .pdf, ...) (default: none)",
        )
        command.set_defaults(handler=handlers[name])
    for name in ("attention", "lens", "attribution"):
        sub[name].add_argument(
            "--text",
            help="the text to look at (required for a text model), cut to the model's context",
        )
    view = sub["attention"]
    view.add_argument("--out", default="attention.html", metavar="FILE", help="the HTML page")
    view.add_argument("--target", help="translation models: the target text (default: its own)")
    view.add_argument("--image", metavar="FILE", help="image models: the image to look at")
    view.add_argument("--layer", type=int, help="layer to show first (default: none)")
    view.add_argument("--head", type=int, help="head to show first (default: none)")
    view.add_argument(
        "--group",
        metavar="WORD",
        help="with --layer/--head on a model of several attentions: the first whose title holds "
        "WORD (an encoder-decoder's: encoder, decoder, cross) (default: the first with --layer)",
    )
    induction = sub["induction"]
    induction.add_argument("--length", type=int, help="tokens per copy (default: context/2, ≤128)")
    induction.add_argument("--sequences", type=int, default=16, help="random sequences scored")
    induction.add_argument("--seed", type=int, default=0, help="seed of the random tokens")
    induction.add_argument("--json", action="store_true", help="print one JSON object")
    sub["lens"].add_argument("--json", action="store_true", help="print one JSON object")
    for name in ("layers", "heads"):
        inspect_surgery.add_arguments(sub[name])
    inspect_attribution.add_arguments(sub["attribution"])
    inspect_patching.add_arguments(sub["patching"])


def _open(args, capability: str | None = None):
    """The checkpoint, once the files to write are known to be writable, --png a plot type and
    --out another file (before the slow work)."""
    from attnlab.cli.checkpoint import load_for
    from attnlab.cli.options import check_output
    from attnlab.figures import plot_format
    from attnlab.training.checkpoints import load_checkpoint

    outputs = {
        flag: check_output(
            f"--{flag}",
            getattr(args, flag),
            args.checkpoint,
            inputs={f"--{name}": getattr(args, name, None) for name in ("image", "data")},
        )
        for flag in ("png", "out")
        if getattr(args, flag, None) is not None
    }
    if len({path.resolve() for path in outputs.values()}) < len(outputs):
        raise UserError("--out and --png name the same file: give two")
    if args.png:
        plot_format(args.png)
    device = pick_device(args.device)
    if capability is None:
        return load_checkpoint(args.checkpoint, device)
    return load_for(f"inspect {args.what}", capability, args.checkpoint, device)


def _inputs(checkpoint, args):
    from attnlab.cli.options import user_text
    from attnlab.interpretability.inputs import model_inputs

    text = user_text(args.text) if args.text is not None else None
    inputs = model_inputs(
        checkpoint, text, target=getattr(args, "target", None), image=getattr(args, "image", None)
    )
    if inputs.dropped:
        print(
            f"attnlab: note: the input is {inputs.dropped} token(s) longer than the model reads; "
            "looking at the tokens that fit",
            file=sys.stderr,
        )
    return inputs


# ---------------------------------------------------------------------------------- attention
def attention_command(args: argparse.Namespace) -> int:
    import torch

    from attnlab.files import atomic_write_bytes
    from attnlab.interpretability.capture import attention_groups, capture, require_attention
    from attnlab.interpretability.viewer import render_html, viewer_data

    checkpoint = _open(args)
    model = checkpoint.model
    require_attention(model, args.checkpoint)
    groups = attention_groups(model)
    inputs = _inputs(checkpoint, args)
    with torch.no_grad(), capture(model, streams=False) as seen:
        model(*inputs.args)
    heads = seen.attention[next(iter(groups.values()))[0].name].size(1)
    selected = _selection(groups, heads, args.layer, args.head, args.group)
    data = viewer_data(str(args.checkpoint), groups, seen, inputs, selected)
    atomic_write_bytes(args.out, render_html(data).encode("utf-8"))
    print(f"wrote {args.out}")
    if args.png:
        print(f"wrote {_attention_png(args.png, data, groups, seen, selected)}")
    return 0


def _selection(groups, heads: int, layer: int | None, head: int | None, group: str | None):
    """(panel, layer, head) to show first, checked; None when neither is given."""
    if layer is None and head is None:
        if group is not None:
            raise UserError("--group chooses where --layer and --head are: give one of them")
        return None
    layer, head = layer or 0, head or 0
    panels = [(p, len(layers)) for p, (title, layers) in enumerate(groups.items())
              if group is None or group in title]  # fmt: skip
    if not panels:
        raise UserError(f"--group {group!r} is in none of the model's: {', '.join(groups)}")
    most = max(n for _, n in panels)
    if not 0 <= layer < most:
        owner = f"--group {group}" if group else "the model"
        raise UserError(f"--layer {layer} is out of range: {owner} has layers 0 to {most - 1}")
    if not 0 <= head < heads:
        raise UserError(f"--head {head} is out of range: the model has heads 0 to {heads - 1}")
    return next(p for p, n in panels if layer < n), layer, head


def _attention_png(png, data, groups, seen, selected):
    import torch

    from attnlab.interpretability.plots import Heatmap, save_head_grid, save_heatmaps, short

    if selected is None:
        weights = [
            (title, torch.stack([seen.attention[layer.name][0] for layer in layers]))
            for title, layers in groups.items()
        ]
        return save_head_grid(png, weights)
    panel_index, layer, head = selected
    panel = data["panels"][panel_index]
    layer_name = list(groups.values())[panel_index][layer].name
    return save_heatmaps(
        png,
        [
            Heatmap(
                seen.attention[layer_name][0, head],
                f"{panel['title']}, layer {layer}, head {head}",
                [short(t) for t in data["sequences"][panel["queries"]]],
                [short(t) for t in data["sequences"][panel["keys"]]],
                xlabel="key (attended to)",
                ylabel="query (attending)",
                vmin=0,
                vmax=1,
                scale="attention weight",
            )
        ],
    )


# ---------------------------------------------------------------------------------- induction
def induction_command(args: argparse.Namespace) -> int:
    from attnlab.interpretability.induction import induction_scores
    from attnlab.models.registry import GENERATE

    if args.sequences < 1:
        raise UserError(f"--sequences must be >= 1, got {args.sequences}")
    check_seed(args.seed)
    if args.length is not None and args.length < 2:  # 0 too: it is not "the default"
        raise UserError(f"--length must be at least 2 tokens per copy, got {args.length}")
    checkpoint = _open(args, GENERATE)
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    ordinary = tokenizer.vocab_size - len(tokenizer.special_tokens)
    report = induction_scores(
        model, n_sequences=args.sequences, length=args.length, n_tokens=ordinary, seed=args.seed
    )
    layer, head, best = report.best
    if args.json:
        print_json(
            {
                "layers": report.layers,
                "prefix_matching": report.prefix_matching.tolist(),
                "copying": None if report.copying is None else report.copying.tolist(),
                "best": {"layer": layer, "head": head, "prefix_matching": best},
                "in_context_score": report.in_context_score,
                "loss_first_copy": report.loss_first,
                "loss_second_copy": report.loss_second,
            }
        )
    else:
        _print_induction(report)
    if args.png:
        print(f"wrote {_induction_png(args.png, report)}", file=sys.stderr if args.json else None)
    return 0


def _print_induction(report) -> None:
    heads = report.prefix_matching.size(1)
    tables = {"prefix matching": report.prefix_matching, "copying (0.5 = chance)": report.copying}
    for title, scores in tables.items():
        if scores is None:
            continue
        print(f"{title}, layers by heads")
        print("layer " + "".join(f"{h:>7}" for h in range(heads)))
        for i, row in enumerate(scores.tolist()):
            print(f"{i:>5} " + "".join(f"{v:7.3f}" for v in row))
    layer, head, best = report.best
    print(f"best head: layer {layer}, head {head}, prefix matching {best:.3f}")
    print(
        f"in-context learning score: {report.in_context_score:+.3f} nats (loss "
        f"{report.loss_second:.3f} on the second copy, {report.loss_first:.3f} on the first)"
    )


def _induction_png(png, report):
    from attnlab.interpretability.plots import Heatmap, save_heatmaps

    rows = [str(i) for i in range(len(report.layers))]
    columns = [str(h) for h in range(report.prefix_matching.size(1))]
    panels = [Heatmap(report.prefix_matching, "prefix matching", rows, columns, "head", "layer",
                      vmin=0, vmax=1, scale="attention on the matched token")]  # fmt: skip
    if report.copying is not None:
        panels.append(Heatmap(report.copying, "copying (0.5 = chance)", rows, columns, "head",
                              "layer", cmap="RdBu_r", vmin=0, vmax=1,
                              scale="next token's rank (1 = first)"))  # fmt: skip
    return save_heatmaps(png, panels, columns=len(panels))


# -------------------------------------------------------------------------------------- lens
def lens_command(args: argparse.Namespace) -> int:
    from attnlab.interpretability.inputs import TEXT
    from attnlab.interpretability.lens import logit_lens
    from attnlab.interpretability.plots import Heatmap, padded, save_heatmaps, short
    from attnlab.models.registry import GENERATE

    checkpoint = _open(args, GENERATE)
    inputs = _inputs(checkpoint, args)
    report = logit_lens(checkpoint.model, inputs.args)
    probabilities, ids = report.top(1)  # (R, T, 1)
    token_text = checkpoint.tokenizer.token_text
    tokens = inputs.sequences[TEXT]
    top = [[token_text(i) for i in row] for row in ids[..., 0].tolist()]  # (R, T)
    if args.json:
        print_json({"rows": report.rows, "tokens": tokens, "top": top,
                    "probability": probabilities[..., 0].tolist()})  # fmt: skip
    else:
        print(f"{'position':>8}  {'token':<10}" + "".join(f"{name:<12}" for name in report.rows))
        for t, token in enumerate(tokens):  # padded to columns: a CJK character takes two
            cells = "".join(padded(short(top[r][t], 10), 12) for r in range(len(report.rows)))
            print(f"{t:>8}  {padded(short(token, 10), 10)}" + cells)
    if args.png:
        panel = Heatmap(
            probabilities[..., 0], "top prediction and its probability, per layer",
            report.rows, [short(t) for t in tokens], "position (input token)", "stream read",
            vmin=0, vmax=1, cells=[[short(c, 6) for c in row] for row in top],
            scale="probability of the top prediction",
        )  # fmt: skip
        print(f"wrote {save_heatmaps(args.png, [panel])}", file=sys.stderr if args.json else None)
    return 0
