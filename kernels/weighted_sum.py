"""Fused weighted sum ``y = sum_k w[k] * xs[k]``: a whole DARTS node in one launch.

A DARTS node sums, over its incoming edges and each edge's ops (``none`` skipped), the op outputs
weighted by the softmaxed alphas. Unfused that is ~2K elementwise launches and as many temporaries;
here it is one kernel that reads each input once and writes the output once.

Math (``g = dL/dy``):
    y      = sum_k w[k] * x_k
    dL/dx_k = w[k] * g
    dL/dw[k] = sum_i g[i] * x_k[i]

Memory traffic for ``K`` tensors of ``n`` elements of ``b`` bytes:
    forward   (K + 1) * n * b           (read K inputs, write y)
    backward  (2K + 1) * n * b          (read g and the K inputs, write the K input gradients)

The K input addresses (and strides) reach the kernel as a small int64 table, so one compiled
kernel serves any K. When every input, the output and ``g`` share one dense layout (contiguous,
channels_last, any permutation) the kernel walks storage linearly (``FLAT``); otherwise tensors
are addressed through their strides (up to 4 dims; inputs of more dims are flattened first, a copy
where they are not dense), the input offsets computed once when all inputs share their strides
(``SHARED``: e.g. the ``unbind`` views of one stacked tensor), else per input. The ``w``
gradient is deterministic: each program writes its K partial sums to ``[num_programs, K]`` and
one ``sum(0)`` finishes it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import dispatch, reference

if dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

BLOCK = 1024
NUM_WARPS = 4


def _is_dense(t: torch.Tensor) -> bool:
    """True when ``t`` fills exactly ``numel`` storage slots (any dim order, no gap, no overlap)."""
    expected = 1
    dims = sorted(((st, s) for s, st in zip(t.shape, t.stride()) if s != 1))
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _shape4(t: torch.Tensor) -> tuple[list[int], list[int]]:
    """Sizes and strides of ``t`` padded in front to 4 dims."""
    pad = 4 - t.dim()
    return [1] * pad + list(t.shape), [0] * pad + list(t.stride())


if dispatch.HAS_TRITON:

    @triton.jit
    def _index4(idx, S1, S2, S3):
        """Split a row-major logical index over sizes ``[*, S1, S2, S3]`` into 4 coordinates."""
        i3 = idx % S3
        rest = idx // S3
        i2 = rest % S2
        rest = rest // S2
        return rest // S1, rest % S1, i2, i3

    @triton.jit
    def _input_pointer(TABLE, k, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
        """The address of input ``k`` from the table, as a pointer to ``DTYPE``. ``ALIGNED``
        promises 16-byte alignment, which a loaded address cannot show the compiler by itself:
        without it a GPU loads element by element instead of in 16-byte vectors."""
        pointer = tl.load(TABLE + k * 5).to(tl.pointer_type(DTYPE))
        if ALIGNED:
            pointer = tl.multiple_of(pointer, 16)
        return pointer

    @triton.jit
    def _input_offsets(TABLE, k, i0, i1, i2, i3):
        """Element offsets of input ``k`` at coordinates ``(i0, i1, i2, i3)``, from its strides."""
        return (i0 * tl.load(TABLE + k * 5 + 1) + i1 * tl.load(TABLE + k * 5 + 2)
                + i2 * tl.load(TABLE + k * 5 + 3) + i3 * tl.load(TABLE + k * 5 + 4))

    @triton.jit
    def _weighted_sum_fwd_kernel(
        TABLE,  # int64 [K, 5]: address, then the 4 strides, of each input
        W, stride_w, Y, sy0, sy1, sy2, sy3, K, numel, S1, S2, S3,
        FLAT: tl.constexpr, SHARED: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        idx = pid * BLOCK + tl.arange(0, BLOCK)
        mask = idx < numel
        if FLAT:
            y_off = idx
        else:
            i0, i1, i2, i3 = _index4(idx, S1, S2, S3)
            y_off = i0 * sy0 + i1 * sy1 + i2 * sy2 + i3 * sy3
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        if SHARED:
            x_off = _input_offsets(TABLE, 0, i0, i1, i2, i3)
        for k in range(K):
            x_ptr = _input_pointer(TABLE, k, Y.dtype.element_ty, ALIGNED)
            if FLAT:
                x_off = idx
            elif not SHARED:
                x_off = _input_offsets(TABLE, k, i0, i1, i2, i3)
            w_k = tl.load(W + k * stride_w).to(tl.float32)
            acc += w_k * tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + y_off, acc.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _weighted_sum_bwd_kernel(
        TABLE, W, stride_w, G, sg0, sg1, sg2, sg3,
        DX,  # [K, numel] input gradients, each laid out like y (FLAT) or contiguous
        PARTIAL,  # fp32 [num_programs, K] partial sums of the w gradient
        K, numel, S1, S2, S3,
        FLAT: tl.constexpr, SHARED: tl.constexpr, ALIGNED: tl.constexpr, NEED_DX: tl.constexpr,
        NEED_DW: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        idx = pid * BLOCK + tl.arange(0, BLOCK)
        mask = idx < numel
        if FLAT:
            g_off = idx
        else:
            i0, i1, i2, i3 = _index4(idx, S1, S2, S3)
            g_off = i0 * sg0 + i1 * sg1 + i2 * sg2 + i3 * sg3
        g = tl.load(G + g_off, mask=mask, other=0.0).to(tl.float32)
        if SHARED and NEED_DW:
            x_off = _input_offsets(TABLE, 0, i0, i1, i2, i3)
        for k in range(K):
            if NEED_DW:
                x_ptr = _input_pointer(TABLE, k, DX.dtype.element_ty, ALIGNED)
                if FLAT:
                    x_off = idx
                elif not SHARED:
                    x_off = _input_offsets(TABLE, k, i0, i1, i2, i3)
                x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
                tl.store(PARTIAL + pid * K + k, tl.sum(g * x, axis=0))
            if NEED_DX:
                w_k = tl.load(W + k * stride_w).to(tl.float32)
                tl.store(DX + k * numel + idx, (w_k * g).to(DX.dtype.element_ty), mask=mask)


def _aligned(xs: Sequence[torch.Tensor]) -> bool:
    return all(x.data_ptr() % 16 == 0 for x in xs)


def _table(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """int64 ``[K, 5]``: each input's address and its 4 strides (padded in front)."""
    rows = [[x.data_ptr()] + _shape4(x)[1] for x in xs]
    return torch.tensor(rows, dtype=torch.int64).to(xs[0].device, non_blocking=True)


