"""Mutation check: do the tests notice deliberate bugs?

    python tests/mutations.py [--only NAME ...] [--skip-clean]

Each mutation below is one small bug of the kind the suite exists to catch (a sign in RoPE, a
missing 1/√d, a causal mask one position too wide, ...). For each, the script copies the package
and the tests into a temporary directory (never touching this checkout), applies the one edit
there, and runs the test selections that should notice it: every selection must fail. First,
unless --skip-clean, it runs the same selections on the unmutated copy, which must pass, so that
a failure means the mutation was caught and not that the selection was broken already.

Prints one line per mutation and exits non-zero when any mutation goes unnoticed. Takes a few
minutes on two cores (each selection is one pytest process; the clean run compiles the decoding
step once).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIME_LIMIT = 600  # seconds for one selection; each takes under a minute on two cores


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # in the package
    edits: tuple[tuple[str, str], ...]  # (exact text, replacement), each found exactly once
    selections: tuple[tuple[str, ...], ...]  # pytest arguments; each selection must fail


MUTATIONS = [
    Mutation(
        "rope-sign",
        "attnlab/layers/positional.py",
        (("[-angles.sin(), angles.sin()]", "[angles.sin(), -angles.sin()]"),),
        (
            ("tests/test_references.py", "-k", "rope"),
            ("tests/test_interop_llama.py", "-k", "logits"),
        ),
    ),
    Mutation(
        "attention-without-1/sqrt(d)",
        "attnlab/layers/attention.py",
        (("q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))", "q @ k.transpose(-2, -1)"),),
        (
            ("tests/test_attention.py", "-k", "eager"),
            ("tests/test_references.py", "-k", "grouped_query_attention_matches"),
        ),
    ),
    Mutation(
        "causal-mask-off-by-one",
        "attnlab/layers/attention.py",
        ((".tril(k_len - q_len)", ".tril(k_len - q_len + 1)"),),
        (
            ("tests/test_gpt.py", "-k", "future_token"),
            ("tests/test_attention.py", "-k", "causal"),
        ),
    ),
    Mutation(
        "gpt2-pattern-without-trailing-space-rule",
        "attnlab/tokenizers/bpe.py",
        ((r"| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", r"| ?[^\s\p{L}\p{N}]+|\s+"),),
        (
            ("tests/test_bpe.py", "-k", "gpt2_pattern"),
            ("tests/test_bpe.py", "-k", "gpt2_matches_tiktoken_on_the_whole_stdlib"),
        ),
    ),
    Mutation(
        "kv-cache-drops-its-oldest-position",
        "attnlab/layers/caches.py",
        (
            (
                "held = slice(self.start, self.start + self.length)",
                "held = slice(self.start + 1, self.start + self.length)",
            ),
        ),
        (
            ("tests/test_attention.py", "-k", "kv_cache"),
            ("tests/test_generation.py", "-k", "cache_equals_recompute"),
        ),
    ),
    Mutation(
        "gradient-accumulation-not-averaged",
        "attnlab/training/trainer.py",
        (("(loss * weight).backward()", "loss.backward()"),),
        (("tests/test_training.py", "-k", "micro_batches"),),
    ),
    Mutation(
        "scored-targets-weighed-equally",
        "attnlab/training/trainer.py",
        (("_scored(batch[-1]) * self.group.world / scored", "1 / steps"),),
        (("tests/test_distributed.py", "-k", "masked_lm"),),
    ),
    Mutation(
        "decoding-step-never-compiles",
        "attnlab/generation/compiled.py",
        (
            (
                "try:\n            built[key] = build()",
                'try:\n            raise RuntimeError("no C++ compiler")',
            ),
        ),
        (
            ("tests/test_compiled_decoding.py", "-k", "equals_eager"),
            ("tests/test_cli_sample.py", "-k", "compiled"),
        ),
    ),
    Mutation(
        "training-never-compiles",
        "attnlab/compiling.py",
        (
            (
                "return self._compiled_call(*args, **kwargs)",
                'raise RuntimeError("no C++ compiler")',
            ),
        ),
        (("tests/test_training.py", "-k", "shipped"),),
    ),
    Mutation(
        "alibi-sign",
        "attnlab/layers/positional.py",
        (
            (
                "return -self.slopes[:, None, None] * distance",
                "return self.slopes[:, None, None] * distance",
            ),
        ),
        (("tests/test_references.py", "-k", "alibi"),),
    ),
    Mutation(
        "rmsnorm-ignores-its-eps",
        "attnlab/layers/normalization.py",
        (("keepdim=True) + self.eps)", "keepdim=True) + 1e-6)"),),
        (
            ("tests/test_references.py", "-k", "rmsnorm"),
            ("tests/test_interop_llama.py", "-k", "logits and gqa"),
        ),
    ),
    Mutation(
        "grouped-query-heads-tiled-not-grouped",
        "attnlab/layers/attention.py",
        (
            (
                "x.repeat_interleave(groups, dim=1)",
                "x.repeat(1, groups, 1, 1)",
            ),
        ),
        (
            ("tests/test_references.py", "-k", "grouped"),
            ("tests/test_interop_llama.py", "-k", "logits and gqa"),
        ),
    ),
    Mutation(
        "swiglu-gate-and-up-swapped",
        "attnlab/layers/feedforward.py",
        (
            (
                "self.activation(self.gate_projection(x)) * self.up_projection(x)",
                "self.activation(self.up_projection(x)) * self.gate_projection(x)",
            ),
        ),
        (
            ("tests/test_references.py", "-k", "swiglu"),
            ("tests/test_interop_llama.py", "-k", "logits"),
        ),
    ),
    Mutation(
        "bits-per-byte-in-nats",
        "attnlab/evaluation/metrics.py",
        (("mean_loss * n_tokens / (n_bytes * math.log(2))", "mean_loss * n_tokens / n_bytes"),),
        (("tests/test_metrics.py",),),
    ),
    Mutation(
        "llama-rope-base-dropped",
        "attnlab/interop/hf_gpt.py",
        (("rope_base=_rope_base(hf),", "rope_base=10000.0,"),),
        (("tests/test_interop_llama.py", "-k", "logits and gqa"),),
    ),
    Mutation(
        "every-rank-takes-the-same-rows",
        "attnlab/training/distributed.py",
        (("t.tensor_split(self.world)[self.rank]", "t.tensor_split(self.world)[0]"),),
        (("tests/test_distributed.py", "-k", "train_as_one and ddp"),),
    ),
    Mutation(
        "viewer-token-text-read-as-html",
        "attnlab/interpretability/viewer.html",
        (("node.textContent = text;", "node.innerHTML = text;"),),
        (("tests/test_viewer_browser.py", "-k", "gpt_page"),),
    ),
    Mutation(
        "scan-backward-forgets-the-decay",
        "attnlab/kernels/scan.cpp",
        (("dh[n] = q * decay[n];", "dh[n] = q;"),),
        (("tests/test_scan_kernel.py", "-k", "sequential_loop"),),
    ),
    Mutation(
        "dropout-one-mask-bit-per-block",
        "attnlab/kernels/dropout.cpp",
        (("mix(mix((first + static_cast<uint32_t>(j)) ^ k0) ^ k1)", "mix(mix(first ^ k0) ^ k1)"),),
        (("tests/test_dropout_kernel.py", "-k", "independent"),),
    ),
    Mutation(
        "corpus-pieces-cut-after-punctuation",  # gpt4's pattern keeps "!\n" one pre-token
        "attnlab/data/corpus.py",
        (
            (
                "if cut > 0 and text[cut - 1].isalnum():",
                "if cut > 0 and not text[cut - 1].isspace():",
            ),
        ),
        (("tests/test_tokenizers.py", "-k", "streamed"),),
    ),
    Mutation(
        "attention-output-ignores-its-hooks",
        "attnlab/layers/attention.py",
        (("weights = edit_weights(weights)", "edit_weights(weights.clone())"),),
        (("tests/test_interpretability.py", "-k", "in_place or ablating_every_head"),),
    ),
    Mutation(
        "attribution-forgets-layernorm-centring",
        "attnlab/interpretability/attribution.py",
        (("(read - read.mean(-1, keepdim=True)) / scale", "read / scale"),),
        (("tests/test_inspection_vs_hf.py", "-k", "attribution and gpt2"),),
    ),
    Mutation(
        "attribution-head-columns-mixed-up",
        "attnlab/interpretability/attribution.py",
        (("view(-1, n_heads, head_dim)", "view(-1, head_dim, n_heads).transpose(1, 2)"),),
        (("tests/test_inspection_vs_hf.py", "-k", "attribution and llama"),),
    ),
    Mutation(
        "image-gpt-inputs-hold-the-pixel-they-predict",
        "attnlab/data/palette.py",
        (("torch.cat([start, targets[:, :-1]], dim=1)", "targets.clone()"),),
        (("tests/test_image_gpt.py", "-k", "start_token_then"),),
    ),
    Mutation(
        "image-nll-a-mean-not-a-sum",
        "attnlab/evaluation/image_likelihood.py",
        (('targets.flatten(), reduction="sum"', "targets.flatten()"),),
        (("tests/test_image_gpt.py", "-k", "nll or ln2"),),
    ),
    Mutation(
        "mamba-gate-a-sigmoid",
        "attnlab/layers/mamba.py",
        (("* F.silu(z)", "* torch.sigmoid(z)"),),
        (("tests/test_mixers.py", "-k", "equations_written_out"),),
    ),
    Mutation(
        "mamba-B-and-C-swapped",
        "attnlab/layers/mamba.py",
        (("dt, B, C = self.ssm_projection(u)", "dt, C, B = self.ssm_projection(u)"),),
        (("tests/test_mamba_vs_hf.py", "-k", "is_transformers_mixer_in_float64"),),
    ),
    Mutation(
        "conv-state-one-position-stale",
        "attnlab/layers/convolution.py",
        (("window[:, window.size(1) - keep :]", "window[:, window.size(1) - keep - 1 : -1]"),),
        (
            ("tests/test_mamba_vs_hf.py", "-k", "decodes"),
            ("tests/test_mixer_references.py", "-k", "mamba_decoding"),
        ),
    ),
    Mutation(
        "gradients-never-clipped",
        "attnlab/training/trainer.py",
        (("(self.optimizer, self.config.grad_clip)", "(self.optimizer, 0)"),),
        (("tests/test_optimizers.py", "-k", "adamw_on_clipped"),),
    ),
    Mutation(
        "repetition-penalty-forgets-the-tokens-made",
        "attnlab/generation/decoding.py",
        (
            (
                "seen.scatter_(1, next_ids[:, None], True)",
                "seen.scatter_(1, next_ids[:, None], False)",
            ),
        ),
        (("tests/test_generation.py", "-k", "repetition_penalty_reads"),),
    ),
    Mutation(
        "added-tokens-shortest-first",
        "attnlab/tokenizers/added_tokens.py",
        (("sorted(self.tokens, key=len, reverse=True)", "sorted(self.tokens, key=len)"),),
        (
            ("tests/test_bpe_added_tokens.py", "-k", "leftmost_longest"),
            ("tests/test_convert_mamba.py", "-k", "encodes_and_decodes"),
        ),
    ),
    Mutation(
        "split-digits-cuts-nothing",
        "attnlab/tokenizers/added_tokens.py",
        (("_DIGIT.split(text) if self.split_digits else [text]", "[text]"),),
        (
            ("tests/test_bpe_added_tokens.py", "-k", "split_digits_cuts"),
            ("tests/test_convert_llama.py", "-k", "encodes_and_decodes"),
        ),
    ),
]


def scratch_copy(parent: Path) -> Path:
    """The package, the tests and the project file, copied into a new folder under parent."""
    root = Path(tempfile.mkdtemp(dir=parent))
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache")
    for folder in ("attnlab", "tests"):
        shutil.copytree(REPO / folder, root / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root / name)
    return root


def mutated(root: Path, mutation: Mutation) -> str:
    """The text of the mutation's file under root with its edits made."""
    text = (root / mutation.file).read_text(encoding="utf-8")
    for old, new in mutation.edits:
        if text.count(old) != 1:
            raise SystemExit(f"{mutation.name}: {old!r} is not in {mutation.file} exactly once")
        text = text.replace(old, new)
    return text


