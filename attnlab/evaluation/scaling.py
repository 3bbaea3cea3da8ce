"""Cost against sequence length: one layer of each token mixer, forward and backward.

For each mixer and length T (doubling from `start`): the median time of a forward and backward
pass over a (1, T, D) input, and the activation memory, the bytes autograd keeps for the
backward pass but the layer's weights (counted as it saves them; what grows with T, and what
decides whether a length fits). A mixer stops growing once a pass takes longer than
`max_seconds`, or when its next length would need more than `memory_limit` bytes if its memory
grew quadratically. Attention is measured twice: the equation written out (eager: the (T, T)
weights are kept) and torch's fused kernel (the weights are recomputed, not kept); so is Mamba:
its parallel scan in PyTorch, and attnlab's fused scan kernel (on a CPU).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnlab.figures import save_figure
from attnlab.files import atomic_write_bytes
from attnlab.kernels import cpu as cpu_kernels
from attnlab.layers.mixers import MIXERS, MixerContext, mixer_options

VARIANTS = {  # name -> (mixer, options, with attnlab's CPU kernels)
    "attention (eager)": ("attention", {"backend": "eager"}, False),
    "attention (fused)": ("attention", {"backend": "fused"}, False),
    "hyena": ("hyena", {}, False),
    "mamba (scan)": ("mamba", {}, False),  # the parallel scan in PyTorch
    "mamba (fused)": ("mamba", {}, True),  # on a CPU, attnlab's scan kernel
    "lstm": ("lstm", {}, False),
    "gru": ("gru", {}, False),
    "rnn": ("rnn", {}, False),
}


def variants() -> dict[str, tuple[str, dict, bool]]:
    """Every variant measured: VARIANTS, then each other registered mixer (a plugin's too) as
    itself, with its default options."""
    named = {mixer for mixer, _, _ in VARIANTS.values()}
    return {**VARIANTS, **{name: (name, {}, False) for name in MIXERS if name not in named}}


REFERENCE = "attention (fused)"  # crossovers are where another mixer becomes faster than this


HEADS = 4  # attention's heads in the measured layers


@dataclass
class Curve:
    name: str
    # (length, seconds, activation bytes) as measured: one append, whole even if interrupted
    points: list[tuple[int, float, int]] = field(default_factory=list)
    stopped: str = ""  # why it stopped before the longest length

    @property
    def lengths(self) -> list[int]:
        return [point[0] for point in self.points]

    @property
    def seconds(self) -> list[float]:
        return [point[1] for point in self.points]

    @property
    def memory(self) -> list[int]:  # bytes
        return [point[2] for point in self.points]


def build_layer(name: str, d_model: int, length: int) -> torch.nn.Module:
    mixer, options, _ = variants()[name]
    context = MixerContext(
        d_model=d_model,
        context_length=length,
        n_heads=HEADS,
        n_kv_heads=None,
        causal=True,
        bias=False,
        dropout=0.0,
        layer=0,
        n_layers=1,
    )
    return MIXERS[mixer].build(mixer_options(mixer, options, "scaling"), context)


def activation_bytes(
    run: Callable[[], torch.Tensor], parameters: Iterable[torch.Tensor] = ()
) -> tuple[torch.Tensor, int]:
    """run()'s output and the bytes of the tensors autograd saved for its backward pass, but
    for those of `parameters` (a layer's weights, saved too, are held whatever the length)."""
    seen: dict[tuple[int, int], int] = {}
    held = {p.untyped_storage().data_ptr() for p in parameters}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held:
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    return out, sum(seen.values())


def measure(name: str, length: int, d_model: int, repeats: int) -> tuple[float, int]:
    """(median seconds of a forward and backward pass, activation bytes) at this length."""
    with torch.random.fork_rng(devices=[]):  # the same layer each time; the caller's draws kept
        torch.manual_seed(0)
        layer = build_layer(name, d_model, length)
        x = torch.randn(1, length, d_model, requires_grad=True)
    times, memory = [], 0
    with cpu_kernels.enabled(variants()[name][2]):
        for attempt in range(repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            out, memory = activation_bytes(lambda: layer(x), layer.parameters())
            out.float().square().mean().backward()
            if attempt:
                times.append(time.perf_counter() - start)
    return statistics.median(times), memory


def scaling_curves(
    names: list[str],
    *,
    start: int = 256,
    longest: int = 32768,
    d_model: int = 128,
    repeats: int = 3,
    max_seconds: float = 10.0,
    memory_limit: float = 4e9,
    log: Callable[[str], None] = print,
    curves: list[Curve] | None = None,
) -> list[Curve]:
    """A curve of each variant in `names`, measured at lengths doubling from `start`, each
    stopped early past `max_seconds` a pass or where the next length might not fit in
    `memory_limit`. curves: a list the curves are added to as they are measured (after an
    interrupt it holds what was), returned."""
    curves = [] if curves is None else curves
    for name in names:
        curve, length = Curve(name), start
        curves.append(curve)
        while length <= longest:
            seconds, memory = measure(name, length, d_model, repeats)
            curve.points.append((length, seconds, memory))
            log(f"{name}: T={length}: {seconds * 1e3:.1f} ms, {memory / 2**20:.1f} MiB")
            length *= 2
            if length <= longest and seconds > max_seconds:
                curve.stopped = f"stopped after T={length // 2}: over {max_seconds:g} s a pass"
            elif length <= longest and memory * 4 > memory_limit:
                gigabytes = memory_limit / 1e9
                curve.stopped = (
                    f"stopped after T={length // 2}: T={length} might need > {gigabytes:g} GB"
                )
            if curve.stopped:
                break
    return curves


def crossovers(curves: list[Curve]) -> dict[str, int]:
    """name -> the first length from which it is faster than the reference (fused attention)."""
    reference = next((c for c in curves if c.name == REFERENCE), None)
    if reference is None:
        return {}
    times = dict(zip(reference.lengths, reference.seconds, strict=True))
    found = {}
    for curve in curves:
        if curve is reference:
            continue
        faster = [
            t < times[n] for n, t in zip(curve.lengths, curve.seconds, strict=True) if n in times
        ]
        lengths = [n for n in curve.lengths if n in times]
        for i, length in enumerate(lengths):  # faster here and at every longer length measured
            if all(faster[i:]) and (i == 0 or not faster[i - 1]):
                found[curve.name] = length
                break
    return found


def write_scaling(curves: list[Curve], out: Path, title: str) -> str:
    """scaling.md (a table) and scaling.png (time and memory against length, crossovers marked)."""
    cross = crossovers(curves)
    lengths = sorted({n for c in curves for n in c.lengths})
    lines = [f"# {title}", "", "Forward + backward time (ms) / activation memory (MiB):", ""]
    lines.append("| mixer | " + " | ".join(f"T={n}" for n in lengths) + " |")
    lines.append("|---|" + "---:|" * len(lengths))
    for c in curves:
        cells = {
            n: f"{s * 1e3:.1f} / {m / 2**20:.1f}"
            for n, s, m in zip(c.lengths, c.seconds, c.memory, strict=True)
        }
        lines.append(f"| {c.name} | " + " | ".join(cells.get(n, "-") for n in lengths) + " |")
    lines.append("")
    lines += [f"- {c.name}: {c.stopped}" for c in curves if c.stopped]
    lines += [f"- {name} is faster than {REFERENCE} from T={n}" for name, n in cross.items()]
    table = "\n".join(lines).rstrip() + "\n"
    atomic_write_bytes(out / "scaling.md", table.encode())
    _plot(curves, cross, out / "scaling.png", title)
    return table


def _plot(curves: list[Curve], cross: dict[str, int], png: Path, title: str) -> None:
    from matplotlib.figure import Figure  # not pyplot: the caller's plots are left alone

    fig = Figure(figsize=(11, 4.2), layout="tight")
    time_ax, memory_ax = fig.subplots(1, 2)
    for c in curves:
        (line,) = time_ax.plot(c.lengths, [s * 1e3 for s in c.seconds], marker="o", label=c.name)
        memory_ax.plot(c.lengths, [m / 2**20 for m in c.memory], marker="o", color=line.get_color())
        if c.name in cross:
            n = cross[c.name]
            time_ax.axvline(n, color=line.get_color(), linestyle=":", alpha=0.8)
            time_ax.annotate(
                f"{c.name} < fused attention\nfrom T={n}",
                (n, c.seconds[c.lengths.index(n)] * 1e3),
                fontsize=7,
                color=line.get_color(),
                xytext=(4, -18),
                textcoords="offset points",
            )
    time_ax.set(
        xscale="log", yscale="log", xlabel="sequence length T", ylabel="forward + backward (ms)"
    )
    memory_ax.set(
        xscale="log", yscale="log", xlabel="sequence length T", ylabel="activation memory (MiB)"
    )
    time_ax.legend(fontsize=8)
    lengths = sorted({n for c in curves for n in c.lengths})
    for ax in (time_ax, memory_ax):
        ax.grid(alpha=0.3, which="both")
        # the lengths measured, as numbers: a log axis labels its minor ticks 2x10^1, 3x10^1, ...
        # over a short range, one over the other
        ax.set_xticks(lengths, [f"{n:,}" for n in lengths], rotation=90 if len(lengths) > 6 else 0)
        ax.set_xticks([], minor=True)
    fig.suptitle(title)
    save_figure(fig, png, dpi=110)
