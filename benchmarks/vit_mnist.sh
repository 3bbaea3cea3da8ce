#!/usr/bin/env bash
# A Vision Transformer on MNIST on the CPU: train (configs/vit_mnist.toml, at most 30 minutes of
# training steps), then score all 10,000 test digits and draw their confusion matrix.
#
#   benchmarks/vit_mnist.sh                                  # the full run
#   OUT=runs/vit_mnist_trial benchmarks/vit_mnist.sh --max-iters 200     # a short trial
#
# Extra arguments go to `attnlab train vit` (later flags win). OUT (default runs/vit_mnist) must
# not already hold a checkpoint. `make bench` does not run it (a recipe of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/vit_mnist}
# On a 2-core machine shared with other busy processes, OpenMP threads that spin while waiting
# for each other slow every step several times over; waiting passively costs nothing when free.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

"$PY" -m attnlab train vit --config configs/vit_mnist.toml --out "$OUT" --time-limit 30 "$@"

"$PY" -m attnlab evaluate "$OUT" --split val --batch-size 500 | tee "$OUT/test_scores.txt"

"$PY" - "$OUT/metrics.jsonl" <<'PYTHON'
import json, statistics, sys
records = [json.loads(line) for line in open(sys.argv[1])]
rate = statistics.median(r["images_per_s"] for r in records)
print(f"  training: {records[-1]['step']} steps in {records[-1]['elapsed_s'] / 60:.1f} min, "
      f"median {rate:,.0f} images/s, final train loss {records[-1]['train_loss']:.3f}")
PYTHON
