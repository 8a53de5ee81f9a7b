"""The fast supernet: the reference supernet's math and parameters, fused execution.

``FastSearchNetwork`` holds exactly the modules of the reference ``SearchNetwork`` (the same
``state_dict`` names and shapes, the same initialization for a given seed, the same
``alphas()``, ``weights()``, ``named_weights()`` and ``genotype()``), but each cell runs a plan
built around the cell's *states* rather than its edges. State ``j`` is read by one edge of
every later node; for each state, once:

- ``none`` is never computed: its output is zero, only its alpha enters the softmax;
- ``max_pool`` and ``avg_pool`` have no parameters and, in training, their BatchNorm(affine=False)
  output depends on the batch only, so they are computed once and shared by every edge (each
  edge's running statistics are still updated; in eval mode each edge normalizes with its own);
- the first ReLU -> depthwise -> pointwise -> BatchNorm of every sep and dil conv of every edge
  runs as one conv-block stage: ``relu(x_j)`` once, one depthwise call per kernel shape for all
  edges (a channel multiplier ``M``: one kernel per edge and input channel), one grouped pointwise
  (strided batched matmul), one BatchNorm over the concatenated channels; the second half of the
  sep convs likewise;
- ``skip_connect`` is ``x_j`` itself, or for stride 2 the FactorizedReduce of all edges as one
  block-diagonal 1x1 conv and one BatchNorm.

Node ``i`` is then one weighted sum over all its edges and ops. Tensors are channels_last from
the stem on (the kernels used are fastest on it).

The same plan runs with one of two kernel sets, chosen per forward by the kernel backend
(``fastnas.kernels.set_backend`` / ``FASTNAS_BACKEND``; ``auto`` picks Triton for CUDA tensors):

- torch (``TorchKernels``): the custom ops of ``fastnas.ops.functional`` (``torch.ops.fastnas.
  conv_blocks``, ``node_sum``, ``grouped_pointwise``, each with a registered backward). A
  conv-block stage is one op that keeps only its input and output for backward (recomputing ReLU
  and depthwise outputs when a weight gradient is asked for), and every op computes only the
  gradients the current backward asks for (``grad_edges``): the architecture step needs no weight
  gradient, the weight step no alpha gradient. On CUDA they use cuDNN and cuBLAS.
- Triton (``TritonKernels``): ``fastnas.kernels.depthwise_conv2d`` (with the channel multiplier:
  the input is never repeated) and ``fastnas.kernels.weighted_sum`` for the node sums (custom ops
  ``torch.ops.fastnas.depthwise_conv2d`` and ``weighted_sum``), composed with the grouped
  pointwise op and the stacked BatchNorm under autograd.

Every op being a custom op with a fake (shape) implementation, the whole plan traces into one
graph under ``torch.compile(fullgraph=True)`` (``fastnas.supernet.compiled``): the ops stay single
nodes, and the compiler fuses the plain torch ops between them (pools and their BatchNorm, the
skip connections, the running-statistics bookkeeping, the preprocessing).

Stacked weights (depthwise kernels, pointwise matrices) are built inside ``forward`` from the
registered parameters, so ``torch.func.functional_call`` (the architect's virtual weights) swaps
them like any other module's.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import kernels
from ..kernels import dispatch
from ..ops import PRIMITIVES
from ..ops.functional.batch_norm import shared_batch_norm, stacked_batch_norm
from ..ops.functional.conv_blocks import conv_blocks
from ..ops.functional.node_sum import node_sum
from ..ops.functional.pointwise import grouped_pointwise
from .reference import SearchCell, SearchNetwork
from .stages import stage

# Column of each op in the alpha matrix (PRIMITIVES order).
_MAX, _AVG, _SKIP, _SEP3, _SEP5, _DIL3, _DIL5 = (PRIMITIVES.index(n) for n in (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
    "dil_conv_3x3", "dil_conv_5x5"))
# (op column, kernel size, dilation) of the first depthwise conv of each conv op, in the order
# their outputs are stacked; sep convs first, so the stack splits into [sep | dil].
_STAGE1 = ((_SEP3, 3, 1), (_SEP5, 5, 1), (_DIL3, 3, 2), (_DIL5, 5, 2))
_STAGE2 = ((_SEP3, 3), (_SEP5, 5))


# -- kernel sets ----------------------------------------------------------------------------------
class TorchKernels:
    """The fused plan's primitives as the CPU autograd Functions of ``fastnas.ops.functional``."""

    name = "torch"

    @staticmethod
    def conv_blocks(inputs, groups, dw, pw, bns):
        """``BN(pointwise(depthwise(relu(inputs[i]))))`` per group, one Function."""
        return conv_blocks(inputs, groups, dw, pw, bns)

    @staticmethod
    def node_sum(parts, w):
        return node_sum(parts, w)


