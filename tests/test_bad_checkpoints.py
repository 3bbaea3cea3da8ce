"""A checkpoint whose files disagree is refused in one line before memory is spent on it."""

import ast
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers import loaded_modules, one_line_error, run, snapshot, tiny_gpt

import attnlab
from attnlab.errors import UserError
from attnlab.tokenizers import build_tokenizer
from attnlab.training.checkpoints import SAVE_WAIT_S, load_checkpoint, save_checkpoint
from attnlab.training.optimizers import build_optimizer

TOKENIZER = build_tokenizer("byte", [])


def saved_gpt(path, vocab_size=256):
    return hand_written(path, tiny_gpt(vocab_size=vocab_size), {"tokenizer": TOKENIZER})


def hand_written(path, model, artifacts):
    """A checkpoint of `model` beside artefact files written as by hand, fitting it or not
    (save_checkpoint refuses those that do not)."""
    save_checkpoint(path, model)
    for name, artifact in artifacts.items():
        (path / f"{name}.json").write_text(json.dumps(artifact.to_dict()))
    return path


def edit_config(path, **changes):
    description = json.loads((path / "config.json").read_text())
    description["config"].update(changes)
    (path / "config.json").write_text(json.dumps(description))


@pytest.mark.parametrize("changes", [{"n_layers": 100_000}, {"context_length": 10**12}])
def test_a_config_claiming_a_huge_model_is_refused_quickly_and_small(tmp_path, changes):
    path = saved_gpt(tmp_path / "ckpt")
    edit_config(path, **changes)
    before = snapshot(path)
    # A fresh parent, so that the peak memory measured is the command's own. Its CPU time, not
    # wall time, is bounded: other work on a busy machine stretches the latter.
    probe = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run([sys.executable, '-m', 'attnlab', 'sample', sys.argv[1]],\n"
        "                      capture_output=True, text=True)\n"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(done.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss,\n"
        "      repr(done.stderr))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True)
    code, seconds, peak_kb, stderr = out.stdout.split(maxsplit=3)
    one_line_error(int(code), ast.literal_eval(stderr))
    assert "far larger than" in stderr or "do not fit its config" in stderr, stderr
    assert float(seconds) < 5, seconds
    assert int(peak_kb) < 1_000_000, peak_kb
    assert snapshot(path) == before


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_checking_and_loading_a_checkpoint_load_no_compiler_nor_fsdp(tmp_path, positional):
    """Building the model on the meta device drew normal values and computed sinusoids there,
    which imports torch._dynamo; placing weights imported FSDP's tensors; the CPU kernels'
    module their build tools: 2-3 s of every command that reads a checkpoint, in all."""
    path = hand_written(tmp_path / "ckpt", tiny_gpt(positional, vocab_size=256), {})
    code = "import sys\nfrom attnlab.training.checkpoints import load_checkpoint\n"
    loaded = loaded_modules(code + "load_checkpoint(sys.argv[1])", path)
    unneeded = {"torch._dynamo", "torch.distributed.tensor", "torch.utils.cpp_extension"}
    assert loaded & {"attnlab.models.gpt", *unneeded} == {"attnlab.models.gpt"}


@pytest.mark.parametrize(
    "value, message",
    [
        (torch.ones((), dtype=torch.int64), "is torch.int64, not floating point"),
        (torch.ones((), dtype=torch.bool), "is torch.bool, not floating point"),
        (torch.ones((), dtype=torch.complex64), "is torch.complex64, not floating point"),
        (torch.tensor(float("nan")), "holds NaN or infinite values"),
        (torch.tensor(float("-inf")), "holds NaN or infinite values"),
    ],
)
def test_weights_of_another_type_or_not_finite_are_one_line(tmp_path, capsys, value, message):
    """Each would be cast or used as it is and sample empty or repeated text with exit 0."""
    path = saved_gpt(tmp_path / "ckpt")
    weights = safetensors.torch.load_file(path / "model.safetensors")
    name = next(iter(weights))
    weights[name] = torch.zeros_like(weights[name], dtype=value.dtype) + value
    safetensors.torch.save_file(weights, path / "model.safetensors")
    before = snapshot(path)
    line = one_line_error(*run(["sample", str(path), "--max-new-tokens", "1"], capsys)[::2])
    assert f"checkpoint weight {name} in" in line and message in line
    assert snapshot(path) == before


def test_a_nan_in_a_checkpoints_config_is_one_line(tmp_path, capsys):
    path = saved_gpt(tmp_path / "ckpt")
    edit_config(path, norm_eps=float("nan"))
    before = snapshot(path)
    line = one_line_error(*run(["sample", str(path), "--max-new-tokens", "1"], capsys)[::2])
    assert "norm_eps must be a finite number" in line
    assert snapshot(path) == before


def test_a_config_of_another_shape_is_refused_before_building(tmp_path, capsys):
    path = saved_gpt(tmp_path / "ckpt")
    edit_config(path, d_model=32)
    line = one_line_error(*run(["sample", str(path), "--max-new-tokens", "1"], capsys)[::2])
    assert "do not fit its config" in line and "shape" in line


@pytest.mark.parametrize("model_vocab", [300, 200])
def test_a_tokenizer_of_another_vocabulary_size_is_refused_at_load(tmp_path, capsys, model_vocab):
    """300: the model could choose ids no text stands for (found only mid-generation, before);
    200: a prompt could encode to ids the model has no embedding for."""
    path = saved_gpt(tmp_path / "ckpt", vocab_size=model_vocab)
    before = snapshot(path)
    line = one_line_error(*run(["sample", str(path), "--max-new-tokens", "5"], capsys)[::2])
    assert f"has 256 tokens but the model's vocabulary has {model_vocab}" in line
    assert snapshot(path) == before


def test_a_pad_id_that_is_no_special_token_is_refused_by_trainer_and_load(tmp_path, capsys):
    """BertConfig's default pad_id 0 is a character of a character tokenizer (here the space):
    every space would be padding, silently never attended to."""
    from attnlab.data.masked_lm import SPECIALS
    from attnlab.models.bert import BertConfig, BertForMaskedLM
    from attnlab.tokenizers import CharTokenizer
    from attnlab.training.config import TrainConfig
    from attnlab.training.trainer import Trainer

    tokenizer = CharTokenizer.from_text("a good movie", special_tokens=SPECIALS)
    config = BertConfig(vocab_size=tokenizer.vocab_size, context_length=8, n_layers=1, n_heads=2)
    model = BertForMaskedLM(config)
    with pytest.raises(UserError, match=r"pad_id 0 is not a special token of the tokenizer "):
        Trainer(
            model, TrainConfig(), None, {}, out_dir=tmp_path, artifacts={"tokenizer": tokenizer}
        )
    path = hand_written(tmp_path / "ckpt", model, {"tokenizer": tokenizer})
    line = one_line_error(*run(["fill-mask", str(path), "a [MASK]"], capsys)[::2])
    assert "[PAD] = 9" in line and "set pad_id to the tokenizer's own" in line


def crashed_journal(path):
    """The journal a save killed after writing it left, a while ago (a fresh one may be a save
    under way, which a reader waits for)."""
    (path / "checkpoint.journal").write_text("{}")
    os.utime(path / "checkpoint.journal", (time.time() - 2 * SAVE_WAIT_S,) * 2)


def test_a_checkpoint_read_while_its_training_saves_it_is_read_whole(tmp_path):
    """Commands read a run while it trains: a look that falls between a save's journal and its
    last rename sees a journal, or weights of the new save beside trainer state of the old
    one, for a moment. It looks again, rather than refusing an interrupted save or a mix."""
    model = tiny_gpt(vocab_size=256)
    optimizer = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    model(torch.zeros(1, 4, dtype=torch.long))[0].sum().backward()
    optimizer.step()  # with its state, as a training's

    done = threading.Event()

    def train():  # saves and saves, as with --eval-interval 1
        while not done.is_set():
            save_checkpoint(tmp_path, model, {"tokenizer": TOKENIZER}, optimizer, {"step": 1})

    trainer = threading.Thread(target=train)
    save_checkpoint(tmp_path, model, {"tokenizer": TOKENIZER})
    trainer.start()
    try:
        for _ in range(150):
            load_checkpoint(tmp_path)
    finally:
        done.set()
        trainer.join()


@pytest.mark.parametrize(
    "save_id, message",
    [('"another save"', "mixes files of different saves"), ("{}", "corrupt: its save_id not text")],
)
def test_a_mix_of_saves_in_a_folder_long_unchanged_is_refused_at_once(
    tmp_path, monkeypatch, save_id, message
):
    """No save is under way in a folder untouched for longer than a save's renames take: its
    mix is refused at once, not after SAVE_WAIT_S of looking again (a save id of no string too).
    A look again sleeps first: any sleep fails, where a clock's bound would on a busy machine."""
    path = saved_gpt(tmp_path / "ckpt")
    (path / "trainer_state.json").write_text(f'{{"save_id": {save_id}}}')
    for file in [*path.iterdir(), path]:
        os.utime(file, (time.time() - 2 * SAVE_WAIT_S,) * 2)
    monkeypatch.setattr(time, "sleep", lambda seconds: pytest.fail("waited for a save"))
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)


def test_a_first_save_interrupted_after_its_journal_says_how_to_complete_it(tmp_path, capsys):
    path = saved_gpt(tmp_path / "ckpt")
    (path / "model.safetensors").unlink()  # not yet renamed into place when the save stopped
    crashed_journal(path)
    line = one_line_error(*run(["sample", str(path)], capsys)[::2])
    assert "its save was interrupted" in line and "--resume` completes it" in line


def test_an_interrupted_save_of_a_best_copy_names_the_resume_of_its_run(tmp_path, capsys):
    path = saved_gpt(tmp_path / "run" / "best")  # `train ... --out run/best` would not resume
    (tmp_path / "run" / "run.json").write_text('{"kind": "gpt", "data": {}}')
    crashed_journal(path)
    line = one_line_error(*run(["sample", str(path)], capsys)[::2])
    assert f"`attnlab train gpt --out {tmp_path / 'run'} --resume` completes it" in line


def add_sparse_tensor(file, name, gib):
    """Add to a safetensors file a float32 tensor of `gib` GiB that takes no disk: its bytes
    are a hole at the end of a sparse file. Reading it would cost that much memory."""
    data = file.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    end = max(t["data_offsets"][1] for k, t in header.items() if k != "__metadata__")
    header[name] = {"dtype": "F32", "shape": [gib, 2**28], "data_offsets": [end, end + gib * 2**30]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(file, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data[8 + size :])
        f.truncate(8 + len(text) + end + gib * 2**30)


PEAK_PROBE = """
import sys
from pathlib import Path
from helpers import tiny_gpt
from attnlab.errors import UserError
from attnlab.training.checkpoints import load_matching_weights, load_weights
from attnlab.training.state import load_training_state
from attnlab.training.optimizers import build_optimizer
path, model = Path(sys.argv[1]), tiny_gpt(vocab_size=256)
try:
    {call}
except UserError as error:
    print("refused:", error)
with open("/proc/self/status") as status:  # this process's peak, not ru_maxrss: that counts
    print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))  # its parent's
"""


def peak_of(call, path):
    """Run `call` in a fresh process; (its output lines but the last, its peak memory in kB)."""
    probe = PEAK_PROBE.format(call=call)
    where = [str(Path(__file__).parent), str(Path(attnlab.__file__).parents[1])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(where)}  # this attnlab, these helpers
    done = subprocess.run(
        [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    *lines, peak = done.stdout.splitlines()
    return lines, int(peak)


def test_an_extra_4_gib_tensor_is_never_read(tmp_path, capsys):
    path = saved_gpt(tmp_path / "ckpt")
    add_sparse_tensor(path / "model.safetensors", "extra", 4)
    file = "path / 'model.safetensors'"
    call = f"print(load_matching_weights(model, {file})); load_weights(model, {file})"
    lines, peak = peak_of(call, path)  # the first leaves 'extra' unused, the second refuses it
    assert lines[0] == "([], ['extra'])" and "unexpected ['extra']" in lines[1], lines
    assert peak < 1_000_000, peak
    line = one_line_error(*run(["sample", str(path), "--max-new-tokens", "1"], capsys)[::2])
    assert "do not fit its config" in line and "extra" in line


def test_an_optimizer_state_larger_than_its_parameter_is_never_read(tmp_path):
    model, path = tiny_gpt(vocab_size=256), tmp_path / "ckpt"
    optimizer = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    rng = {"torch": "", "cuda": [], "python": [], "data": {}}
    state = {"step": 1, "elapsed_s": 0.0, "train_config": {}, "rng": rng}
    save_checkpoint(path, model, None, optimizer, state)
    add_sparse_tensor(path / "optimizer.safetensors", "0.extra", 4)
    call = "load_training_state(path, build_optimizer(model, 1e-3, 0.1, (0.9, 0.95)))"
    lines, peak = peak_of(call, path)
    assert "does not fit the model" in lines[0] and peak < 1_000_000, (lines, peak)


def write(name, text):
    return lambda path: (path / name).write_text(text)


@pytest.mark.parametrize(
    "edit, message",
    [
        (write("config.json", "{not json"), "is not valid JSON"),
        (write("config.json", "[1, 2]"), "lacks 'kind' and 'config'"),
        (write("config.json", '{"kind": "gpt", "config": [1]}'), "lacks 'kind' and 'config'"),
        (
            write("config.json", '{"kind": "nosuch", "config": {}}'),
            "needs model kind 'nosuch', which nothing in this process registers: if",
        ),
        (  # saved with a plugin's mixer, the plugin not loaded
            lambda path: edit_config(path, mixer="my_conv", positional="learned"),
            "needs mixer 'my_conv', which nothing in this process registers: if your own code "
            "registers it, load that first (ATTNLAB_PLUGINS=FILE.py attnlab ...); known mixers: "
            "attention, gru,",
        ),
        (lambda path: edit_config(path, n_layers="2"), "n_layers must be int, got str '2'"),
        (write("tokenizer.json", "[1]"), "tokenizer has unknown type"),
    ],
)
@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_hand_edited_checkpoint_files_are_one_line(tmp_path, capsys, edit, message, command):
    path = saved_gpt(tmp_path / "ckpt")
    edit(path)
    (tmp_path / "text.txt").write_text("some text to score " * 10)
    before = snapshot(path)
    argv = {"sample": ["--max-new-tokens", "1"], "evaluate": ["--data", str(tmp_path / "text.txt")]}
    line = one_line_error(*run([command, str(path), *argv[command]], capsys)[::2])
    assert message in line
    assert snapshot(path) == before


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_checkpoint_round_trip(tmp_path, dtype):
    """Every bit, in the type it was saved in (float64 weights are not rounded to float32)."""
    model = tiny_gpt(vocab_size=256).to(dtype)
    save_checkpoint(tmp_path, model, {"tokenizer": TOKENIZER})
    checkpoint = load_checkpoint(tmp_path)
    loaded, tokenizer = checkpoint.model, checkpoint.tokenizer
    assert loaded.config == model.config and tokenizer.to_dict() == TOKENIZER.to_dict()
    assert loaded.output_head.weight is loaded.token_embedding.weight  # still tied
    for x, y in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_corrupt_or_missing_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, tiny_gpt(vocab_size=256), {"tokenizer": TOKENIZER})
    with pytest.raises(UserError, match=r"model.safetensors is a file, not a checkpoint: give"):
        load_checkpoint(tmp_path / "model.safetensors")  # the weights named, not their folder
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, tiny_gpt(vocab_size=256), {"tokenizer": TOKENIZER})
    (tmp_path / "config.json").write_text('{"kind": "gpt", "config": {"n_layers": 3}}')
    with pytest.raises(UserError, match="do not fit"):
        load_checkpoint(tmp_path)


def test_artefacts_that_do_not_fit_the_weights_are_refused_at_load(tmp_path):
    """Class names, an image normalisation or a palette written for other weights: one line
    naming the file, not an index error mid-way (classify) or a shape error (classify-image)."""
    from attnlab.data.images import Normalization
    from attnlab.data.palette import Palette
    from attnlab.models.image_gpt import ImageGPT, ImageGPTConfig
    from attnlab.models.vision_transformer import VisionTransformer, ViTConfig
    from attnlab.training.artifacts import ClassNames

    vit = VisionTransformer(
        ViTConfig(
            image_size=8, patch_size=4, channels=1, n_classes=3, n_layers=1, n_heads=2, d_model=16
        )
    )
    gray, rgb = Normalization((0.5,), (0.2,)), Normalization((0.5,) * 3, (0.2,) * 3)
    cases = {
        "classes": (vit, {"classes": ClassNames(("a", "b")), "normalization": gray}),
        "normalization": (vit, {"classes": ClassNames(("a", "b", "c")), "normalization": rgb}),
        "palette": (
            ImageGPT(ImageGPTConfig(vocab_size=5, context_length=16, n_layers=1, d_model=16,
                                    n_heads=2, image_size=4)),
            {"palette": Palette(((0,), (128,), (255,)))},  # 3 values and the start token: 4
        ),
    }  # fmt: skip
    for name, (model, artifacts) in cases.items():
        hand_written(tmp_path / name, model, artifacts)
        with pytest.raises(UserError, match=f"{name}.json .*does not belong to these weights"):
            load_checkpoint(tmp_path / name)
        with pytest.raises(UserError, match=f"{name}.json .*does not belong to these weights"):
            save_checkpoint(tmp_path / name, model, artifacts)  # nor is it saved so
    fitting = {"classes": ClassNames(("a", "b", "c")), "normalization": gray}
    save_checkpoint(tmp_path / "fits", vit, fitting)
    assert load_checkpoint(tmp_path / "fits").artifacts == fitting


def test_a_save_with_a_tokenizer_of_other_weights_is_refused_and_leaves_the_checkpoint(tmp_path):
    """load_checkpoint would refuse it: saved over a run, it would have lost that run."""
    path = saved_gpt(tmp_path / "ckpt")
    before = snapshot(path)
    with pytest.raises(UserError, match="has 256 tokens but the model's vocabulary has 300"):
        save_checkpoint(path, tiny_gpt(vocab_size=300), {"tokenizer": TOKENIZER})
    assert snapshot(path) == before
