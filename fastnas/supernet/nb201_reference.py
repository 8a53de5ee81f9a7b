"""The reference NAS-Bench-201 search supernet (the oracle): xautodl's ``TinyNetworkDarts`` /
``TinyNetworkGDAS`` with its ``NAS201SearchCell``, one module per candidate op.

    stem:    conv3x3(in_channels -> C, bias-free), BN
    stage 1: N search cells at C     then ResNet basic block C -> 2C, stride 2
    stage 2: N search cells at 2C    then ResNet basic block 2C -> 4C, stride 2
    stage 3: N search cells at 4C
    head:    BN, ReLU, global average pooling, linear(4C -> num_classes)

The cells come from ``fastnas.nb201.nb201_space()``: node 0 is the cell's input, node ``j`` is
``sum_{i<j} edge_ij(node_i)``, the output is node 3. Edge ``e`` (row ``e`` of the one alpha
matrix ``[6, 5]``, ``alphas_cell``, that every search cell shares) mixes the 5 ops with the
relaxation's weights ``w_e`` (DARTS: ``softmax(alpha_e)``):

    edge_e(x) = sum_k w_e,k * op_k(x).

When the relaxation selected one op per edge (``arch.selected``: GDAS's hard sample), the edge
is xautodl's ``NAS201SearchCell.forward_gdas``: only the selected op ``k_e`` runs, the others
enter as their (zero-valued, straight-through) weights alone, so they keep a gradient:

    edge_e(x) = w_e,k_e * op_k_e(x) + sum_{k != k_e} w_e,k.

The ops of a search cell: ``none`` (``x * 0``), ``skip_connect`` (identity), ``nor_conv_1x1``
and ``nor_conv_3x3`` (ReLU -> bias-free conv -> BN) and ``avg_pool_3x3`` (stride 1, padding not
counted, no BN: NB201's pooling has none when the channels match). The search cells' BNs are
``affine=False``, as every xautodl NB201 search script builds them, and track running statistics
only if ``track_running_stats`` (xautodl's ``BN`` script argument; its documented runs pass 0,
the default here: BN on batch statistics in eval mode too). The stem and the basic blocks keep
affine BNs that track statistics, as in xautodl. (Later xautodl versions give the search convs
a bias when ``affine=False``; a BN on batch statistics cancels it exactly, so it is left out.)
"""
from __future__ import annotations

from typing import Iterable, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..nb201 import CELL_TYPE, NB201Cell, NB201Network, ResNetBasicBlock, nb201_space
from ..ops import Identity, ReLUConvBN, Zero
from ..space import ArchitectureParameters, CellSpace, Relaxation, Softmax, attach_state_dict_names
from .recompute import checkpoint_module
from .stages import stage


def nb201_search_op(name: str, C: int, track_running_stats: bool = False) -> nn.Module:
    """A candidate op of an NB201 search cell at ``C`` channels (see the module docstring)."""
    if name == "none":
        return Zero(1)
    if name == "skip_connect":
        return Identity()
    if name in ("nor_conv_1x1", "nor_conv_3x3"):
        k = int(name[-1])
        return ReLUConvBN(C, C, k, 1, k // 2, affine=False,
                          track_running_stats=track_running_stats)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown NB201 op {name!r}")


class NB201MixedOp(nn.Module):
    """One edge: ``sum_k w_k op_k(x)``, or with a selected op ``k`` only ``w_k op_k(x)`` plus
    the other weights as scalars (see the module docstring)."""

    def __init__(self, C: int, ops: Sequence[str], track_running_stats: bool = False):
        super().__init__()
        self.ops = nn.ModuleList(nb201_search_op(name, C, track_running_stats) for name in ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, selected: Optional[int] = None):
        if selected is None:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        return sum(weights[k] * op(x) if k == selected else weights[k]
                   for k, op in enumerate(self.ops))


class NB201SearchCell(nn.Module):
    """xautodl's ``NAS201SearchCell`` at ``C`` channels, stride 1: one ``NB201MixedOp`` per edge
    of ``space`` (default ``nb201_space()``), ``edges[e]`` on row ``e``."""

    def __init__(self, C: int, space: Optional[CellSpace] = None,
                 track_running_stats: bool = False):
        super().__init__()
        self.space = nb201_space() if space is None else space
        self.C = C
        self.edges = nn.ModuleList(NB201MixedOp(C, self.space.ops, track_running_stats)
                                   for _ in self.space.edges)

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                selected: Optional[List[int]] = None) -> torch.Tensor:
        space = self.space
        states = [x]
        for i in range(space.num_nodes):
            rows = range(space.rows(i).start, space.rows(i).stop)
            states.append(sum(self.edges[r](h, weights[r], None if selected is None
                                            else selected[r]) for r, h in zip(rows, states)))
        return states[-1]


