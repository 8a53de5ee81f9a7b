"""Final (discrete) networks built from a genotype: the paper's CIFAR and ImageNet macro structures.

``layers`` cells are stacked; the cells at depth ``layers // 3`` and ``2 * layers // 3`` are
reduction cells (stride 2, channels doubled). Each cell reads the outputs of the two cells before
it. An optional auxiliary classifier reads the cell at ``2 * layers // 3`` during training, and
drop path zeroes whole non-identity edges per sample with probability ``drop_path_prob``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .genotypes import Genotype
from .ops import FactorizedReduce, Identity, ReLUConvBN, cell_plan, drop_path, make_op


class Cell(nn.Module):
    """One discrete cell: node ``i`` is ``op_a(states[a]) + op_b(states[b])``."""

    def __init__(self, genotype: Genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        self._concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.multiplier = len(self._concat)
        self._steps = len(edges) // 2
        self._indices = [index for _, index in edges]
        self._ops = nn.ModuleList(
            make_op(name, C, 2 if reduction and index < 2 else 1, True) for name, index in edges)

    def forward(self, s0, s1, drop_prob: float = 0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            out = 0
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                out = out + h
            states.append(out)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier on the ``2 * layers // 3`` cell.

    The paper's CIFAR head pools 8x8 features with a 5x5 window at stride 3 (to 2x2); the ImageNet
    head pools 14x14 at stride 2 and, as the paper's experiments, has no BN after its second conv.
    Inputs smaller than the window (e.g. 8x8 digits give 2x2 here) are pooled adaptively to 2x2.
    """

    def __init__(self, C, num_classes, stride=3, second_bn=True):
        super().__init__()
        self.stride = stride
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768) if second_bn else nn.Identity(),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = F.relu(x)
        if min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, 5, stride=self.stride, padding=0, count_include_pad=False)
        else:
            x = F.adaptive_avg_pool2d(x, 2)
        x = self.features(x)
        return self.classifier(x.flatten(1))


class _Network(nn.Module):
    """Shared cell stack of the CIFAR and ImageNet networks; subclasses build the stem."""

    def _build_cells(self, genotype, C, num_classes, layers, auxiliary, C_stem, reduction_prev,
                     aux_stride, aux_second_bn):
        self._layers = layers
        self._auxiliary = auxiliary
        C_prev_prev = C_prev = C_stem
        self.cells = nn.ModuleList()
        C_to_auxiliary = None
        for spec in cell_plan(layers, C, stem_reduces=reduction_prev):
            cell = Cell(genotype, C_prev_prev, C_prev, spec.C, spec.reduction,
                        spec.reduction_prev)
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * spec.C
            if spec.index == 2 * layers // 3:
                C_to_auxiliary = C_prev
        if auxiliary:
            self.auxiliary_head = AuxiliaryHead(C_to_auxiliary, num_classes, aux_stride,
                                                aux_second_bn)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def _run_cells(self, s0, s1):
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux


def _check_args(C, num_classes, layers, genotype):
    if not isinstance(genotype, Genotype):
        raise TypeError(f"genotype must be a fastnas.Genotype, got {type(genotype).__name__}")
    for name, value in (("C", C), ("num_classes", num_classes), ("layers", layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if layers < 3:
        raise ValueError(f"layers must be at least 3 (two reduction cells and a normal one), "
                         f"got {layers}")


class NetworkCIFAR(_Network):
    """The paper's CIFAR network: 3x3 conv stem with ``3 * C`` channels, then the cells.

    ``forward`` returns ``(logits, logits_aux)``; ``logits_aux`` is None unless training with
    ``auxiliary=True``.
    """

    def __init__(self, C, num_classes, layers, auxiliary, genotype, in_channels=3,
                 drop_path_prob=0.0):
        super().__init__()
        _check_args(C, num_classes, layers, genotype)
        self.drop_path_prob = drop_path_prob
        C_stem = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_stem))
        self._build_cells(genotype, C, num_classes, layers, auxiliary, C_stem, False,
                          aux_stride=3, aux_second_bn=True)

    def forward(self, x):
        s = self.stem(x)
        return self._run_cells(s, s)


class NetworkImageNet(_Network):
    """The paper's ImageNet (mobile setting) network: two strided stems, then the cells."""

    def __init__(self, C, num_classes, layers, auxiliary, genotype, in_channels=3,
                 drop_path_prob=0.0):
        super().__init__()
        _check_args(C, num_classes, layers, genotype)
        self.drop_path_prob = drop_path_prob
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self._build_cells(genotype, C, num_classes, layers, auxiliary, C, True,
                          aux_stride=2, aux_second_bn=False)

    def forward(self, x):
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        return self._run_cells(s0, s1)


__all__ = ["AuxiliaryHead", "Cell", "NetworkCIFAR", "NetworkImageNet"]
