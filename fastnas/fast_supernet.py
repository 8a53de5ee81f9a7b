"""The fast supernet: the reference supernet's math and parameters, fused execution.

``FastNetwork`` holds exactly the modules of ``fastnas.supernet.Network`` (the same
``state_dict`` names and shapes, the same initialization for a given seed, the same
``alphas()``, ``weights()``, ``named_weights()`` and ``genotype()``), but each cell runs a plan
built around the cell's *states* rather than its edges. State ``j`` is read by one edge of
every later node; for each state, once:

- ``none`` is never computed: its output is zero, only its alpha enters the softmax;
- ``max_pool`` and ``avg_pool`` have no parameters and, in training, their BatchNorm(affine=False)
  output depends on the batch only, so they are computed once and shared by every edge (each
  edge's running statistics are still updated; in eval mode each edge normalizes with its own);
- the first ReLU -> depthwise -> pointwise -> BatchNorm of every sep and dil conv of every edge
  runs as one ``fastnas.dilconv`` call: ``relu(x_j)`` once, one depthwise call per kernel shape
  for all edges, one grouped pointwise (strided batched matmul), one BatchNorm over the
  concatenated channels; the second half of the sep convs likewise. That Function keeps only
  its input and output for backward (recomputing ReLU and depthwise outputs when a weight
  gradient is asked for), which is most of the memory saving;
- ``skip_connect`` is ``x_j`` itself, or for stride 2 the FactorizedReduce of all edges as one
  block-diagonal 1x1 conv and one BatchNorm.

Node ``i`` is then one weighted sum over all its edges and ops (``fastnas.weighted_sum``;
``fastnas.kernels.weighted_sum`` for the ``triton`` backend). Tensors are channels_last from the
stem on (the CPU kernels used are fastest on it). Every custom Function computes only the
gradients the current backward asks for (``fastnas.grad_edges``): the architecture step needs
no weight gradient, the weight step no alpha gradient.

Stacked weights (depthwise kernels, pointwise matrices) are built inside ``forward`` from the
registered parameters, so ``torch.func.functional_call`` (the architect's virtual weights) swaps
them like any other module's.

Backends: ``torch`` (the CPU fast path, and CUDA through cuDNN and cuBLAS) and ``triton``
(CUDA: ``fastnas.kernels.depthwise_conv2d`` and ``weighted_sum`` composed under autograd).
"""
from __future__ import annotations

from typing import Iterable, List, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpointing import checkpoint_module
from .dilconv import dil_conv_blocks
from .ops import PRIMITIVES
from .pointwise import grouped_pointwise
from .profiling import stage
from .supernet import Network, SearchCell
from .weighted_sum import weighted_sum_parts

# Column of each op in the alpha matrix (PRIMITIVES order).
_MAX, _AVG, _SKIP, _SEP3, _SEP5, _DIL3, _DIL5 = (PRIMITIVES.index(n) for n in (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
    "dil_conv_3x3", "dil_conv_5x5"))
# (op column, kernel size, dilation) of the first depthwise conv of each conv op, in the order
# their outputs are stacked; sep convs first, so the stack splits into [sep | dil].
_STAGE1 = ((_SEP3, 3, 1), (_SEP5, 5, 1), (_DIL3, 3, 2), (_DIL5, 5, 2))
_STAGE2 = ((_SEP3, 3), (_SEP5, 5))


# -- backends -------------------------------------------------------------------------------------
class TorchOps:
    """The primitives of the fused cell in plain torch (CPU fast path, CUDA fallback)."""

    name = "torch"
    # Each stage of DilConv blocks is one fastnas.dilconv Function; False composes
    # relu, ``depthwise`` and the grouped pointwise under autograd instead.
    fused_blocks = True

    @staticmethod
    def node_sum(parts, w):
        return weighted_sum_parts(parts, w)


