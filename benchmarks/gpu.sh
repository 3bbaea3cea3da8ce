#!/usr/bin/env bash
# The GPU figures, in one command on a machine with CUDA GPUs (from the repository root, after
# `make setup` with a CUDA build of PyTorch):
#   0. the GPU and its measured matrix-product peak (the denominator of every MFU below);
#   1. GPT-2 small (124M) at context 1024, bf16, compiled: tokens/s and MFU on one GPU;
#   2. the same on every GPU of the machine, with DDP and with FSDP (when there are several);
#   3. the GPU baby GPT on tiny Shakespeare: best and last val loss, median tokens/s and MFU,
#      wall time (2 min 38 s on one H100 when last measured, RESULTS.md; step 1 is mostly its
#      compiling, not yet timed).
#     bash benchmarks/gpu.sh [OUT_DIR]     (default OUT_DIR: runs/gpu)
# The figures go to OUT_DIR/gpu.txt, the training's whole output to OUT_DIR/shakespeare.log.
# PYTHON names the Python with a CUDA build of torch when it is not .venv's (PYTHON=python3 on a
# machine where torch comes installed); attnlab is imported from this checkout either way.
# The text is looked for in $ATTNLAB_DATA, else in shared/data inside or beside the checkout (as
# the Makefile does), and fetched only where it is in neither: on a machine without the
# internet, put tinyshakespeare/input.txt in one of them first.
set -euo pipefail
out="${1:-runs/gpu}"
python="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${ATTNLAB_DATA:-}" ]; then
    for data in shared/data ../shared/data; do
        if [ -f "$data/tinyshakespeare/input.txt" ]; then
            ATTNLAB_DATA="$(cd "$data" && pwd)"
            export ATTNLAB_DATA
            break
        fi
    done
fi
gpus=$($python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 1 ]; then
    echo "benchmarks/gpu.sh: no CUDA GPU here" >&2
    exit 2
fi
# the text of step 3, found (or fetched) before anything is timed: a machine that cannot get it
# stops now, not after the throughput runs
if ! $python -c "from attnlab.data.catalog import resolve; resolve('tinyshakespeare/input.txt')"
then
    echo "benchmarks/gpu.sh: tinyshakespeare/input.txt not found; set ATTNLAB_DATA to a" \
        "folder that holds it" >&2
    exit 2
fi
mkdir -p "$out"
$python - <<'PYTHON' | tee "$out/gpu.txt"
import torch

from attnlab.devices import measure_peak_flops

cuda = torch.device("cuda")
bf16, fp32 = (measure_peak_flops(cuda, dtype) / 1e12 for dtype in (torch.bfloat16, torch.float32))
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; 4096² matrix product (MFU's "
      f"denominator): bf16 {bf16:.0f} TFLOP/s, fp32 {fp32:.0f} TFLOP/s")
PYTHON
throughput="benchmarks/train_throughput.py --device cuda --shape gpt2 --variants shipped"
$python $throughput --batch-size 16 --rounds 4 --steps 10 | tee -a "$out/gpu.txt"
if [ "$gpus" -gt 1 ]; then
    for mode in ddp fsdp; do
        $python -m torch.distributed.run --standalone --nproc-per-node "$gpus" $throughput \
            --batch-size $((16 * gpus)) --rounds 4 --steps 10 --distributed $mode | tee -a "$out/gpu.txt"
    done
fi
rm -rf "$out/shakespeare"
start=$(date +%s)
$python -m attnlab train gpt --config configs/gpt_shakespeare_char_gpu.toml --compile \
    --out "$out/shakespeare" 2>&1 | tee "$out/shakespeare.log" | tail -6 | tee -a "$out/gpu.txt"
echo "baby GPT on the GPU: $(( $(date +%s) - start )) s wall in all" | tee -a "$out/gpu.txt"
# its warnings (a compiler that failed, so that the steps ran eagerly) go with the figures
grep "attnlab: warning" "$out/shakespeare.log" | tee -a "$out/gpu.txt" || true
# the best evaluation (the run overfits after it: its last val loss is higher), and the steps'
# median speed (the first step, which compiles, left out)
$python - "$out/shakespeare/metrics.jsonl" <<'PYTHON' | tee -a "$out/gpu.txt"
import json
import statistics
import sys

records = [json.loads(line) for line in open(sys.argv[1])]
evals = [r for r in records if "val_loss" in r]
best, last = min(evals, key=lambda r: r["val_loss"]), evals[-1]
print(f"best val loss {best['val_loss']:.4f} at step {best['step']}, "
      f"last {last['val_loss']:.4f} at step {last['step']}")
steps = records[1:] or records
speed = statistics.median(r["tokens_per_s"] for r in steps)
mfu = statistics.median(r["mfu"] for r in steps)
print(f"median step {speed / 1e6:.2f}M tokens/s, MFU {mfu:.1%} of the measured bf16 peak")
PYTHON
