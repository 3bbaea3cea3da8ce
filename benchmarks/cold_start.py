"""A user's first training run, whole processes from empty caches: attnlab's shipped baby GPT
against nanoGPT's CPU recipe (benchmarks/nanogpt_recipe.py), side by side.

Each round runs, in turn:
- nanoGPT's recipe: 2000 iterations, fp32, eager, an evaluation of 20 batches of each split
  every 250 iterations (nanoGPT's --eval_iters=20);
- `attnlab train gpt --config configs/gpt_shakespeare_char.toml` with ATTNLAB_CACHE and
  TORCHINDUCTOR_CACHE_DIR set to new, empty folders: its CPU kernels are built and its steps
  compiled from scratch, as on a fresh install (--warm: the same caches every round after the
  first, as for a user's second run).
and prints each one's wall time, its final validation loss, and attnlab's speed-up.

    python benchmarks/cold_start.py --data tinyshakespeare/input.txt --rounds 2
    python benchmarks/cold_start.py --compile-by-block   # other flags go to attnlab train
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnlab.cli.options import resolve_data_path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float | None, str]:
    """Wall seconds, the last "val loss" printed, and the output of one whole process."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    losses = re.findall(r"val loss (\d+\.\d+)", output)
    return seconds, float(losses[-1]) if losses else None, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tinyshakespeare/input.txt", help="tiny Shakespeare")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warm", action="store_true", help="keep attnlab's caches after round 1")
    args, extra = parser.parse_known_args()
    data = resolve_data_path(args.data)
    print(f"{os.cpu_count()} cores; data {data}")
    print("| round | nanoGPT recipe, s | val loss | attnlab, s | val loss | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    caches = tempfile.TemporaryDirectory()  # --warm: every round's; removed at the end, as `out`
    for round_ in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cold:
            anchor = [sys.executable, "benchmarks/nanogpt_recipe.py", data, "--out", f"{out}/n"]
            anchor_s, anchor_loss, _ = timed(anchor, dict(os.environ))
            cache = caches.name if args.warm else cold
            env = {
                **os.environ,
                "ATTNLAB_CACHE": f"{cache}/attnlab",
                "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor",
            }
            config = "configs/gpt_shakespeare_char.toml"
            ours = [sys.executable, "-m", "attnlab", "train", "gpt", "--config", config]
            ours += ["--data", data, "--out", f"{out}/a", *extra]
            ours_s, ours_loss, _ = timed(ours, env)
        print(
            f"| {round_} | {anchor_s:.1f} | {anchor_loss:.4f} | {ours_s:.1f} | {ours_loss:.4f} "
            f"| {anchor_s / ours_s:.2f}x |",
            flush=True,
        )
    caches.cleanup()


if __name__ == "__main__":
    main()
