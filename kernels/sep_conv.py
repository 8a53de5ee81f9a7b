"""Fused separable conv ``y = pointwise(depthwise(relu(x)))``: the first half of a DARTS SepConv.

Math, for ``x`` [N, C, H, W], depthwise weight ``v`` [C, 1, KH, KW], pointwise weight ``u``
[O, C, 1, 1], ``r = relu(x)``, ``d = depthwise(r, v)`` (see ``depthwise_conv``), ``g = dL/dy``:
    y[n,o,p]  = sum_c u[o,c] * d[n,c,p]                  (p: output pixel)
    gd[n,c,p] = sum_o u[o,c] * g[n,o,p]                  (= dL/dd)
    du[o,c]   = sum_{n,p} g[n,o,p] * d[n,c,p]
    dv, dx    = the depthwise weight and input gradients of ``gd``, ``dx`` masked by ``x > 0``

Forward: one kernel. Each program takes ``BLOCK_P`` output pixels of one image and
``BLOCK_O`` output channels, builds the depthwise tile ``[BLOCK_C, BLOCK_P]`` chunk by chunk of
channels in registers and multiplies it into the pointwise weights with ``tl.dot``: ``d`` never
touches memory. Traffic ~ (N*C*H*W + N*O*OH*OW) * b (x once per block of 64 output channels).

Backward: two kernels. (1) per output tile and channel block: ``gd = u^T g`` (``tl.dot``), stored
as fp32 ``[N, C, OH, OW]``; ``d`` recomputed from ``x`` (not saved by the forward); ``dv`` and
``du`` accumulated in registers over the tiles the program walks. (2)
``depthwise_bwd_input_kernel`` on ``gd`` with the ReLU mask gives ``dx``. Traffic ~
(N*O*OH*OW + 2*N*C*H*W) * b + 2 * N*C*OH*OW * 4, plus the partial sums (g and x are read once
more per extra block of 64 output channels). Weight gradients are deterministic: each of ``R``
programs writes its sums to ``[R, C, KH*KW]`` and ``[R, O, C]``, then one ``sum(0)`` each.

The dots run in fp32 (``input_precision="ieee"``) for fp32 inputs; for bf16/fp16 inputs on a GPU
their operands are rounded to the input dtype first (tensor cores, as torch's own conv does).
Triton's interpreter computes bf16 dots wrongly, so when interpreting every dot runs in fp32.
"""
from __future__ import annotations

import torch

from . import dispatch, reference
from .depthwise_conv import (ConvGeometry, IntPair, depthwise_bwd_input, memory_format_of,
                             partial_rows)

if dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

    from .depthwise_conv import depthwise_tile


NUM_WARPS = 8


def block_sizes(C: int, O: int, P: int):
    """``(BLOCK_C, BLOCK_O, BLOCK_P)``; ``tl.dot`` on a GPU needs 16 or more in every dim.
    Interpreted, pixel blocks are larger: fewer programs, each at a fixed Python cost per op."""
    block_c = min(max(16, triton.next_power_of_2(C)), 32)
    block_o = min(max(16, triton.next_power_of_2(O)), 64)
    block_p = min(max(16, triton.next_power_of_2(P)), 128 if dispatch.INTERPRET else 32)
    return block_c, block_o, block_p


