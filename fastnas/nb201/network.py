"""The NAS-Bench-201 network of a fixed cell: xautodl's ``TinyNetwork`` with ``InferCell``s.

    stem:    conv3x3(in_channels -> C, bias-free), BN
    stage 1: N cells at C        then ResNet basic block C -> 2C, stride 2
    stage 2: N cells at 2C       then ResNet basic block 2C -> 4C, stride 2
    stage 3: N cells at 4C
    head:    BN, ReLU, global average pooling, linear(4C -> num_classes)

A cell keeps its channels and resolution: node 0 is the cell's input, node ``j`` is
``sum_{i<j} op_ij(node_i)``, the output is node 3. Its ops: ``none`` is ``x * 0``,
``skip_connect`` the identity, ``nor_conv_kxk`` ReLU -> conv kxk (stride 1, padding k // 2,
bias-free) -> BN, ``avg_pool_3x3`` a 3x3 average pool (stride 1, padding 1, padding not
counted). The basic block is ``ReLUConvBN_3x3(stride 2) -> ReLUConvBN_3x3`` plus the shortcut
``avgpool 2x2 -> conv1x1`` (bias-free, no BN). Every BN is affine and tracks running statistics.
The benchmark's network is ``C=16, N=5``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import Identity, ReLUConvBN, Zero
from .cell import NB201Cell


def make_op(name: str, C: int) -> nn.Module:
    """An NB201 op at ``C`` channels, stride 1 (the cells of the final network)."""
    if name == "none":
        return Zero(1)
    if name == "skip_connect":
        return Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(C, C, 1, 1, 0)
    if name == "nor_conv_3x3":
        return ReLUConvBN(C, C, 3, 1, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown NB201 op {name!r}")


class InferCell(nn.Module):
    """One NB201 cell with fixed ops: ``edges[e]`` is the op of ``NB201_EDGES[e]``."""

    def __init__(self, cell: NB201Cell, C: int):
        super().__init__()
        self.cell = cell
        self._edges = [(target, source) for target, source, _ in cell.edges()]
        self.edges = nn.ModuleList(make_op(op, C) for _, _, op in cell.edges())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for target in range(1, 4):
            nodes.append(sum(op(nodes[source]) for (t, source), op
                             in zip(self._edges, self.edges) if t == target))
        return nodes[-1]


class ResNetBasicBlock(nn.Module):
    """``conv_b(conv_a(x)) + shortcut(x)`` from ``C_in`` to ``C_out`` at stride 2."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                                        nn.Conv2d(C_in, C_out, 1, stride=1, padding=0,
                                                  bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    """xautodl's ``TinyNetwork(C, N, genotype, num_classes)`` (see the module docstring);
    ``forward`` returns the logits only. ``in_channels`` generalizes the RGB stem."""

    def __init__(self, cell: NB201Cell, C: int = 16, N: int = 5, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        if not isinstance(cell, NB201Cell):
            raise TypeError(f"cell must be a fastnas.nb201.NB201Cell, got {type(cell).__name__}")
        self.cell = cell
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_prev = C
        for stage, C_curr in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                self.cells.append(ResNetBasicBlock(C_prev, C_curr))
            self.cells.extend(InferCell(cell, C_curr) for _ in range(N))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.drop_path_prob = 0.0  # the trainer's schedule sets it; NB201 has no drop path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.stem(x)
        for cell in self.cells:
            feature = cell(feature)
        out = self.global_pooling(self.lastact(feature))
        return self.classifier(out.flatten(1))


__all__ = ["InferCell", "NB201Network", "ResNetBasicBlock"]