def pytest(root: Path, selection: tuple[str, ...]) -> int:
    """pytest's exit status for one selection, run in root (so root's attnlab is imported):
    0 passed, 1 some test failed, 124 it ran past TIME_LIMIT, anything else an error (nothing
    collected, ...). Asserts are plain: only the status is read, and pytest's explanation of a
    failed == of two long lists is a diff of the whole, which in CI may take hours."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += ["--assert=plain", *selection]
    try:
        done = subprocess.run(
            command, cwd=root, env=environment(), capture_output=True, timeout=TIME_LIMIT
        )
    except subprocess.TimeoutExpired:
        return 124
    return done.returncode


def environment() -> dict[str, str]:
    # the shared data lies beside this checkout, not beside the scratch copy
    data = os.environ.get("ATTNLAB_DATA") or str(REPO.parent / "shared" / "data")
    return {**os.environ, "ATTNLAB_DATA": data, "PYTHONDONTWRITEBYTECODE": "1"}


def check_imports_the_copy(root: Path) -> None:
    code = "import attnlab, sys; sys.stdout.write(attnlab.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    if not Path(where).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"the scratch copy imports attnlab from {where}, not from {root}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--skip-clean", action="store_true", help="skip the unmutated run")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    for mutation in chosen:  # every edit applies, before anything runs
        mutated(REPO, mutation)
    started, missed = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="attnlab-mutations-") as parent:
        if not args.skip_clean:
            clean = scratch_copy(Path(parent))
            check_imports_the_copy(clean)
            selections = dict.fromkeys(s for m in chosen for s in m.selections)
            broken = [s for s in selections if pytest(clean, s) != 0]
            if broken:
                print("the unmutated copy fails (or selects nothing) in:", *broken, sep="\n  ")
                return 2
            print(f"unmutated: {len(selections)} selections pass")
        for mutation in chosen:
            root = scratch_copy(Path(parent))
            (root / mutation.file).write_text(mutated(root, mutation), encoding="utf-8")
            codes = [pytest(root, selection) for selection in mutation.selections]
            caught = all(code == 1 for code in codes)
            if not caught:
                missed.append(mutation.name)
            outcome = "caught" if caught else f"MISSED (pytest exit codes {codes})"
            print(f"{mutation.name:45} {outcome} by {len(codes)} selection(s)", flush=True)
            shutil.rmtree(root)
    minutes = (time.perf_counter() - started) / 60
    print(f"{len(chosen) - len(missed)} of {len(chosen)} mutations caught ({minutes:.1f} min)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
