"""The platform from outside: a token mixer and a model kind registered here, in the test, then
trained, checkpointed, resumed and sampled through the CLI, with nothing under attnlab/cli/
knowing them. The contract every registered kind and mixer keeps is in test_contracts.py."""

import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from helpers import one_line_error, run
from torch import nn

from attnlab.layers import MixerContext, initialize, no_weight_decay, register_mixer
from attnlab.layers.mixers import MIXERS
from attnlab.models.registry import ModelKind, register_kind
from attnlab.training.checkpoints import load_checkpoint
from attnlab.training.sources import DataRequest, TrainingData

# ------------------------------------------------------------------ a toy token mixer
# y_t = W_o( mix ⊙ mean_{s<=t} W_v x_s ): a causal running mean, with O(1) decoding state.


@dataclass(frozen=True)
class MeanOptions:
    mix_init: float = 0.5  # starting value of every channel's mixing weight


class MeanState:
    """The running sum of values and the count of positions: (B, D) and a 0-dim tensor."""

    def __init__(self):
        self.total, self.count = None, torch.zeros((), dtype=torch.long)

    def reorder(self, index):
        self.total = self.total.index_select(0, index)

    def buffers(self):
        return [self.total, self.count]

    def with_buffers(self, tensors):
        state = MeanState()
        state.total, state.count = tensors
        return state


class MeanMixer(nn.Module):
    def __init__(self, options: MeanOptions, context: MixerContext):
        super().__init__()
        self.options = options
        self.value = nn.Linear(context.d_model, context.d_model, bias=False)
        self.output = nn.Linear(context.d_model, context.d_model, bias=False)
        # 2-D, so an initialisation or a weight decay that went by p.dim() would touch it
        self.mix = nn.Parameter(torch.empty(1, context.d_model))
        no_weight_decay(self.output.weight)  # a linear weight opted out of decay
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.constant_(self.mix, self.options.mix_init)

    def forward(self, x, mask=None, cache=None):
        values = self.value(x)  # (B, T, D)
        totals = values.cumsum(1)
        counts = torch.arange(1, x.size(1) + 1, device=x.device)[:, None]  # (T, 1)
        if cache is not None:
            if cache.total is None:
                cache.total = values.new_zeros(values.size(0), values.size(2))
            totals = totals + cache.total[:, None]
            counts = counts + cache.count
            cache.total.add_(values.sum(1))
            cache.count.add_(x.size(1))
        return self.output(self.mix * totals / counts)

    def new_cache(self, max_length=0, **options):
        return MeanState()


register_mixer("test_mean", MeanOptions, MeanMixer)


# ------------------------------------------------------------------ a toy model kind
# Classify a sequence of digits by its sum modulo `modulus`: no text, no tokenizer.


@dataclass(frozen=True)
class SumConfig:
    vocab_size: int = 5  # the modulus: classes, and the digits' range
    width: int = 16  # hidden width


class SumModel(nn.Module):
    def __init__(self, config: SumConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.width)
        self.head = nn.Linear(config.width, config.vocab_size)
        initialize(self, lambda weight, layer: nn.init.normal_(weight, std=0.02))

    def forward(self, digits, label=None):
        logits = self.head(torch.relu(self.embedding(digits).sum(1)))  # (B, V)
        return logits, None if label is None else F.cross_entropy(logits, label)


@dataclass(frozen=True)
class SumDataConfig:
    modulus: int = 5  # classes
    length: int = 6  # digits per sequence


class SumBatches:
    unit = "sequence"

    def __init__(self, settings: SumDataConfig, batch_size: int, seed: int):
        self.settings, self.batch_size = settings, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self):
        digits = torch.randint(
            self.settings.modulus,
            (self.batch_size, self.settings.length),
            generator=self.generator,
        )
        return digits, digits.sum(1) % self.settings.modulus

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def sum_data(request: DataRequest) -> TrainingData:
    settings, train = request.settings, request.train
    val = SumBatches(settings, train.batch_size, train.seed + 1)
    val_batches = [val.next() for _ in range(train.eval_iters)]
    return TrainingData(
        SumBatches(settings, train.batch_size, train.seed),
        {"val": lambda: val_batches},
        model_fields={"vocab_size": settings.modulus},
        summary=f"sums modulo {settings.modulus}",
    )


SUM_KIND = register_kind(
    ModelKind(
        name="test_sum",
        config=SumConfig,
        model=SumModel,
        presets={"tiny": SumConfig()},
        data_config=SumDataConfig,
        build_data=sum_data,
        description="digits -> their sum modulo N",
        data_fields={"vocab_size"},
    )
)

