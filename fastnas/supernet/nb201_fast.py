"""The fast NAS-Bench-201 search supernet: the reference's math and parameters, fused execution.

``FastNB201SearchNetwork`` holds exactly the modules of ``NB201SearchNetwork`` (same
``state_dict`` names and shapes, same initialization for a seed), but each search cell runs a
plan built around the cell's *states*, as the DARTS fast supernet (``fastnas.supernet.fast``)
does. State ``j`` (the input, node 1, node 2) is read by one edge of every later node; for each
state, once:

- ``none`` is never computed: its output is zero, its weight enters the mixing alone;
- ``skip_connect`` is ``x_j`` itself;
- ``avg_pool_3x3`` has no parameters and (NB201) no BatchNorm: computed once, shared by every
  reader edge;
- ``nor_conv_1x1`` and ``nor_conv_3x3`` of every reader edge: ``relu(x_j)`` once, then per
  kernel shape one conv with the edges' weights stacked (``[E C, C, k, k]``) and one
  BatchNorm (affine=False) over its ``E C`` channels, each op's block with its own statistics
  (``fastnas.ops.functional.batch_norm``; with ``track_running_stats=False`` batch statistics
  in every mode). One BatchNorm over both kernel shapes would need their outputs concatenated:
  that copy cost more than the second call (12% of a batch-64 step's CPU time, measured).

Node ``i`` is then one weighted sum over all its edges and ops (``node_sum`` of the torch kernel
set, Triton's ``weighted_sum`` on CUDA: the kernel sets of ``fastnas.supernet.fast``).

When the relaxation selected one op per edge (``arch.selected``, GDAS), only the selected ops
run, grouped the same way (the selected convs of a state stacked per kernel shape, the pool once
if any reader selected it), and node ``i`` is

    sum_{e into i} w_e,k_e * op_k_e(x_e) + sum_{e into i} sum_{k != k_e} w_e,k,

the reference's ``forward_gdas`` (the unselected weights as scalars, so they keep a gradient).

Stacked weights are built inside ``forward`` from the registered parameters, so
``torch.func.functional_call`` (the architect's virtual weights) swaps them like any other
module's. Tensors are channels_last from the stem on, as in the DARTS fast supernet.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import Identity, ReLUConvBN, Zero
from ..ops.functional.batch_norm import stacked_batch_norm
from .fast import block_views, kernel_set_for
from .nb201_reference import NB201SearchCell, NB201SearchNetwork
from .stages import stage

# The alpha column of each op family in NB201_OPS order.
_FAMILIES = {"none": Zero, "skip_connect": Identity, "nor_conv_1x1": ReLUConvBN,
             "nor_conv_3x3": ReLUConvBN, "avg_pool_3x3": nn.AvgPool2d}
# The order of the parts a reader edge contributes to a node sum (all ops but ``none``):
# alpha columns 1..4, a contiguous slice.
_PART_OPS = ("skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
_CONVS = ("nor_conv_1x1", "nor_conv_3x3")


def batch_norm_blocks(y: torch.Tensor, bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """BatchNorm(affine=False) of ``y = [N, sum C_b, H, W]``, one channel block per module of
    ``bns``: ``stacked_batch_norm`` (running statistics as each module would keep them), or for
    modules that track none the batch statistics in every mode."""
    bn = bns[0]
    if bn.track_running_stats:
        return stacked_batch_norm(y, bns)
    return F.batch_norm(y, None, None, None, None, True, 0.0, bn.eps)


class _StatePlan:
    """The modules that read one state: per reader edge (in node order) its two conv ops, and
    the shared pool."""

    def __init__(self, edges: nn.ModuleList, readers: Sequence[int], ops: Sequence[str]):
        for name, cls in _FAMILIES.items():
            if name not in ops or not all(isinstance(edges[r].ops[ops.index(name)], cls)
                                          for r in readers):
                raise ValueError(f"the fast NB201 cell needs the op {name!r} as built by "
                                 "NB201SearchCell")
        self.E = len(readers)
        self.k = {name: ops.index(name) for name in _FAMILIES}
        self.convs = {name: [edges[r].ops[self.k[name]] for r in readers] for name in _CONVS}
        self.pool = edges[readers[0]].ops[self.k["avg_pool_3x3"]]


def _conv_block(r: torch.Tensor, ops: Sequence[ReLUConvBN]) -> torch.Tensor:
    """``BN(conv_m(r))`` for every op ``m`` of ``ops`` (convs of one kernel shape, reading the
    same ``r = relu(x)``): one conv call with the weights stacked ``[M C, C, k, k]``, one
    BatchNorm over its output ``[N, M C, H, W]``."""
    conv = ops[0].conv
    w = torch.cat([op.conv.weight for op in ops]) if len(ops) > 1 else conv.weight
    y = F.conv2d(r, w, None, conv.stride, conv.padding)
    return batch_norm_blocks(y, [op.bn for op in ops])


class FastNB201SearchCell(nn.Module):
    """An ``NB201SearchCell``'s modules (same names) with the fused forward of the module
    docstring."""

    def __init__(self, cell: NB201SearchCell):
        super().__init__()
        space = self.space = cell.space
        self.C = cell.C
        self.edges = cell.edges
        ops = space.ops
        self._readers = [space.readers(j) for j in range(space.num_states - 1)]
        self._plans = [_StatePlan(self.edges, [e.row for e in readers], ops)
                       for readers in self._readers]
        self._columns = [ops.index(name) for name in _PART_OPS]
        if self._columns != list(range(self._columns[0], self._columns[0] + len(_PART_OPS))):
            raise ValueError("the fast NB201 cell needs the ops in NB201_OPS order")
        self._slice = slice(self._columns[0], self._columns[-1] + 1)

    # -- every op (softmax, DARTS) ---------------------------------------------------------------
    def _state_parts(self, x: torch.Tensor, plan: _StatePlan) -> List[List[torch.Tensor]]:
        """Every op but ``none`` of every reader of ``x``: per reader, ``[N, K, C, H, W]`` parts
        in ``_PART_OPS`` order."""
        N, C, H, W = x.shape
        E = plan.E
        with stage("pools"):
            pool = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False).unsqueeze(1)
        with stage("convs"):
            r = torch.relu(x)
            views = [lambda t, e=e: t.view(N, E, C, H, W)[:, e:e + 1] for e in range(E)]
            c1, c3 = (block_views(_conv_block(r, plan.convs[name]), views) for name in _CONVS)
        skip = x.unsqueeze(1)
        return [[skip, a, b, pool] for a, b in zip(c1, c3)]

    def _forward_all(self, x: torch.Tensor, weights: torch.Tensor, kset) -> torch.Tensor:
        space = self.space
        states = [x]
        pending: List[List[torch.Tensor]] = [[] for _ in range(space.num_nodes)]
        for j, plan in enumerate(self._plans):
            for e, parts in zip(self._readers[j], self._state_parts(states[j], plan)):
                pending[e.node] += parts
            i = j  # node i has all its edges once states 0 .. i are read
            w = weights[space.rows(i)][:, self._slice].reshape(-1)
            with stage("node sums"):
                states.append(kset.node_sum(pending[i], w))
            pending[i] = []
        return states[-1]

    # -- the selected op of each edge (GDAS) -----------------------------------------------------
    def _forward_selected(self, x: torch.Tensor, weights: torch.Tensor, selected: List[int],
                          kset) -> torch.Tensor:
        space = self.space
        states = [x]
        # per node: parts [N, 1, C, H, W] and the row * K + column of each part's weight
        pending: List[List[torch.Tensor]] = [[] for _ in range(space.num_nodes)]
        picks: List[List[int]] = [[] for _ in range(space.num_nodes)]
        K = len(space.ops)
        for j, plan in enumerate(self._plans):
            x_j = states[j]
            readers = self._readers[j]
            chosen = [selected[e.row] for e in readers]
            conv_groups = {name: [(e, conv) for e, conv, k in
                                  zip(readers, plan.convs[name], chosen) if k == plan.k[name]]
                           for name in _CONVS}
            outputs = {}
            groups = [g for g in conv_groups.values() if g]
            if groups:
                with stage("convs"):
                    r = torch.relu(x_j)
                    C = x_j.shape[1]
                    for g in groups:
                        views = [lambda t, m=m, C=C: t[:, m * C:(m + 1) * C].unsqueeze(1)
                                 for m in range(len(g))]
                        y = _conv_block(r, [op for _, op in g])
                        outputs.update(zip([e.row for e, _ in g], block_views(y, views)))
            pool = None
            for e, k in zip(readers, chosen):
                if k == plan.k["skip_connect"]:
                    out = x_j.unsqueeze(1)
                elif k == plan.k["avg_pool_3x3"]:
                    if pool is None:
                        with stage("pools"):
                            pool = F.avg_pool2d(x_j, 3, 1, 1, count_include_pad=False)
                            pool = pool.unsqueeze(1)
                    out = pool
                elif k == plan.k["none"]:
                    continue
                else:
                    out = outputs[e.row]
                pending[e.node].append(out)
                picks[e.node].append(e.row * K + k)
            i = j
            rows = space.rows(i)
            w = weights[rows]
            # the unselected weights of the node's edges, as one scalar term
            mask = torch.ones_like(w)
            mask[torch.arange(w.shape[0]), torch.tensor(selected[rows])] = 0
            scalar = (w * mask).sum()
            with stage("node sums"):
                if pending[i]:
                    index = torch.tensor([p - rows.start * K for p in picks[i]],
                                         device=w.device)
                    node = kset.node_sum(pending[i], w.reshape(-1).index_select(0, index))
                    node = node + scalar
                else:
                    node = torch.zeros_like(x) + scalar
            states.append(node)
            pending[i], picks[i] = [], []
        return states[-1]

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                selected: Optional[List[int]] = None) -> torch.Tensor:
        kset = kernel_set_for(x)
        if selected is None:
            return self._forward_all(x, weights, kset)
        return self._forward_selected(x, weights, selected, kset)


class FastNB201SearchNetwork(NB201SearchNetwork):
    """The NB201 supernet with fused search cells (see the module docstring); same parameters,
    buffers, names and initialization (for a given seed) as ``NB201SearchNetwork``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for i in self.search_cells:
            self.cells[i] = FastNB201SearchCell(self.cells[i])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last))


__all__ = ["FastNB201SearchCell", "FastNB201SearchNetwork", "batch_norm_blocks"]
