#!/usr/bin/env bash
# The GPU figures, in one command on a machine with CUDA GPUs (from the repository root, after
# `make setup` with a CUDA build of PyTorch):
#   1. GPT-2 small (124M) at context 1024, bf16, compiled: tokens/s and MFU on one GPU;
#   2. the same on every GPU of the machine, with DDP and with FSDP (when there are several);
#   3. the GPU baby GPT on tiny Shakespeare: best val loss and wall time.
#     bash benchmarks/gpu.sh [OUT_DIR]     (default OUT_DIR: runs/gpu)
set -euo pipefail
out="${1:-runs/gpu}"
python=".venv/bin/python"
gpus=$($python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 1 ]; then
    echo "benchmarks/gpu.sh: no CUDA GPU here" >&2
    exit 2
fi
mkdir -p "$out"
$python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/gpu.txt"
throughput="benchmarks/train_throughput.py --device cuda --shape gpt2 --variants shipped"
$python $throughput --batch-size 16 --rounds 4 --steps 10 | tee -a "$out/gpu.txt"
if [ "$gpus" -gt 1 ]; then
    for mode in ddp fsdp; do
        .venv/bin/torchrun --standalone --nproc-per-node "$gpus" $throughput \
            --batch-size $((16 * gpus)) --rounds 4 --steps 10 --distributed $mode | tee -a "$out/gpu.txt"
    done
fi
rm -rf "$out/shakespeare"
start=$(date +%s)
.venv/bin/attnlab train gpt --config configs/gpt_shakespeare_char_gpu.toml --compile \
    --out "$out/shakespeare" 2>&1 | tail -6 | tee -a "$out/gpu.txt"
echo "baby GPT on the GPU: $(( $(date +%s) - start )) s wall in all" | tee -a "$out/gpu.txt"
# the best evaluation (the run overfits after it: its last val loss is higher)
$python - "$out/shakespeare/metrics.jsonl" <<'PYTHON' | tee -a "$out/gpu.txt"
import json, sys
evals = [r for r in map(json.loads, open(sys.argv[1])) if "val_loss" in r]
best = min(evals, key=lambda r: r["val_loss"])
print(f"best val loss {best['val_loss']:.4f} at step {best['step']}")
PYTHON
