"""The recurrent, Mamba and Hyena mixers against references nobody here wrote, in float64,
forward and gradients: torch's nn.RNN / nn.LSTM / nn.GRU with copied weights; Mamba's scans
(loop, parallel, compiled, attnlab's CPU kernel, step-by-step decoding) against the paper's
recurrence written out below; Hyena's FFT convolution against the sum that defines it."""

import pytest
import torch
from torch import nn

from attnlab.kernels import cpu as kernel
from attnlab.layers.hyena import Hyena, HyenaOptions, fft_causal_conv
from attnlab.layers.mamba import Mamba, MambaOptions, selective_scan, sequential_scan
from attnlab.layers.recurrent import RecurrentMixer
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig

F64 = dict(rtol=0, atol=1e-12)
TORCH_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def gradients(outputs, inputs, seed=1):
    """d(Σ random weights · outputs)/d inputs; the same weights for equal shapes, whatever
    the dtype."""
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=generator, dtype=torch.float64) for o in outputs]
    loss = sum((o * w.to(o.dtype)).sum() for o, w in zip(outputs, weights, strict=True))
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def assert_all_close(ours, theirs, **tolerance):
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **(tolerance or F64))


# ------------------------------------------------------------------ recurrent mixers
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_mixer_is_torchs_layer_with_copied_weights(cell):
    """Forward and gradients in float64; fed in pieces (its state carried from call to call),
    what torch's layer gives when handed its own last state back."""
    torch.manual_seed(0)
    mixer = RecurrentMixer(cell, 8, hidden_size=5).double()
    reference = TORCH_CELLS[cell](8, 5, batch_first=True).double()
    reference.load_state_dict(mixer.recurrence.state_dict())
    x = torch.randn(3, 9, 8, dtype=torch.float64, requires_grad=True)
    got = mixer(x)
    expected = mixer.output_projection(reference(x)[0])
    torch.testing.assert_close(got, expected, **F64)
    weights = list(mixer.recurrence.parameters())
    assert_all_close(
        gradients([got], [x, *weights]), gradients([expected], [x, *reference.parameters()])
    )
    with torch.no_grad():
        state, hidden, pieces, theirs = mixer.new_cache(), None, [], []
        for part in (slice(0, 4), slice(4, 5), slice(5, 9)):
            pieces.append(mixer(x[:, part], cache=state))
            out, hidden = reference(x[:, part], hidden)
            theirs.append(mixer.output_projection(out))
        torch.testing.assert_close(torch.cat(pieces, 1), torch.cat(theirs, 1), **F64)
        torch.testing.assert_close(torch.cat(pieces, 1), got, **F64)
        held = (state.get("h"), state.get("c")) if cell == "lstm" else (state.get("h"),)
        assert_all_close(held, hidden if cell == "lstm" else (hidden,))


@torch.no_grad()
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_lm_decodes_as_torchs_stacked_layer_carrying_its_state(cell):
    """Three stacked layers, a batch of 4: the state goes in and out of torch's (L, B, H)."""
    torch.manual_seed(0)
    config = RecurrentLMConfig(vocab_size=11, cell=cell, n_layers=3, d_model=6)
    model = RecurrentLM(config).double().eval()
    reference = TORCH_CELLS[cell](6, 6, 3, batch_first=True).double()
    reference.load_state_dict(model.recurrence.state_dict())
    idx = torch.randint(0, 11, (4, 10))
    state, hidden, ours, theirs = model.new_cache(), None, [], []
    for part in [slice(0, 3)] + [slice(t, t + 1) for t in range(3, 10)]:
        ours.append(model(idx[:, part], cache=state)[0])
        out, hidden = reference(model.token_embedding(idx[:, part]), hidden)
        theirs.append(model.output_head(out))
    torch.testing.assert_close(torch.cat(ours, 1), torch.cat(theirs, 1), **F64)
    torch.testing.assert_close(torch.cat(ours, 1), model(idx)[0], **F64)


# ------------------------------------------------------------------ Mamba
def papers_recurrence(u, dt, A, B, C, h):
    """Gu & Dao 2023, equations (2a), (2b) with the zero-order hold of (4) as their code
    discretises B: h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t, y_t = C_t h_t, channel by channel."""
    ys = []
    for t in range(u.size(1)):
        decay = torch.exp(dt[:, t, :, None] * A)  # (B, E, N)
        h = decay * h + dt[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None]
        ys.append((C[:, t, None, :] * h).sum(-1))  # (B, E)
    return torch.stack(ys, 1), h


