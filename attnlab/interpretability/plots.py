"""Static PNG heatmaps for the inspect commands (matplotlib, imported when drawing)."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from attnlab.figures import save_figure
from attnlab.tokenizers.base import visible

LABELLED = 64  # most rows (or columns) a panel labels; beyond, no label and no larger figure
LEVEL = 48  # most characters of column labels written level, side by side, in a panel


@dataclass
class Heatmap:
    """One panel: values (R, C), labels of its rows and columns, and how to colour it."""

    values: torch.Tensor
    title: str
    rows: list[str]
    columns: list[str]
    xlabel: str = ""
    ylabel: str = ""
    cmap: str = "Blues"
    vmin: float | None = None
    vmax: float | None = None
    cells: list[list[str]] | None = None  # text written in each cell (small maps only)
    scale: str = ""  # what a colour means: the label of the colour bar
    empty: str = ""  # written across the panel when it has no value at all (every cell NaN)


def signed_cells(values: torch.Tensor, limit: float) -> list[list[str]]:
    """Each value of a map (R, C) as a cell's text, signed, with two figures of `limit` (the
    largest magnitude shown): +0.0031 on a map of small values, +1.2 on one of large; a value
    that rounds to zero reads +0.00, not -0.00; a missing one (NaN: no such cell) is blank."""
    decimals = max(1 - math.floor(math.log10(max(limit, 1e-6))), 0)
    return [[signed(v, decimals) if v == v else "" for v in row] for row in values.tolist()]


def signed(value: float, decimals: int = 4) -> str:
    """A value with its sign and `decimals` decimals; one that rounds to zero reads +0.0000."""
    return f"{round(value, decimals) + 0.0:+.{decimals}f}"


def _colours(name: str):
    """A colour map whose missing values (NaN: no such cell) are grey, not a value's colour."""
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="lightgrey")


def _draw(ax, fig, panel: Heatmap) -> None:
    values = panel.values.detach().float().cpu().numpy()
    image = ax.imshow(
        values, cmap=_colours(panel.cmap), vmin=panel.vmin, vmax=panel.vmax, aspect="auto"
    )
    n_rows, n_cols = values.shape
    as_is = dict(parse_math=False)  # tokens as written: "$x$" is no formula (nor "$$" an error)
    if n_cols <= LABELLED:
        # level while they fit side by side (a panel is at least 5 inches wide), else upright
        widest = max(map(display_width, panel.columns), default=0)
        rotation = 90 if n_cols > 8 or n_cols * widest > LEVEL else 0
        ax.set_xticks(range(n_cols), panel.columns, rotation=rotation, fontsize=7, **as_is)
    if n_rows <= LABELLED:
        ax.set_yticks(range(n_rows), panel.rows, fontsize=7, **as_is)
    if panel.cells is not None and n_rows * n_cols <= 900:
        red, green, blue = image.cmap(image.norm(values))[..., :3].transpose(2, 0, 1)
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # black text would not show
        for i, row in enumerate(panel.cells):
            for j, text in enumerate(row):
                colour = "white" if dark[i, j] else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color=colour, **as_is)
    if panel.empty and values.size and (values != values).all():  # NaN only: say why
        ax.text(0.5, 0.5, panel.empty, ha="center", va="center", transform=ax.transAxes)
    ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
    # each tick its own value: no "1e-6" above the bar, where the next panel's title is
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=panel.scale, format="{x:.3g}")


def save_heatmaps(png: str | Path, panels: list[Heatmap], columns: int = 1) -> Path:
    """The panels side by side (`columns` a row) in one PNG (or the type its name ends
    in); returns its path."""
    from matplotlib.figure import Figure  # not pyplot: the caller's plots are left alone

    rows = -(-len(panels) // columns)
    down, across = (min(max(p.values.shape[i] for p in panels), LABELLED) for i in (0, 1))
    width, height = max(across * 0.28 + 3, 5), max(down * 0.28 + 2, 3.5)  # inches a panel
    fig = Figure(figsize=(width * columns, height * rows), dpi=120, layout="tight")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        _draw(ax, fig, panel)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return save_figure(fig, png)


def save_head_grid(png: str | Path, groups: list[tuple[str, torch.Tensor]]) -> Path:
    """Thumbnails of every head: one row per (group, layer), one column per head; each group's
    weights are (layers, H, Tq, Tk)."""
    from matplotlib.figure import Figure

    rows = [(title, layer, w) for title, weights in groups for layer, w in enumerate(weights)]
    n_heads = max(w.size(0) for _, _, w in rows)
    width = max(1.3 * n_heads + 1.6, 3.6)  # room for the title over a single head
    fig = Figure(figsize=(width, 1.3 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), n_heads, squeeze=False)
    for r, (title, layer, weights) in enumerate(rows):
        for h in range(n_heads):
            ax = axes[r][h]
            ax.set_xticks([]), ax.set_yticks([])
            if h < weights.size(0):
                weight = weights[h].float().cpu().numpy()  # (Tq, Tk): a square however long
                image = ax.imshow(weight, cmap="Blues", vmin=0, vmax=1, aspect="auto")
            if r == 0 or rows[r - 1][0] != title:
                ax.set_title(f"head {h}", fontsize=7)
        axes[r][0].set_ylabel(f"{title}\nlayer {layer}", fontsize=6)
    fig.suptitle("attention weights: a row per query, a column per key", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    return save_figure(fig, png, dpi=100)


def short(text: str, width: int = 8) -> str:
    """A token as a tick label or table cell: whitespace made visible (a space as ␣), one wider
    than `width` columns (display_width) cut."""
    shown = visible(text).replace(" ", "␣") or "''"
    if display_width(shown) <= width:
        return shown
    while display_width(shown) > width - 1:
        shown = shown[:-1]
    return shown + "…"


def padded(text: str, width: int) -> str:
    """`text` and spaces to `width` columns of a terminal (display_width)."""
    return text + " " * (width - display_width(text))


def display_width(text: str) -> int:
    """The columns `text` takes on a terminal: 2 for a wide or full-width character (CJK), 0
    for a combining mark, else 1."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )
