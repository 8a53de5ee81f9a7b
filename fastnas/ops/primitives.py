"""Candidate operations of the DARTS cell search space, and the building blocks around them.

Every op maps ``[N, C, H, W] -> [N, C, H / stride, W / stride]``. ``OPS`` is the registry from a
primitive's name to its constructor ``(C, stride, affine) -> nn.Module`` (ops of your own join it
through ``fastnas.ops.register``, ``registry.py``); ``PRIMITIVES`` lists the eight searched by
DARTS in the paper's order (the alpha columns follow this order).
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class ReLUConvBN(nn.Sequential):
    """``BN(conv(relu(x)))``: the preprocessing block of every cell, and NAS-Bench-201's
    ``nor_conv_kxk`` ops; ``conv`` and ``bn`` name its parts (what a fused plan reads).
    ``track_running_stats=False``: the BN normalizes with batch statistics in eval mode too."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True,
                 track_running_stats=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    @property
    def conv(self) -> nn.Conv2d:
        return self[1]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[2]


class DilConv(nn.Sequential):
    """``BN(pointwise(depthwise_dilated(relu(x))))``; ``depthwise``, ``pointwise`` and ``bn``
    name its parts (what a fused plan reads)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    @property
    def depthwise(self) -> nn.Conv2d:
        return self[1]

    @property
    def pointwise(self) -> nn.Conv2d:
        return self[2]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[3]


class SepConv(nn.Sequential):
    """Two stacked ``relu -> depthwise -> pointwise -> BN`` blocks (``DilConv``s ``first`` and
    ``second``); only the first is strided."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine=affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine=affine),
        )

    @property
    def first(self) -> DilConv:
        return self[0]

    @property
    def second(self) -> DilConv:
        return self[1]


class PoolBN(nn.Sequential):
    """A pooling op followed by ``BatchNorm2d(affine=False)``, as the search cell runs pools;
    ``pool`` and ``bn`` name its parts."""

    def __init__(self, pool: nn.Module, C: int):
        super().__init__(pool, nn.BatchNorm2d(C, affine=False))

    @property
    def pool(self) -> nn.Module:
        return self[0]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[1]


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The ``none`` op: a zero tensor of the strided output shape."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve H and W with two 1x1 stride-2 convs, the second shifted by one pixel, concatenated.

    The paper's code shifts by slicing ``x[:, :, 1:, 1:]``, which breaks on odd sizes; we pad one
    row and column of zeros first, which gives identical outputs on even sizes and matching shapes
    on odd ones.
    """

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        return self.bn(factorized_convs(self.relu(x), self.conv_1.weight, self.conv_2.weight))


def factorized_convs(x, weight_1, weight_2):
    """The two halves of a factorized reduction, concatenated over channels:

        y = cat([conv2d(x, weight_1, stride=2), conv2d(x', weight_2, stride=2)], dim=1),
        x'[:, :, h, w] = x[:, :, h + 1, w + 1]   (zero past the last row and column),

    for 1x1 weights, i.e. ``y[:, o, i, j] = sum_c weight_1[o, c] x[:, c, 2i, 2j]`` and
    ``sum_c weight_2[o, c] x[:, c, 2i + 1, 2j + 1]``.

    Each half is computed as the stride-1 conv of the subsampled input, never as a stride-2 conv:
    oneDNN's AVX2 kernel for the weight gradient of a stride-2 1x1 conv (``jit_1x1:avx2``
    backward_weights, oneDNN 3.12 in torch 2.14) writes past the end of a buffer it is given when
    the input is channels_last with few channels (2 to 6 seen; 8 or more not), which corrupts the
    heap: on CPUs without AVX-512 the process then aborts, segfaults or bus-errors at some later
    allocation (issue 23; ``tests/test_avx2_memory.py``).
    """
    even = x[:, :, ::2, ::2]
    odd = F.pad(x, (0, 1, 0, 1))[:, :, 1::2, 1::2]
    return torch.cat([F.conv2d(even, weight_1), F.conv2d(odd, weight_2)], dim=1)


def _conv_7x1_1x7(C, stride, affine):
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )


OPS: Dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1,
                                                           count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: (Identity() if stride == 1
                                               else FactorizedReduce(C, C, affine=affine)),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
    "conv_7x1_1x7": _conv_7x1_1x7,
    # NAS-Bench-201's convolutions (``fastnas.nb201``; its pool is the plain ``avg_pool_3x3``)
    "nor_conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine=affine),
    "nor_conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine=affine),
}


# What an unknown op name's error adds: where ops of one's own come from (``registry``).
UNKNOWN_OP_HINT = ("an op of your own must be registered first (--plugins MODULE, "
                   "fastnas.ops.register)")


def make_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    """Build the op ``name``; unknown names raise a ValueError listing the known ones."""
    try:
        factory = OPS[name]
    except KeyError:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(sorted(OPS))}; "
                         f"{UNKNOWN_OP_HINT}") from None
    return factory(C, stride, affine)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest by ``1/keep``.

    ``E[drop_path(x)] = x``. Out of place, and on the device and dtype of ``x``.
    """
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep
