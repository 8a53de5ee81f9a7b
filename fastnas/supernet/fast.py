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

The plan is built from the cell's space (``fastnas.space.CellSpace``) by op *name*, from the
families it knows (``none``; ``max_pool_3x3``/``avg_pool_3x3`` after their BatchNorm;
``skip_connect``; ``sep_conv_*``/``dil_conv_*`` of any kernel size), reading what it needs
from the primitives' named parts (``PoolBN.bn``, ``SepConv.first``, ``DilConv.depthwise``, ...).
Any other op of the space runs per edge, as its own module, and joins the same node sum: a
space with an op the plan does not know works, only that op unfused.

The methods' axes (``SearchNetwork``'s docstring) run on the same plan (``_methods_forward``):

- a hard relaxation's sample (GDAS: ``arch.selected``): per state, only the ops some reader
  edge sampled run (``_sampled_state_parts``): each sampled pool once, the sampled stride-2
  skips as one block, the sampled sep and dil convs as one conv-block stage per half with one
  depthwise call per sampled kernel shape; ``none`` never; node ``i`` is one node sum of its
  edges' sampled outputs with their (straight-through) weights;
- partial channels ``K`` (PC-DARTS): the plan runs on each state's first ``C/K`` channels (a
  view); the bypass channels are views of the states (a 2x2 max pool per stride-2 state), summed
  per node by one more node sum, and the channel shuffle is one copy into the node's output;
- edge normalization: the node sum's weights are ``b_e * w_e,k``;
- the auxiliary skip (DARTS-): one more node-sum part per edge, ``x`` itself or the stride-2
  FactorizedReduces of all reader edges as one block, weighted ``aux_beta`` (times ``b_e``).

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

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import kernels
from ..kernels import dispatch
from ..ops import DilConv, FactorizedReduce, Identity, PoolBN, SepConv, Zero
from ..ops.functional.batch_norm import shared_batch_norm, stacked_batch_norm
from ..ops.functional.conv_blocks import conv_blocks
from ..ops.functional.node_sum import node_sum
from ..ops.functional.pointwise import grouped_pointwise
from .reference import SearchCell, SearchNetwork
from .stages import stage

# The op families the fused plan knows, by name (the module must also be of the expected type).
_POOLS = ("max_pool_3x3", "avg_pool_3x3")


def _family(name: str, module: nn.Module) -> str:
    """``none``, ``pool``, ``skip``, ``sep``, ``dil``, or ``other`` (run per edge)."""
    if name == "none" and isinstance(module, Zero):
        return "none"
    if name in _POOLS and isinstance(module, PoolBN) and isinstance(
            module.pool, (nn.MaxPool2d, nn.AvgPool2d)):
        return "pool"
    if name == "skip_connect" and isinstance(module, (Identity, FactorizedReduce)):
        return "skip"
    if name.startswith("sep_conv_") and isinstance(module, SepConv):
        return "sep"
    if name.startswith("dil_conv_") and isinstance(module, DilConv):
        return "dil"
    return "other"


def _pool(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    if isinstance(pool, nn.MaxPool2d):
        return F.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding)
    return F.avg_pool2d(x, pool.kernel_size, pool.stride, pool.padding,
                        count_include_pad=pool.count_include_pad)


def _conv_geometry(half: DilConv) -> tuple:
    """(padding, dilation) of a DilConv's depthwise conv."""
    return half.depthwise.padding[0], half.depthwise.dilation[0]


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


