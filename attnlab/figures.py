"""Plot files: the types matplotlib writes, and figures saved atomically with fonts for every
script."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from attnlab.errors import UserError
from attnlab.files import atomic_writer


def plot_format(path: str | Path) -> str:
    """The file type a plot at `path` is written as: its extension, png when it has none. A
    type matplotlib cannot write is one clear error naming those it can; call this before slow
    work whose result would be lost."""
    from matplotlib.backend_bases import FigureCanvasBase

    # pgf is left out: it needs a TeX installation, and fails without one
    known = sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"})
    kind = Path(path).suffix.lower().removeprefix(".") or "png"
    if kind not in known:
        raise UserError(
            f"cannot draw a plot as {path}: .{kind} is not a plot file type; give a name "
            f"ending in {', '.join('.' + k for k in known)} (or no extension for png)"
        )
    return kind


# Fonts that have what matplotlib's DejaVu Sans lacks (CJK above all): the text of a figure
# falls back to those installed, in this order, glyph by glyph
FALLBACK_FONTS = (
    *(f"Noto Sans CJK {region}" for region in ("JP", "SC", "TC", "KR")),
    *("Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback"),
    *("IPAGothic", "Microsoft YaHei", "Yu Gothic", "Malgun Gothic", "PingFang SC"),
    *("Hiragino Sans", "Arial Unicode MS"),
)
_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")


def save_figure(fig, path: str | Path, **savefig_options) -> Path:
    """Write a matplotlib figure to exactly `path`, in the type plot_format gives, atomically
    (a temporary file renamed over: no half-written plot); returns the path written. Its text
    falls back to the FALLBACK_FONTS installed; characters that none has are one warning, not
    matplotlib's two for each."""
    from matplotlib import font_manager, text

    path = Path(path)
    kind = plot_format(path)
    installed = {font.name for font in font_manager.fontManager.ttflist}
    fallbacks = [name for name in FALLBACK_FONTS if name in installed]
    for artist in fig.findobj(text.Text) if fallbacks else ():
        artist.set_fontfamily(list(dict.fromkeys([*artist.get_fontfamily(), *fallbacks])))
    with warnings.catch_warnings(record=True) as caught, atomic_writer(path) as file:
        fig.savefig(file, format=kind, **savefig_options)
    missing = {}  # character: None, in the order met
    for warning in caught:
        if glyph := _MISSING_GLYPH.match(str(warning.message)):
            missing[chr(int(glyph[1]))] = None
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)  # fmt: skip
    if missing:
        shown = " ".join(list(missing)[:10]) + (" ..." if len(missing) > 10 else "")
        warnings.warn(
            f"{path}: no installed font has {len(missing)} of its characters ({shown}), drawn "
            "as boxes; install a font that has them (Noto Sans CJK, say)",
            stacklevel=2,
        )
    return path