class TritonKernels:
    """``fastnas.kernels`` for the depthwise convs and the node sums, composed under autograd."""

    name = "triton"

    @staticmethod
    def conv_blocks(inputs, groups, dw, pw, bns):
        relus = [torch.relu(x) for x in inputs]
        # The kernels are not autocast ops: give them one dtype, as conv2d under autocast would.
        d = [kernels.depthwise_conv2d(relus[i], w.to(relus[i].dtype), s, p, dil)
             for (i, s, p, dil), w in zip(groups, dw)]
        return stacked_batch_norm(grouped_pointwise(d, pw), bns)

    @staticmethod
    def node_sum(parts, w):
        dtype = parts[0].dtype
        for p in parts[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        xs = [x.to(dtype) for p in parts for x in p.unbind(1)]
        return kernels.weighted_sum(xs, w)


KERNEL_SETS = {"torch": TorchKernels, "triton": TritonKernels}


def kernel_set_for(x: torch.Tensor):
    """The kernel set the kernel backend picks for tensors like ``x`` (see the module docstring);
    a backend forced to ``triton`` that cannot run on ``x`` raises, never falls back."""
    if dispatch.use_triton("the fast supernet", x):
        return TritonKernels
    return TorchKernels


class _BlockViews(torch.autograd.Function):
    """Views ``[view(block) for view in views]`` of one block of op outputs whose gradient is
    assembled in the block's own memory layout (channels_last). ``unbind`` or ``split`` would
    stack the gradients in row-major order, and every kernel before them in backward would then
    take a slow mixed-layout path. The views must tile the block exactly."""

    @staticmethod
    def forward(ctx, block, views):
        ctx.views = views
        ctx.shape = block.shape
        return tuple(view(block) for view in views)

    @staticmethod
    def backward(ctx, *grads):
        sample = next(g for g in grads if g is not None)
        out = torch.empty(ctx.shape, dtype=sample.dtype, device=sample.device,
                          memory_format=torch.channels_last)
        for view, g in zip(ctx.views, grads):
            if g is None:
                view(out).zero_()
            else:
                view(out).copy_(g)
        return out, None


def _block_views(block: torch.Tensor, views) -> List[torch.Tensor]:
    """See ``_BlockViews``; under ``torch.compile`` plain views (the compiler lays out the
    gradients itself)."""
    if torch.compiler.is_compiling():
        return [view(block) for view in views]
    return list(_BlockViews.apply(block, views))


# -- the fused cell -------------------------------------------------------------------------------
class _StatePlan:
    """The modules that read one cell state: per reader edge (in node order) its pool BNs and
    skip op, and the conv blocks in the stacked order of the fused calls."""

    def __init__(self, edges: nn.ModuleList, readers: Sequence[int], stride: int):
        ops = [edges[e].ops for e in readers]
        self.E, self.stride = len(readers), stride
        self.pool_bns = [[o[_MAX][1], o[_AVG][1]] for o in ops]
        self.skips = [o[_SKIP] for o in ops]
        # First half: [sep3 x E | sep5 x E | dil3 x E | dil5 x E], each a DilConv
        # (relu, depthwise, pointwise, bn); a SepConv's first half is its [0].
        self.stage1 = [[o[column][0] if column in (_SEP3, _SEP5) else o[column] for o in ops]
                       for column, _, _ in _STAGE1]
        self.stage2 = [[o[column][1] for o in ops] for column, _ in _STAGE2]


class FastSearchCell(nn.Module):
    """A ``SearchCell``'s modules (same names) with the fused forward of the module docstring.

    Tensors are channels_last throughout: every depthwise, pooling and pointwise kernel used here
    is fastest on it, and a block of ``M`` ops ``[N, M * C, H, W]`` is then an ``[N H W, M, C]``
    stack that the grouped pointwise conv and the node sums read in place.
    """

    def __init__(self, cell: SearchCell):
        super().__init__()
        if len(cell.edges[0].ops) != len(PRIMITIVES):
            raise ValueError("the fast supernet supports the standard PRIMITIVES only")
        self.reduction = cell.reduction
        self.num_nodes = cell.num_nodes
        self.multiplier = cell.multiplier
        self.preprocess0 = cell.preprocess0
        self.preprocess1 = cell.preprocess1
        self.edges = cell.edges
        # Edge (i, j) from state j to node i; node i's edges are rows first(i) .. first(i) + i + 1.
        self._first = [sum(n + 2 for n in range(i)) for i in range(self.num_nodes)]
        # State j is read by nodes max(0, j - 1) .. num_nodes - 1 (the last node by none).
        self._readers = [list(range(max(0, j - 1), self.num_nodes))
                         for j in range(self.num_nodes + 1)]
        # Plain lists, not submodules: the modules stay registered under edges.* only.
        self._plans = [_StatePlan(self.edges, [self._first[i] + j for i in readers],
                                  2 if self.reduction and j < 2 else 1)
                       for j, readers in enumerate(self._readers)]

    def _state_parts(self, x: torch.Tensor, plan: _StatePlan, kset
                     ) -> List[List[torch.Tensor]]:
        """Every op of every edge that reads ``x``, as the node-sum parts of each reader:
        ``[N, K, C, Ho, Wo]`` blocks in alpha-column order (max, avg, skip, sep3, sep5, dil3,
        dil5)."""
        E, stride = plan.E, plan.stride
        N, C = x.shape[:2]
        parts: List[List[torch.Tensor]] = [[] for _ in range(E)]

        with stage("pools"):  # stacked [max | avg]; in training the BN output is shared
            pools = torch.cat([F.max_pool2d(x, 3, stride, 1),
                               F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)], dim=1)
            pools = pools.contiguous(memory_format=torch.channels_last)
            Ho, Wo = pools.shape[-2:]
            if plan.pool_bns[0][0].training:
                shared = shared_batch_norm(pools, plan.pool_bns).view(N, 2, C, Ho, Wo)
                for p in parts:
                    p.append(shared)
            else:
                for p, bns in zip(parts, plan.pool_bns):
                    p.append(stacked_batch_norm(pools, bns).view(N, 2, C, Ho, Wo))
        with stage("skip_connect"):
            self._skip_parts(x, plan, parts, Ho, Wo)
        with stage("sep/dil convs, first half"):
            z1 = self._first_half(x, plan, kset)
            views = [lambda t, s=s: t[:, s * E * C:(s + 1) * E * C] for s in range(2)]
            views += [lambda t, e=e: t.view(N, 4, E, C, Ho, Wo)[:, 2:, e] for e in range(E)]
            sep3_half, sep5_half, *dil_out = _block_views(z1, views)
        with stage("sep convs, second half"):
            sep_out = self._second_half(sep3_half, sep5_half, plan, kset)
            views = [lambda t, e=e: t.view(N, 2, E, C, Ho, Wo)[:, :, e] for e in range(E)]
            sep_out = _block_views(sep_out, views)
        for p, sep, dil in zip(parts, sep_out, dil_out):
            p += [sep, dil]
        return parts

    def _skip_parts(self, x, plan, parts, Ho, Wo):
        """skip_connect of every reader: ``x`` itself, or the stride-2 FactorizedReduces."""
        E, stride = plan.E, plan.stride
        N, C = x.shape[:2]
        if stride == 1:
            for p in parts:
                p.append(x.unsqueeze(1))
        else:  # FactorizedReduce of every edge: one block-diagonal 1x1 conv, one BN
            r = torch.relu(x)
            a = r[:, :, ::2, ::2]
            b = F.pad(r, (0, 1, 0, 1))[:, :, 1::2, 1::2]
            ab = torch.cat([a, b], dim=1).permute(0, 2, 3, 1)            # [N, Ho, Wo, 2C]
            w1 = torch.stack([f.conv_1.weight.view(C // 2, C) for f in plan.skips])
            w2 = torch.stack([f.conv_2.weight.view(C // 2, C) for f in plan.skips])
            zero = w1.new_zeros(E, C // 2, C)
            block = torch.cat([torch.cat([w1, zero], 2), torch.cat([zero, w2], 2)], 1)
            y = torch.matmul(ab, block.view(E * C, 2 * C).t()).permute(0, 3, 1, 2)
            y = stacked_batch_norm(y, [f.bn for f in plan.skips])
            views = [lambda t, e=e: t.view(N, E, C, Ho, Wo)[:, e:e + 1] for e in range(E)]
            for p, t in zip(parts, _block_views(y, views)):
                p.append(t)

    def _first_half(self, x, plan, kset):
        """First DilConv of every conv op of every reader: one depthwise call per kernel shape,
        one grouped pointwise, one BN over [sep3 x E | sep5 x E | dil3 x E | dil5 x E]."""
        C = x.shape[1]
        first = [b for blocks in plan.stage1 for b in blocks]
        dw = [torch.cat([b[1].weight for b in blocks]) for blocks in plan.stage1]
        pw = torch.stack([b[2].weight.view(C, C) for b in first])
        groups = [(0, plan.stride, dil * (k - 1) // 2, dil) for _, k, dil in _STAGE1]
        return kset.conv_blocks([x], groups, dw, pw, [b[3] for b in first])

    def _second_half(self, sep3_half, sep5_half, plan, kset):
        """Second DilConv of the sep convs: one depthwise per kernel size over all channels."""
        C = sep3_half.shape[1] // plan.E
        second = [b for blocks in plan.stage2 for b in blocks]
        dw = [torch.cat([b[1].weight for b in blocks]) for blocks in plan.stage2]
        pw = torch.stack([b[2].weight.view(C, C) for b in second])
        groups = [(i, 1, (k - 1) // 2, 1) for i, (_, k) in enumerate(_STAGE2)]
        return kset.conv_blocks([sep3_half, sep5_half], groups, dw, pw, [b[3] for b in second])

    def forward(self, s0, s1, weights):
        kset = kernel_set_for(s1)
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        pending: List[List[torch.Tensor]] = [[] for _ in range(self.num_nodes)]
        for j, plan in enumerate(self._plans):
            for i, parts in zip(self._readers[j], self._state_parts(states[j], plan, kset)):
                pending[i] += parts
            if j >= 1:  # node j - 1 has now received its edges from states 0 .. j
                i = j - 1
                w = weights[self._first[i]:self._first[i] + i + 2, 1:].reshape(-1)
                with stage("node sums"):
                    states.append(kset.node_sum(pending[i], w))
                pending[i] = []
        return torch.cat(states[-self.multiplier:], dim=1)


# -- networks -------------------------------------------------------------------------------------
class FastSearchNetwork(SearchNetwork):
    """The supernet with fused cells (see the module docstring); same parameters, buffers, names
    and initialization (for a given seed) as the reference ``SearchNetwork``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cells = nn.ModuleList(FastSearchCell(cell) for cell in self.cells)

    def forward(self, x):
        # channels_last from the stem on: see FastSearchCell.
        return super().forward(x.contiguous(memory_format=torch.channels_last))


__all__ = ["FastSearchCell", "FastSearchNetwork", "KERNEL_SETS", "TorchKernels", "TritonKernels",
           "kernel_set_for"]
