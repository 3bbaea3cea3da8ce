"""SST-2 with and without pre-training: the documented BERT recipe, as whole processes.

1. benchmarks/bert_corpus.py writes the pre-training text (the movie reviews, the SST-2
   *training* sentences without labels, Multi30k's English side; never a dev or test sentence);
2. `attnlab train bert --config configs/bert_pretrain.toml` pre-trains a BERT-Mini-shaped
   encoder (4 layers, width 256) by masked-LM;
3. `attnlab train classifier --config configs/sst2_finetune.toml --init PRETRAINED` fine-tunes
   it on SST-2's training phrases, keeping the checkpoint with the best dev accuracy;
4. the same fine-tuning from random weights, for comparison.
Each step's wall time and CPU time (user + system, of the process and its children) are
measured, and the best dev accuracy and F1 of each classifier are read from its metrics log.

    python benchmarks/bert_sst2.py [--out runs/bert_sst2] [--pretrained DIR]

A pre-training run that was stopped (Ctrl-C, or --time-limit) is resumed where it stopped;
--pretrained DIR fine-tunes a pre-training run made before instead.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bert_corpus  # noqa: E402

from attnlab.files import cache_dir  # noqa: E402


def timed(step: str, command: list[str], log: Path) -> dict:
    """Run one attnlab command to completion; its wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with log.open("w") as output:
        done = subprocess.run(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{step} failed (exit {done.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{step}: {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU", flush=True)
    return {"step": step, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def best_scores(run: Path) -> dict:
    """The best dev accuracy of a classifier run, and the F1 of that evaluation."""
    state = json.loads((run / "trainer_state.json").read_text())["best"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at_best = next(r for r in records if r["step"] == state["step"] and "val_accuracy" in r)
    return {
        "best_step": state["step"],
        "dev_accuracy": at_best["val_accuracy"],
        "dev_f1": at_best["val_f1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bert_sst2", help="folder for the runs and logs")
    parser.add_argument("--pretrained", help="a finished `train bert` run to fine-tune instead")
    args = parser.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    attnlab = [sys.executable, "-m", "attnlab"]
    steps = []
    pretrain = Path(args.pretrained) if args.pretrained else out / "pretrain"
    if not args.pretrained:
        corpus = bert_corpus.build(cache_dir() / "bert-corpus")
        resume = ["--resume"] if (pretrain / "trainer_state.json").is_file() else []
        steps.append(timed("pre-training", [*attnlab, "train", "bert", "--config",
                           "configs/bert_pretrain.toml", "--data", str(corpus), "--out",
                           str(pretrain), *resume], out / "pretrain.log"))  # fmt: skip
    results = {}
    for name, init in (("pre-trained", ["--init", str(pretrain)]), ("from scratch", [])):
        run = out / ("finetune" if init else "scratch")
        shutil.rmtree(run, ignore_errors=True)  # this script's own output of an earlier round
        steps.append(timed(f"fine-tuning, {name}", [*attnlab, "train", "classifier",
                           "--config", "configs/sst2_finetune.toml", "--out", str(run),
                           *init], out / f"{run.name}.log"))  # fmt: skip
        results[name] = best_scores(run)
        print(f"{name}: {results[name]}", flush=True)
    report = {"steps": steps, "results": results}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
