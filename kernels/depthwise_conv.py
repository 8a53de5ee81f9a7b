"""Depthwise 2-D convolution with a channel multiplier, optionally strided and dilated.

``depthwise_conv2d(x, weight)`` with ``x`` [N, C, H, W] and ``weight`` [M*C, 1, KH, KW] (an
integer ``M >= 1``) runs ``M`` depthwise convs of the same input in one launch: output channel
``o = m*C + c`` is input channel ``c`` convolved with ``weight[o]``, i.e.
``F.conv2d(torch.cat([x] * M, 1), weight, None, stride, padding, dilation, groups=M*C)``, but the
repeated input is never built: each program reads input channel ``o % C`` directly. ``M = 1`` is
the plain depthwise conv ``F.conv2d(x, weight, groups=C)``.

Math, for stride ``s``, padding ``p``, dilation ``d`` (taps outside the input read zero),
``g = dL/dy``, ``o = m*C + c``:
    y[n,o,oh,ow]  = sum_{i,j} w[o,i,j] * x[n, o % C, oh*s_h - p_h + i*d_h, ow*s_w - p_w + j*d_w]
    dx[n,c,ih,iw] = sum_m sum_{i,j} w[o,i,j] * gs[n,o, ih + p_h - i*d_h, iw + p_w - j*d_w]
    dw[o,i,j]     = sum_{n,oh,ow} g[n,o,oh,ow] * x[n, o % C, oh*s_h - p_h + i*d_h, ...]
where ``gs`` is ``g`` spread out by the stride: ``gs[n,o,oh*s_h,ow*s_w] = g[n,o,oh,ow]``, zero
between those pixels and outside the output.

Memory traffic (``b`` bytes per element; the KH*KW shifted re-reads of a tile hit the caches):
    forward          read x (M times), write y            ~ (M*N*C*H*W + M*N*C*OH*OW) * b
    backward input   read g, write dx                     ~ (M*N*C*OH*OW + N*C*H*W) * b
    backward weight  read g and x (M times), write partial sums
                                                          ~ (M*N*C*OH*OW + M*N*C*H*W) * b
                                                            + R*M*C*KH*KW*4
The ``M`` reads of ``x`` are of one tensor (caches serve some of them). Repeating ``x`` first
would add writing and re-reading the ``M*N*C*H*W`` copy and an ``M``-way sum of input gradients;
here the input-gradient kernel sums the ``M`` copies in fp32 registers and writes ``dx`` once.

Each program owns a tile of ``BLOCK_C`` channels x ``BLOCK_P`` flattened pixels of one image and
loops over the taps (rows in a loop, columns unrolled: fewer registers than unrolling all);
``_load_tap`` does every tap's coordinates, bounds and load. The weight gradient is
deterministic: each of ``R`` programs per channel block walks a fixed set of tiles, keeps its
per-channel, per-tap sums in registers and writes them to ``[R, M*C, KH*KW]``; one ``sum(0)``
finishes it (``R <= MAX_PARTIAL_PROGRAMS``). Tensors are addressed through their strides, so
contiguous, channels_last and sliced inputs all work without copies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch

from . import dispatch, grad_edges, reference
from .launch import Launch, cdiv, next_power_of_2, note, register, run, skip

if dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

IntPair = Union[int, tuple[int, int]]  # noqa: UP007 (run at import; 3.9 has no `int | tuple`)
NUM_WARPS = 8
# Weight-gradient kernels give each program several tiles and one row of partial sums; at most
# this many programs (rows) per channel block keeps the partial buffer small next to x.
MAX_PARTIAL_PROGRAMS = 512


def _pair(v: IntPair) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    h, w = v
    return (int(h), int(w))


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one depthwise conv (``C_out = M*C`` output channels), validated once on the host."""

    N: int
    C: int
    M: int
    H: int
    W: int
    KH: int
    KW: int
    OH: int
    OW: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of(cls, op: str, x: torch.Tensor, weight: torch.Tensor, stride: IntPair,
           padding: IntPair, dilation: IntPair) -> ConvGeometry:
        M = reference.channel_multiplier(op, x, weight)
        N, C, H, W = x.shape
        (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
        if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
            raise ValueError(f"{op}: need stride >= 1, dilation >= 1, padding >= 0")
        KH, KW = weight.shape[2:]
        OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
        OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
        if OH < 1 or OW < 1:
            raise ValueError(f"{op}: output would be empty ({OH}x{OW}) for input {H}x{W}")
        return cls(N, C, M, H, W, KH, KW, OH, OW, (sh, sw), (ph, pw), (dh, dw))

    @property
    def C_out(self) -> int:
        return self.M * self.C

    @property
    def constexprs(self):
        """Kernel size, stride, padding and dilation: compile-time constants of the kernels."""
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        return {"KH": self.KH, "KW": self.KW, "STRIDE_H": sh, "STRIDE_W": sw, "PAD_H": ph,
                "PAD_W": pw, "DIL_H": dh, "DIL_W": dw}


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a channels_last input, contiguous for anything else (e.g. sliced)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def is_channels_last(x: torch.Tensor) -> bool:
    return x.stride(1) == 1 and x.shape[1] > 1


def tile_sizes(C: int, P: int, channels_last: bool) -> tuple[int, int]:
    """``(BLOCK_C, BLOCK_P)`` for ``C`` channels and ``P`` pixels per image.

    On a GPU ~1K elements per tile, long along the contiguous axis. The interpreter runs programs
    one after another at a fixed Python cost per op, so there: few, large tiles.
    """
    if dispatch.INTERPRET:
        return min(next_power_of_2(C), 64), min(next_power_of_2(P), 256)
    if channels_last:
        block_c = min(next_power_of_2(C), 32)
        return block_c, min(next_power_of_2(P), max(16, 1024 // block_c))
    block_p = min(next_power_of_2(P), 256)
    return max(1, min(next_power_of_2(C), 1024 // block_p)), block_p


def partial_rows(n_tiles: int, n_channel_blocks: int) -> int:
    """Programs (= rows of partial sums) along the tile axis of a weight-gradient launch."""
    return max(1, min(n_tiles, MAX_PARTIAL_PROGRAMS // n_channel_blocks))


if dispatch.HAS_TRITON:

    @triton.jit
    def _load_tap(T_c, h, w, mask, H, W, s_h, s_w, STEP_H: tl.constexpr, STEP_W: tl.constexpr):
        """``t[c, h / STEP_H, w / STEP_W]`` as an fp32 ``[BLOCK_C, BLOCK_P]`` tile, 0 where ``h`` or
        ``w`` is not a multiple of its step, outside the ``H x W`` plane, or where ``mask`` is
        false. ``T_c``: ``[BLOCK_C, 1]`` pointers to the channels' planes (strides ``s_h, s_w``).

        Steps 1: the zero-padded input ``x`` at one tap. Steps = the conv's strides: the output
        gradient spread out by the stride (``gs`` in the module docstring). One helper call per
        tap: the interpreter pays a fixed cost for each call of a jit function."""
        if STEP_H == 1 and STEP_W == 1:
            r = h
            q = w
            ok = (h >= 0) & (h < H) & (w >= 0) & (w < W)
        else:
            r = h // STEP_H
            q = w // STEP_W
            ok = (h >= 0) & (h % STEP_H == 0) & (r < H) & (w >= 0) & (w % STEP_W == 0) & (q < W)
        return tl.load(T_c + (r * s_h + q * s_w)[None, :], mask=mask & ok[None, :],
                       other=0.0).to(tl.float32)

    @triton.jit
    def depthwise_fwd_kernel(
        X, DW, Y, C, C_OUT, H, W, OH, OW, sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
        STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
        DIL_H: tl.constexpr, DIL_W: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        """``y`` over ``BLOCK_C`` output channels x ``BLOCK_P`` output pixels of one image."""
        pid_no = tl.program_id(0)  # (image, output-channel block)
        pid_p = tl.program_id(1)
        n_ob = tl.cdiv(C_OUT, BLOCK_C)
        n = pid_no // n_ob
        offs_o = (pid_no % n_ob) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_o = offs_o < C_OUT
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < OH * OW
        oh = offs_p // OW
        ow = offs_p % OW
        mask = mask_o[:, None] & mask_p[None, :]
        x_c = X + n * sx_n + (offs_o % C)[:, None] * sx_c  # output channel m*C + c reads c
        w_o = DW + offs_o * (KH * KW)
        ih0 = oh * STRIDE_H - PAD_H
        iw0 = ow * STRIDE_W - PAD_W
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for i in range(KH):  # a loop, not unrolled: fewer live registers on a GPU
            for j in tl.static_range(KW):
                w = tl.load(w_o + (i * KW + j), mask=mask_o, other=0.0).to(tl.float32)
                x = _load_tap(x_c, ih0 + i * DIL_H, iw0 + j * DIL_W, mask, H, W, sx_h, sx_w, 1, 1)
                acc += w[:, None] * x
        y = Y + n * sy_n + offs_o[:, None] * sy_c + (oh * sy_h + ow * sy_w)[None, :]
        tl.store(y, acc.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def depthwise_bwd_input_kernel(
        G, DW, DX, C, M, H, W, OH, OW, sg_n, sg_c, sg_h, sg_w, sdx_n, sdx_c, sdx_h, sdx_w,
        STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
        DIL_H: tl.constexpr, DIL_W: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        """``dx`` over ``BLOCK_C`` input channels x ``BLOCK_P`` input pixels of one image, summed
        in fp32 over the ``M`` output channels ``m*C + c`` that read each input channel."""
        pid_nc = tl.program_id(0)  # (image, input-channel block)
        pid_p = tl.program_id(1)
        n_cb = tl.cdiv(C, BLOCK_C)
        n = pid_nc // n_cb
        offs_c = (pid_nc % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        offs_q = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_q = offs_q < H * W
        ih = offs_q // W
        iw = offs_q % W
        mask = mask_c[:, None] & mask_q[None, :]
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for m in range(M):
            offs_o = m * C + offs_c
            g_o = G + n * sg_n + offs_o[:, None] * sg_c
            w_o = DW + offs_o * (KH * KW)
            for i in range(KH):
                for j in tl.static_range(KW):
                    w = tl.load(w_o + (i * KW + j), mask=mask_c, other=0.0).to(tl.float32)
                    g = _load_tap(g_o, ih + (PAD_H - i * DIL_H), iw + (PAD_W - j * DIL_W), mask,
                                  OH, OW, sg_h, sg_w, STRIDE_H, STRIDE_W)
                    acc += w[:, None] * g
        dx = DX + n * sdx_n + offs_c[:, None] * sdx_c + (ih * sdx_h + iw * sdx_w)[None, :]
        tl.store(dx, acc.to(DX.dtype.element_ty), mask=mask)

    @triton.jit
    def depthwise_bwd_weight_kernel(
        G, X, PARTIAL, ROWS, N, C, C_OUT, H, W, OH, OW, sg_n, sg_c, sg_h, sg_w,
        sx_n, sx_c, sx_h, sx_w,
        STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
        DIL_H: tl.constexpr, DIL_W: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
    ):
        """Partial ``dw`` of one output-channel block over tiles ``row, row + ROWS, ...`` of all
        ``N * pixel_blocks`` tiles: ``PARTIAL[row, o, i*KW + j]``."""
        row = tl.program_id(0)
        pid_o = tl.program_id(1)
        offs_o = pid_o * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_o = offs_o < C_OUT
        taps = tl.arange(0, BLOCK_T)[None, :]
        dw = tl.zeros([BLOCK_C, BLOCK_T], dtype=tl.float32)
        n_pb = tl.cdiv(OH * OW, BLOCK_P)
        for tile in range(row, N * n_pb, ROWS):
            n = tile // n_pb
            offs_p = (tile % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
            mask_p = offs_p < OH * OW
            oh = offs_p // OW
            ow = offs_p % OW
            mask = mask_o[:, None] & mask_p[None, :]
            g = tl.load(G + n * sg_n + offs_o[:, None] * sg_c + (oh * sg_h + ow * sg_w)[None, :],
                        mask=mask, other=0.0).to(tl.float32)
            x_c = X + n * sx_n + (offs_o % C)[:, None] * sx_c
            ih0 = oh * STRIDE_H - PAD_H
            iw0 = ow * STRIDE_W - PAD_W
            for i in range(KH):
                for j in tl.static_range(KW):
                    x = _load_tap(x_c, ih0 + i * DIL_H, iw0 + j * DIL_W, mask, H, W, sx_h, sx_w,
                                  1, 1)
                    tap_sum = tl.sum(g * x, axis=1)
                    dw = tl.where(taps == i * KW + j, dw + tap_sum[:, None], dw)
        part = PARTIAL + row * C_OUT * (KH * KW) + offs_o[:, None] * (KH * KW) + taps
        tl.store(part, dw, mask=mask_o[:, None] & (taps < KH * KW))

    register("depthwise_fwd", depthwise_fwd_kernel)
    register("depthwise_bwd_input", depthwise_bwd_input_kernel)
    register("depthwise_bwd_weight", depthwise_bwd_weight_kernel)


def _forward(x: torch.Tensor, weight: torch.Tensor, geo: ConvGeometry,
             launch: Callable = run) -> torch.Tensor:
    """``y`` (channels_last for a channels_last ``x``) and the ``Launch`` that fills it, given
    to ``launch``: ``run`` it, ``note`` it (fake tensors) or ``skip`` it (allocate only)."""
    y = torch.empty((geo.N, geo.C_out, geo.OH, geo.OW), dtype=x.dtype, device=x.device,
                    memory_format=memory_format_of(x))
    block_c, block_p = tile_sizes(geo.C_out, geo.OH * geo.OW, is_channels_last(x))
    grid = (geo.N * cdiv(geo.C_out, block_c), cdiv(geo.OH * geo.OW, block_p))
    launch(Launch(
        "depthwise_fwd", grid,
        (x, weight.contiguous(), y, geo.C, geo.C_out, geo.H, geo.W, geo.OH, geo.OW, *x.stride(),
         *y.stride()),
        dict(**geo.constexprs, BLOCK_C=block_c, BLOCK_P=block_p), NUM_WARPS))
    return y


def _input_grad(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geo: ConvGeometry,
                launch: Callable = run) -> torch.Tensor:
    """``dx`` (laid out like ``x``; ``x`` is read for its layout only); ``launch`` as in
    ``_forward``."""
    dx = torch.empty_like(x, memory_format=memory_format_of(x))
    block_c, block_p = tile_sizes(geo.C, geo.H * geo.W, is_channels_last(x))
    grid = (geo.N * cdiv(geo.C, block_c), cdiv(geo.H * geo.W, block_p))
    launch(Launch(
        "depthwise_bwd_input", grid,
        (g, weight.contiguous(), dx, geo.C, geo.M, geo.H, geo.W, geo.OH, geo.OW, *g.stride(),
         *dx.stride()),
        dict(**geo.constexprs, BLOCK_C=block_c, BLOCK_P=block_p), NUM_WARPS))
    return dx


def _weight_grad(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geo: ConvGeometry,
                 launch: Callable = run) -> torch.Tensor:
    """``dw`` (contiguous, ``weight``'s shape and dtype) from per-program partial sums;
    ``launch`` as in ``_forward``."""
    block_c, block_p = tile_sizes(geo.C_out, geo.OH * geo.OW, is_channels_last(x))
    n_ob = cdiv(geo.C_out, block_c)
    rows = partial_rows(geo.N * cdiv(geo.OH * geo.OW, block_p), n_ob)
    partial = torch.empty((rows, geo.C_out, geo.KH * geo.KW), dtype=torch.float32,
                          device=x.device)
    launch(Launch(
        "depthwise_bwd_weight", (rows, n_ob),
        (g, x, partial, rows, geo.N, geo.C, geo.C_out, geo.H, geo.W, geo.OH, geo.OW,
         *g.stride(), *x.stride()),
        dict(**geo.constexprs, BLOCK_C=block_c, BLOCK_P=block_p,
             BLOCK_T=next_power_of_2(geo.KH * geo.KW)), NUM_WARPS))
    return partial.sum(0).view(weight.shape).to(weight.dtype)


# -- the custom ops: fastnas::depthwise_conv2d and its two gradients ------------------------------
_CONV_ARGS = "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation"


def _geometry(x, weight, stride, padding, dilation) -> ConvGeometry:
    return ConvGeometry.of("depthwise_conv2d", x, weight, tuple(stride), tuple(padding),
                           tuple(dilation))


def _repeated(x: torch.Tensor, M: int) -> torch.Tensor:
    return x if M == 1 else torch.cat([x] * M, dim=1)


@torch.library.custom_op("fastnas::depthwise_conv2d", mutates_args=(),
                         schema=f"(Tensor x, Tensor weight, {_CONV_ARGS}) -> Tensor")
def depthwise_conv2d_op(x, weight, stride, padding, dilation):
    """The depthwise conv with channel multiplier: the Triton kernel or the torch reference, as
    the kernel backend picks; either way ``y`` is laid out as ``_forward`` allocates it."""
    geo = _geometry(x, weight, stride, padding, dilation)
    if dispatch.use_triton("depthwise_conv2d", x, weight):
        return _forward(x, weight, geo, launch=run)
    y = reference.depthwise_conv2d(x, weight, geo.stride, geo.padding, geo.dilation)
    return _forward(x, weight, geo, launch=skip).copy_(y)


@depthwise_conv2d_op.register_fake
def _(x, weight, stride, padding, dilation):
    return _forward(x, weight, _geometry(x, weight, stride, padding, dilation), launch=note)


@torch.library.custom_op("fastnas::depthwise_conv2d_input_grad", mutates_args=(),
                         schema=f"(Tensor g, Tensor x, Tensor weight, {_CONV_ARGS}, "
                                "bool triton) -> Tensor")
def depthwise_conv2d_input_grad_op(g, x, weight, stride, padding, dilation, triton):
    """``dL/dx`` of ``depthwise_conv2d`` for the output gradient ``g``, by the Triton kernel
    (``triton``: what the forward ran; raises if it cannot run) or torch."""
    geo = _geometry(x, weight, stride, padding, dilation)
    if triton and dispatch.require_triton("depthwise_conv2d", g, x, weight):
        return _input_grad(g, x, weight, geo, launch=run)
    x_rep = _repeated(x, geo.M)
    dx = torch.ops.aten.convolution_backward(
        g, x_rep, weight, None, geo.stride, geo.padding, geo.dilation, False, (0, 0),
        geo.C_out, (True, False, False))[0]
    dx = dx.unflatten(1, (geo.M, geo.C)).sum(1)
    return _input_grad(g, x, weight, geo, launch=skip).copy_(dx)


@depthwise_conv2d_input_grad_op.register_fake
def _(g, x, weight, stride, padding, dilation, triton):
    return _input_grad(g, x, weight, _geometry(x, weight, stride, padding, dilation), launch=note)


@torch.library.custom_op("fastnas::depthwise_conv2d_weight_grad", mutates_args=(),
                         schema=f"(Tensor g, Tensor x, Tensor weight, {_CONV_ARGS}, "
                                "bool triton) -> Tensor")
def depthwise_conv2d_weight_grad_op(g, x, weight, stride, padding, dilation, triton):
    """``dL/dweight`` of ``depthwise_conv2d`` for the output gradient ``g``, by the Triton
    kernel (``triton``: what the forward ran; raises if it cannot run) or torch."""
    geo = _geometry(x, weight, stride, padding, dilation)
    if triton and dispatch.require_triton("depthwise_conv2d", g, x, weight):
        return _weight_grad(g, x, weight, geo, launch=run)
    dw = torch.ops.aten.convolution_backward(
        g, _repeated(x, geo.M), weight, None, geo.stride, geo.padding, geo.dilation, False,
        (0, 0), geo.C_out, (False, True, False))[1]
    return torch.empty(weight.shape, dtype=weight.dtype, device=weight.device).copy_(dw)


@depthwise_conv2d_weight_grad_op.register_fake
def _(g, x, weight, stride, padding, dilation, triton):
    return _weight_grad(g, x, weight, _geometry(x, weight, stride, padding, dilation), launch=note)


def _setup_context(ctx, inputs, output):
    x, weight, stride, padding, dilation = inputs
    grad_edges.record(ctx, x, weight)
    ctx.save_for_backward(x, weight)
    ctx.conv = (stride, padding, dilation, dispatch.use_triton("depthwise_conv2d", x, weight))


def _depthwise_grads(ctx, g):
    x, weight = ctx.saved_tensors
    dx = dw = None
    # Only what this backward uses (grad_edges): the architecture step needs no weight
    # gradient, and the weight gradient kernel is the most expensive of the two.
    if grad_edges.needed(ctx, 0):
        dx = torch.ops.fastnas.depthwise_conv2d_input_grad(g, x, weight, *ctx.conv)
    if grad_edges.needed(ctx, 1):
        dw = torch.ops.fastnas.depthwise_conv2d_weight_grad(g, x, weight, *ctx.conv)
    return dx, dw, None, None, None


depthwise_conv2d_op.register_autograd(_depthwise_grads, setup_context=_setup_context)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: IntPair = 1,
                     padding: IntPair = 0, dilation: IntPair = 1) -> torch.Tensor:
    """``M`` depthwise convs of ``x`` [N, C, H, W] in one call: ``weight`` [M*C, 1, kh, kw] gives
    output [N, M*C, OH, OW] with ``y[:, m*C + c] = conv2d(x[:, c], weight[m*C + c])``, i.e.
    ``F.conv2d(torch.cat([x] * M, 1), weight, None, stride, padding, dilation, groups=M*C)``
    without building the repeated input. ``M = 1``: ``F.conv2d(x, weight, groups=C)``.

    Differentiable in ``x`` and ``weight``; output in ``x``'s dtype (fp32 accumulation) and, for a
    channels_last input, in channels_last. A weight whose first dim is not a positive multiple of
    ``C`` raises ``ValueError``. Dispatched by ``fastnas.kernels.dispatch``: the Triton kernels
    run as the custom op ``torch.ops.fastnas.depthwise_conv2d`` (its gradients as
    ``depthwise_conv2d_input_grad`` and ``depthwise_conv2d_weight_grad``); the torch path is the
    reference's ``F.conv2d``.
    """
    if dispatch.use_triton("depthwise_conv2d", x, weight):
        geo = ConvGeometry.of("depthwise_conv2d", x, weight, stride, padding, dilation)
        return torch.ops.fastnas.depthwise_conv2d(x, weight, list(geo.stride),
                                                  list(geo.padding), list(geo.dilation))
    return reference.depthwise_conv2d(x, weight, stride, padding, dilation)