class WeightedSumFunction(torch.autograd.Function):
    """``weighted_sum`` with Triton forward and backward; call as ``apply(w, *xs)``."""

    @staticmethod
    def forward(ctx, w, *xs):
        out = torch.empty_like(xs[0])  # keeps a dense input's layout (e.g. channels_last)
        flat = _is_dense(out) and all(x.stride() == out.stride() for x in xs)
        shared = all(x.stride() == xs[0].stride() for x in xs)
        sizes, y_strides = _shape4(out)
        grid = (triton.cdiv(out.numel(), BLOCK),)
        dispatch.record_launch("weighted_sum_fwd")
        _weighted_sum_fwd_kernel[grid](
            _table(xs), w, w.stride(0), out, *y_strides, len(xs), out.numel(), *sizes[1:],
            FLAT=flat, SHARED=shared and not flat, ALIGNED=_aligned(xs), BLOCK=BLOCK,
            num_warps=NUM_WARPS)
        ctx.save_for_backward(w, *xs)
        ctx.layout = (tuple(out.shape), out.stride(), flat, shared)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        w, *xs = ctx.saved_tensors
        shape, y_stride, flat, shared = ctx.layout
        need_dw, need_dx = ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:])
        K, numel = len(xs), g.numel()
        flat = flat and g.stride() == y_stride
        grid = (triton.cdiv(numel, BLOCK),)
        dx = torch.empty((K, numel) if need_dx else (1,), dtype=xs[0].dtype, device=g.device)
        partial = torch.empty((grid[0], K) if need_dw else (1,), dtype=torch.float32,
                              device=g.device)
        sizes, g_strides = _shape4(g)
        dispatch.record_launch("weighted_sum_bwd")
        _weighted_sum_bwd_kernel[grid](
            _table(xs), w, w.stride(0), g, *g_strides, dx, partial, K, numel, *sizes[1:],
            FLAT=flat, SHARED=shared and not flat, ALIGNED=_aligned(xs), NEED_DX=need_dx,
            NEED_DW=need_dw, BLOCK=BLOCK, num_warps=NUM_WARPS)
        dw = partial.sum(0).to(w.dtype) if need_dw else None
        if not need_dx:
            return (dw,) + (None,) * K
        dx_stride = y_stride if flat else _contiguous_strides(shape)
        return (dw,) + tuple(dx[k].as_strided(shape, dx_stride) for k in range(K))


def weighted_sum(xs: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """``sum_k w[k] * xs[k]`` for K same-shaped, same-dtype tensors and a K-vector ``w``.

    Differentiable in every ``xs[k]`` and in ``w``; the result has the dtype of ``xs`` (the kernel
    accumulates in fp32). Dispatched by ``fastnas.kernels.dispatch``.
    """
    xs = tuple(xs)
    if not xs:
        raise ValueError("weighted_sum: needs at least one tensor")
    if w.dim() != 1 or w.numel() != len(xs):
        raise ValueError(f"weighted_sum: w must be a vector of {len(xs)} weights, got shape "
                         f"{tuple(w.shape)}")
    if any(x.shape != xs[0].shape for x in xs) or any(x.dtype != xs[0].dtype for x in xs):
        raise ValueError("weighted_sum: all tensors must share one shape and one dtype, got "
                         f"{sorted({(tuple(x.shape), str(x.dtype)) for x in xs})}")
    if dispatch.use_triton("weighted_sum", w, *xs):
        if xs[0].numel() == 0:
            return torch.zeros_like(xs[0])
        if xs[0].dim() > 4:  # the kernel addresses up to 4 dims: flatten (a copy if not dense)
            return WeightedSumFunction.apply(w, *(x.reshape(-1) for x in xs)).view(xs[0].shape)
        return WeightedSumFunction.apply(w, *xs)
    return reference.weighted_sum(xs, w)