def _factorized_reduces(x, frs, Ho, Wo) -> List[torch.Tensor]:
    """``[fr(x).unsqueeze(1) for fr in frs]`` for stride-2 FactorizedReduces of ``C`` to ``C``
    channels: one block-diagonal 1x1 conv and one BN for all of them (views of one block)."""
    E = len(frs)
    N, C = x.shape[:2]
    r = torch.relu(x)
    a = r[:, :, ::2, ::2]
    b = F.pad(r, (0, 1, 0, 1))[:, :, 1::2, 1::2]
    ab = torch.cat([a, b], dim=1).permute(0, 2, 3, 1)            # [N, Ho, Wo, 2C]
    w1 = torch.stack([f.conv_1.weight.view(C // 2, C) for f in frs])
    w2 = torch.stack([f.conv_2.weight.view(C // 2, C) for f in frs])
    zero = w1.new_zeros(E, C // 2, C)
    block = torch.cat([torch.cat([w1, zero], 2), torch.cat([zero, w2], 2)], 1)
    y = torch.matmul(ab, block.view(E * C, 2 * C).t()).permute(0, 3, 1, 2)
    y = stacked_batch_norm(y, [f.bn for f in frs])
    views = [lambda t, e=e: t.view(N, E, C, Ho, Wo)[:, e:e + 1] for e in range(E)]
    return _block_views(y, views)


def _first_halves(x, stage1, stride, kset):
    """The first DilConv of the conv ops ``stage1`` (per kernel shape, the blocks of its ops):
    one depthwise call per kernel shape, one grouped pointwise, one BN over all of them."""
    C = x.shape[1]
    first = [b for blocks in stage1 for b in blocks]
    dw = [torch.cat([b.depthwise.weight for b in blocks]) for blocks in stage1]
    pw = torch.stack([b.pointwise.weight.view(C, C) for b in first])
    groups = [(0, stride, *_conv_geometry(blocks[0])) for blocks in stage1]
    return kset.conv_blocks([x], groups, dw, pw, [b.bn for b in first])


def _second_halves(sep_halves, stage2, kset):
    """The second DilConv of the sep convs ``stage2``: one depthwise per kernel size."""
    C = sep_halves[0].shape[1] // len(stage2[0])
    second = [b for blocks in stage2 for b in blocks]
    dw = [torch.cat([b.depthwise.weight for b in blocks]) for blocks in stage2]
    pw = torch.stack([b.pointwise.weight.view(C, C) for b in second])
    groups = [(i, 1, *_conv_geometry(blocks[0])) for i, blocks in enumerate(stage2)]
    return kset.conv_blocks(list(sep_halves), groups, dw, pw, [b.bn for b in second])


block_views = _block_views  # the fused NB201 cells (``nb201_fast``) read their blocks the same way


# -- the fused cell -------------------------------------------------------------------------------
class _StatePlan:
    """The modules that read one cell state: per reader edge (in node order) its pool BNs, skip
    op and other ops, and the conv blocks in the stacked order of the fused calls.

    ``columns`` is the alpha column of each node-sum part a reader contributes, in part order:
    ``[pools | skip | sep convs | dil convs | other ops]`` (``none`` is never computed)."""

    def __init__(self, edges: nn.ModuleList, readers: Sequence[int], stride: int,
                 ops: Sequence[str]):
        mods = [edges[e].ops for e in readers]
        self.E, self.stride = len(readers), stride
        family = [_family(name, m) for name, m in zip(ops, mods[0])]
        cols = {f: [k for k, fk in enumerate(family) if fk == f]
                for f in ("pool", "skip", "sep", "dil", "other")}
        self.pools = [mods[0][k].pool for k in cols["pool"]]
        self.pool_bns = [[o[k].bn for k in cols["pool"]] for o in mods]
        self.skips = [o[cols["skip"][0]] for o in mods] if cols["skip"] else []
        # First half: [sep_a x E | sep_b x E | ... | dil_a x E | ...], each a DilConv (relu,
        # depthwise, pointwise, bn); a SepConv's first half is its ``first``.
        self.stage1 = ([[o[k].first for o in mods] for k in cols["sep"]]
                       + [[o[k] for o in mods] for k in cols["dil"]])
        self.stage2 = [[o[k].second for o in mods] for k in cols["sep"]]
        self.S, self.D = len(cols["sep"]), len(cols["dil"])
        self.others = [[o[k] for k in cols["other"]] for o in mods]
        self.columns = [k for f in ("pool", "skip", "sep", "dil", "other") for k in cols[f]]
        # For the sampled plan (one op per edge): every reader's modules, each column's family.
        self.mods, self.family, self.cols = mods, family, cols


class FastSearchCell(nn.Module):
    """A ``SearchCell``'s modules (same names) with the fused forward of the module docstring.

    Tensors are channels_last throughout: every depthwise, pooling and pointwise kernel used here
    is fastest on it, and a block of ``M`` ops ``[N, M * C, H, W]`` is then an ``[N H W, M, C]``
    stack that the grouped pointwise conv and the node sums read in place.
    """

    def __init__(self, cell: SearchCell):
        super().__init__()
        space = self.space = cell.space
        self.reduction = cell.reduction
        self.num_nodes = cell.num_nodes
        self.multiplier = cell.multiplier
        self.preprocess0 = cell.preprocess0
        self.preprocess1 = cell.preprocess1
        self.edges = cell.edges
        self.partial_channels = cell.partial_channels
        self.aux_skip = cell.edges[0].aux is not None
        # Per state (the last node's state is read by no edge): its reader edges, in node order.
        self._readers = [space.readers(j) for j in range(space.num_states - 1)]
        # Plain lists, not submodules: the modules stay registered under edges.* only.
        self._plans = [_StatePlan(self.edges, [e.row for e in readers],
                                  2 if self.reduction and j < space.num_inputs else 1,
                                  space.ops)
                       for j, readers in enumerate(self._readers)]
        # Node i's weights in the order of its parts: per incoming edge (state order), the
        # columns of that state's plan; a column slice when every plan has the same contiguous
        # columns (DARTS: every op but ``none``), else an index into the node's rows.
        K = len(space.ops)
        self._node_columns = []
        for i in range(self.num_nodes):
            columns = [self._plans[j].columns for j in range(space.num_inputs + i)]
            first = columns[0]
            if first and all(c == first for c in columns) and first == list(
                    range(first[0], first[-1] + 1)):
                self._node_columns.append(slice(first[0], first[-1] + 1))
            else:
                self._node_columns.append(torch.tensor(
                    [j * K + k for j, cols in enumerate(columns) for k in cols],
                    dtype=torch.long))

    def _state_parts(self, x: torch.Tensor, plan: _StatePlan, kset
                     ) -> List[List[torch.Tensor]]:
        """Every op of every edge that reads ``x``, as the node-sum parts of each reader:
        ``[N, K, C, Ho, Wo]`` blocks in the order of ``plan.columns``."""
        E, stride = plan.E, plan.stride
        N, C, H, W = x.shape
        Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
        parts: List[List[torch.Tensor]] = [[] for _ in range(E)]

        if plan.pools:
            with stage("pools"):  # stacked [max | avg]; in training the BN output is shared
                P = len(plan.pools)
                pools = torch.cat([_pool(x, pool) for pool in plan.pools], dim=1)
                pools = pools.contiguous(memory_format=torch.channels_last)
                if plan.pool_bns[0][0].training:
                    shared = shared_batch_norm(pools, plan.pool_bns).view(N, P, C, Ho, Wo)
                    for p in parts:
                        p.append(shared)
                else:
                    for p, bns in zip(parts, plan.pool_bns):
                        p.append(stacked_batch_norm(pools, bns).view(N, P, C, Ho, Wo))
        if plan.skips:
            with stage("skip_connect"):
                self._skip_parts(x, plan, parts, Ho, Wo)
        S, D = plan.S, plan.D
        if S + D:
            with stage("sep/dil convs, first half"):
                z1 = self._first_half(x, plan, kset)
                views = [lambda t, s=s: t[:, s * E * C:(s + 1) * E * C] for s in range(S)]
                if D:
                    views += [lambda t, e=e: t.view(N, S + D, E, C, Ho, Wo)[:, S:, e]
                              for e in range(E)]
                halves = _block_views(z1, views)
                sep_halves, dil_out = halves[:S], halves[S:]
            if S:
                with stage("sep convs, second half"):
                    sep_out = self._second_half(sep_halves, plan, kset)
                    views = [lambda t, e=e: t.view(N, S, E, C, Ho, Wo)[:, :, e]
                             for e in range(E)]
                    for p, sep in zip(parts, _block_views(sep_out, views)):
                        p.append(sep)
            for p, dil in zip(parts, dil_out):
                p.append(dil)
        if plan.others[0]:
            with stage("other ops, per edge"):
                for p, ops in zip(parts, plan.others):
                    p += [op(x).unsqueeze(1) for op in ops]
        return parts

    def _skip_parts(self, x, plan, parts, Ho, Wo):
        """skip_connect of every reader: ``x`` itself, or the stride-2 FactorizedReduces."""
        if plan.stride == 1:
            for p in parts:
                p.append(x.unsqueeze(1))
        else:
            for p, t in zip(parts, _factorized_reduces(x, plan.skips, Ho, Wo)):
                p.append(t)

    def _first_half(self, x, plan, kset):
        """First DilConv of every conv op of every reader: one depthwise call per kernel shape,
        one grouped pointwise, one BN over [sep_a x E | sep_b x E | ... | dil_a x E | ...]."""
        return _first_halves(x, plan.stage1, plan.stride, kset)

    def _second_half(self, sep_halves, plan, kset):
        """Second DilConv of the sep convs: one depthwise per kernel size over all channels."""
        return _second_halves(sep_halves, plan.stage2, kset)

    def forward(self, s0, s1, weights, index: Optional[Sequence[int]] = None,
                edge_weights: Optional[torch.Tensor] = None, aux_beta: float = 0.0):
        """The cell (``SearchCell.forward``'s arguments); plain DARTS runs ``_darts_forward``,
        the methods' axes ``_methods_forward``."""
        kset = kernel_set_for(s1)
        if (index is None and edge_weights is None and not self.aux_skip
                and self.partial_channels == 1):
            return self._darts_forward(s0, s1, weights, kset)
        return self._methods_forward(s0, s1, weights, kset, index, edge_weights, aux_beta)

    def _darts_forward(self, s0, s1, weights, kset):
        space = self.space
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        pending: List[List[torch.Tensor]] = [[] for _ in range(self.num_nodes)]
        for j, plan in enumerate(self._plans):
            for e, parts in zip(self._readers[j], self._state_parts(states[j], plan, kset)):
                pending[e.node] += parts
            i = j - space.num_inputs + 1
            if i >= 0:  # node i has now received its edges from states 0 .. j
                columns = self._node_columns[i]
                w = weights[space.rows(i)]
                if isinstance(columns, slice):
                    w = w[:, columns].reshape(-1)
                else:
                    w = w.reshape(-1).index_select(0, columns.to(w.device))
                with stage("node sums"):
                    states.append(kset.node_sum(pending[i], w))
                pending[i] = []
        return torch.cat(states[-self.multiplier:], dim=1)

    def _methods_forward(self, s0, s1, weights, kset, index, edge_weights, aux_beta):
        """The fused plan with the methods' axes (``SearchCell``; ``K = partial_channels``):

        - the ops of each state run on its first ``C/K`` channels: every op (``index`` None) or
          only the ops that some reader edge sampled (``_sampled_state_parts``);
        - node ``i``'s mixed part is one node sum over its edges' op outputs, weighted
          ``b_e * w_e,k`` (``b``: the edge weights, 1 without edge normalization), plus the
          auxiliary skips ``aux_beta * b_e * aux_e(x)``;
        - ``K > 1``: since the shuffle and the concatenation are linear, node ``i`` is
          ``channel_shuffle(cat(mixed_i, sum_e b_e * bypass_e), K)``: one more node sum over
          the bypass channels (views of the states, or one 2x2 max pool per stride-2 state) and
          one copy into the shuffled output.
        """
        space, K = self.space, self.partial_channels
        n_ops = len(space.ops)
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        W = weights if edge_weights is None else weights * edge_weights.unsqueeze(1)
        ones = None if edge_weights is not None else weights.new_ones(space.num_edges)
        b = edge_weights if edge_weights is not None else ones
        parts: List[List[torch.Tensor]] = [[] for _ in range(self.num_nodes)]
        flat: List[List[int]] = [[] for _ in range(self.num_nodes)]
        aux_parts: List[List[torch.Tensor]] = [[] for _ in range(self.num_nodes)]
        bypass: List[List[torch.Tensor]] = [[] for _ in range(self.num_nodes)]
        for j, plan in enumerate(self._plans):
            x = states[j]
            C = x.shape[1] // K
            x1 = x[:, :C] if K > 1 else x
            readers = self._readers[j]
            if index is None:
                state_parts = self._state_parts(x1, plan, kset)
                columns = [plan.columns] * plan.E
            else:
                chosen = [index[e.row] for e in readers]
                state_parts = self._sampled_state_parts(x1, plan, kset, chosen)
                columns = [[k] if p else [] for k, p in zip(chosen, state_parts)]
            for e, p, cols in zip(readers, state_parts, columns):
                parts[e.node] += p
                flat[e.node] += [e.row * n_ops + k for k in cols]
            if self.aux_skip:
                with stage("auxiliary skips"):
                    for e, t in zip(readers, self._aux_parts(x1, plan, readers)):
                        aux_parts[e.node].append(t)
            if K > 1:
                x2 = x[:, C:]
                if plan.stride == 2:
                    x2 = F.max_pool2d(x2, 2, 2, ceil_mode=True)
                for e in readers:
                    bypass[e.node].append(x2.unsqueeze(1))
            i = j - space.num_inputs + 1
            if i < 0:
                continue
            rows = space.rows(i)   # node i has now received its edges from states 0 .. j
            with stage("node sums"):
                w = W.reshape(-1).index_select(
                    0, torch.tensor(flat[i], dtype=torch.long, device=W.device))
                node_parts = parts[i]
                if self.aux_skip:
                    node_parts = node_parts + aux_parts[i]
                    w = torch.cat([w, aux_beta * b[rows]])
                if node_parts:
                    node = kset.node_sum(node_parts, w)
                else:  # every edge sampled ``none``
                    node = self._zeros_like_node(states[0], C)
                if K > 1:
                    node = _shuffled(node, kset.node_sum(bypass[i], b[rows]), K)
            states.append(node)
            parts[i], aux_parts[i], bypass[i] = [], [], []
        return torch.cat(states[-self.multiplier:], dim=1)

    def _zeros_like_node(self, s, C):
        N, _, H, W = s.shape
        if self.reduction:
            H, W = (H - 1) // 2 + 1, (W - 1) // 2 + 1
        return s.new_zeros(N, C, H, W).contiguous(memory_format=torch.channels_last)

    def _aux_parts(self, x, plan, readers) -> List[torch.Tensor]:
        """DARTS-'s auxiliary skip of every reader edge: ``x``, or the stride-2
        FactorizedReduces as one block (``_factorized_reduces``)."""
        if plan.stride == 1:
            return [x.unsqueeze(1)] * len(readers)
        H, W = x.shape[2:]
        return _factorized_reduces(x, [self.edges[e.row].aux for e in readers],
                                   (H - 1) // 2 + 1, (W - 1) // 2 + 1)

    def _sampled_state_parts(self, x, plan, kset, chosen: Sequence[int]
                             ) -> List[List[torch.Tensor]]:
        """The one sampled op ``chosen[r]`` of every reader ``r`` of ``x``: ``[]`` (``none``)
        or ``[block [N, 1, C, Ho, Wo]]`` per reader. Only the ops some reader chose run: each
        chosen pool once (its BatchNorm output shared by the readers that chose it, in
        training), the chosen stride-2 skips as one block, the chosen sep and dil convs as one
        conv-block stage per half with one depthwise call per chosen kernel shape."""
        E, stride = plan.E, plan.stride
        N, C, H, W = x.shape
        Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
        parts: List[List[torch.Tensor]] = [[] for _ in range(E)]
        family = [plan.family[k] for k in chosen]
        by_column = {}
        for r, k in enumerate(chosen):
            by_column.setdefault(k, []).append(r)
        for k in plan.cols["pool"]:
            if k not in by_column:
                continue
            with stage("pools"):
                y = _pool(x, plan.mods[0][k].pool).contiguous(memory_format=torch.channels_last)
                bns = [plan.mods[r][k].bn for r in by_column[k]]
                if bns[0].training:
                    shared = shared_batch_norm(y, [[bn] for bn in bns]).unsqueeze(1)
                    for r in by_column[k]:
                        parts[r].append(shared)
                else:
                    for r, bn in zip(by_column[k], bns):
                        parts[r].append(stacked_batch_norm(y, [bn]).unsqueeze(1))
        skips = [r for r in range(E) if family[r] == "skip"]
        if skips:
            with stage("skip_connect"):
                if stride == 1:
                    blocks = [x.unsqueeze(1)] * len(skips)
                else:
                    blocks = _factorized_reduces(x, [plan.mods[r][chosen[r]] for r in skips],
                                                 Ho, Wo)
                for r, t in zip(skips, blocks):
                    parts[r].append(t)
        seps = [k for k in plan.cols["sep"] if k in by_column]
        dils = [k for k in plan.cols["dil"] if k in by_column]
        if seps or dils:
            with stage("sep/dil convs, first half"):
                stage1 = ([[plan.mods[r][k].first for r in by_column[k]] for k in seps]
                          + [[plan.mods[r][k] for r in by_column[k]] for k in dils])
                z1 = _first_halves(x, stage1, stride, kset)
                B = sum(len(by_column[k]) for k in seps + dils)
                views, offset = [], 0
                for k in seps:
                    n = len(by_column[k])
                    views.append(lambda t, a=offset, n=n: t[:, a * C:(a + n) * C])
                    offset += n
                dil_readers = [r for k in dils for r in by_column[k]]
                views += [lambda t, b=b: t.view(N, B, C, Ho, Wo)[:, b:b + 1]
                          for b in range(offset, B)]
                halves = _block_views(z1, views)
            for r, t in zip(dil_readers, halves[len(seps):]):
                parts[r].append(t)
            if seps:
                with stage("sep convs, second half"):
                    stage2 = [[plan.mods[r][k].second for r in by_column[k]] for k in seps]
                    z2 = _second_halves(halves[:len(seps)], stage2, kset)
                    sep_readers = [r for k in seps for r in by_column[k]]
                    B2 = len(sep_readers)
                    views = [lambda t, b=b: t.view(N, B2, C, Ho, Wo)[:, b:b + 1]
                             for b in range(B2)]
                    for r, t in zip(sep_readers, _block_views(z2, views)):
                        parts[r].append(t)
        others = [r for r in range(E) if family[r] == "other"]
        if others:
            with stage("other ops, per edge"):
                for r in others:
                    parts[r].append(plan.mods[r][chosen[r]](x).unsqueeze(1))
        return parts


def _shuffled(mixed: torch.Tensor, bypass: torch.Tensor, K: int) -> torch.Tensor:
    """``channel_shuffle(cat(mixed, bypass), K)`` (``reference.channel_shuffle``) written in one
    copy into a channels_last tensor: output channel ``i * K`` is ``mixed[i]``, channel
    ``i * K + g`` (``g >= 1``) is ``bypass[(g - 1) * C/K + i]``."""
    N, c, H, W = mixed.shape
    out = torch.empty(N, c * K, H, W, dtype=mixed.dtype, device=mixed.device,
                      memory_format=torch.channels_last)
    grouped = out.view(N, c, K, H, W)
    grouped[:, :, 0].copy_(mixed)
    grouped[:, :, 1:].copy_(bypass.view(N, K - 1, c, H, W).transpose(1, 2))
    return out


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
