"""Plain-torch references of the kernels: the torch backend, and what the tests compare against.

Each computes the same function as its kernel in the dtype it is given (the tests feed float64).
"""
from __future__ import annotations

from collections.abc import Sequence

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


def channel_multiplier(op: str, x: torch.Tensor, weight: torch.Tensor) -> int:
    """``M`` of a depthwise conv of ``x`` [N, C, H, W] with ``weight`` [M*C, 1, kh, kw]; raises
    ``ValueError`` naming both shapes unless the weight's first dim is a positive multiple of C."""
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be [N, C, H, W], got shape {tuple(x.shape)}")
    C = x.shape[1]
    rows = weight.shape[0] if weight.dim() else 0
    if weight.dim() != 4 or weight.shape[1] != 1 or C < 1 or rows < C or rows % C:
        raise ValueError(f"{op}: depthwise weight must be [M*C, 1, kh, kw] with C = {C} and an "
                         f"integer M >= 1; got weight {tuple(weight.shape)} for x "
                         f"{tuple(x.shape)}")
    return rows // C


def depthwise_conv2d(x, weight, stride=1, padding=0, dilation=1):
    """``F.conv2d(torch.cat([x] * M, 1), weight, None, stride, padding, dilation, groups=M*C)``
    for ``weight`` [M*C, 1, kh, kw]: output channel ``m*C + c`` is ``x[:, c]`` convolved with
    ``weight[m*C + c]``. Computed without repeating ``x``: ``groups=C`` puts the ``M`` outputs of
    input channel ``c`` at ``c*M + m``, so the weight goes in as ``[C, M]`` and the output
    channels are put back in ``[M, C]`` order."""
    C = x.shape[1]
    M = channel_multiplier("depthwise_conv2d", x, weight)
    if M == 1:
        return F.conv2d(x, weight, None, stride, padding, dilation, groups=C)
    w_cm = weight.unflatten(0, (M, C)).transpose(0, 1).flatten(0, 1)
    y_cm = F.conv2d(x, w_cm, None, stride, padding, dilation, groups=C)
    y = y_cm.unflatten(1, (C, M)).transpose(1, 2).flatten(1, 2)
    if y_cm.is_contiguous(memory_format=torch.channels_last) and not y_cm.is_contiguous():
        y = y.contiguous(memory_format=torch.channels_last)  # as conv2d keeps channels_last
    return y
