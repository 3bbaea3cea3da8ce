"""Training under torchrun (gloo, CPU): DDP and FSDP runs equal one process, checkpoints change
world size, and a failing rank ends the job."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import one_line_error, run
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("built_kernels")  # the ranks' steps start within seconds

# A GPT small enough for a few steps per second per process, in fp32, without dropout, on a
# constant learning rate (so a run stopped early and resumed follows the same schedule).
SETTINGS = [
    *("--tokenizer", "char", "--context-length", "16", "--n-layers", "2", "--n-heads", "2"),
    *("--d-model", "16", "--dropout", "0", "--batch-size", "4", "--precision", "fp32"),
    *("--lr-schedule", "constant", "--warmup-iters", "0", "--learning-rate", "3e-3"),
    *("--eval-interval", "2", "--eval-iters", "2"),
]


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "off"]
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(len(words), (4000,), generator=generator).tolist()
    path.write_text(" ".join(words[i] for i in picks))
    return path


def torchrun(out, text, *args, processes=2, check=True, kind="gpt", **popen):
    """`attnlab train KIND` under torchrun; the finished process (or the running one)."""
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
        *(f"--nproc-per-node={processes}", "-m", "attnlab", "train", kind),
        *("--out", str(out), "--data", str(text), *SETTINGS, *args),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    if popen:
        return subprocess.Popen(command, env=env, text=True, **popen)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert not check or done.returncode == 0, done.stderr[-3000:]
    return done


def alone(out, text, *args, capsys, kind="gpt"):
    code, _, err = run(
        ["train", kind, "--out", str(out), "--data", str(text), *SETTINGS, *args], capsys
    )
    assert code == 0, err


def records(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_same_run(a, b, tolerance=1e-5):
    """The same losses at every step and the same final weights, to fp32 rounding."""
    ra, rb = records(a), records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        for key in ("train_loss", "val_loss"):
            assert (key in x) == (key in y)
            assert abs(x.get(key, 0) - y.get(key, 0)) <= tolerance, (x, y)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=tolerance, msg=name)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_train_as_one_process_does(tmp_path, text, capsys, mode):
    # two micro-batches per step: the first backward pass must not average over the ranks
    extra = ["--max-iters", "4", "--gradient-accumulation", "2"]
    alone(tmp_path / "one", text, *extra, capsys=capsys)
    done = torchrun(tmp_path / "two", text, "--distributed", mode, *extra)
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert done.stderr.count("done: step 4") == 1  # rank 0 reports; the other is silent
    assert records(tmp_path / "one")[-1]["train_loss"] < records(tmp_path / "one")[0]["train_loss"]


def test_a_masked_lm_on_two_ranks_trains_as_one_process_does(tmp_path, text, capsys):
    # each rank's rows hold another number of masked tokens: each weighs in by its count
    extra = ["--max-iters", "3", "--gradient-accumulation", "2", "--batch-size", "8"]
    alone(tmp_path / "one", text, *extra, capsys=capsys, kind="bert")
    torchrun(tmp_path / "two", text, "--distributed", "ddp", *extra, kind="bert")
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_a_time_limit_ends_every_rank_at_one_evaluated_step(tmp_path, text):
    done = torchrun(
        tmp_path / "r",
        text,
        "--distributed",
        "ddp",
        "--max-iters",
        "1000",
        "--eval-interval",
        "500",
        "--time-limit",
        "1e-6",
    )
    assert "done: step 2 (time limit of 1e-06 min), val loss" in done.stderr
    last = records(tmp_path / "r")[-1]
    assert last["step"] == 2 and "val_loss" in last  # the rank that saw the time agreed with all


def test_a_checkpoint_changes_world_size(tmp_path, text, capsys):
    """Saved by two FSDP ranks, resumed by one process, then by two DDP ranks: the run
    equals one that was never stopped, and the single-process commands read it."""
    alone(tmp_path / "whole", text, "--max-iters", "8", capsys=capsys)
    parts = tmp_path / "parts"
    torchrun(parts, text, "--distributed", "fsdp", "--max-iters", "4")
    code, out, err = run(["sample", str(parts), "--prompt", "the", "--max-new-tokens", "5"], capsys)
    assert code == 0 and out.strip(), err
    alone(parts, text, "--resume", "--max-iters", "6", capsys=capsys)
    torchrun(parts, text, "--distributed", "ddp", "--resume", "--max-iters", "8")
    assert_same_run(tmp_path / "whole", parts)


def test_ranks_with_dropout_resume_as_the_run_never_stopped(tmp_path, text):
    """Each rank's own dropout generator is saved and restored, not drawn afresh."""
    dropout = ["--distributed", "ddp", "--dropout", "0.2"]
    torchrun(tmp_path / "whole", text, *dropout, "--max-iters", "4")
    torchrun(tmp_path / "parts", text, *dropout, "--max-iters", "2")
    torchrun(tmp_path / "parts", text, *dropout, "--resume", "--max-iters", "4")
    assert_same_run(tmp_path / "whole", tmp_path / "parts", tolerance=0)