FAST = ["--batch-size", "8", "--eval-iters", "2", "--device", "cpu", "--no-compile"]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_kind_registered_outside_trains_resumes_and_is_refused_by_sample(tmp_path, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    args = ["train", "test_sum", "--modulus", "7", "--eval-interval", "5", *FAST]
    code, _, err = run([*args, "--max-iters", "10", "--out", str(whole)], capsys)
    assert code == 0, err
    code, _, err = run([*args, "--max-iters", "5", "--out", str(part)], capsys)
    assert code == 0, err
    code, _, err = run(
        ["train", "test_sum", "--out", str(part), "--resume", "--max-iters", "10"], capsys
    )
    assert code == 0, err
    # no text anywhere: no tokenizer saved, throughput in the data's unit
    assert not (whole / "tokenizer.json").exists()
    assert "sequences_per_s" in metrics(whole)[0]
    # the resumed run reproduces the uninterrupted one exactly
    assert [r["train_loss"] for r in metrics(part)] == [r["train_loss"] for r in metrics(whole)]
    a, b = load_checkpoint(whole), load_checkpoint(part)
    assert a.kind is SUM_KIND and a.model.config.vocab_size == 7
    for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(x, y)
    code, _, err = run(["sample", str(whole)], capsys)
    assert "holds a 'test_sum' model, which `attnlab sample` does not serve" in one_line_error(
        code, err
    )
    code, _, err = run(
        ["train", "test_sum", "--out", str(whole), "--resume", "--modulus", "3"], capsys
    )
    assert "cannot change the data or the model" in one_line_error(code, err)
    modulus = json.loads((whole / "run.json").read_text())["data"]["modulus"]
    code, _, err = run(  # repeating the run's own settings is no change
        ["train", "test_sum", "--out", str(whole), "--resume", "--modulus", str(modulus)], capsys
    )
    assert code == 0, err


def test_train_help_lists_registered_kinds(capsys):
    with pytest.raises(SystemExit):
        run(["train", "--help"], capsys)
    text = capsys.readouterr().out
    assert "gpt" in text and "translation" in text and "test_sum" in text


def test_a_mixer_registered_outside_trains_resumes_and_samples(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "gpt",
        "--data",
        str(corpus),
        "--mixer",
        "test_mean",
        "--positional",
        "learned",
        "--mixer-options",
        "mix_init=0.25",
        "--context-length",
        "16",
        "--eval-interval",
        "5",
        "--out",
        str(out),
        *FAST,
    ]
    code, _, err = run([*args, "--max-iters", "5"], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["mixer"] == "test_mean" and config["mixer_options"] == {"mix_init": 0.25}
    code, _, err = run(["train", "gpt", "--out", str(out), "--resume", "--max-iters", "8"], capsys)
    assert code == 0, err
    assert [r["step"] for r in metrics(out)] == list(range(1, 9))
    model = load_checkpoint(out).model
    assert all(type(block.token_mixer) is MeanMixer for block in model.blocks)
    code, text, err = run(
        ["sample", str(out), "--prompt", "the ", "--max-new-tokens", "20"], capsys
    )
    assert code == 0, err
    assert text.startswith("the ") and len(text) == len("the ") + 20 + 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mixer", "nope"], "unknown mixer 'nope'; known mixers: attention"),
        (
            ["--mixer-options", "mix_init=0.2"],
            "--mixer-options: a setting of mixer 'test_mean' (mix_init), not of 'attention'",
        ),
        (["--mixer", "test_mean"], "positional='rope' acts inside attention"),
        (
            ["--mixer", "test_mean", "--positional", "learned", "--mixer-options", "oops=1"],
            "unknown key(s) oops for MeanOptions",
        ),
    ],
)
def test_bad_mixer_settings_are_one_line(tmp_path, corpus, capsys, flags, message):
    argv = [
        "train",
        "gpt",
        "--data",
        str(corpus),
        "--positional",
        "rope",
        "--out",
        str(tmp_path / "run"),
        *FAST,
        *flags,
    ]
    code, _, err = run(argv, capsys)
    assert message in one_line_error(code, err)


