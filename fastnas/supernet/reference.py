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

from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..genotypes import Genotype
from ..ops import (
    PRIMITIVES,
    FactorizedReduce,
    Identity,
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
    are followed by BN(affine=False) (``PoolBN``), a registered op runs as built.

    The methods' variants of an edge (each off by default):

    - ``index`` (GDAS, a hard relaxation's sample): only ``op_index(x) * w_index`` is computed
      (the official DARTS-space ``MixedOp.forward_gdas``: no terms for the other ops);
    - ``partial_channels=K`` (PC-DARTS ``model_search.py``): the ops are built at ``C/K``
      channels and read the first ``C/K`` channels ``x1`` of ``x``; the other channels ``x2``
      bypass them (through ``MaxPool2d(2, 2)`` on a stride-2 edge), and the result is
      ``channel_shuffle(cat(mix(x1), x2), K)``, where ``channel_shuffle(y, g)`` moves channel
      ``grp * C/g + i`` to ``i * g + grp``. (The bypass pool uses ``ceil_mode``: the official
      ``MaxPool2d(2, 2)`` on even sizes, and the ops' output size on odd ones.)
    - ``aux_skip`` (DARTS-): ``+ aux_beta * aux(x1)`` with ``aux`` the identity, or on a stride-2
      edge a learnable ``FactorizedReduce(affine=False)`` (``self.aux``); ``aux_beta`` is the
      network's decaying coefficient.
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str] = PRIMITIVES,
                 partial_channels: int = 1, aux_skip: bool = False):
        super().__init__()
        self.primitives = tuple(primitives)
        self.stride = stride
        self.partial_channels = K = partial_channels
        C_op = C // K
        self.ops = nn.ModuleList()
        for name in primitives:
            op = make_op(name, C_op, stride, affine=False)
            if "pool" in name and not is_registered(name):
                op = PoolBN(op, C_op)
            self.ops.append(op)
        if aux_skip:
            self.aux = (FactorizedReduce(C_op, C_op, affine=False) if stride == 2
                        else Identity())
        else:
            self.aux = None

    def forward(self, x, weights, index: Optional[int] = None, aux_beta: float = 0.0):
        if index is None and self.aux is None and self.partial_channels == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        K = self.partial_channels
        x1 = x[:, :x.shape[1] // K] if K > 1 else x
        if index is None:
            out = sum(w * op(x1) for w, op in zip(weights, self.ops))
        else:
            out = self.ops[index](x1) * weights[index]
        if self.aux is not None:
            out = out + aux_beta * self.aux(x1)
        if K == 1:
            return out
        x2 = x[:, x.shape[1] // K:]
        if self.stride == 2:
            x2 = F.max_pool2d(x2, 2, 2, ceil_mode=True)
        return channel_shuffle(torch.cat([out, x2], dim=1), K)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS's shuffle: ``view(N, g, C/g, H, W) -> transpose(1, 2) -> view(N, C, H, W)``;
    output channel ``i * g + grp`` is input channel ``grp * C/g + i``."""
    N, C, H, W = x.shape
    return x.view(N, groups, C // groups, H, W).transpose(1, 2).reshape(N, C, H, W)


class SearchCell(nn.Module):
    """A cell of the supernet: the space's nodes, each a sum of MixedOps over earlier states
    (``space`` default: the DARTS space of ``num_nodes`` and ``multiplier``; two inputs).

    ``partial_channels`` and ``aux_skip``: see ``MixedOp``. ``forward``'s optional arguments:
    ``index`` (one op per edge, a hard relaxation's sample: ``MixedOp``), ``edge_weights``
    (``[num_edges]``, PC-DARTS's edge normalization: node ``i`` is ``sum_e b_e * edge_e(x)``
    over its incoming edges) and ``aux_beta`` (DARTS-'s coefficient)."""

    def __init__(self, num_nodes, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 space: Optional[CellSpace] = None, partial_channels: int = 1,
                 aux_skip: bool = False):
        super().__init__()
        space = darts_space(num_nodes, multiplier) if space is None else space
        if space.num_inputs != 2:
            raise ValueError(f"the DARTS cell reads two inputs; the space has "
                             f"{space.num_inputs}")
        self.space = space
        self.reduction = reduction
        self.num_nodes = space.num_nodes
        self.multiplier = space.multiplier
        self.partial_channels = partial_channels
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(C, 2 if reduction and e.state < space.num_inputs else 1, space.ops,
                    partial_channels, aux_skip)
            for e in space.edges)

    def forward(self, s0, s1, weights, index: Optional[Sequence[int]] = None,
                edge_weights: Optional[torch.Tensor] = None, aux_beta: float = 0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        plain = index is None and edge_weights is None and self.edges[0].aux is None
        for i in range(self.num_nodes):
            rows = range(self.space.rows(i).start, self.space.rows(i).stop)
            if plain:
                states.append(sum(self.edges[r](h, weights[r]) for r, h in zip(rows, states)))
                continue
            terms = [self.edges[r](h, weights[r], None if index is None else index[r],
                                   aux_beta) for r, h in zip(rows, states)]
            if edge_weights is not None:
                terms = [edge_weights[r] * t for r, t in zip(rows, terms)]
            states.append(sum(terms))
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

    The methods' supernet axes (all off by default: plain DARTS):

    - a hard relaxation (``fastnas.space.Gumbel``, GDAS) leaves one op per edge in
      ``arch.selected``; every cell of that type then computes only that op on each edge;
    - ``partial_channels=K`` (PC-DARTS): the mixed ops see ``C/K`` channels (``MixedOp``);
      ``C`` must be a multiple of ``K``;
    - ``edge_normalization`` (PC-DARTS): ``betas_<type>`` in ``arch``, each node weighing its
      incoming edges by their softmax (``ArchitectureParameters``);
    - ``aux_skip=E`` (DARTS-): every mixed op adds ``beta_aux * skip(x)``, with
      ``beta_aux = max(0, 1 - epoch / E)`` set by ``set_epoch`` (1 before the first call).
    """

    def __init__(self, C=16, num_classes=10, layers=8, num_nodes=4, multiplier=None,
                 stem_multiplier=3, in_channels=3,
                 checkpointing: Union[bool, Iterable[int]] = False,
                 space: Optional[CellSpace] = None, relaxation: Optional[Relaxation] = None,
                 partial_channels: int = 1, edge_normalization: bool = False,
                 aux_skip: Optional[int] = None):
        super().__init__()
        check_method_axes(C, partial_channels, edge_normalization, aux_skip)
        self.partial_channels = partial_channels
        self.edge_normalization = bool(edge_normalization)
        self.aux_skip = aux_skip
        self.aux_beta = 1.0
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
                                         spec.reduction, spec.reduction_prev, space,
                                         partial_channels, aux_skip is not None))
            C_prev_prev, C_prev = C_prev, multiplier * spec.C
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.arch = ArchitectureParameters(space, relaxation or Softmax(),
                                           edge_normalization=self.edge_normalization)
        attach_state_dict_names(self, "arch")
        self.set_checkpointing(checkpointing)

    def __getattr__(self, name: str):
        if name.startswith(("alphas_", "betas_")):  # alphas_normal, ...: the arch module's
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
        ``total_epochs``: the relaxation's (``ArchitectureParameters.set_epoch``) and the
        auxiliary skip's ``beta_aux = max(0, 1 - epoch / aux_skip)``."""
        self.arch.set_epoch(epoch, total_epochs)
        if self.aux_skip is not None:
            self.aux_beta = max(0.0, 1.0 - epoch / self.aux_skip)

    def forward(self, x):
        mixing = self.arch.mixing(self.training)
        extra = self._cell_arguments()
        s0 = s1 = self.stem(x)
        for index, cell in enumerate(self.cells):
            cell_type = "reduce" if cell.reduction else "normal"
            args = (s0, s1, mixing[cell_type]) + extra.get(cell_type, ())
            if index in self.checkpointed and torch.is_grad_enabled():
                with stage("checkpointed cell inputs"):
                    s0, s1 = s1, checkpoint_module(cell, *args)
            else:
                s0, s1 = s1, cell(*args)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def _cell_arguments(self) -> Dict[str, tuple]:
        """Per cell type, the cell's arguments after the mixing weights (``SearchCell.forward``):
        none in plain DARTS, else ``(index, edge_weights, aux_beta)``."""
        selected = self.arch.selected
        edges = self.arch.edge_weights()
        if edges is None and self.aux_skip is None and all(v is None for v in selected.values()):
            return {}
        return {t: (None if selected[t] is None else selected[t].tolist(),
                    None if edges is None else edges[t], self.aux_beta)
                for t in self.space.cell_types}

    def alphas(self) -> List[nn.Parameter]:
        """The architecture parameters: the alphas (and, with edge normalization, the betas)."""
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


def check_method_axes(C: int, partial_channels: int, edge_normalization: bool,
                      aux_skip: Optional[int]) -> None:
    """A one-line ValueError naming a bad setting of the methods' supernet axes."""
    if isinstance(partial_channels, bool) or not isinstance(partial_channels, int) \
            or partial_channels < 1:
        raise ValueError(f"partial_channels must be a whole number >= 1 (1: off), got "
                         f"{partial_channels!r}")
    if C % partial_channels:
        raise ValueError(f"partial_channels={partial_channels} must divide the channels "
                         f"C={C} (each mixed op sees C/partial_channels channels)")
    if not isinstance(edge_normalization, bool):
        raise ValueError(f"edge_normalization must be true or false, got "
                         f"{edge_normalization!r}")
    if aux_skip is not None and (isinstance(aux_skip, bool) or not isinstance(aux_skip, int)
                                 or aux_skip < 1):
        raise ValueError(f"aux_skip must be a whole number of epochs >= 1 (or None: off), got "
                         f"{aux_skip!r}")


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


__all__ = ["MixedOp", "SearchCell", "SearchNetwork", "channel_shuffle", "check_method_axes",
           "derive_genotype", "num_edges"]
