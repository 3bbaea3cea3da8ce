"""What a notebook does that a script does not: run a cell again. A cell that defines a model
class or a mixer's options and registers them, run a second time, makes new classes of the same
names; what was built from the old ones stays in the notebook's variables. And a cell's output
is watched live, as a terminal is."""

import dataclasses
import io
import sys
import types

import pytest
import torch
from torch import nn

from attnlab import GPT, GPTConfig
from attnlab.cli import run
from attnlab.data.text import TextDataConfig, text_training_data
from attnlab.layers.mixers import MIXERS, register_mixer
from attnlab.models.gpt import PRESETS
from attnlab.models.registry import KINDS, ModelKind, get_kind, register_kind
from attnlab.training.checkpoints import save_checkpoint

TINY = dict(vocab_size=16, context_length=8, n_layers=1, n_heads=2, d_model=16)


def run_cell(name: str, bases: tuple, body: dict) -> type:
    """The class a cell's `class NAME(...)` makes, each run a new one (as in __main__)."""
    return type(name, bases, {"__module__": "__main__", "__qualname__": name, **body})


@pytest.fixture
def registries(request):
    kinds, mixers = dict(KINDS), dict(MIXERS)

    def restore():
        KINDS.clear(), KINDS.update(kinds), MIXERS.clear(), MIXERS.update(mixers)

    request.addfinalizer(restore)


def test_a_model_built_before_its_kind_cell_ran_again_is_told_so(tmp_path, registries):
    """It said "NotebookGPT is not a registered model kind, and would load back as its parent
    kind 'gpt': register_kind ... names its config and data": registered it was, a cell ago."""
    models = []
    for _ in range(2):  # the cell, run twice
        cls = run_cell("NotebookGPT", (GPT,), {})
        register_kind(
            ModelKind("notebook_gpt", GPTConfig, cls, PRESETS, TextDataConfig, text_training_data)
        )
        models.append(cls(GPTConfig(**TINY)))
    save_checkpoint(tmp_path / "new", models[1])
    with pytest.raises(ValueError, match="defined again since this model was built") as caught:
        save_checkpoint(tmp_path / "old", models[0])
    assert "build the model anew" in str(caught.value)


@dataclasses.dataclass(frozen=True)
class OtherOptions:
    shift: int = 1


class _Mix(nn.Module):
    def __init__(self, options, context):
        super().__init__()
        self.shift, self.mix = options.shift, nn.Linear(context.d_model, context.d_model)

    def forward(self, x, mask=None, cache=None):
        return self.mix(x.roll(self.shift, 1))


def test_options_made_before_the_mixer_cell_ran_again_are_taken(registries):
    """It refused them: "GPTConfig.mixer_options must be a table of ShiftOptions fields, got
    ShiftOptions", the name the message asks for."""
    options = []
    for _ in range(2):
        cls = run_cell("ShiftOptions", (), {"__annotations__": {"shift": int}, "shift": 1})
        cls = dataclasses.dataclass(frozen=True)(cls)
        register_mixer("notebook_shift", cls, _Mix)
        options.append(cls(shift=2))
    shift = dict(mixer="notebook_shift", positional="learned", mixer_options=options[0])
    config = GPTConfig(**TINY, **shift)
    assert type(config.mixer_options) is type(options[1]) and config.mixer_options.shift == 2
    GPT(dataclasses.replace(config, n_layers=2))(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="table of ShiftOptions fields, got OtherOptions"):
        dataclasses.replace(config, mixer_options=OtherOptions(2))  # another class is not taken


def test_a_kind_shows_as_a_line():
    """A checkpoint shown in a cell (`ck`) printed its kind whole: every preset's config, the
    data class and function, some 3,000 characters of one line."""
    assert repr(get_kind("gpt")) == "ModelKind('gpt', model=GPT)"


def test_a_kind_renamed_in_its_cell_says_how(registries):
    """A cell that registers a class defined in an earlier cell, edited to rename the kind and
    run again, said only "NotebookLM is already kind 'mine'"."""
    cls = run_cell("NotebookLM", (GPT,), {})

    def kind(name):
        return ModelKind(name, GPTConfig, cls, PRESETS, TextDataConfig, text_training_data)

    register_kind(kind("mine"))
    with pytest.raises(ValueError, match=r"rename the kind, first `del KINDS\['mine'\]`"):
        register_kind(kind("renamed"))
    del KINDS["mine"]
    assert register_kind(kind("renamed")) is get_kind("renamed")


def in_a_notebook(monkeypatch, shell: str) -> io.StringIO:
    """This process as a Jupyter kernel (or a terminal's IPython) sees it: ipykernel loaded,
    IPython's shell of that class, stderr a stream that is no terminal. Returns stderr."""
    import IPython

    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setattr(IPython, "get_ipython", type(shell, (), {}))
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    return sys.stderr


@pytest.mark.parametrize("shell", ["ZMQInteractiveShell", "TerminalInteractiveShell"])
def test_a_training_run_draws_its_bar_in_a_notebook_cell(tmp_path, corpus, monkeypatch, shell):
    """A cell's output redraws a line at each \\r as a terminal does: `run("train ...")` in a
    notebook drew no bar (its stderr is no terminal), only the evaluations' lines. IPython in a
    terminal whose stderr is redirected draws none, as a script would not."""
    stderr = in_a_notebook(monkeypatch, shell)
    run(f"train gpt --data {corpus} --out {tmp_path / 'run'} --max-iters 3 --eval-interval 3 "
        "--eval-iters 1 --context-length 8 --n-layers 1 --d-model 16 --n-heads 2 "
        "--no-compile")  # fmt: skip
    drawn = "3/3 [" in stderr.getvalue() and "\r" in stderr.getvalue()
    assert drawn == (shell == "ZMQInteractiveShell")
    assert ("step 3: train loss" in stderr.getvalue()) == (not drawn)  # else the bar shows it
