"""What a person watches and looks at: the live progress bar and the loss-curve plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


class progress_printer:  # noqa: N801 - used like a function
    """A tqdm bar on stderr: step, loss, last val loss, throughput (tokens/s, images/s), ETA."""

    def __init__(self, total: int, unit: str = "token"):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            file=sys.stderr,
            unit="step",
            dynamic_ncols=True,
            disable=None,
            smoothing=0.05,
        )
        self.val_loss: float | None = None
        self.unit = unit

    def start_at(self, step: int) -> None:
        self.bar.n = self.bar.last_print_n = step
        self.bar.refresh()

    def update(self, record: dict[str, Any]) -> None:
        self.val_loss = record.get("val_loss", self.val_loss)
        rate = record[f"{self.unit}s_per_s"]
        postfix = {"loss": f"{record['train_loss']:.4f}", f"{self.unit}s/s": f"{rate:,.0f}"}
        if self.val_loss is not None:
            postfix["val"] = f"{self.val_loss:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)
        if "val_loss" in record and self.bar.disable:  # no live bar (not a terminal): log evals
            print(
                f"step {record['step']}: train loss {record['train_loss']:.4f}, "
                f"val loss {record['val_loss']:.4f}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        self.bar.close()


def plot_losses(metrics_file: Path, png: Path) -> Path | None:
    """Plot train and val loss against step from metrics.jsonl; None if there is nothing to plot."""
    if not metrics_file.is_file():
        return None
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(
        [r["step"] for r in records],
        [r["train_loss"] for r in records],
        lw=0.8,
        alpha=0.6,
        label="train (per step)",
    )
    evals = [r for r in records if "val_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=f"{metrics_file.parent.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
