"""The README's screenshot of the attention viewer (`make screenshot`).

    python tests/viewer_screenshot.py [--run DIR] [--out docs/attention_viewer.png]

Trains a small character-level GPT on tiny Shakespeare (2 layers, 4 heads; about two minutes
on two CPU cores) into --run unless a checkpoint is there already, writes its attention page for
a line of Hamlet, and photographs the page in headless Chromium (see browser.py) with one head
and one token kept.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from browser import check_screenshot, chromium, open_file

from attnlab.cli import main

TEXT = "To be, or not to be, that is the question:"
# the "e" of the second "be", which looks back at its "b" and at the first "be"'s
KEPT = {"layer": 1, "head": 1, "token": 18}
TRAIN = [
    "--data", "tinyshakespeare", "--n-layers", "2", "--n-heads", "4", "--d-model", "128",
    "--context-length", "64", "--batch-size", "16", "--learning-rate", "2e-3",
    "--max-iters", "2500", "--eval-interval", "500", "--eval-iters", "20", "--no-compile",
]  # fmt: skip


def attnlab(*argv: str) -> None:
    if main(list(argv)) != 0:
        sys.exit(f"attnlab {' '.join(argv)} failed")


def screenshot(run: str, out: Path) -> None:
    if not (Path(run) / "model.safetensors").is_file():
        attnlab("train", "gpt", *TRAIN, "--out", run)
    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "view.html"
        attnlab("inspect", "attention", run, "--text", TEXT, "--layer", str(KEPT["layer"]),
                "--head", str(KEPT["head"]), "--out", str(page_file))  # fmt: skip
        with chromium() as browser:
            opened = open_file(browser, page_file, width=820, height=600)
            opened.page.click(f'.tok[data-side="q"][data-index="{KEPT["token"]}"]')
            opened.page.screenshot(path=out, full_page=True)
    check_screenshot(opened, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/viewer_shakespeare", help="the model's run dir")
    parser.add_argument("--out", type=Path, default=Path("docs/attention_viewer.png"))
    args = parser.parse_args()
    screenshot(args.run, args.out)
