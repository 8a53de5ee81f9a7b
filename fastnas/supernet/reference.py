"""The reference supernet (the oracle): every candidate op of the space on every edge, mixed by
the relaxation's weights (DARTS: ``softmax(alpha)``).

The cell's shape and ops come from a ``fastnas.space.CellSpace`` (default: the DARTS space).
Edge ``(i, j)`` from state ``j`` to node ``i`` computes ``sum_k w_e,k * op_k(x_j)`` over the
space's ops; node ``i`` sums its incoming edges; the cell concatenates its last ``multiplier``
nodes. Edges are numbered node by node (``CellSpace.edges``; DARTS, 4 nodes: node 0 edges 0-1,
node 1 edges 2-4, ...), so each alpha matrix is ``[num_edges, len(ops)]`` = ``[14, 8]``.

This module is the paper code's semantics, one module per op, and stays the oracle for tests and
the baseline for benchmarks; ``fastnas.supernet.fast`` runs the same parameters faster.
"""
from __future__ import annotations

from typing import Iterable, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..genotypes import Genotype
from ..ops import (
    PRIMITIVES,
    FactorizedReduce,
    PoolBN,
    ReLUConvBN,
    cell_plan,
    is_registered,
    make_op,
)
from ..space import (
    ArchitectureParameters,
    CellSpace,
    Relaxation,
    Softmax,
    attach_state_dict_names,
    darts_space,
)
from .recompute import checkpoint_module
from .stages import stage


def num_edges(num_nodes: int) -> int:
    """Edges of a DARTS cell with ``num_nodes`` intermediate nodes: ``sum_i (i + 2)``."""
    return darts_space(num_nodes).num_edges


class MixedOp(nn.Module):
    """``sum_k w_k * op_k(x)`` over ``primitives`` (default ``PRIMITIVES``); the built-in pools
    are followed by BN(affine=False) (``PoolBN``), a registered op runs as built."""

    def __init__(self, C: int, stride: int, primitives: Sequence[str] = PRIMITIVES):
        super().__init__()
        self.primitives = tuple(primitives)
        self.ops = nn.ModuleList()
        for name in primitives:
            op = make_op(name, C, stride, affine=False)
            if "pool" in name and not is_registered(name):
                op = PoolBN(op, C)
            self.ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class SearchCell(nn.Module):
    """A cell of the supernet: the space's nodes, each a sum of MixedOps over earlier states
    (``space`` default: the DARTS space of ``num_nodes`` and ``multiplier``; two inputs)."""

    def __init__(self, num_nodes, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 space: Optional[CellSpace] = None):
        super().__init__()
        space = darts_space(num_nodes, multiplier) if space is None else space
        if space.num_inputs != 2:
            raise ValueError(f"the DARTS cell reads two inputs; the space has "
                             f"{space.num_inputs}")
        self.space = space
        self.reduction = reduction
        self.num_nodes = space.num_nodes
        self.multiplier = space.multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(C, 2 if reduction and e.state < space.num_inputs else 1, space.ops)
            for e in space.edges)

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.num_nodes):
            rows = range(self.space.rows(i).start, self.space.rows(i).stop)
            states.append(sum(self.edges[r](h, weights[r]) for r, h in zip(rows, states)))
        return torch.cat(states[-self.multiplier:], dim=1)


