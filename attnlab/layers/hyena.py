"""Hyena: a token mixer of long implicit convolutions and data-controlled gates (Poli et al.
2023, "Hyena Hierarchy: Towards Larger Convolutional Language Models").

Dimensions: B batch, T positions, D model width, N order, L longest sequence (the context),
F positional features, W filter-network width.

    x¹..xᴺ, v = split(causal short conv(W_in x))          (B, T, D) each, kernel 3
    z¹ = v;  zⁿ⁺¹ = xⁿ ⊙ (hⁿ * zⁿ);  out = W_out zᴺ⁺¹       * a causal convolution along T
    hⁿ(t) = FFN(features(t)) ⊙ window(t)                   implicit: one filter per channel

The filters are as long as the sequence and come from a small network of t (section 3.3): sine
and cosine features of t, two layers with sine activations, then an exponentially decaying
window whose rate differs by channel. Convolutions run as FFTs of size 2T (no wrap-around),
O(T log T). Decoding keeps every order's convolution inputs for the last L positions and the
filters computed once, and sums the convolution at the new position directly: O(L) per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.config import check_positive, check_types
from attnlab.errors import ConfigError
from attnlab.layers.caches import RecurrentState
from attnlab.layers.contracts import (
    keep_init,
    learning_rate_scale,
    no_weight_decay,
    writes_residual,
)
from attnlab.layers.convolution import CausalConv1d
from attnlab.layers.mixers import MixerContext, register_mixer

# The window (the reference code's ExponentialModulation): channel rates spread so that the
# filters fall to DECAY_TARGET between FAST and SLOW fractions of the longest sequence.
DECAY_TARGET, DECAY_FAST, DECAY_SLOW = 1e-2, 0.3, 1.5


def fft_causal_conv(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """y_t = Σ_{s<=t} h_{t-s} u_s, per channel, for u (B, T, D) and h (T, D), by FFTs of size
    2T: the zero padding keeps the circular convolution from wrapping the end onto the start."""
    size = 2 * u.size(1)
    dtype = torch.promote_types(u.dtype, torch.float32)  # no half-precision FFTs
    spectrum = torch.fft.rfft(u.to(dtype), n=size, dim=1) * torch.fft.rfft(
        h.to(dtype), n=size, dim=0
    )
    return torch.fft.irfft(spectrum, n=size, dim=1)[:, : u.size(1)].to(u.dtype)


class Sine(nn.Module):
    """sin(ω ⊙ x) with a learned frequency per channel (the filter network's activation)."""

    def __init__(self, width: int, frequency: float):
        super().__init__()
        self.initial = frequency
        self.frequency = nn.Parameter(torch.empty(width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.frequency, self.initial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.frequency * x)


class ImplicitFilter(nn.Module):
    """The long filters of every order: (N, T, D) for the first T of L positions."""

    # Sampled at L points of [0, 1] (and windowed over them): a model of a shorter context has
    # other filters, not the first positions of these (train --init refuses to crop one).
    stretches_over_context = True

    def __init__(self, options: HyenaOptions, d_model: int, max_length: int):
        super().__init__()
        o, self.order, self.max_length = options, options.order, max_length
        width = o.filter_order
        self.network = nn.Sequential(
            nn.Linear(o.positional_features, width),
            Sine(width, o.sine_frequency),
            nn.Linear(width, width),
            Sine(width, o.sine_frequency),
            nn.Linear(width, o.order * d_model, bias=False),
        )
        linears = [m for m in self.network if isinstance(m, nn.Linear)]
        # The paper trains the filters in an optimizer group of their own, without weight decay;
        # their own (default) scale keeps the sines out of their flat ends.
        no_weight_decay(*(m.weight for m in linears))
        learning_rate_scale(o.filter_lr_scale, *self.network.parameters())
        keep_init(*(p for m in linears for p in m.parameters()))
        t = torch.linspace(0, 1, max_length)[:, None]  # (L, 1)
        self.register_buffer("features", _features(t, o.positional_features), persistent=False)
        rates = torch.linspace(
            math.log(DECAY_TARGET) / DECAY_SLOW,
            math.log(DECAY_TARGET) / DECAY_FAST,
            o.order * d_model,
        ).abs()
        self.register_buffer("window", torch.exp(-t * rates), persistent=False)  # (L, N·D)

    def reset_parameters(self) -> None:
        for layer in self.network:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()  # torch's default: uniform in ±1/√fan_in

    def forward(self, length: int) -> torch.Tensor:
        if length > self.max_length:
            raise ValueError(
                f"Hyena's filters cover context_length={self.max_length} positions; got a "
                f"sequence of {length}"
            )
        filters = self.network(self.features[:length]) * self.window[:length]  # (T, N·D)
        return filters.view(length, self.order, -1).transpose(0, 1)  # (N, T, D)


def _features(t: torch.Tensor, count: int) -> torch.Tensor:
    """t itself and (count-1)/2 bands of cos and -sin of 2π·f·t (the reference code's
    PositionalEmbedding): (L, count) for t (L, 1) in [0, 1]."""
    bands = (count - 1) // 2
    length = t.size(0)
    angles = (
        2
        * math.pi
        * torch.linspace(1e-4, bands - 1, bands)
        * torch.arange(length)[:, None]
        / length
    )
    return torch.cat([t, torch.cos(angles), -torch.sin(angles)], 1)


@dataclass(frozen=True)
class HyenaOptions:
    order: int = 2  # N: gates and long convolutions per layer
    filter_order: int = 64  # W: width of the filter network
    short_kernel: int = 3  # width of the causal convolution after the input projection
    positional_features: int = 33  # F (odd): t and cos/sin bands that the filter network reads
    sine_frequency: float = 1.0  # initial ω of the filter network's sine activations
    filter_lr_scale: float = 1.0  # the filter networks' learning rate, times the model's

    def __post_init__(self):
        check_types(self)
        name = "HyenaOptions"
        check_positive(
            name,
            order=self.order,
            filter_order=self.filter_order,
            sine_frequency=self.sine_frequency,
            filter_lr_scale=self.filter_lr_scale,
        )
        if self.short_kernel < 2:
            raise ConfigError(f"{name}.short_kernel must be >= 2, got {self.short_kernel}")
        if self.positional_features < 3 or self.positional_features % 2 == 0:
            raise ConfigError(
                f"{name}.positional_features must be odd and >= 3, got {self.positional_features}"
            )


class Hyena(nn.Module):
    def __init__(self, options: HyenaOptions, d_model: int, max_length: int, bias: bool = True):
        """max_length: L, the longest sequence (the filters' length)."""
        super().__init__()
        self.order, self.max_length = options.order, max_length
        width = (options.order + 1) * d_model
        self.input_projection = nn.Linear(d_model, width, bias=bias)
        self.short_convolution = CausalConv1d(width, options.short_kernel)
        self.filter = ImplicitFilter(options, d_model, max_length)
        self.output_projection = nn.Linear(d_model, d_model, bias=bias)
        writes_residual(self.output_projection.weight)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: RecurrentState | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D), T <= L. mask is ignored: the convolutions are causal.
        With a cache, x is the prompt (an empty cache) or one new position."""
        z = self.input_projection(x)  # (B, T, (N+1)·D)
        z, conv_state = self.short_convolution(z, None if cache is None else cache.get("conv"))
        *gates, v = z.chunk(self.order + 1, dim=-1)  # (B, T, D) each
        if cache is None or cache.empty:
            v = self._sequence(gates, v, cache)
        else:
            v = self._step(gates, v, cache)
        if cache is not None:
            cache.set(conv=conv_state)
        return self.output_projection(v)

    def _sequence(self, gates, v, cache: RecurrentState | None) -> torch.Tensor:
        """Whole sequences by FFT; with an (empty) cache, also fill it for decoding."""
        length = v.size(1)
        filters = self.filter(length if cache is None else max(length, self.max_length))
        inputs = []
        for n, gate in enumerate(gates):
            inputs.append(v)
            v = gate * fft_causal_conv(v, filters[n, :length])
        if cache is not None:
            held = v.new_zeros(v.size(0), self.order, self.max_length, v.size(2))
            held[:, :, :length] = torch.stack(inputs, 1)
            position = torch.tensor(length, device=v.device)
            cache.set(inputs=held)
            cache.share(filters=filters.detach(), position=position)
        return v

    def _step(self, gates, v, cache: RecurrentState) -> torch.Tensor:
        """One new position from the cached inputs of the last L positions, a ring of L slots:
        position p sits in slot p mod L, and slot j lies (p - j) mod L positions back."""
        if v.size(1) != 1:
            raise ValueError("a Hyena decoding state takes several positions only while empty")
        position, inputs = cache.get("position"), cache.get("inputs")  # (B, N, L, D)
        slots = torch.arange(self.max_length, device=v.device)
        lags = (position - slots) % self.max_length  # (L,)
        taps = cache.get("filters")[:, lags] * (slots <= position)[:, None]  # (N, L, D)
        slot = (position % self.max_length).view(1)
        for n, gate in enumerate(gates):
            inputs[:, n].index_copy_(1, slot, v)
            v = gate * (inputs[:, n] * taps[n]).sum(1, keepdim=True)  # (B, 1, D)
        position.add_(1)
        return v

    def new_cache(self, max_length: int = 0, **options) -> RecurrentState:
        """The short convolution's last inputs, every order's inputs over the last L positions
        and the filters: fixed sizes, so it serves compiled decoding and slides past L."""
        return RecurrentState()


def build_hyena(options: HyenaOptions, context: MixerContext) -> Hyena:
    if not context.causal:
        raise ValueError("the 'hyena' mixer is causal only")
    return Hyena(options, context.d_model, context.context_length, context.bias)


register_mixer("hyena", HyenaOptions, build_hyena)