class NB201SearchNetwork(nn.Module):
    """The NAS-Bench-201 search network (see the module docstring): ``C`` channels in the first
    stage, ``N`` search cells per stage. ``relaxation`` (default ``Softmax``) turns the alphas
    into mixing weights; the alphas are the module ``arch``, ``alphas_cell`` in the
    ``state_dict`` and as an attribute (init ``1e-3 * randn``, drawn last, as xautodl).
    ``weights()`` and ``alphas()`` iterate the two groups; ``genotype()`` is the derived
    ``NB201Cell``. ``checkpointing`` recomputes the chosen search cells (indices into
    ``cells``) in backward (``fastnas.supernet.recompute``)."""

    def __init__(self, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3,
                 relaxation: Optional[Relaxation] = None, track_running_stats: bool = False,
                 checkpointing: Union[bool, Iterable[int]] = False,
                 space: Optional[CellSpace] = None):
        super().__init__()
        space = nb201_space() if space is None else space
        if space != nb201_space():
            raise ValueError("the NB201 search network takes fastnas.nb201.nb201_space()")
        self.space = space
        self.C, self.N, self.num_classes, self.in_channels = C, N, num_classes, in_channels
        self.track_running_stats = track_running_stats
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_prev = C
        for index, C_curr in enumerate((C, 2 * C, 4 * C)):
            if index > 0:
                self.cells.append(ResNetBasicBlock(C_prev, C_curr))
            self.cells.extend(NB201SearchCell(C_curr, space, track_running_stats)
                              for _ in range(N))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.arch = ArchitectureParameters(space, relaxation or Softmax())
        attach_state_dict_names(self, "arch")
        self.set_checkpointing(checkpointing)

    def __getattr__(self, name: str):
        if name.startswith("alphas_"):  # alphas_cell: the arch module's
            arch = self._modules.get("arch")
            if arch is not None and name in arch._parameters:
                return arch._parameters[name]
        return super().__getattr__(name)

    @property
    def relaxation(self) -> Relaxation:
        return self.arch.relaxation

    @property
    def search_cells(self) -> List[int]:
        """The indices into ``cells`` of the search cells (the others are basic blocks)."""
        return [i for i, c in enumerate(self.cells) if not isinstance(c, ResNetBasicBlock)]

    def set_checkpointing(self, cells: Union[bool, Iterable[int]] = True) -> None:
        """Recompute search cells in backward: ``True`` every one, ``False`` none, or those
        indices into ``cells``."""
        if isinstance(cells, bool):
            cells = self.search_cells if cells else ()
        cells = set(cells)
        bad = sorted(c for c in cells if c not in self.search_cells)
        if bad:
            raise ValueError(f"no such search cells {bad}; they are {self.search_cells}")
        self.checkpointed = cells

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """The relaxation's schedules at the start of epoch ``epoch`` (0-based)."""
        self.arch.set_epoch(epoch, total_epochs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.arch.mixing(self.training)[CELL_TYPE]
        index = self.arch.selected[CELL_TYPE]
        selected = None if index is None else [int(k) for k in index.tolist()]
        feature = self.stem(x)
        for i, cell in enumerate(self.cells):
            if isinstance(cell, ResNetBasicBlock):
                feature = cell(feature)
            elif i in self.checkpointed and torch.is_grad_enabled():
                with stage("checkpointed cell inputs"):
                    feature = checkpoint_module(cell, feature, w, selected)
            else:
                feature = cell(feature, w, selected)
        out = self.global_pooling(self.lastact(feature))
        return self.classifier(out.flatten(1))

    def alphas(self) -> List[nn.Parameter]:
        return self.arch.alphas()

    def weights(self) -> Iterator[nn.Parameter]:
        ids = {id(a) for a in self.alphas()}
        return (p for p in self.parameters() if id(p) not in ids)

    def named_weights(self):
        ids = {id(a) for a in self.alphas()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in ids)

    def genotype(self) -> NB201Cell:
        """The benchmark's derivation from the relaxation's strengths: per edge the strongest
        op, ``none`` included."""
        return self.arch.derive()

    def derived_network(self, num_classes: Optional[int] = None) -> NB201Network:
        """The NB201 network (xautodl's ``TinyNetwork``) of the derived cell, same C and N."""
        return NB201Network(self.genotype(), self.C, self.N,
                            self.num_classes if num_classes is None else num_classes,
                            self.in_channels)


__all__ = ["NB201MixedOp", "NB201SearchCell", "NB201SearchNetwork", "nb201_search_op"]