class SearchNetwork(nn.Module):
    """The DARTS search network for 32x32-style images (CIFAR macro structure).

    ``space`` (default the DARTS space of ``num_nodes`` and ``multiplier``) gives the cells' ops
    and shape, ``relaxation`` (default ``Softmax``) the mixing weights. The alphas are the
    module ``arch`` (``fastnas.space.ArchitectureParameters``), named ``alphas_normal`` and
    ``alphas_reduce`` in the ``state_dict`` and as attributes (init ``1e-3 * randn``);
    ``weights()`` and ``alphas()`` iterate the two groups separately.
    ``multiplier`` (default ``num_nodes``) is how many of the last nodes each cell concatenates.
    ``checkpointing`` (or ``set_checkpointing``) recomputes the chosen cells in backward instead
    of keeping their activations (``fastnas.supernet.recompute``).
    """

    def __init__(self, C=16, num_classes=10, layers=8, num_nodes=4, multiplier=None,
                 stem_multiplier=3, in_channels=3,
                 checkpointing: Union[bool, Iterable[int]] = False,
                 space: Optional[CellSpace] = None, relaxation: Optional[Relaxation] = None):
        super().__init__()
        if space is None:
            multiplier = num_nodes if multiplier is None else multiplier
            if not 1 <= multiplier <= num_nodes:
                raise ValueError(f"multiplier must be in 1..num_nodes ({num_nodes}), "
                                 f"got {multiplier}")
            space = darts_space(num_nodes, multiplier)
        if space.cell_types != ("normal", "reduce"):
            raise ValueError(f"the DARTS network has normal and reduce cells; the space has "
                             f"{list(space.cell_types)}")
        self.space = space
        num_nodes, multiplier = space.num_nodes, space.multiplier
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
                                         spec.reduction, spec.reduction_prev, space))
            C_prev_prev, C_prev = C_prev, multiplier * spec.C
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.arch = ArchitectureParameters(space, relaxation or Softmax())
        attach_state_dict_names(self, "arch")
        self.set_checkpointing(checkpointing)

    def __getattr__(self, name: str):
        if name.startswith("alphas_"):  # alphas_normal, alphas_reduce: the arch module's
            arch = self._modules.get("arch")
            if arch is not None and name in arch._parameters:
                return arch._parameters[name]
        return super().__getattr__(name)

    @property
    def relaxation(self) -> Relaxation:
        return self.arch.relaxation

    def set_checkpointing(self, cells: Union[bool, Iterable[int]] = True) -> None:
        """Recompute cells in backward: ``True`` every cell, ``False`` none, or those indices."""
        if isinstance(cells, bool):
            cells = range(len(self.cells)) if cells else ()
        cells = set(cells)
        bad = sorted(c for c in cells if not 0 <= c < len(self.cells))
        if bad:
            raise ValueError(f"no such cells {bad}; the network has {len(self.cells)}")
        self.checkpointed = cells

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Schedules of the method at the start of epoch ``epoch`` (0-based) of
        ``total_epochs``: the relaxation's (``ArchitectureParameters.set_epoch``)."""
        self.arch.set_epoch(epoch, total_epochs)

    def forward(self, x):
        mixing = self.arch.mixing(self.training)
        s0 = s1 = self.stem(x)
        for index, cell in enumerate(self.cells):
            w = mixing["reduce" if cell.reduction else "normal"]
            if index in self.checkpointed and torch.is_grad_enabled():
                with stage("checkpointed cell inputs"):
                    s0, s1 = s1, checkpoint_module(cell, s0, s1, w)
            else:
                s0, s1 = s1, cell(s0, s1, w)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def alphas(self) -> List[nn.Parameter]:
        return self.arch.alphas()

    def weights(self) -> Iterator[nn.Parameter]:
        ids = {id(a) for a in self.alphas()}
        return (p for p in self.parameters() if id(p) not in ids)

    def named_weights(self):
        ids = {id(a) for a in self.alphas()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in ids)

    def genotype(self) -> Genotype:
        """The space's architecture derived from the relaxation's strengths (DARTS: the
        paper's rule on the softmax of the alphas, a ``Genotype``)."""
        return self.arch.derive()


def derive_genotype(alphas_normal, alphas_reduce, num_nodes, multiplier,
                    primitives: Sequence[str] = PRIMITIVES,
                    relaxation: Optional[Relaxation] = None) -> Genotype:
    """The discrete genotype of the paper's rule (``CellSpace.derive``) from the strengths of
    each alpha row (default the softmax, in the alphas' own precision, at least float32);
    concat = the last ``multiplier`` nodes."""
    relaxation = Softmax() if relaxation is None else relaxation
    space = darts_space(num_nodes, multiplier, primitives)
    return space.derive({"normal": relaxation.strengths(alphas_normal),
                         "reduce": relaxation.strengths(alphas_reduce)})


__all__ = ["MixedOp", "SearchCell", "SearchNetwork", "derive_genotype", "num_edges"]
