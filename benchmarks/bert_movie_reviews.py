"""Ten-fold cross-validation on the movie reviews (Pang & Lee 2004 report 86-87%): a
pre-trained BERT fine-tuned ten times, each time holding out one file-name fold (cv000-cv099,
cv100-cv199, ...), scored on it after the last step (no choice among evaluations is made on
the held-out fold).

    python benchmarks/bert_movie_reviews.py --init runs/bert_sst2/pretrain [--out DIR] [FLAGS]

FLAGS (any other) go to every fold's `attnlab train classifier`, after the config: for example
`--long-text head_tail` reads each review's head and tail only, as the classifier did before
reading long texts in windows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bert_sst2 import timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", required=True, help="the pre-trained bert checkpoint")
    parser.add_argument("--out", default="runs/movie_reviews_cv", help="folder for the runs")
    parser.add_argument("--folds", type=int, default=10)
    args, flags = parser.parse_known_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    folds, steps = [], []
    for fold in range(args.folds):
        run = out / f"fold{fold}"
        shutil.rmtree(run, ignore_errors=True)  # this script's own output of an earlier round
        steps.append(timed(f"fold {fold}", [sys.executable, "-m", "attnlab", "train",
                           "classifier", "--config", "configs/movie_reviews_finetune.toml",
                           "--init", args.init, "--fold", str(fold), "--folds", str(args.folds),
                           "--out", str(run), *flags], out / f"fold{fold}.log"))  # fmt: skip
        last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
        folds.append({"fold": fold, "accuracy": last["val_accuracy"], "f1": last["val_f1"]})
        print(folds[-1], flush=True)
    accuracy = [f["accuracy"] for f in folds]
    report = {
        "folds": folds,
        "mean_accuracy": statistics.mean(accuracy),
        "stdev_accuracy": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
        "mean_f1": statistics.mean(f["f1"] for f in folds),
        "steps": steps,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "steps"}, indent=2))


if __name__ == "__main__":
    main()
