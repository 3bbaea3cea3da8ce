"""The non-attention token mixers (recurrent, Hyena, Mamba) beyond the contract every mixer
keeps (test_contracts.py): their algorithms against plain references, their parameters' marks,
and their errors. The recurrent language model kind is at the end."""

import json
import math

import pytest
import torch
from helpers import one_line_error, run, step_logits
from torch import nn

from attnlab.errors import ConfigError
from attnlab.layers.caches import RecurrentState
from attnlab.layers.contracts import decayed
from attnlab.layers.convolution import CausalConv1d
from attnlab.layers.hyena import Hyena, HyenaOptions, fft_causal_conv
from attnlab.layers.mamba import (
    Mamba,
    MambaOptions,
    linear_recurrence,
    selective_scan,
    sequential_scan,
)
from attnlab.layers.recurrent import RecurrentMixer
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.training.optimizers import build_optimizer


def scan_inputs(batch=2, length=37, inner=6, n=4, dtype=torch.float64):
    """Random inputs of the selective scan, Δ in the range the initialisation gives."""
    u = torch.randn(batch, length, inner, dtype=dtype)
    dt = torch.rand(batch, length, inner, dtype=dtype) * 0.5
    A = -torch.rand(inner, n, dtype=dtype) * 4
    B, C = torch.randn(2, batch, length, n, dtype=dtype)
    return u, dt, A, B, C


# ------------------------------------------------------------------ Mamba
def test_linear_recurrence_equals_a_loop():
    a, b = torch.rand(3, 13, 5, dtype=torch.float64), torch.randn(3, 13, 5, dtype=torch.float64)
    h, expected = torch.zeros(3, 5, dtype=torch.float64), []
    for t in range(13):  # odd length: the padding path
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    torch.testing.assert_close(linear_recurrence(a, b), torch.stack(expected, 1))


@pytest.mark.parametrize("length", [1, 37, 200])
def test_parallel_scan_equals_the_sequential_loop_in_float64(length, monkeypatch):
    monkeypatch.setattr("attnlab.layers.mamba.CHUNK_ELEMENTS", 16 * 2 * 6 * 4)  # several chunks
    u, dt, A, B, C = scan_inputs(length=length)
    h0 = torch.randn(2, 6, 4, dtype=torch.float64)
    y, h = selective_scan(u, dt, A, B, C, h0)
    y_ref, h_ref = sequential_scan(u, dt, A, B, C, h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    assert y.abs().max() > 0.1  # not trivially zero


def mamba_layer(d_model=8, **options):
    torch.manual_seed(0)
    return Mamba(MambaOptions(**options), d_model).eval()


@torch.no_grad()
def test_mamba_recurrent_steps_equal_its_parallel_scan():
    layer = mamba_layer()
    x = torch.randn(2, 20, 8)
    full = layer(x)
    state = layer.new_cache()
    chunks = [layer(x[:, :5], cache=state), layer(x[:, 5:8], cache=state)]  # prompt, more
    chunks += [layer(x[:, t : t + 1], cache=state) for t in range(8, 20)]  # then one at a time
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=1e-5, atol=1e-6)
    conv, ssm = state.buffers()
    assert conv.shape == (2, 3, 16) and ssm.shape == (2, 16, 16)  # fixed: O(1) per token


@torch.no_grad()
def test_mamba_equals_its_equations_written_out():
    """The module docstring's equations, one position at a time, from the layer's weights."""
    layer, (T, N, K) = mamba_layer(d_model=4, d_state=3).double(), (6, 3, 4)
    layer.D.normal_()  # and A away from its initial values
    layer.A_log.add_(torch.rand_like(layer.A_log))
    x = torch.randn(2, T, 4, dtype=torch.float64)
    u, z = (x @ layer.input_projection.weight.T).chunk(2, -1)
    w, F = layer.convolution.weight[:, 0], nn.functional  # (E, K): w[:, K-1] reads position t
    conv = [sum(w[:, K - 1 - s] * u[:, t - s] for s in range(min(K, t + 1))) for t in range(T)]
    u = F.silu(torch.stack(conv, 1) + layer.convolution.bias)
    dt, B, C = (u @ layer.ssm_projection.weight.T).split([layer.rank, N, N], -1)
    dt = F.softplus(dt @ layer.dt_projection.weight.T + layer.dt_projection.bias)
    A, h, ys = -layer.A_log.exp(), torch.zeros(2, 8, N, dtype=torch.float64), []
    for t in range(T):
        dtA, dtBu = dt[:, t, :, None] * A, dt[:, t, :, None] * B[:, t, None] * u[:, t, :, None]
        h = dtA.exp() * h + dtBu
        ys.append((h * C[:, t, None]).sum(-1) + layer.D * u[:, t])
    y = (torch.stack(ys, 1) * F.silu(z)) @ layer.output_projection.weight.T
    torch.testing.assert_close(layer(x), y)