def wait_for_training(out):
    """Until the job in `out` has logged a training step (two minutes at most)."""
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.is_file() and metrics.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metrics.is_file(), "the job did not start training"


def test_a_killed_rank_ends_the_job_with_a_clear_message(tmp_path, text):
    job = torchrun(
        tmp_path / "run",
        text,
        "--distributed",
        "ddp",
        "--max-iters",
        "100000",
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_training(tmp_path / "run")
        os.kill(_rank_pid(job.pid, 1), signal.SIGKILL)
        start = time.monotonic()
        _, err = job.communicate(timeout=60)
        assert time.monotonic() - start < 60
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    assert "attnlab: error: rank 0 " in err, err[-3000:]
    assert "Traceback" not in err.split("attnlab: error: rank 0")[0][-2000:]


def _rank_pid(launcher: int, rank: int) -> int:
    """The process of torchrun's worker with this RANK."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if parent == launcher and f"RANK={rank}".encode() in env:
            return int(entry)
    raise AssertionError(f"no worker of rank {rank} under process {launcher}")


def test_distributed_without_torchrun_is_one_line(tmp_path, text, capsys):
    code, _, err = run(
        ["train", "gpt", "--out", str(tmp_path / "r"), "--data", str(text), "--distributed", "ddp"],
        capsys,
    )
    line = one_line_error(code, err)
    assert "torchrun --nproc-per-node" in line and "add --processes N" in line
    assert not (tmp_path / "r").exists()


def test_a_batch_the_ranks_cannot_split_is_one_line(tmp_path, text):
    done = torchrun(tmp_path / "r", text, "--distributed", "ddp", "--batch-size", "3", check=False)
    assert done.returncode != 0
    line = "attnlab: error: --batch-size 3 does not split among 2 processes"
    assert done.stderr.count(line) == 1, done.stderr[-3000:]
    assert "exitcode  : 2" in done.stderr  # torchrun's summary; its own exit code is 1
    assert not (tmp_path / "r" / "model.safetensors").exists()


def attnlab_processes(out, text, *args, **popen):
    """`attnlab train gpt ... --processes 2`: attnlab starting its ranks itself (the finished
    process, or the running one)."""
    command = [sys.executable, "-m", "attnlab", "train", "gpt", "--out", str(out)]
    command += ["--data", str(text), *SETTINGS, "--processes", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    if popen:
        return subprocess.Popen(command, env=env, text=True, **popen)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["in use", "under a file"])
def test_a_run_folder_in_use_or_impossible_stops_every_rank_with_one_line(tmp_path, text, case):
    out = tmp_path / "run"
    if case == "under a file":  # rank 0 cannot make it: the others must not wait on rank 0
        (tmp_path / "a_file").touch()
        done = attnlab_processes(tmp_path / "a_file" / "run", text, "--distributed", "ddp")
        expected = "a_file is a file, not a folder"
    else:
        out.mkdir()
        with open(out / ".attnlab.lock", "w") as lock:  # held, as a running train holds it
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = attnlab_processes(out, text, "--distributed", "ddp", "--max-iters", "2")
        expected = "in use by another"
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("attnlab: error: ") and expected in errors[0]


@pytest.mark.parametrize("stop", ["Ctrl-C", "kill"])
def test_ctrl_c_or_a_kill_of_ranks_attnlab_started_saves_and_says_so(tmp_path, text, stop):
    job = attnlab_processes(
        tmp_path / "run", text, "--distributed", "ddp", "--max-iters", "100000",
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_training(tmp_path / "run")
        if stop == "Ctrl-C":
            os.killpg(job.pid, signal.SIGINT)  # as a terminal's: the whole group
        else:
            job.send_signal(signal.SIGTERM)  # `kill`, `timeout`, a scheduler: the launcher
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "checkpoint saved" in err and err.strip().endswith("attnlab: interrupted")
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_attnlab_starts_its_own_ranks(tmp_path, text, capsys):
    done = attnlab_processes(tmp_path / "two", text, "--distributed", "fsdp", "--max-iters", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    alone(tmp_path / "one", text, "--max-iters", "2", capsys=capsys)
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_the_ranks_warn_once_and_learn_a_tokenizer_quietly(tmp_path, text):
    """Every rank raises the same warnings (a C++ compiler missing): rank 0 speaks for them.
    FSDP warns of the view a masked LM returns, which the Trainer never writes into. (The BPE
    pool's workers, ended by SIGTERM, once raised a rank's stop at times: test_bpe.py.)"""
    command = [sys.executable, "-m", "attnlab", "train", "bert", "--out", str(tmp_path / "r")]
    command += ["--data", str(text), *SETTINGS, "--max-iters", "2", "--tokenizer", "bpe:300"]
    command += ["--processes", "2", "--distributed", "fsdp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    env |= {"ATTNLAB_CACHE": str(tmp_path / "cache"), "CXX": str(tmp_path / "no-compiler")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    warned = [line for line in done.stderr.splitlines() if line.startswith("attnlab: warning:")]
    assert len(warned) == 1 and "CPU kernels failed" in warned[0], done.stderr


def test_started_by_attnlab_a_batch_the_ranks_cannot_split_is_one_line_and_exit_2(tmp_path, text):
    done = attnlab_processes(tmp_path / "r", text, "--distributed", "ddp", "--batch-size", "3")
    line = one_line_error(done.returncode, done.stderr)
    assert "--batch-size 3 does not split among 2 processes" in line
    assert not (tmp_path / "r").exists()


def test_translation_trains_on_any_number_of_ranks_as_one_process_does(tmp_path, capsys):
    """Its batches hold up to max_batch_tokens tokens, not batch_size rows: no row count to
    split evenly (the rows are shared out as they come), and each rank's rows hold another
    number of real (not padding) targets. The weights are not compared: the keys' biases, whose
    gradient is 0 but for rounding, take steps of AdamW's size either way."""
    args = ["train", "translation", "--embedded-pairs", "300", "--n-encoder-layers", "1"]
    args += ["--n-decoder-layers", "1", "--d-model", "32", "--d-ff", "64", "--max-iters", "2"]
    args += ["--eval-interval", "1", "--dropout", "0", "--precision", "fp32"]
    command = [sys.executable, "-m", "attnlab", *args, "--out", str(tmp_path / "five")]
    command += ["--processes", "5", "--distributed", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert run([*args, "--out", str(tmp_path / "one")], capsys)[0] == 0
    for x, y in zip(records(tmp_path / "one"), records(tmp_path / "five"), strict=True):
        for key in ("train_loss", "val_loss"):
            assert abs(x[key] - y[key]) <= 1e-5, (x, y)


def test_a_shortened_flag_is_not_taken_for_processes(tmp_path, text, capsys):
    with pytest.raises(SystemExit) as stopped:
        alone(tmp_path / "r", text, "--proc", "2", "--distributed", "ddp", capsys=capsys)
    assert stopped.value.code == 2 and "unrecognized arguments: --proc 2" in capsys.readouterr().err


def test_processes_without_distributed_is_one_line(tmp_path, text, capsys):
    argv = ["train", "gpt", "--out", str(tmp_path / "r"), "--data", str(text), "--processes", "2"]
    code, _, err = run(argv, capsys)
    assert "--processes N starts N ranks of a --distributed run" in one_line_error(code, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_a_cuda_option_without_cuda_is_one_line(tmp_path, text, capsys):
    code, _, err = run(
        ["train", "gpt", "--out", str(tmp_path / "r"), "--data", str(text), "--device", "cuda"],
        capsys,
    )
    assert "CUDA is not available" in one_line_error(code, err)
    assert not (tmp_path / "r").exists()


def test_data_rank_0_cannot_find_is_its_one_line_and_exit_2(tmp_path, text):
    done = attnlab_processes(tmp_path / "r", tmp_path / "nosuch.txt", "--distributed", "ddp")
    line = one_line_error(done.returncode, done.stderr)
    assert "data not found" in line and "lost another process" not in done.stderr


def test_fsdp_keeps_the_marks_layers_set_on_their_parameters(tmp_path):
    """fully_shard puts new parameters in place of the model's: Hyena's filters (no weight
    decay, their own learning-rate scale) must keep their optimizer groups, or FSDP trains
    otherwise than one process and its optimizer state fits no other run."""
    import torch.distributed as dist

    from attnlab.models.gpt import GPT, GPTConfig
    from attnlab.training.distributed import Group
    from attnlab.training.optimizers import build_optimizer

    def groups(model):
        optimizer = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
        return [
            (g["weight_decay"], g["lr_scale"], len(g["params"])) for g in optimizer.param_groups
        ]

    options = {"filter_lr_scale": 0.1}
    config = GPTConfig(vocab_size=11, context_length=16, n_layers=2, n_heads=2, d_model=16,
                       mixer="hyena", positional="learned", mixer_options=options)  # fmt: skip
    model = GPT(config)
    alone = groups(model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        Group("fsdp").wrap(model)
        assert groups(model) == alone and len(alone) == 3
    finally:
        dist.destroy_process_group()
