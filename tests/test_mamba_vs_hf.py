"""attnlab's Mamba mixer against `transformers`' MambaMixer, a Mamba nobody here wrote, with
copied weights: outputs in float64 and float32, gradients, and decoding one token at a time
through each side's own decoding state.

transformers' pure PyTorch path computes parts of the scan in float32 whatever the input's dtype
(A, D, Δ's bias, B, u and the decoding step's state go through `.float()`). For the float64
comparisons it runs under KeepFloat64, which makes those `.float()` calls leave a float64
tensor as it is; nothing else in it changes. The float32 comparisons run it as it is.
"""

import pytest
import torch
from torch.overrides import TorchFunctionMode

transformers = pytest.importorskip("transformers")
from transformers import MambaConfig  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.models.mamba.modeling_mamba import MambaMixer  # noqa: E402

from attnlab.kernels import cpu as kernel  # noqa: E402
from attnlab.layers.mamba import Mamba, MambaOptions  # noqa: E402
from attnlab.layers.mixers import MixerContext, mixer_options, mixer_spec  # noqa: E402

WIDTH, STATE, RANK, KERNEL = 24, 12, 3, 4
F64 = dict(rtol=0, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-5)
# transformers 4 decodes Mamba with a MambaCache of its own; 5, with a DynamicCache
decoding = pytest.mark.skipif(
    not hasattr(DynamicCache, "get_recurrent_state"),
    reason="transformers' Mamba decodes with a DynamicCache from version 5 on",
)

# attnlab's parameter -> transformers' (same layouts: u before the gate z in the input
# projection, Δ before B before C in the SSM projection, A = -exp(A_log) on both sides)
NAMES = {
    "input_projection": "in_proj",
    "convolution": "conv1d",
    "ssm_projection": "x_proj",
    "dt_projection": "dt_proj",
    "output_projection": "out_proj",
}


