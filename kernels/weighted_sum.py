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
from typing import Callable, List, Tuple

import torch

from . import dispatch, grad_edges, reference
from .launch import Launch, cdiv, note, register, run, skip

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
    def weighted_sum_fwd_kernel(
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
    def weighted_sum_bwd_kernel(
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

    register("weighted_sum_fwd", weighted_sum_fwd_kernel)
    register("weighted_sum_bwd", weighted_sum_bwd_kernel)


def _aligned(xs: Sequence[torch.Tensor], real: bool) -> bool:
    """All inputs 16-byte aligned. A fake tensor has no address: its byte offset into its
    storage answers the same question, as allocators align storages to far more than 16."""
    if real:
        return all(x.data_ptr() % 16 == 0 for x in xs)
    return all(x.storage_offset() * x.element_size() % 16 == 0 for x in xs)


def _table(xs: Sequence[torch.Tensor], real: bool) -> torch.Tensor:
    """int64 ``[K, 5]``: each input's address and its 4 strides (padded in front); for fake
    tensors an empty table of that shape."""
    if not real:
        return torch.empty((len(xs), 5), dtype=torch.int64, device=xs[0].device)
    rows = [[x.data_ptr()] + _shape4(x)[1] for x in xs]
    return torch.tensor(rows, dtype=torch.int64).to(xs[0].device, non_blocking=True)


def _output_like(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``y``'s memory: ``empty_like`` keeps a dense input's layout (e.g. channels_last); inputs
    of more than 4 dims are flattened for the kernel, so their ``y`` is contiguous."""
    if xs[0].dim() > 4:
        return torch.empty(xs[0].shape, dtype=xs[0].dtype, device=xs[0].device)
    return torch.empty_like(xs[0])


def _flat_inputs(xs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The kernel addresses up to 4 dims: flatten more (a copy where not dense)."""
    return [x.reshape(-1) for x in xs] if xs[0].dim() > 4 else list(xs)


def _layout(xs: Sequence[torch.Tensor], y: torch.Tensor) -> Tuple[bool, bool]:
    """``(FLAT, SHARED)``: one dense layout for all (walk storage linearly); one set of strides
    for all inputs (compute the input offsets once)."""
    flat = _is_dense(y) and all(x.stride() == y.stride() for x in xs)
    shared = all(x.stride() == xs[0].stride() for x in xs)
    return flat, shared and not flat


def _forward(xs: Sequence[torch.Tensor], w: torch.Tensor, launch: Callable = run
             ) -> torch.Tensor:
    """``y`` and the ``Launch`` that fills it, given to ``launch``: ``run`` it, ``note`` it (fake
    tensors) or ``skip`` it (allocate only)."""
    real = launch is run
    out = _output_like(xs)
    if out.numel() == 0 or launch is skip:
        return out.zero_() if real else out
    ks = _flat_inputs(xs)
    y = out.view(-1) if xs[0].dim() > 4 else out
    flat, shared = _layout(ks, y)
    sizes, y_strides = _shape4(y)
    launch(Launch(
        "weighted_sum_fwd", (cdiv(y.numel(), BLOCK),),
        (_table(ks, real), w, w.stride(0), y, *y_strides, len(ks), y.numel(), *sizes[1:]),
        dict(FLAT=flat, SHARED=shared, ALIGNED=_aligned(ks, real), BLOCK=BLOCK), NUM_WARPS))
    return out


def _backward(xs: Sequence[torch.Tensor], w: torch.Tensor, g: torch.Tensor, need_dx: bool,
              need_dw: bool, launch: Callable = run
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(dx, dw)``: ``dx`` stacks the K input gradients ``[K, *shape]`` (each laid out like
    ``y`` when every tensor shares its dense layout, else contiguous), ``dw`` is ``[K]``; either
    is empty when not asked for. ``launch`` as in ``_forward``."""
    real = launch is run
    K, shape = len(xs), tuple(xs[0].shape)
    numel = xs[0].numel()
    y = _output_like(xs)
    ks = _flat_inputs(xs)
    gk = g.reshape(-1) if xs[0].dim() > 4 else g
    yk = y.view(-1) if xs[0].dim() > 4 else y
    flat, shared = _layout(ks, yk)
    flat = flat and gk.stride() == yk.stride()
    grid = (max(1, cdiv(numel, BLOCK)),)
    dx = torch.empty((K, numel) if need_dx else (0,), dtype=xs[0].dtype, device=g.device)
    partial = torch.zeros((grid[0], K) if need_dw else (0,), dtype=torch.float32,
                          device=g.device)
    if launch is not skip and numel > 0 and (need_dx or need_dw):
        sizes, g_strides = _shape4(gk)
        launch(Launch(
            "weighted_sum_bwd", grid,
            (_table(ks, real), w, w.stride(0), gk, *g_strides, dx, partial, K, numel,
             *sizes[1:]),
            dict(FLAT=flat, SHARED=shared, ALIGNED=_aligned(ks, real), NEED_DX=need_dx,
                 NEED_DW=need_dw, BLOCK=BLOCK), NUM_WARPS))
    dw = partial.sum(0).to(w.dtype) if need_dw else w.new_empty(0)
    if need_dx:
        stride = y.stride() if flat and xs[0].dim() <= 4 else _contiguous_strides(shape)
        dx = dx.as_strided((K, *shape), (numel, *stride))
    return dx, dw


# -- the custom ops: fastnas::weighted_sum and its backward ---------------------------------------
# The launchers copy a table of input addresses to the device on every call, which CUDA graph
# capture forbids: the ops say so, and inductor keeps them out of its CUDA graphs.
_TAGS = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()


@torch.library.custom_op("fastnas::weighted_sum", mutates_args=(),
                         schema="(Tensor[] xs, Tensor w) -> Tensor", tags=_TAGS)
def weighted_sum_op(xs, w):
    """``sum_k w[k] * xs[k]``: the Triton kernel or the torch reference, as the kernel backend
    picks (``dispatch.use_triton``); either way ``y`` has the layout of ``_output_like``."""
    if dispatch.use_triton("weighted_sum", w, *xs):
        return _forward(xs, w, launch=run)
    return _output_like(xs).copy_(reference.weighted_sum(xs, w))


@weighted_sum_op.register_fake
def _(xs, w):
    return _forward(xs, w, launch=note)


@torch.library.custom_op("fastnas::weighted_sum_backward", mutates_args=(),
                         schema="(Tensor[] xs, Tensor w, Tensor g, bool need_dx, bool need_dw, "
                                "bool triton) -> (Tensor, Tensor)", tags=_TAGS)
def weighted_sum_backward_op(xs, w, g, need_dx, need_dw, triton):
    """``(dx, dw)`` of ``weighted_sum`` for the output gradient ``g`` (see ``_backward``), by
    the Triton kernel (``triton``: what the forward ran; raises if it cannot run) or torch."""
    if triton and dispatch.require_triton("weighted_sum", w, g, *xs):
        return _backward(xs, w, g, need_dx, need_dw, launch=run)
    dx, dw = _backward(xs, w, g, need_dx, need_dw, launch=skip)
    acc = torch.promote_types(g.dtype, torch.float32)
    if need_dx:
        for k in range(len(xs)):
            dx[k].copy_(w[k].to(g.dtype) * g)
    if need_dw:
        dw.copy_(torch.stack([torch.sum(g.to(acc) * x.to(acc)) for x in xs]))
    return dx, dw


@weighted_sum_backward_op.register_fake
def _(xs, w, g, need_dx, need_dw, triton):
    return _backward(xs, w, g, need_dx, need_dw, launch=note)


def _setup_context(ctx, inputs, output):
    xs, w = inputs
    grad_edges.record(ctx, w, *xs)
    ctx.save_for_backward(w, *xs)
    ctx.triton = dispatch.use_triton("weighted_sum", w, *xs)  # what the forward ran


def _weighted_sum_grads(ctx, g):
    w, *xs = ctx.saved_tensors
    # Only what this backward uses (grad_edges): the weight step needs no alpha gradient, and
    # the architecture step no gradient of op outputs that no alpha depends on.
    need_xs, need_w = ctx.needs_input_grad
    need_w = grad_edges.needed(ctx, 0, need_w)
    need_dx = any(grad_edges.needed(ctx, 1 + k, r) for k, r in enumerate(need_xs))
    dx, dw = torch.ops.fastnas.weighted_sum_backward(xs, w, g, need_dx, need_w, ctx.triton)
    return (list(dx.unbind(0)) if need_dx else [None] * len(xs)), (dw if need_w else None)


weighted_sum_op.register_autograd(_weighted_sum_grads, setup_context=_setup_context)


def weighted_sum(xs: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """``sum_k w[k] * xs[k]`` for K same-shaped, same-dtype tensors and a K-vector ``w``.

    Differentiable in every ``xs[k]`` and in ``w``; the result has the dtype of ``xs`` (the kernel
    accumulates in fp32). Dispatched by ``fastnas.kernels.dispatch``: the Triton kernel runs as
    the custom op ``torch.ops.fastnas.weighted_sum`` (opaque to ``torch.compile``, one node of
    its graph); the torch path is the reference's plain ops (which a compiler can fuse).
    """
    xs = list(xs)
    if not xs:
        raise ValueError("weighted_sum: needs at least one tensor")
    if w.dim() != 1 or w.numel() != len(xs):
        raise ValueError(f"weighted_sum: w must be a vector of {len(xs)} weights, got shape "
                         f"{tuple(w.shape)}")
    if any(x.shape != xs[0].shape for x in xs) or any(x.dtype != xs[0].dtype for x in xs):
        raise ValueError("weighted_sum: all tensors must share one shape and one dtype, got "
                         f"{sorted({(tuple(x.shape), str(x.dtype)) for x in xs})}")
    if dispatch.use_triton("weighted_sum", w, *xs):
        return torch.ops.fastnas.weighted_sum(xs, w)
    return reference.weighted_sum(xs, w)