if dispatch.HAS_TRITON:

    @triton.jit
    def _mm(a, b, acc, LOWP_DOT: tl.constexpr, LOWP_TYPE: tl.constexpr):
        """``acc + a @ b`` in fp32, with bf16/fp16 operands when ``LOWP_DOT``."""
        if LOWP_DOT:
            acc = tl.dot(a.to(LOWP_TYPE), b.to(LOWP_TYPE), acc)
        else:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        return acc

    @triton.jit
    def _sep_conv_fwd_kernel(
        X, DW, PW, Y, C, O, H, W, OH, OW,
        sx_n, sx_c, sx_h, sx_w, sp_o, sp_c, sy_n, sy_c, sy_h, sy_w,
        STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
        DIL_H: tl.constexpr, DIL_W: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr,
        LOWP_DOT: tl.constexpr,
    ):
        pid_np = tl.program_id(0)  # (image, pixel block)
        pid_o = tl.program_id(1)
        n_pb = tl.cdiv(OH * OW, BLOCK_P)
        n = pid_np // n_pb
        offs_p = (pid_np % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < OH * OW
        oh = offs_p // OW
        ow = offs_p % OW
        offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        mask_o = offs_o < O
        acc = tl.zeros([BLOCK_O, BLOCK_P], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            d = depthwise_tile(X, DW, n, offs_c, mask_c, oh, ow, mask_p, sx_n, sx_c, sx_h, sx_w,
                               H, W, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, KH, KW,
                               True, BLOCK_C, BLOCK_P)
            u = tl.load(PW + offs_o[:, None] * sp_o + offs_c[None, :] * sp_c,
                        mask=mask_o[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
            acc = _mm(u, d, acc, LOWP_DOT, Y.dtype.element_ty)
        y_ptrs = Y + n * sy_n + offs_o[:, None] * sy_c + (oh * sy_h + ow * sy_w)[None, :]
        tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask_o[:, None] & mask_p[None, :])

    @triton.jit
    def _sep_conv_bwd_kernel(
        G, X, DW, PW, GD, PART_DW, PART_PW, ROWS, N, C, O, H, W, OH, OW,
        sg_n, sg_c, sg_h, sg_w, sx_n, sx_c, sx_h, sx_w, sp_o, sp_c,
        STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
        DIL_H: tl.constexpr, DIL_W: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr,
        BLOCK_T: tl.constexpr, ONE_O_BLOCK: tl.constexpr, NEED_GD: tl.constexpr,
        NEED_W: tl.constexpr, LOWP_DOT: tl.constexpr,
    ):
        """Program ``(row, c block, o block)`` walks tiles ``row, row + ROWS, ...`` of all
        ``N * pixel_blocks`` tiles: stores ``gd`` and accumulates the partial ``dv`` (only the
        programs of o block 0 do both) and the partial ``du`` of its o block."""
        row = tl.program_id(0)
        pid_c = tl.program_id(1)
        pid_o = tl.program_id(2)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask_c2 = mask_c[:, None]
        offs_u = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)  # this program's rows of du
        mask_u = offs_u < O
        first_o = pid_o == 0
        taps = tl.arange(0, BLOCK_T)[None, :]
        w_c = DW + offs_c * (KH * KW)
        lowp_type = X.dtype.element_ty
        dv = tl.zeros([BLOCK_C, BLOCK_T], dtype=tl.float32)
        du = tl.zeros([BLOCK_O, BLOCK_C], dtype=tl.float32)
        n_pb = tl.cdiv(OH * OW, BLOCK_P)
        for tile in range(row, N * n_pb, ROWS):
            n = tile // n_pb
            offs_p = (tile % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
            mask_p = offs_p < OH * OW
            oh = offs_p // OW
            ow = offs_p % OW
            g_n = G + n * sg_n + (oh * sg_h + ow * sg_w)[None, :]
            # gd = u^T g over all output channels
            g = tl.load(g_n + offs_u[:, None] * sg_c, mask=mask_u[:, None] & mask_p[None, :],
                        other=0.0).to(tl.float32)
            if ONE_O_BLOCK:
                u_t = tl.load(PW + offs_u[None, :] * sp_o + offs_c[:, None] * sp_c,
                              mask=mask_c2 & mask_u[None, :], other=0.0).to(tl.float32)
                gd = _mm(u_t, g, tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32), LOWP_DOT,
                         lowp_type)
            else:
                gd = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
                for o0 in range(0, O, BLOCK_O):
                    offs_o = o0 + tl.arange(0, BLOCK_O)
                    mask_o = offs_o < O
                    g_o = tl.load(g_n + offs_o[:, None] * sg_c,
                                  mask=mask_o[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
                    u_t = tl.load(PW + offs_o[None, :] * sp_o + offs_c[:, None] * sp_c,
                                  mask=mask_c2 & mask_o[None, :], other=0.0).to(tl.float32)
                    gd = _mm(u_t, g_o, gd, LOWP_DOT, lowp_type)
            if NEED_GD:
                gd_ptrs = GD + n * C * OH * OW + offs_c[:, None] * (OH * OW) + offs_p[None, :]
                tl.store(gd_ptrs, gd, mask=mask_c2 & mask_p[None, :] & first_o)
            if NEED_W:
                # Recompute d tap by tap; each tap's relu(x) patch also gives its dv sum.
                d = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
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
                        r = tl.load(x_row + j * DIL_W * sx_w, mask=mask_c2 & ok[None, :],
                                    other=0.0).to(tl.float32)
                        r = tl.maximum(r, 0.0)
                        v = tl.load(w_c + (i * KW + j), mask=mask_c, other=0.0).to(tl.float32)
                        d += v[:, None] * r
                        tap_sum = tl.sum(gd * r, axis=1)
                        dv = tl.where(taps == i * KW + j, dv + tap_sum[:, None], dv)
                du = _mm(g, tl.trans(d), du, LOWP_DOT, lowp_type)
        if NEED_W:
            part_dw = PART_DW + row * C * (KH * KW) + offs_c[:, None] * (KH * KW) + taps
            tl.store(part_dw, dv, mask=mask_c2 & (taps < KH * KW) & first_o)
            part_pw = PART_PW + row * O * C + offs_u[:, None] * C + offs_c[None, :]
            tl.store(part_pw, du, mask=mask_u[:, None] & mask_c[None, :])


def _lowp_dot(x: torch.Tensor) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16) and not dispatch.INTERPRET


class SepConv2dFunction(torch.autograd.Function):
    """``sep_conv2d`` with Triton forward and backward."""

    @staticmethod
    def forward(ctx, x, dw_weight, pw_weight, stride, padding, dilation):
        geo = ConvGeometry.of("sep_conv2d", x, dw_weight, stride, padding, dilation)
        O = pw_weight.shape[0]
        if pw_weight.dim() != 4 or tuple(pw_weight.shape[1:]) != (geo.C, 1, 1):
            raise ValueError(f"sep_conv2d: pointwise weight must be [C_out, {geo.C}, 1, 1], got "
                             f"{tuple(pw_weight.shape)}")
        v = dw_weight.contiguous()  # [C, 1, KH, KW]: a few hundred bytes
        y = torch.empty((geo.N, O, geo.OH, geo.OW), dtype=x.dtype, device=x.device,
                        memory_format=memory_format_of(x))
        block_c, block_o, block_p = block_sizes(geo.C, O, geo.OH * geo.OW)
        grid = (geo.N * triton.cdiv(geo.OH * geo.OW, block_p), triton.cdiv(O, block_o))
        dispatch.record_launch("sep_conv_fwd")
        _sep_conv_fwd_kernel[grid](
            x, v, pw_weight, y, geo.C, O, geo.H, geo.W, geo.OH, geo.OW, *x.stride(),
            *pw_weight.stride()[:2], *y.stride(), **geo.constexprs,
            BLOCK_C=block_c, BLOCK_O=block_o, BLOCK_P=block_p, LOWP_DOT=_lowp_dot(x),
            num_warps=NUM_WARPS)
        ctx.save_for_backward(x, v, pw_weight)
        ctx.geo = geo
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, v, pw_weight = ctx.saved_tensors
        geo = ctx.geo
        O = pw_weight.shape[0]
        need_dx = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        block_c, block_o, block_p = block_sizes(geo.C, O, geo.OH * geo.OW)
        n_cb = triton.cdiv(geo.C, block_c)
        n_ob = triton.cdiv(O, block_o) if need_w else 1
        rows = partial_rows(geo.N * triton.cdiv(geo.OH * geo.OW, block_p), n_cb * n_ob)
        new = dict(dtype=torch.float32, device=x.device)
        gd = torch.empty((geo.N, geo.C, geo.OH, geo.OW) if need_dx else (1,), **new)
        part_dw = torch.empty((rows, geo.C, geo.KH * geo.KW) if need_w else (1,), **new)
        part_pw = torch.empty((rows, O, geo.C) if need_w else (1,), **new)
        dispatch.record_launch("sep_conv_bwd")
        _sep_conv_bwd_kernel[(rows, n_cb, n_ob)](
            g, x, v, pw_weight, gd, part_dw, part_pw, rows, geo.N, geo.C, O, geo.H, geo.W, geo.OH,
            geo.OW, *g.stride(), *x.stride(), *pw_weight.stride()[:2], **geo.constexprs,
            BLOCK_C=block_c, BLOCK_O=block_o, BLOCK_P=block_p,
            BLOCK_T=triton.next_power_of_2(geo.KH * geo.KW), ONE_O_BLOCK=O <= block_o,
            NEED_GD=need_dx, NEED_W=need_w, LOWP_DOT=_lowp_dot(x), num_warps=NUM_WARPS)
        dx = depthwise_bwd_input(gd, v, x, geo, relu_mask=True) if need_dx else None
        d_dw = d_pw = None
        if ctx.needs_input_grad[1]:
            d_dw = part_dw.sum(0).view(v.shape).to(v.dtype)
        if ctx.needs_input_grad[2]:
            d_pw = part_pw.sum(0).view(pw_weight.shape).to(pw_weight.dtype)
        return dx, d_dw, d_pw, None, None, None


def sep_conv2d(x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor,
               stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1) -> torch.Tensor:
    """``F.conv2d(F.conv2d(F.relu(x), dw_weight, None, stride, padding, dilation, groups=C),
    pw_weight)``: ReLU, depthwise ``dw_weight`` [C, 1, kh, kw], pointwise ``pw_weight``
    [C_out, C, 1, 1] in one forward kernel.

    Differentiable in all three tensors; output in ``x``'s dtype (fp32 accumulation) and memory
    format. Dispatched by ``fastnas.kernels.dispatch``.
    """
    if dispatch.use_triton("sep_conv2d", x, dw_weight, pw_weight):
        return SepConv2dFunction.apply(x, dw_weight, pw_weight, stride, padding, dilation)
    return reference.sep_conv2d(x, dw_weight, pw_weight, stride, padding, dilation)