class KeepFloat64(TorchFunctionMode):
    """Tensor.float() leaves float64 tensors as they are (see the module's docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.float and args[0].dtype == torch.float64:
            return args[0]
        return func(*args, **(kwargs or {}))


def hf_config(use_bias=False, use_conv_bias=True) -> MambaConfig:
    return MambaConfig(
        vocab_size=11,
        hidden_size=WIDTH,
        state_size=STATE,
        expand=2,
        conv_kernel=KERNEL,
        time_step_rank=RANK,
        num_hidden_layers=1,
        use_bias=use_bias,
        use_conv_bias=use_conv_bias,
    )


def their_name(ours: str) -> str:
    module, _, rest = ours.partition(".")
    return f"{NAMES.get(module, module)}{'.' if rest else ''}{rest}"


def pair(dtype=torch.float64, use_bias=False, use_conv_bias=True, seed=0):
    """A random transformers mixer, its dynamics moved away from their initial values (A spread
    over a decade each way, D of either sign, Δ's bias anywhere softplus is not flat), and
    attnlab's mixer holding the same weights."""
    torch.manual_seed(seed)
    theirs = MambaMixer(hf_config(use_bias, use_conv_bias), layer_idx=0).double()
    with torch.no_grad():
        theirs.A_log.uniform_(-2.3, 2.3)
        theirs.D.normal_()
        theirs.dt_proj.bias.uniform_(-4.0, 1.0)
    options = MambaOptions(
        d_state=STATE, d_conv=KERNEL, dt_rank=RANK, bias=use_bias, conv_bias=use_conv_bias
    )
    ours = Mamba(options, WIDTH).double()
    held = theirs.state_dict()
    weights = {name: held[their_name(name)] for name in ours.state_dict()}
    assert {their_name(n) for n in weights} == set(held)
    ours.load_state_dict(weights)
    return ours.to(dtype).eval(), theirs.to(dtype).eval()


def gradients(output, tensors, seed=1):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    return torch.autograd.grad((output * weights.to(output.dtype)).sum(), tensors)


def inputs(dtype, batch=3, length=29, seed=2):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, WIDTH, generator=generator, dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------ forward
@pytest.mark.parametrize("use_bias, use_conv_bias", [(False, True), (True, True), (False, False)])
def test_mamba_is_transformers_mixer_in_float64(use_bias, use_conv_bias):
    ours, theirs = pair(use_bias=use_bias, use_conv_bias=use_conv_bias)
    x = inputs(torch.float64)
    with torch.no_grad(), KeepFloat64():
        expected = theirs(x)
    got = ours(x)
    assert expected.abs().max() > 0.1  # not a comparison of two near-zero outputs
    torch.testing.assert_close(got, expected, **F64)


@pytest.mark.parametrize("scan", ["torch", "attnlab's kernel"])
def test_mamba_is_transformers_mixer_in_float32(scan):
    """transformers as it is; attnlab's parallel scan, or its fused CPU scan (which it takes when
    training on a CPU with its kernels enabled)."""
    ours, theirs = pair(torch.float32)
    x = inputs(torch.float32)
    with torch.no_grad():
        expected = theirs(x)
    if scan == "torch":
        got = ours(x)
    else:
        assert kernel.load(), "the CPU kernels did not build"
        with kernel.enabled():
            assert kernel.scan_applies(x.requires_grad_(), ours.A_log)
            got = ours(x)
    torch.testing.assert_close(got, expected, **F32)


def test_the_models_mamba_layer_loads_transformers_weights():
    """The layer a model builds by name ('mamba' in its mixer) takes the same weights."""
    options = mixer_options("mamba", {"d_state": STATE, "dt_rank": RANK}, "GPTConfig")
    context = MixerContext(
        d_model=WIDTH,
        context_length=32,
        n_heads=4,
        n_kv_heads=None,
        causal=True,
        bias=True,
        dropout=0.0,
        layer=0,
        n_layers=1,
    )
    built = mixer_spec("mamba").build(options, context).double().eval()
    ours, theirs = pair()
    built.load_state_dict(ours.state_dict())
    x = inputs(torch.float64, length=9)
    with torch.no_grad(), KeepFloat64():
        torch.testing.assert_close(built(x), theirs(x), **F64)


# ------------------------------------------------------------------ gradients
def test_mamba_gradients_are_transformers_mixers_in_float64():
    """With respect to the input and to every weight, each against its counterpart."""
    ours, theirs = pair(use_bias=True)
    x = inputs(torch.float64, length=13).requires_grad_()
    names = [name for name, _ in ours.named_parameters()]
    their_parameters = dict(theirs.named_parameters())
    assert {their_name(n) for n in names} == set(their_parameters)
    with KeepFloat64():
        expected = gradients(theirs(x), [x, *(their_parameters[their_name(n)] for n in names)])
    got = gradients(ours(x), [x, *ours.parameters()])
    for name, a, b in zip(["input", *names], got, expected, strict=True):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, **F64, msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------ decoding
def decode_both(ours, theirs, x, prompt):
    """The prompt at once, then one position at a time: attnlab through its RecurrentState,
    transformers through its DynamicCache. Returns both outputs (B, T, D) and both caches."""
    state, cache = ours.new_cache(), DynamicCache(config=theirs.config)
    mine = [ours(x[:, :prompt], cache=state)]
    hers = [theirs(x[:, :prompt], cache=cache)]
    for t in range(prompt, x.size(1)):
        mine.append(ours(x[:, t : t + 1], cache=state))
        hers.append(theirs(x[:, t : t + 1], cache=cache))
    return torch.cat(mine, 1), torch.cat(hers, 1), state, cache


@decoding
@torch.no_grad()
@pytest.mark.parametrize("prompt", [1, 2, 7])
def test_mamba_decodes_as_transformers_mixer_with_its_cache_in_float64(prompt):
    """Prompts shorter and longer than the convolution; each step's output, and the states both
    hold at the end: the SSM state h (B, E, N), and the convolution's last inputs, which
    attnlab keeps as (B, K-1, E) and transformers as (B, E, K)."""
    ours, theirs = pair(use_bias=True)
    x = inputs(torch.float64, length=15)
    with KeepFloat64():
        got, expected, state, cache = decode_both(ours, theirs, x, prompt)
        whole = theirs(x)
    torch.testing.assert_close(expected, whole, **F64)  # transformers agrees with itself
    torch.testing.assert_close(got, expected, **F64)
    torch.testing.assert_close(state.get("ssm"), cache.get_recurrent_state(0), **F64)
    their_window = cache.get_conv_state(0)[:, :, 1:].transpose(1, 2)
    torch.testing.assert_close(state.get("conv"), their_window, **F64)


@decoding
@torch.no_grad()
def test_mamba_decodes_as_transformers_mixer_with_its_cache_in_float32():
    ours, theirs = pair(torch.float32)
    x = inputs(torch.float32, length=12)
    got, expected, _, _ = decode_both(ours, theirs, x, prompt=4)
    torch.testing.assert_close(got, expected, **F32)


# ------------------------------------------------------------------ what both have
def test_the_defaults_and_initial_dynamics_are_transformers():
    """Δ's rank ('auto' = ceil(D/16)), the convolution's width, the expansion, the state size,
    A = -(1, ..., N) and D = 1 at initialisation, and Δ's bias set so softplus of it starts in
    [dt_min, dt_max] (drawn at random on both sides)."""
    options = MambaOptions()
    for width in (8, 16, 17, 40, 768):
        config = MambaConfig(hidden_size=width, num_hidden_layers=1)
        assert options.rank(width) == config.time_step_rank
        assert (options.d_state, options.d_conv, options.expand) == (
            config.state_size,
            config.conv_kernel,
            config.expand,
        )
        assert (options.dt_min, options.dt_max, options.dt_floor) == (
            config.time_step_min,
            config.time_step_max,
            config.time_step_floor,
        )
    ours, theirs = Mamba(options, 40), MambaMixer(MambaConfig(hidden_size=40), layer_idx=0)
    torch.testing.assert_close(ours.A_log, theirs.A_log, rtol=0, atol=0)
    torch.testing.assert_close(ours.D, theirs.D, rtol=0, atol=0)
    for layer in (ours.dt_projection, theirs.dt_proj):
        dt = torch.nn.functional.softplus(layer.bias)
        assert dt.min() >= options.dt_min * (1 - 1e-5) and dt.max() <= options.dt_max * (1 + 1e-5)
        assert layer.weight.abs().max() <= options.rank(40) ** -0.5