class TritonOps(TorchOps):
    """``fastnas.kernels`` for the depthwise convs and the node sums (CUDA tensors only)."""

    name = "triton"
    fused_blocks = False  # the kernels' own autograd Functions are composed

    @staticmethod
    def depthwise(x, weight, stride, padding, dilation):
        from . import kernels

        M = weight.shape[0] // x.shape[1]
        # Kernels are not autocast ops: give them one dtype, as conv2d under autocast would.
        return kernels.depthwise_conv2d(x.repeat(1, M, 1, 1) if M > 1 else x,
                                        weight.to(x.dtype), stride, padding, dilation)

    @staticmethod
    def node_sum(parts, w):
        from . import kernels

        dtype = parts[0].dtype
        for p in parts[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        xs = [x.to(dtype) for p in parts for x in p.unbind(1)]
        return kernels.weighted_sum(xs, w)


def triton_available() -> bool:
    """True when CUDA is present and ``fastnas.kernels`` provides the Triton ops we call."""
    if not torch.cuda.is_available():
        return False
    try:
        from . import kernels
    except Exception:  # a broken kernels build must not break the torch path
        return False
    return getattr(kernels, "HAS_TRITON", False) and all(
        callable(getattr(kernels, n, None)) for n in ("weighted_sum", "depthwise_conv2d"))


def resolve_backend(backend: str, device: Union[str, torch.device]) -> str:
    """``auto`` -> ``torch`` on the CPU; on CUDA ``triton`` if available, else ``torch``."""
    device = torch.device(device)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if device.type != "cuda":
            raise ValueError("backend 'triton' runs on CUDA only; use 'torch' or 'auto' on "
                             f"device {str(device)!r}")
        if not triton_available():
            raise ValueError("backend 'triton' needs fastnas.kernels with weighted_sum and "
                             "depthwise_conv2d; use 'torch' or 'auto'")
    return backend


_OPS = {"torch": TorchOps, "triton": TritonOps}


# -- BatchNorm over concatenated channels ---------------------------------------------------------
def _fused_batch_norm(x: torch.Tensor, bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """BatchNorm(affine=False) of ``x: [N, sum C_b, H, W]`` with the statistics of ``bns`` (one
    per channel block), as one call; running statistics are updated as each module would."""
    bn = bns[0]
    if bn.training:
        running_mean = torch.cat([b.running_mean for b in bns])
        running_var = torch.cat([b.running_var for b in bns])
        y = F.batch_norm(x, running_mean, running_var, None, None, True, bn.momentum, bn.eps)
        with torch.no_grad():
            sizes = [b.num_features for b in bns]
            torch._foreach_copy_([b.running_mean for b in bns], list(running_mean.split(sizes)))
            torch._foreach_copy_([b.running_var for b in bns], list(running_var.split(sizes)))
            torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
        return y
    return F.batch_norm(x, torch.cat([b.running_mean for b in bns]),
                        torch.cat([b.running_var for b in bns]), None, None, False, 0.0, bn.eps)


def _shared_batch_norm(x: torch.Tensor, groups: Sequence[Sequence[nn.BatchNorm2d]]):
    """Training-mode BatchNorm(affine=False) of ``x`` computed once for several module groups
    that all normalize ``x`` (one group per edge); every group's running statistics are updated
    as if each group had normalized ``x`` itself."""
    bn = groups[0][0]
    # momentum 1 leaves the batch mean and unbiased variance in the scratch buffers.
    mean = x.new_zeros(x.shape[1], dtype=torch.float32)
    var = x.new_ones(x.shape[1], dtype=torch.float32)
    y = F.batch_norm(x, mean, var, None, None, True, 1.0, bn.eps)
    with torch.no_grad():
        m = bn.momentum
        sizes = [b.num_features for b in groups[0]]
        means, vars_ = list(mean.split(sizes)), list(var.split(sizes))
        for group in groups:
            rms = [b.running_mean for b in group]
            rvs = [b.running_var for b in group]
            torch._foreach_mul_(rms, 1 - m)
            torch._foreach_add_(rms, means, alpha=m)
            torch._foreach_mul_(rvs, 1 - m)
            torch._foreach_add_(rvs, vars_, alpha=m)
        torch._foreach_add_([b.num_batches_tracked for g in groups for b in g], 1)
    return y


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
    """See ``_BlockViews``."""
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

    def __init__(self, cell: SearchCell, ops=TorchOps):
        super().__init__()
        if len(cell.edges[0].ops) != len(PRIMITIVES):
            raise ValueError("the fast supernet supports the standard PRIMITIVES only")
        self.reduction = cell.reduction
        self.num_nodes = cell.num_nodes
        self.multiplier = cell.multiplier
        self.preprocess0 = cell.preprocess0
        self.preprocess1 = cell.preprocess1
        self.edges = cell.edges
        self.ops = ops
        # Edge (i, j) from state j to node i; node i's edges are rows first(i) .. first(i) + i + 1.
        self._first = [sum(n + 2 for n in range(i)) for i in range(self.num_nodes)]
        # State j is read by nodes max(0, j - 1) .. num_nodes - 1 (the last node by none).
        self._readers = [list(range(max(0, j - 1), self.num_nodes))
                         for j in range(self.num_nodes + 1)]
        # Plain lists, not submodules: the modules stay registered under edges.* only.
        self._plans = [_StatePlan(self.edges, [self._first[i] + j for i in readers],
                                  2 if self.reduction and j < 2 else 1)
                       for j, readers in enumerate(self._readers)]

    def _dil_convs(self, inputs, groups, dw, pw, bns):
        """``BN(pointwise(depthwise(relu(inputs[i]))))`` per group, as in ``dil_conv_blocks``."""
        if self.ops.fused_blocks:
            return dil_conv_blocks(inputs, groups, dw, pw, bns)
        relus = [torch.relu(x) for x in inputs]
        d = [self.ops.depthwise(relus[i], w, s, p, dil) for (i, s, p, dil), w in zip(groups, dw)]
        return _fused_batch_norm(grouped_pointwise(d, pw), bns)

    def _state_parts(self, x: torch.Tensor, plan: _StatePlan) -> List[List[torch.Tensor]]:
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
                shared = _shared_batch_norm(pools, plan.pool_bns).view(N, 2, C, Ho, Wo)
                for p in parts:
                    p.append(shared)
            else:
                for p, bns in zip(parts, plan.pool_bns):
                    p.append(_fused_batch_norm(pools, bns).view(N, 2, C, Ho, Wo))
        with stage("skip_connect"):
            self._skip_parts(x, plan, parts, Ho, Wo)
        with stage("sep/dil convs, first half"):
            z1 = self._first_half(x, plan)
            views = [lambda t, s=s: t[:, s * E * C:(s + 1) * E * C] for s in range(2)]
            views += [lambda t, e=e: t.view(N, 4, E, C, Ho, Wo)[:, 2:, e] for e in range(E)]
            sep3_half, sep5_half, *dil_out = _block_views(z1, views)
        with stage("sep convs, second half"):
            sep_out = self._second_half(sep3_half, sep5_half, plan)
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
            y = _fused_batch_norm(y, [f.bn for f in plan.skips])
            views = [lambda t, e=e: t.view(N, E, C, Ho, Wo)[:, e:e + 1] for e in range(E)]
            for p, t in zip(parts, _block_views(y, views)):
                p.append(t)

    def _first_half(self, x, plan):
        """First DilConv of every conv op of every reader: one depthwise call per kernel shape,
        one grouped pointwise, one BN over [sep3 x E | sep5 x E | dil3 x E | dil5 x E]."""
        C = x.shape[1]
        first = [b for blocks in plan.stage1 for b in blocks]
        dw = [torch.cat([b[1].weight for b in blocks]) for blocks in plan.stage1]
        pw = torch.stack([b[2].weight.view(C, C) for b in first])
        groups = [(0, plan.stride, dil * (k - 1) // 2, dil) for _, k, dil in _STAGE1]
        return self._dil_convs([x], groups, dw, pw, [b[3] for b in first])

    def _second_half(self, sep3_half, sep5_half, plan):
        """Second DilConv of the sep convs: one depthwise per kernel size over all channels."""
        C = sep3_half.shape[1] // plan.E
        second = [b for blocks in plan.stage2 for b in blocks]
        dw = [torch.cat([b[1].weight for b in blocks]) for blocks in plan.stage2]
        pw = torch.stack([b[2].weight.view(C, C) for b in second])
        groups = [(i, 1, (k - 1) // 2, 1) for i, (_, k) in enumerate(_STAGE2)]
        return self._dil_convs([sep3_half, sep5_half], groups, dw, pw, [b[3] for b in second])

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        pending: List[List[torch.Tensor]] = [[] for _ in range(self.num_nodes)]
        for j, plan in enumerate(self._plans):
            for i, parts in zip(self._readers[j], self._state_parts(states[j], plan)):
                pending[i] += parts
            if j >= 1:  # node j - 1 has now received its edges from states 0 .. j
                i = j - 1
                w = weights[self._first[i]:self._first[i] + i + 2, 1:].reshape(-1)
                with stage("node sums"):
                    states.append(self.ops.node_sum(pending[i], w))
                pending[i] = []
        return torch.cat(states[-self.multiplier:], dim=1)


# -- networks -------------------------------------------------------------------------------------
class CheckpointedNetwork(Network):
    """``Network`` whose chosen cells are recomputed in backward (``set_checkpointing``)."""

    def __init__(self, *args, checkpointing: Union[bool, Iterable[int]] = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_checkpointing(checkpointing)

    def set_checkpointing(self, cells: Union[bool, Iterable[int]] = True) -> None:
        """``True``: every cell; ``False``: none; an iterable: those cell indices."""
        if isinstance(cells, bool):
            cells = range(len(self.cells)) if cells else ()
        cells = set(cells)
        bad = [c for c in cells if not 0 <= c < len(self.cells)]
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


class FastNetwork(CheckpointedNetwork):
    """The supernet with fused cells on ``backend`` ('torch' or 'triton'); same parameters,
    buffers, names and initialization (for a given seed) as ``fastnas.supernet.Network``."""

    def __init__(self, *args, backend: str = "torch",
                 checkpointing: Union[bool, Iterable[int]] = False, **kwargs):
        super().__init__(*args, checkpointing=checkpointing, **kwargs)
        if backend not in _OPS:
            raise ValueError(f"backend must be one of {sorted(_OPS)}, got {backend!r}")
        self.backend = backend
        self.cells = nn.ModuleList(FastSearchCell(cell, _OPS[backend]) for cell in self.cells)

    def forward(self, x):
        # channels_last from the stem on: see FastSearchCell.
        return super().forward(x.contiguous(memory_format=torch.channels_last))