def scan_inputs(batch=2, length=37, inner=6, n=4, dtype=torch.float64):
    """u, Δ (in the range the initialisation gives), A < 0, B, C and a starting state."""
    generator = torch.Generator().manual_seed(0)
    u, B, C = (torch.randn(batch, length, d, generator=generator) for d in (inner, n, n))
    dt = torch.rand(batch, length, inner, generator=generator) * 0.5
    A = -torch.rand(inner, n, generator=generator) * 4
    h = torch.randn(batch, inner, n, generator=generator)
    return [x.to(dtype).requires_grad_() for x in (u, dt, A, B, C, h)]


@pytest.mark.parametrize("scan", ["loop", "parallel", "parallel, chunked"])
@pytest.mark.parametrize("length", [1, 2, 37])
def test_mamba_scans_and_their_gradients_are_the_papers_recurrence(scan, length, monkeypatch):
    if scan == "parallel, chunked":  # chunks of 16 positions, each starting from the last
        monkeypatch.setattr("attnlab.layers.mamba.CHUNK_ELEMENTS", 16 * 2 * 6 * 4)
    inputs = scan_inputs(length=length)
    expected = papers_recurrence(*inputs)
    got = (sequential_scan if scan == "loop" else selective_scan)(*inputs)
    assert_all_close(got, expected)
    assert_all_close(gradients(got, inputs), gradients(expected, inputs))


def test_compiled_parallel_scan_and_its_gradients_are_the_papers_recurrence():
    inputs = scan_inputs(length=20, inner=3, n=2)
    expected = papers_recurrence(*inputs)
    got = torch.compile(selective_scan, fullgraph=True)(*inputs)
    assert_all_close(got, expected)
    assert_all_close(gradients(got, inputs), gradients(expected, inputs))


def test_attnlabs_scan_kernel_and_its_gradients_are_the_papers_recurrence():
    """The kernel computes in float32 (from h = 0): to float32's precision of the largest."""
    assert kernel.load(), "the CPU kernels did not build"
    inputs = scan_inputs(length=45)[:5]
    expected = papers_recurrence(*inputs, torch.zeros(2, 6, 4, dtype=torch.float64))[:1]
    floats = [x.detach().float().requires_grad_() for x in inputs]
    with kernel.enabled():
        got = [kernel.selective_scan(*floats)]
    ours = [got[0], *gradients(got, floats)]
    for a, b in zip(ours, [expected[0], *gradients(expected, inputs)], strict=True):
        scale = b.abs().max()
        torch.testing.assert_close(a.double() / scale, b / scale, rtol=0, atol=2e-6)


@torch.no_grad()
@pytest.mark.parametrize("prompt", [1, 5])
def test_mamba_decoding_step_by_step_is_its_full_pass_in_float64(prompt):
    torch.manual_seed(0)
    layer = Mamba(MambaOptions(d_state=4), 8).double().eval()
    x = torch.randn(2, 16, 8, dtype=torch.float64)
    state = layer.new_cache()
    steps = [layer(x[:, :prompt], cache=state), layer(x[:, prompt : prompt + 3], cache=state)]
    steps += [layer(x[:, t : t + 1], cache=state) for t in range(prompt + 3, 16)]
    torch.testing.assert_close(torch.cat(steps, 1), layer(x), **F64)


def test_mamba_built_in_float64_holds_its_initial_dynamics_in_float64():
    """A = -(1, ..., N) to float64's precision, not float32 values widened (log 3 off by 1e-8)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        layer = Mamba(MambaOptions(d_state=5), 4)
    finally:
        torch.set_default_dtype(previous)
    exact = torch.arange(1, 6, dtype=torch.float64).log().expand(8, 5)
    torch.testing.assert_close(layer.A_log, exact, rtol=0, atol=1e-15)


# ------------------------------------------------------------------ Hyena
@pytest.mark.parametrize("length", [1, 6, 33])
def test_hyena_fft_convolution_and_its_gradients_are_the_direct_sum(length):
    """y_t = Σ_{s<=t} h_{t-s} u_s, written out."""
    u = torch.randn(2, length, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(length, 3, dtype=torch.float64, requires_grad=True)
    direct = torch.stack([sum(h[t - s] * u[:, s] for s in range(t + 1)) for t in range(length)], 1)
    got = fft_causal_conv(u, h)
    torch.testing.assert_close(got, direct, **F64)
    assert_all_close(gradients([got], [u, h]), gradients([direct], [u, h]))


@torch.no_grad()
@pytest.mark.parametrize("order, prompt", [(1, 1), (2, 4), (3, 12)])
def test_hyena_decoding_step_by_step_is_its_full_pass_in_float64(order, prompt):
    torch.manual_seed(0)
    layer = Hyena(HyenaOptions(order=order), 8, 12).double().eval()
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    state = layer.new_cache()
    steps = [layer(x[:, :prompt], cache=state)]
    steps += [layer(x[:, t : t + 1], cache=state) for t in range(prompt, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), layer(x), **F64)
