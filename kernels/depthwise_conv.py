"""Depthwise (optionally strided and dilated) 2-D convolution: ``F.conv2d(..., groups=C)``.

Math, for ``x`` [N, C, H, W], ``w`` [C, 1, KH, KW], stride ``s``, padding ``p``, dilation ``d``
(taps outside the input read zero), ``g = dL/dy``:
    y[n,c,oh,ow]   = sum_{i,j} w[c,i,j] * x[n,c, oh*s_h - p_h + i*d_h, ow*s_w - p_w + j*d_w]
    dx[n,c,ih,iw]  = sum_{i,j} w[c,i,j] * g[n,c,oh,ow]   over the (i, j) with
                     oh = (ih + p_h - i*d_h) / s_h  an integer in [0, OH)  (and the same for w)
    dw[c,i,j]      = sum_{n,oh,ow} g[n,c,oh,ow] * x[n,c, oh*s_h - p_h + i*d_h, ...]

Memory traffic (``b`` bytes per element; the KH*KW shifted re-reads of a tile hit the caches):
    forward          read x, write y                   ~ (N*C*H*W + N*C*OH*OW) * b
    backward input   read g, write dx                  ~ (N*C*OH*OW + N*C*H*W) * b
    backward weight  read g and x, write partial sums  ~ (N*C*OH*OW + N*C*H*W) * b + R*C*KH*KW*4

Each program owns a tile of ``BLOCK_C`` channels x ``BLOCK_P`` flattened pixels of one image and
loops over the taps (rows in a loop, columns unrolled: fewer registers than unrolling all). The
weight gradient is deterministic: each of ``R`` programs per channel block walks a fixed set of
tiles, keeps its per-channel, per-tap sums in registers and writes them to ``[R, C, KH*KW]``;
one ``sum(0)`` finishes it (``R <= MAX_PARTIAL_PROGRAMS``).
Tensors are addressed through their strides, so contiguous, channels_last and sliced inputs all
work without copies. ``RELU`` / ``RELU_MASK`` let ``sep_conv`` reuse these kernels with the ReLU
in front of the depthwise conv folded in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import torch

from . import dispatch, reference

if dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

IntPair = Union[int, Tuple[int, int]]
NUM_WARPS = 8
# Weight-gradient kernels give each program several tiles and one row of partial sums; at most
# this many programs (rows) per channel block keeps the partial buffer small next to x.
MAX_PARTIAL_PROGRAMS = 512


def _pair(v: IntPair) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    h, w = v
    return (int(h), int(w))


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one depthwise conv, validated once on the host."""

    N: int
    C: int
    H: int
    W: int
    KH: int
    KW: int
    OH: int
    OW: int
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]

    @classmethod
    def of(cls, op: str, x: torch.Tensor, dw_weight: torch.Tensor, stride: IntPair,
           padding: IntPair, dilation: IntPair) -> "ConvGeometry":
        if x.dim() != 4:
            raise ValueError(f"{op}: x must be [N, C, H, W], got shape {tuple(x.shape)}")
        N, C, H, W = x.shape
        if dw_weight.dim() != 4 or dw_weight.shape[:2] != (C, 1):
            raise ValueError(f"{op}: depthwise weight must be [{C}, 1, kh, kw], got "
                             f"{tuple(dw_weight.shape)}")
        (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
        if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
            raise ValueError(f"{op}: need stride >= 1, dilation >= 1, padding >= 0")
        KH, KW = dw_weight.shape[2:]
        OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
        OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
        if OH < 1 or OW < 1:
            raise ValueError(f"{op}: output would be empty ({OH}x{OW}) for input {H}x{W}")
        return cls(N, C, H, W, KH, KW, OH, OW, (sh, sw), (ph, pw), (dh, dw))

    @property
    def constexprs(self):
        """Kernel size, stride, padding and dilation: compile-time constants of the kernels."""
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        return dict(KH=self.KH, KW=self.KW, STRIDE_H=sh, STRIDE_W=sw, PAD_H=ph, PAD_W=pw,
                    DIL_H=dh, DIL_W=dw)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a channels_last input, contiguous for anything else (e.g. sliced)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def is_channels_last(x: torch.Tensor) -> bool:
    return x.stride(1) == 1 and x.shape[1] > 1


def tile_sizes(C: int, P: int, channels_last: bool) -> Tuple[int, int]:
    """``(BLOCK_C, BLOCK_P)`` for ``C`` channels and ``P`` pixels per image.

    On a GPU ~1K elements per tile, long along the contiguous axis. The interpreter runs programs
    one after another at a fixed Python cost per op, so there: few, large tiles.
    """
    if dispatch.INTERPRET:
        return min(triton.next_power_of_2(C), 64), min(triton.next_power_of_2(P), 256)
    if channels_last:
        block_c = min(triton.next_power_of_2(C), 32)
        return block_c, min(triton.next_power_of_2(P), max(16, 1024 // block_c))
    block_p = min(triton.next_power_of_2(P), 256)
    return max(1, min(triton.next_power_of_2(C), 1024 // block_p)), block_p


def partial_rows(n_tiles: int, n_channel_blocks: int) -> int:
    """Programs (= rows of partial sums) along the tile axis of a weight-gradient launch."""
    return max(1, min(n_tiles, MAX_PARTIAL_PROGRAMS // n_channel_blocks))


if dispatch.HAS_TRITON:

    @triton.jit
    def depthwise_tile(X, DW, n, offs_c, mask_c, oh, ow, mask_p, sx_n, sx_c, sx_h, sx_w, H, W,
                       STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr,
                       PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
                       KH: tl.constexpr, KW: tl.constexpr, RELU: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        """Depthwise output ``[BLOCK_C, BLOCK_P]`` (fp32) of channels ``offs_c`` of image ``n`` at
        output pixels ``(oh, ow)``, reading ``relu(x)`` when ``RELU``; ``DW`` contiguous
        ``[C, KH*KW]``. Masked lanes are 0."""
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        x_c = X + n * sx_n + offs_c[:, None] * sx_c
        w_c = DW + offs_c * (KH * KW)
        mask_c2 = mask_c[:, None]
        ih0 = oh * STRIDE_H - PAD_H
        iw0 = ow * STRIDE_W - PAD_W
        for i in range(KH):  # a loop, not unrolled: fewer live registers on a GPU
            ih = ih0 + i * DIL_H
            ok_h = mask_p & (ih >= 0) & (ih < H)
            x_row = x_c + (ih * sx_h + iw0 * sx_w)[None, :]
            for j in tl.static_range(KW):
                iw = iw0 + j * DIL_W
                ok = ok_h & (iw >= 0) & (iw < W)
                xv = tl.load(x_row + j * DIL_W * sx_w, mask=mask_c2 & ok[None, :],
                             other=0.0).to(tl.float32)
                if RELU:
                    xv = tl.maximum(xv, 0.0)
                wv = tl.load(w_c + (i * KW + j), mask=mask_c, other=0.0).to(tl.float32)
                acc += wv[:, None] * xv
        return acc

    @triton.jit
    def _tap_source(t, OUT, STRIDE: tl.constexpr):
        """An input coordinate shifted by a tap is ``t = o * STRIDE`` for output ``o``: return
        ``o`` and whether that output exists."""
        if STRIDE == 1:
            o = t
            ok = (t >= 0) & (t < OUT)
        else:
            o = t // STRIDE
            ok = (t >= 0) & (t % STRIDE == 0) & (o < OUT)
        return o, ok

    @triton.jit
    def _depthwise_fwd_kernel(
        X, DW, Y, C, H, W, OH, OW, sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
        STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
        DIL_H: tl.constexpr, DIL_W: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        pid_nc = tl.program_id(0)  # (image, channel block)
        pid_p = tl.program_id(1)
        n_cb = tl.cdiv(C, BLOCK_C)
        n = pid_nc // n_cb
        offs_c = (pid_nc % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < OH * OW
        oh = offs_p // OW
        ow = offs_p % OW
        acc = depthwise_tile(X, DW, n, offs_c, mask_c, oh, ow, mask_p, sx_n, sx_c, sx_h, sx_w,
                             H, W, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, KH, KW,
                             False, BLOCK_C, BLOCK_P)
        y_ptrs = Y + n * sy_n + offs_c[:, None] * sy_c + (oh * sy_h + ow * sy_w)[None, :]
        tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask_c[:, None] & mask_p[None, :])

    @triton.jit
    def depthwise_bwd_input_kernel(
        G, DW, X, DX, C, H, W, OH, OW, sg_n, sg_c, sg_h, sg_w, sx_n, sx_c, sx_h, sx_w,
        sdx_n, sdx_c, sdx_h, sdx_w,
        STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
        DIL_H: tl.constexpr, DIL_W: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        RELU_MASK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        """``dx`` over a tile of input pixels; with ``RELU_MASK`` it is the gradient through
        ``relu`` in front of the conv (zero where ``x <= 0``). ``X`` is read only then."""
        pid_nc = tl.program_id(0)
        pid_p = tl.program_id(1)
        n_cb = tl.cdiv(C, BLOCK_C)
        n = pid_nc // n_cb
        offs_c = (pid_nc % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask_c2 = mask_c[:, None]
        offs_q = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_q = offs_q < H * W
        ih = offs_q // W
        iw = offs_q % W
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        g_c = G + n * sg_n + offs_c[:, None] * sg_c
        w_c = DW + offs_c * (KH * KW)
        for i in range(KH):
            oh, ok_h = _tap_source(ih + (PAD_H - i * DIL_H), OH, STRIDE_H)
            ok_h = ok_h & mask_q
            g_row = g_c + (oh * sg_h)[None, :]
            for j in tl.static_range(KW):
                ow, ok_w = _tap_source(iw + (PAD_W - j * DIL_W), OW, STRIDE_W)
                gv = tl.load(g_row + (ow * sg_w)[None, :], mask=mask_c2 & (ok_h & ok_w)[None, :],
                             other=0.0).to(tl.float32)
                wv = tl.load(w_c + (i * KW + j), mask=mask_c, other=0.0).to(tl.float32)
                acc += wv[:, None] * gv
        mask = mask_c2 & mask_q[None, :]
        if RELU_MASK:
            xv = tl.load(X + n * sx_n + offs_c[:, None] * sx_c + (ih * sx_h + iw * sx_w)[None, :],
                         mask=mask, other=0.0).to(tl.float32)
            acc = tl.where(xv > 0, acc, 0.0)
        dx_ptrs = DX + n * sdx_n + offs_c[:, None] * sdx_c + (ih * sdx_h + iw * sdx_w)[None, :]
        tl.store(dx_ptrs, acc.to(DX.dtype.element_ty), mask=mask)

    @triton.jit
    def _depthwise_bwd_weight_kernel(
        G, X, PARTIAL, ROWS, N, C, H, W, OH, OW, sg_n, sg_c, sg_h, sg_w, sx_n, sx_c, sx_h, sx_w,
        STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
        DIL_H: tl.constexpr, DIL_W: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
    ):
        """Partial ``dw`` of one channel block over tiles ``row, row + ROWS, ...`` of all
        ``N * pixel_blocks`` tiles: ``PARTIAL[row, c, i*KW + j]``."""
        row = tl.program_id(0)
        pid_c = tl.program_id(1)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask_c2 = mask_c[:, None]
        taps = tl.arange(0, BLOCK_T)[None, :]
        dw = tl.zeros([BLOCK_C, BLOCK_T], dtype=tl.float32)
        n_pb = tl.cdiv(OH * OW, BLOCK_P)
        for tile in range(row, N * n_pb, ROWS):
            n = tile // n_pb
            offs_p = (tile % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
            mask_p = offs_p < OH * OW
            oh = offs_p // OW
            ow = offs_p % OW
            g = tl.load(G + n * sg_n + offs_c[:, None] * sg_c + (oh * sg_h + ow * sg_w)[None, :],
                        mask=mask_c2 & mask_p[None, :], other=0.0).to(tl.float32)
            x_c = X + n * sx_n + offs_c[:, None] * sx_c
            ih0 = oh * STRIDE_H - PAD_H
            iw0 = ow * STRIDE_W - PAD_W
            for i in range(KH):
                ih = ih0 + i * DIL_H
                ok_h = mask_p & (ih >= 0) & (ih < H)
                x_row = x_c + (ih * sx_h + iw0 * sx_w)[None, :]
                for j in tl.static_range(KW):
                    iw = iw0 + j * DIL_W
                    ok = ok_h & (iw >= 0) & (iw < W)
                    xv = tl.load(x_row + j * DIL_W * sx_w, mask=mask_c2 & ok[None, :],
                                 other=0.0).to(tl.float32)
                    tap_sum = tl.sum(g * xv, axis=1)
                    dw = tl.where(taps == i * KW + j, dw + tap_sum[:, None], dw)
        part = PARTIAL + row * C * (KH * KW) + offs_c[:, None] * (KH * KW) + taps
        tl.store(part, dw, mask=mask_c2 & (taps < KH * KW))


def depthwise_bwd_input(g: torch.Tensor, dw_weight: torch.Tensor, x: torch.Tensor,
                        geo: ConvGeometry, relu_mask: bool) -> torch.Tensor:
    """Launch ``depthwise_bwd_input_kernel`` (``dw_weight`` contiguous): ``dx`` in ``x``'s dtype
    and memory format."""
    dx = torch.empty_like(x, memory_format=memory_format_of(x))
    block_c, block_p = tile_sizes(geo.C, geo.H * geo.W, is_channels_last(x))
    grid = (geo.N * triton.cdiv(geo.C, block_c), triton.cdiv(geo.H * geo.W, block_p))
    dispatch.record_launch("depthwise_bwd_input")
    depthwise_bwd_input_kernel[grid](
        g, dw_weight, x, dx, geo.C, geo.H, geo.W, geo.OH, geo.OW, *g.stride(), *x.stride(),
        *dx.stride(), **geo.constexprs, RELU_MASK=relu_mask, BLOCK_C=block_c, BLOCK_P=block_p,
        num_warps=NUM_WARPS)
    return dx


class DepthwiseConv2dFunction(torch.autograd.Function):
    """``depthwise_conv2d`` with Triton forward and backward."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        geo = ConvGeometry.of("depthwise_conv2d", x, weight, stride, padding, dilation)
        w = weight.contiguous()  # [C, 1, KH, KW]: a few hundred bytes
        y = torch.empty((geo.N, geo.C, geo.OH, geo.OW), dtype=x.dtype, device=x.device,
                        memory_format=memory_format_of(x))
        block_c, block_p = tile_sizes(geo.C, geo.OH * geo.OW, is_channels_last(x))
        grid = (geo.N * triton.cdiv(geo.C, block_c), triton.cdiv(geo.OH * geo.OW, block_p))
        dispatch.record_launch("depthwise_fwd")
        _depthwise_fwd_kernel[grid](
            x, w, y, geo.C, geo.H, geo.W, geo.OH, geo.OW, *x.stride(), *y.stride(),
            **geo.constexprs, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=NUM_WARPS)
        ctx.save_for_backward(x, w)
        ctx.geo = geo
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        geo = ctx.geo
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = depthwise_bwd_input(g, w, x, geo, relu_mask=False)
        if ctx.needs_input_grad[1]:
            block_c, block_p = tile_sizes(geo.C, geo.OH * geo.OW, is_channels_last(x))
            n_cb = triton.cdiv(geo.C, block_c)
            rows = partial_rows(geo.N * triton.cdiv(geo.OH * geo.OW, block_p), n_cb)
            partial = torch.empty((rows, geo.C, geo.KH * geo.KW), dtype=torch.float32,
                                  device=x.device)
            dispatch.record_launch("depthwise_bwd_weight")
            _depthwise_bwd_weight_kernel[(rows, n_cb)](
                g, x, partial, rows, geo.N, geo.C, geo.H, geo.W, geo.OH, geo.OW, *g.stride(),
                *x.stride(), **geo.constexprs, BLOCK_C=block_c, BLOCK_P=block_p,
                BLOCK_T=triton.next_power_of_2(geo.KH * geo.KW), num_warps=NUM_WARPS)
            dw = partial.sum(0).view(w.shape).to(w.dtype)
        return dx, dw, None, None, None


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: IntPair = 1,
                     padding: IntPair = 0, dilation: IntPair = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, dilation, groups=C)``; ``weight`` is
    [C, 1, kh, kw].

    Differentiable in ``x`` and ``weight``; output in ``x``'s dtype (fp32 accumulation) and, for a
    channels_last input, in channels_last. Dispatched by ``fastnas.kernels.dispatch``.
    """
    if dispatch.use_triton("depthwise_conv2d", x, weight):
        return DepthwiseConv2dFunction.apply(x, weight, stride, padding, dilation)
    return reference.depthwise_conv2d(x, weight, stride, padding, dilation)
