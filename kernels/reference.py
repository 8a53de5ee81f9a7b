"""Plain-torch references of the kernels: the torch backend, and what the tests compare against.

Each computes the same function as its kernel in the dtype it is given (the tests feed float64).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def weighted_sum(xs: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """``sum_k w[k] * xs[k]``."""
    if len(xs) != w.numel():
        raise ValueError(f"weighted_sum: {len(xs)} tensors but {w.numel()} weights")
    out = w[0] * xs[0]
    for k in range(1, len(xs)):
        out = out + w[k] * xs[k]
    return out


def depthwise_conv2d(x, weight, stride=1, padding=0, dilation=1):
    """``F.conv2d(x, weight, None, stride, padding, dilation, groups=C)``, weight [C, 1, k, k]."""
    return F.conv2d(x, weight, None, stride, padding, dilation, groups=x.shape[1])


def sep_conv2d(x, dw_weight, pw_weight, stride=1, padding=0, dilation=1):
    """``pointwise(depthwise(relu(x)))``: ``pw_weight`` [C_out, C, 1, 1]."""
    return F.conv2d(depthwise_conv2d(F.relu(x), dw_weight, stride, padding, dilation), pw_weight)
