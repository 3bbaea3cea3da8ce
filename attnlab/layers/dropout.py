"""Dropout (Srivastava et al., 2014), as every layer and model applies it.

Inactive (evaluation, or p = 0), it returns x and calls nothing: decoding one token is dominated
by per-call overhead. In training on a CPU it takes attnlab's kernel (attnlab/kernels/dropout.cpp),
whose mask is a hash of each element's index: 1-3 ms for 4M elements on two cores, where torch
draws its mask from a Mersenne Twister in 23-25 ms (33 ms compiled)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnlab.kernels import cpu as cpu_kernels


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """x with each element zeroed with probability p and the others divided by 1 - p, while
    training; x itself otherwise."""
    if not (training and p):
        return x
    if cpu_kernels.dropout_applies(x, p):
        return cpu_kernels.dropout(x, p)
    return F.dropout(x, p, True)