def test_weight_decay_follows_the_layers_marks():
    from attnlab.models.gpt import GPT, GPTConfig
    from attnlab.training.optimizers import build_optimizer

    model = GPT(
        GPTConfig(
            vocab_size=7,
            context_length=8,
            n_layers=1,
            n_heads=1,
            d_model=8,
            mixer="test_mean",
            positional="learned",
        )
    )
    decay, no_decay = build_optimizer(model, 1e-3, 0.1, (0.9, 0.99)).param_groups
    decayed = {id(p) for p in decay["params"]}
    mixer = model.blocks[0].token_mixer
    assert id(mixer.value.weight) in decayed and id(model.position_embedding.weight) in decayed
    assert id(mixer.mix) not in decayed  # a mixer's own parameter, by default
    assert id(mixer.output.weight) not in decayed  # marked by its layer
    assert all(p.dim() >= 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert torch.equal(mixer.mix, torch.full((1, 8), 0.5))  # the layer's own initialisation
    assert math.isclose(
        model.blocks[0].feedforward.down_projection.weight.std().item(),
        0.02 / math.sqrt(2),
        rel_tol=0.2,
    )


PLUGIN = """
from attnlab.models.registry import register_kind
import test_platform as t

class PluginModel(t.SumModel):  # each kind has a class of its own: checkpoints name it
    pass

register_kind(t.ModelKind(name="plugin_sum", config=t.SumConfig, model=PluginModel,
                          presets={"tiny": t.SumConfig()}, data_config=t.SumDataConfig,
                          build_data=t.sum_data, description="a kind from a plugin file"))
"""


def test_plugins_register_before_the_command_runs(tmp_path, monkeypatch, capsys):
    plugin = tmp_path / "my_kinds.py"
    plugin.write_text(PLUGIN)
    monkeypatch.setenv("ATTNLAB_PLUGINS", str(plugin))
    out = tmp_path / "run"
    code, _, err = run(
        ["train", "plugin_sum", "--max-iters", "2", "--out", str(out), *FAST], capsys
    )
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["kind"] == "plugin_sum"
    monkeypatch.setenv("ATTNLAB_PLUGINS", "no_such_module_here")
    code, _, err = run(["train", "--help"], capsys)
    assert "ATTNLAB_PLUGINS: cannot import no_such_module_here" in one_line_error(code, err)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def broken(:\n", "failed: SyntaxError: invalid syntax"),
        ("x = 1\nraise RuntimeError('no GPU here')\n", "failed: RuntimeError: no GPU here"),
        (  # refused by attnlab: where the plugin called it
            "from attnlab.layers import register_mixer\nregister_mixer('x', object, None)\n",
            "failed: TypeError: mixer 'x': options must be a dataclass",
        ),
    ],
)
def test_a_plugin_that_fails_is_one_line_naming_it(tmp_path, monkeypatch, capsys, source, expected):
    plugin = tmp_path / "my_layers.py"
    plugin.write_text(source)
    monkeypatch.setenv("ATTNLAB_PLUGINS", str(plugin))
    line = one_line_error(*run(["data", "list"], capsys)[::2])
    assert expected in line and "my_layers.py" in line.split(" failed: ")[1]


class SeenState:  # a decoding state without buffers(): it cannot be compiled
    def __init__(self):
        self.seen = None

    def reorder(self, index):
        self.seen = self.seen.index_select(0, index)


@dataclass(frozen=True)
class SeenOptions:
    pass


class SeenMixer(nn.Module):  # the mean mixer run again over every input seen
    def __init__(self, options: SeenOptions, context: MixerContext):
        super().__init__()
        self.mean = MeanMixer(MeanOptions(), context)

    def forward(self, x, mask=None, cache=None):
        if cache is None:
            return self.mean(x)
        cache.seen = x if cache.seen is None else torch.cat([cache.seen, x], 1)
        return self.mean(cache.seen)[:, -x.size(1) :]

    def new_cache(self, max_length=0, **options):
        return SeenState()


def test_a_mixer_whose_state_cannot_be_compiled_samples_and_refuses_compile_in_one_line(
    tmp_path, capsys, request
):
    from attnlab.models.gpt import GPT, GPTConfig
    from attnlab.tokenizers.char import CharTokenizer
    from attnlab.training.checkpoints import save_checkpoint

    register_mixer("test_seen", SeenOptions, SeenMixer)  # here only: no contract test sees it
    request.addfinalizer(lambda: MIXERS.pop("test_seen"))
    tokenizer = CharTokenizer("abcdefg")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=8, n_layers=1, n_heads=1,
                       d_model=8, mixer="test_seen", positional="learned")  # fmt: skip
    save_checkpoint(tmp_path / "ckpt", GPT(config), {"tokenizer": tokenizer})
    argv = ["sample", str(tmp_path / "ckpt"), "--prompt", "ab", "--max-new-tokens", "3"]
    code, out, err = run(argv, capsys)
    assert code == 0 and out.startswith("ab"), err
    line = one_line_error(*run([*argv, "--compile"], capsys)[::2])
    assert "needs each decoding state's buffers()" in line and "SeenState" in line
