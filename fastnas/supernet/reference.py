"""The reference DARTS supernet (the oracle): every candidate op on every edge, mixed by
softmax(alpha).

Edge ``(i, j)`` from state ``j`` to node ``i`` computes ``sum_k softmax(alpha_e)_k * op_k(x_j)``
over ``PRIMITIVES``; node ``i`` sums its ``i + 2`` incoming edges; the cell concatenates its last
``multiplier`` nodes. Edges are numbered node by node (node 0: edges 0-1, node 1: edges 2-4, ...),
so each alpha matrix is ``[sum_{i < nodes} (i + 2), len(PRIMITIVES)]`` = ``[14, 8]`` for 4 nodes.

This module is the paper code's semantics, one module per op, and stays the oracle for tests and
the baseline for benchmarks; ``fastnas.supernet.fast`` runs the same parameters faster.
"""
from __future__ import annotations

from typing import Iterable, Iterator, List, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..genotypes import Genotype
from ..ops import PRIMITIVES, FactorizedReduce, ReLUConvBN, cell_plan, make_op
from .recompute import checkpoint_module
from .stages import stage


def num_edges(num_nodes: int) -> int:
    """Edges of a cell with ``num_nodes`` intermediate nodes: ``sum_i (i + 2)``."""
    return sum(i + 2 for i in range(num_nodes))


class MixedOp(nn.Module):
    """``sum_k w_k * op_k(x)`` over ``PRIMITIVES``; pools are followed by BN(affine=False)."""

    def __init__(self, C: int, stride: int, primitives: Sequence[str] = PRIMITIVES):
        super().__init__()
        self.ops = nn.ModuleList()
        for name in primitives:
            op = make_op(name, C, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self.ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class SearchCell(nn.Module):
    """A cell of the supernet: ``num_nodes`` nodes, each a sum of MixedOps over earlier states."""

    def __init__(self, num_nodes, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.num_nodes = num_nodes
        self.multiplier = multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(C, 2 if reduction and j < 2 else 1)
            for i in range(num_nodes) for j in range(i + 2))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.num_nodes):
            node = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self.multiplier:], dim=1)


class SearchNetwork(nn.Module):
    """The DARTS search network for 32x32-style images (CIFAR macro structure).

    Alphas are registered parameters ``alphas_normal`` and ``alphas_reduce`` (init
    ``1e-3 * randn``); ``weights()`` and ``alphas()`` iterate the two groups separately.
    ``multiplier`` (default ``num_nodes``) is how many of the last nodes each cell concatenates.
    ``checkpointing`` (or ``set_checkpointing``) recomputes the chosen cells in backward instead
    of keeping their activations (``fastnas.supernet.recompute``).
    """

    def __init__(self, C=16, num_classes=10, layers=8, num_nodes=4, multiplier=None,
                 stem_multiplier=3, in_channels=3,
                 checkpointing: Union[bool, Iterable[int]] = False):
        super().__init__()
        multiplier = num_nodes if multiplier is None else multiplier
        if not 1 <= multiplier <= num_nodes:
            raise ValueError(f"multiplier must be in 1..num_nodes ({num_nodes}), got {multiplier}")
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.num_nodes, self.multiplier = num_nodes, multiplier
        self.stem_multiplier, self.in_channels = stem_multiplier, in_channels
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_prev_prev = C_prev = C_curr
        self.cells = nn.ModuleList()
        for spec in cell_plan(layers, C):
            self.cells.append(SearchCell(num_nodes, multiplier, C_prev_prev, C_prev, spec.C,
                                         spec.reduction, spec.reduction_prev))
            C_prev_prev, C_prev = C_prev, multiplier * spec.C
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        shape = (num_edges(num_nodes), len(PRIMITIVES))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(shape))
        self.set_checkpointing(checkpointing)

    def set_checkpointing(self, cells: Union[bool, Iterable[int]] = True) -> None:
        """Recompute cells in backward: ``True`` every cell, ``False`` none, or those indices."""
        if isinstance(cells, bool):
            cells = range(len(self.cells)) if cells else ()
        cells = set(cells)
        bad = sorted(c for c in cells if not 0 <= c < len(self.cells))
        if bad:
            raise ValueError(f"no such cells {bad}; the network has {len(self.cells)}")
        self.checkpointed = cells

    def forward(self, x):
        w_normal = F.softmax(self.alphas_normal, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce, dim=-1)
        s0 = s1 = self.stem(x)
        for index, cell in enumerate(self.cells):
            w = w_reduce if cell.reduction else w_normal
            if index in self.checkpointed and torch.is_grad_enabled():
                with stage("checkpointed cell inputs"):
                    s0, s1 = s1, checkpoint_module(cell, s0, s1, w)
            else:
                s0, s1 = s1, cell(s0, s1, w)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def alphas(self) -> List[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def weights(self) -> Iterator[nn.Parameter]:
        ids = {id(a) for a in self.alphas()}
        return (p for p in self.parameters() if id(p) not in ids)

    def named_weights(self):
        ids = {id(a) for a in self.alphas()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in ids)

    def genotype(self) -> Genotype:
        return derive_genotype(self.alphas_normal, self.alphas_reduce, self.num_nodes,
                               self.multiplier)


def _derive_cell(weights: torch.Tensor, num_nodes: int, primitives: Sequence[str]):
    """Per node: the 2 incoming edges with the largest non-``none`` weight, each with its best
    non-``none`` op (the paper's rule; ties go to the lower index)."""
    none = primitives.index("none") if "none" in primitives else None
    masked = weights.clone()
    if none is not None:
        masked[:, none] = -float("inf")
    gene, start = [], 0
    for i in range(num_nodes):
        block = masked[start:start + i + 2]
        strength = block.max(dim=1).values.tolist()
        edges = sorted(range(i + 2), key=lambda j: -strength[j])[:2]
        for j in edges:
            gene.append((primitives[int(block[j].argmax())], j))
        start += i + 2
    return gene


def derive_genotype(alphas_normal, alphas_reduce, num_nodes, multiplier,
                    primitives: Sequence[str] = PRIMITIVES) -> Genotype:
    """The discrete genotype of the paper's rule, from the softmax of each alpha row (in the
    alphas' own precision, at least float32); concat = the last ``multiplier`` nodes."""
    def weights(alphas):
        a = alphas.detach().cpu()
        if a.dtype in (torch.float16, torch.bfloat16):
            a = a.float()
        return F.softmax(a, dim=-1)

    with torch.no_grad():
        normal = _derive_cell(weights(alphas_normal), num_nodes, list(primitives))
        reduce = _derive_cell(weights(alphas_reduce), num_nodes, list(primitives))
    concat = list(range(2 + num_nodes - multiplier, num_nodes + 2))
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


__all__ = ["MixedOp", "SearchCell", "SearchNetwork", "derive_genotype", "num_edges"]
