#!/usr/bin/env bash
# Image GPT on binarised MNIST on the CPU: train (configs/igpt_mnist.toml, at most 40 minutes of
# training steps), then the negative log-likelihood of all 10,000 test digits in nats per image
# (pixels thresholded at 127: not comparable with the published PixelCNN 81.3 and PixelRNN 79.2,
# which are on stochastically binarised MNIST) and a PNG grid of samples and of completions of
# the test digits' top halves.
#
#   benchmarks/igpt_mnist.sh                                   # the full run
#   OUT=runs/igpt_trial benchmarks/igpt_mnist.sh --max-iters 200   # a short trial
#   benchmarks/igpt_mnist.sh --device cuda --precision bf16 --compile   # on a GPU
#
# Extra arguments go to `attnlab train igpt` (later flags win). OUT (default runs/igpt_mnist)
# must not already hold a checkpoint. `make bench` does not run it (a recipe of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/igpt_mnist}
# On a 2-core machine shared with other busy processes, OpenMP threads that spin while waiting
# for each other slow every step several times over; waiting passively costs nothing when free.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

"$PY" -m attnlab train igpt --config configs/igpt_mnist.toml --out "$OUT" --time-limit 40 "$@"

"$PY" -m attnlab evaluate "$OUT" --split val --batch-size 250 | tee "$OUT/test_scores.txt"

"$PY" -m attnlab sample-images "$OUT" --samples 16 --completions 8 --seed 0

"$PY" - "$OUT" <<'PYTHON'
import json, statistics, sys
records = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
tokens = json.load(open(f"{sys.argv[1]}/config.json"))["config"]["context_length"]
rate = statistics.median(r["tokens_per_s"] for r in records) / tokens
print(f"  training: {records[-1]['step']} steps in {records[-1]['elapsed_s'] / 60:.1f} min, "
      f"median {rate:,.0f} images/s, final train loss {records[-1]['train_loss']:.3f}")
PYTHON