def test_mamba_in_float64_computes_in_float64():
    layer = mamba_layer(d_model=4, d_state=3).double()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_mamba_initialisation_and_marks_follow_the_paper():
    model = GPT(
        GPTConfig(
            vocab_size=11,
            context_length=8,
            n_layers=1,
            d_model=32,
            mixer="mamba",
            positional="none",
        )  # fmt: skip
    )
    layer = model.blocks[0].token_mixer
    inner = 64
    torch.testing.assert_close(layer.A_log.exp(), torch.arange(1.0, 17).expand(inner, 16))
    assert torch.equal(layer.D, torch.ones(inner))
    dt = torch.nn.functional.softplus(layer.dt_projection.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert dt.log().std() > 0.5  # log-uniform over two decades, not a constant
    assert layer.rank == 2  # "auto": ceil(32 / 16)
    decay = decayed(model)
    for p in (layer.A_log, layer.D, layer.dt_projection.bias):
        assert p._no_weight_decay and p._keep_init and id(p) not in decay
    assert id(layer.input_projection.weight) in decay


# ------------------------------------------------------------------ Hyena
def direct_causal_conv(u, h):
    """y_t = Σ_{s<=t} h_{t-s} u_s, written out."""
    y = torch.zeros_like(u)
    for t in range(u.size(1)):
        for s in range(t + 1):
            y[:, t] += h[t - s] * u[:, s]
    return y


@pytest.mark.parametrize("length", [1, 7, 32])
def test_hyena_fft_convolution_equals_a_direct_causal_convolution(length):
    u = torch.randn(2, length, 3, dtype=torch.float64)
    h = torch.randn(length, 3, dtype=torch.float64)
    torch.testing.assert_close(fft_causal_conv(u, h), direct_causal_conv(u, h))


def hyena_layer(max_length=12, **options):
    torch.manual_seed(0)
    return Hyena(HyenaOptions(**options), 8, max_length).eval()


@torch.no_grad()
@pytest.mark.parametrize("order", [1, 2, 3])
def test_hyena_steps_equal_the_whole_sequence(order):
    layer = hyena_layer(order=order)
    x = torch.randn(2, 12, 8)
    state = layer.new_cache()
    steps = [layer(x[:, :3], cache=state)] + [
        layer(x[:, t : t + 1], cache=state) for t in range(3, 12)
    ]
    torch.testing.assert_close(torch.cat(steps, 1), layer(x), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_hyena_decoding_past_its_length_reads_the_last_window():
    """Past L positions, a step's long convolutions sum over the last L inputs: the whole
    sequence's equations written out with the filters zero past lag L-1."""
    layer, x = hyena_layer(max_length=6), torch.randn(1, 10, 8)
    state = layer.new_cache()
    outputs = [layer(x[:, :6], cache=state)] + [
        layer(x[:, t : t + 1], cache=state) for t in range(6, 10)
    ]
    *gates, v = layer.short_convolution(layer.input_projection(x))[0].chunk(3, -1)
    filters = torch.cat([layer.filter(6), torch.zeros(2, 4, 8)], 1)  # (N, 10, D)
    for n, gate in enumerate(gates):
        v = gate * direct_causal_conv(v, filters[n])
    expected = layer.output_projection(v)
    torch.testing.assert_close(torch.cat(outputs, 1), expected, rtol=1e-5, atol=1e-6)
    assert int(state.get("position")) == 10 and state.get("inputs").shape == (1, 2, 6, 8)


def test_hyena_sequence_longer_than_its_filters_is_one_clear_error():
    layer = hyena_layer(max_length=8)
    with pytest.raises(
        ValueError, match=r"^Hyena's filters cover context_length=8 positions; got a sequence of 9$"
    ):
        layer(torch.randn(1, 9, 8))
    with pytest.raises(ValueError, match="context_length=8"):
        layer(torch.randn(1, 9, 8), cache=layer.new_cache())


def test_hyena_filters_are_out_of_weight_decay_and_keep_their_own_init():
    model = GPT(
        GPTConfig(
            vocab_size=11,
            context_length=8,
            n_layers=1,
            d_model=16,
            mixer="hyena",
            positional="none",
        )  # fmt: skip
    )
    layer = model.blocks[0].token_mixer
    filter_linears = [m for m in layer.filter.network if isinstance(m, nn.Linear)]
    decay, no_decay = build_optimizer(model, 1e-3, 0.1, (0.9, 0.99)).param_groups
    in_decay = {id(p) for p in decay["params"]}
    assert all(id(m.weight) not in in_decay for m in filter_linears)
    assert id(layer.input_projection.weight) in in_decay
    # torch's default scale (±1/√fan_in), not the model's N(0, 0.02)
    first = filter_linears[0]
    assert first.weight.abs().max() > 0.1 and first.weight.abs().max() <= 1 / math.sqrt(33)
    filters = layer.filter(8)
    assert filters.shape == (2, 8, 16)
    # the window decays along t in every channel
    assert (layer.filter.window[-1] < layer.filter.window[0]).all()


# ------------------------------------------------------------------ recurrent mixers
@torch.no_grad()
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_mixer_steps_equal_the_whole_sequence(cell):
    torch.manual_seed(0)
    layer = RecurrentMixer(cell, 8, hidden_size=5).eval()
    x = torch.randn(3, 9, 8)
    state = layer.new_cache()
    steps = [layer(x[:, :2], cache=state)] + [
        layer(x[:, t : t + 1], cache=state) for t in range(2, 9)
    ]
    torch.testing.assert_close(torch.cat(steps, 1), layer(x), rtol=1e-5, atol=1e-6)
    assert [t.shape for t in state.buffers()] == [(3, 1, 5)] * (2 if cell == "lstm" else 1)


def test_recurrent_state_reorders_rows_in_place():
    state = RecurrentState()
    state.set(h=torch.arange(6.0).view(3, 2))
    held = state.get("h")
    state.reorder(torch.tensor([2, 2, 0]))
    assert state.get("h") is held and held.tolist() == [[4, 5], [4, 5], [0, 1]]
    state.set(h=torch.zeros(3, 2))
    assert state.get("h") is held and not held.any()


def test_causal_convolution_carries_its_past():
    torch.manual_seed(0)
    conv, x = CausalConv1d(4, 3), torch.randn(2, 7, 4)
    full, _ = conv(x)
    first, past = conv(x[:, :4])
    rest, _ = conv(x[:, 4:], past)
    torch.testing.assert_close(torch.cat([first, rest], 1), full)
    changed = x.clone()
    changed[:, 5:] += 1
    torch.testing.assert_close(conv(changed)[0][:, :5], full[:, :5])


# ------------------------------------------------------------------ options and errors
def test_unknown_mixer_lists_the_known_ones():
    with pytest.raises(
        ConfigError,
        match="unknown mixer 'ssm'; known mixers: attention, gru, hyena, lstm, mamba, rnn",
    ):
        GPTConfig(mixer="ssm")


def test_a_hyena_option_given_to_attention_names_the_field():
    with pytest.raises(
        ConfigError, match=r"mixer_options.order is an option of mixer 'hyena', not of 'attention'"
    ):
        GPTConfig(mixer_options={"order": 3})


def test_an_option_of_several_other_mixers_names_them_all():
    with pytest.raises(
        ConfigError,
        match=r"hidden_size is an option of mixers 'gru', 'lstm', 'rnn', not of 'mamba'",
    ):
        GPTConfig(mixer="mamba", mixer_options={"hidden_size": 32}, positional="none")


def test_an_option_given_twice_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "gpt", "--mixer", "mamba", "--positional", "none", "--out", str(out)]
    code, _, err = run([*argv, "--mixer-options", "d_state=8, d_state=4"], capsys)
    assert "option d_state is given twice in 'd_state=8, d_state=4'" in one_line_error(code, err)
    assert not out.exists()


def test_a_bad_option_value_is_named_as_given(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "gpt", "--mixer", "mamba", "--positional", "none", "--out", str(out)]
    code, _, err = run([*argv, "--mixer-options", "d_state=x"], capsys)
    assert "d_state (in --mixer-options) must be int, got str 'x'" in one_line_error(code, err)


def test_mixer_options_flags_change_single_keys_of_the_files_table(tmp_path, capsys):
    (tmp_path / "h.toml").write_text(
        'data = "task:selective_copying:tokens=4"\n[model]\nmixer = "hyena"\n'
        'positional = "none"\nd_model = 16\nn_layers = 1\ncontext_length = 16\n'
        "[model.mixer_options]\norder = 3\nfilter_order = 8\n"
        "[training]\nmax_iters = 1\neval_interval = 1\neval_iters = 1\nbatch_size = 2\n"
    )
    argv = ["train", "gpt", "--config", str(tmp_path / "h.toml"), "--out", str(tmp_path / "r")]
    code, _, err = run([*argv, "--mixer-options", "filter_order=16", "--device", "cpu"], capsys)
    assert code == 0, err
    options = json.loads((tmp_path / "r" / "config.json").read_text())["config"]["mixer_options"]
    assert options["order"] == 3 and options["filter_order"] == 16  # preset < file < flags


@pytest.mark.parametrize(
    "mixer, options, message",
    [
        ("mamba", {"dt_rank": 0}, "mixer_options.dt_rank must be 'auto' or a positive int"),
        ("mamba", {"d_conv": 1}, "mixer_options.d_conv must be >= 2"),
        ("hyena", {"positional_features": 4}, "positional_features must be odd"),
        ("lstm", {"hidden_size": -1}, "mixer_options.hidden_size must be a positive number"),
    ],
)
def test_bad_mixer_options_are_config_errors(mixer, options, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig(mixer=mixer, mixer_options=options, positional="none")


def test_attentions_heads_given_to_another_mixer_are_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "gpt", "--mixer", "lstm", "--positional", "none", "--out", str(out)]
    code, _, err = run([*argv, "--n-kv-heads", "2", "--n-heads", "2"], capsys)
    assert (
        "--n-heads, --n-kv-heads: settings of mixer 'attention', not of 'lstm': leave them unset"
        in one_line_error(code, err)
    )
    (tmp_path / "m.toml").write_text('[model]\nmixer = "mamba"\nn_heads = 2\n')
    code, _, err = run(["train", "gpt", "--config", str(tmp_path / "m.toml")], capsys)
    assert "n_heads: a setting of mixer 'attention', not of 'mamba'" in one_line_error(code, err)
    assert not out.exists()  # the preset's heads (tiny: 4) are no setting of the user's
    (tmp_path / "t.txt").write_text("a tiny corpus of text " * 50)
    small = ["--n-layers", "1", "--d-model", "16", "--max-iters", "1", "--batch-size", "2"]
    small += ["--eval-iters", "1", "--context-length", "8", "--data", str(tmp_path / "t.txt")]
    assert run([*argv, *small], capsys)[0] == 0
    code, _, err = run([*argv[:2], "--out", str(out), "--resume", "--n-heads", "4"], capsys)
    assert "--n-heads: a setting of mixer 'attention'" in one_line_error(code, err)  # its own 4


def test_mixers_without_attention_refuse_rope():
    with pytest.raises(ConfigError, match="positional='rope' acts inside attention; mixer 'mamba'"):
        GPTConfig(mixer="mamba", positional="rope")


# ------------------------------------------------------------------ the recurrent LM kind
def tiny_lm(cell="lstm"):
    torch.manual_seed(0)
    config = RecurrentLMConfig(vocab_size=13, context_length=8, d_model=16, cell=cell)
    return RecurrentLM(config).eval()


@pytest.mark.parametrize("cell", ["rnn", "gru"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_recurrent_lm_reads_a_whole_prompt_and_decodes_past_its_training_window(cell, use_cache):
    """context_length is only the training window: a prompt longer than it is read whole, and
    decoding from the hidden state (or recomputing) equals a full forward over everything."""
    model = tiny_lm(cell)
    with torch.no_grad():
        for p in model.recurrence.parameters():
            p.mul_(3)  # away from near-uniform logits, so greedy choices are not ties
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  # 12 tokens, a window of 8
    ids, logits = step_logits(model, prompt, 12, use_cache=use_cache)
    sequence = torch.tensor([[*prompt, *ids[:-1]]])
    with torch.no_grad():
        full = model(sequence)[0][0, len(prompt) - 1 :]
    torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-5)


def test_bad_recurrent_lm_settings_are_one_line(tmp_path, capsys):
    argv = ["train", "lstm_lm", "--cell", "transformer", "--out", str(tmp_path / "run")]
    code, _, err = run(argv, capsys)
    assert "--cell must be one of 'rnn', 'lstm', 'gru'" in one_line_error(code, err)


@pytest.mark.parametrize("mixer", ["lstm", "hyena", "mamba"])
def test_mixers_learn_one_batch(mixer):
    """Gradients flow through the scan, the FFT convolutions and the recurrence: a few steps on
    one batch cut its loss."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=11, context_length=16, n_layers=1, d_model=16, mixer=mixer, positional="none"
    )
    model = GPT(config)
    ids = torch.randint(11, (4, 17))
    optimizer = build_optimizer(model, 1e-2, 0.0, (0.9, 0.99))
    losses = []
    for _ in range(30):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
