"""The short causal convolution that Hyena and Mamba put after their input projections.

Dimensions: B batch, T positions, C channels, K kernel width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv1d(nn.Conv1d):
    """A depthwise convolution over time in which position t reads positions t-K+1 .. t only.

    Works on (B, T, C) and takes the K-1 inputs before x (zeros at the start of a sequence), so
    decoding one token at a time gives what the whole sequence gives at once.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias)

    def forward(
        self, x: torch.Tensor, past: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, C); past: (B, K-1, C) or None. Returns the output (B, T, C) and the last
        K-1 inputs, the `past` of the next call."""
        keep = self.kernel_size[0] - 1
        if past is None:
            past = x.new_zeros(x.size(0), keep, x.size(2))
        window = torch.cat([past.to(x.dtype), x], 1)  # (B, K-1+T, C)
        y = F.conv1d(window.transpose(1, 2), self.weight, self.bias, groups=self.groups)
        return y.transpose(1, 2), window[:, window.size(1) - keep :]  # (B, T, C), (B, K-1, C)
