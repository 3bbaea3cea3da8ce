#!/usr/bin/env bash
# The synthetic tasks through the arena, on the CPU: each mixer, 2 layers, matched size, the
# same batches and budget: wall time, or for selective copying 40M tokens with the learning
# rate decaying to the end (evaluation/arena.py, data/tasks.py).
#
#   benchmarks/tasks.sh                      # every task, every mixer (3-4 hours on 2 cores)
#   MIXERS=hyena,mamba TASKS=recall benchmarks/tasks.sh
#
# TASKS: any of recall (associative recall, length 1024), copying (selective copying, length
# 256) and mqar (multi-query associative recall, length 128, at two widths). Reports go to
# OUT/TASK (default runs/tasks), which must not exist yet. `make bench` does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/tasks}
TASKS=${TASKS:-recall copying mqar}
ALL=attention,lstm,hyena,mamba
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # see vit_mnist.sh

arena() {  # NAME MIXERS ARGS...
  local name=$1 mixers=$2
  shift 2
  "$PY" -m attnlab arena --out "$OUT/$name" --mixers "${MIXERS:-$mixers}" --n-layers 2 \
    --batch-size 8 --weight-init fan_in "$@"
}

for task in ${TASKS//,/ }; do
  case $task in
    recall) arena recall $ALL --data task:associative_recall --context-length 1024 \
      --params 1e5 --time 10 ;;
    copying) arena copying attention,lstm,mamba --data task:selective_copying \
      --context-length 256 --params 1e5 --tokens 4e7 ;;
    mqar) for params in 2.5e4 1e5; do
        arena "mqar_$params" "$ALL,rnn,gru" --data task:mqar --context-length 128 \
          --params "$params" --time 2.5
      done ;;
    *) echo "unknown task $task (recall, copying, mqar)" >&2; exit 2 ;;
  esac
done
cat "$OUT"/*/arena.md
