"""Depthwise convolution with a backward that is fast on the CPU (the conv-block Function's).

``depthwise_forward(x, weight, stride, padding, dilation)`` with ``x: [N, C, H, W]`` and
``weight: [M * C, 1, k, k]`` is

    y[:, m * C + c] = conv2d(x[:, c], weight[m * C + c], stride, padding, dilation)

i.e. ``conv2d(cat([x] * M, 1), weight, groups=M * C)``: the ``M`` depthwise convs of one input
(one per op and edge of the supernet that reads it) as one call, whose output is already laid
out op by op. With ``M = 1`` it is the plain depthwise conv, the API of
``fastnas.kernels.depthwise_conv2d``. One call for ``M`` convs matters on the CPU: a oneDNN call
costs 70-150 us of fixed overhead, more than the work of a small conv.

Why a custom backward: oneDNN's forward depthwise kernels are fast for every kernel size and
dilation on channels_last memory, but its backward kernels are not: the input gradient of a 5x5
or dilated kernel is 2-8x slower than the forward, the weight gradient of a 5x5 or dilated kernel
2-10x slower than a 3x3 one, and a strided backward slower still (2-core Xeon, torch 2.14). So:

- a strided conv is the stride-1 conv subsampled: its output gradient is scattered into the
  stride-1 output (zeros elsewhere) and the stride-1 backward below is taken;
- input gradient: a forward conv of the output gradient with the flipped kernel,
  ``dx = conv2d(g, flip(w), padding = d (k - 1) - p, dilation = d)``, summed over the ``M`` copies;
- weight gradient ``dw[c, a, b] = sum_{n,h,w} g[n, c, h, w] xpad[n, c, h + d a, w + d b]``,
  whose oneDNN kernel is fast only for undilated 3x3 kernels: a dilation ``d`` is removed by
  splitting ``xpad`` and ``g`` into their ``d x d`` polyphase components (``t[r::d, s::d]``)
  stacked in the batch (a dilated correlation is the sum of the undilated correlations of the
  phases), and a ``k x k`` kernel with ``k > 3`` is covered by 3x3 tiles at offsets
  ``0, 3, .., k - 3``, each the 3x3 weight gradient of a shifted window of ``xpad``.

``depthwise_backward`` needs only ``x`` and the weight (the repeated input is rebuilt when a
weight gradient is asked for). On CUDA the native backward is used. Tensors are channels_last.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

_CL = torch.channels_last


def repeat_channels(x: torch.Tensor, m: int) -> torch.Tensor:
    """``cat([x] * m, dim=1)`` in channels_last memory: ``[N, m * C, H, W]``."""
    if m == 1:
        return x.contiguous(memory_format=_CL)
    return torch.cat([x.permute(0, 2, 3, 1)] * m, dim=3).permute(0, 3, 1, 2)


def _weight_grad_native(g, x, k: int, stride: int = 1, padding: int = 0, dilation: int = 1):
    return torch.ops.aten.convolution_backward(
        g, x, x.new_empty(g.shape[1], 1, k, k), None, (stride, stride), (padding, padding),
        (dilation, dilation), False, (0, 0), g.shape[1], (False, True, False))[1]


def _weight_grad_tiled(g, xpad, k: int, repeats: int):
    """``dw[c, a, b] = sum g[n, c, h, w] xrep[n, c, h + a, w + b]``, ``xrep`` the ``repeats``-fold
    channel repeat of ``xpad``, from 3x3 tiles at offsets ``0, 3, .., k - 3`` (overlapping tiles
    compute the same taps twice). Each window is cut from the small ``xpad``, then repeated."""
    Ho, Wo = g.shape[-2:]
    offsets = sorted(set(range(0, k - 2, 3)) | {k - 3})
    out = g.new_empty(g.shape[1], 1, k, k)
    for a in offsets:
        for b in offsets:
            window = repeat_channels(xpad[:, :, a:a + Ho + 2, b:b + Wo + 2], repeats)
            out[:, :, a:a + 3, b:b + 3] = _weight_grad_native(g, window, 3)
    return out


def _phases(t: torch.Tensor, d: int, size_h: int, size_w: int) -> torch.Tensor:
    """Zero-pad ``t`` to ``[.., size_h, size_w]`` (multiples of ``d``) and stack its ``d x d``
    polyphase components in the batch: ``[d * d * N, C, size_h / d, size_w / d]``."""
    N, C, H, W = t.shape
    if (size_h, size_w) != (H, W):
        t = F.pad(t, (0, size_w - W, 0, size_h - H))
    # On channels_last memory whole C-vectors move, never single elements.
    t = t.permute(0, 2, 3, 1).reshape(N, size_h // d, d, size_w // d, d, C)
    t = t.permute(2, 4, 0, 1, 3, 5).reshape(d * d * N, size_h // d, size_w // d, C)
    return t.permute(0, 3, 1, 2)


def depthwise_weight_grad(x, g, k: int, padding: int, dilation: int, repeats: int = 1,
                          x_rep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weight gradient ``[R C, 1, k, k]`` of the stride-1 ``conv2d(cat([x] * R, 1), w,
    padding=padding, dilation=dilation, groups=R C)`` for the output gradient ``g`` (see the
    module docstring); ``x_rep``, if given, is that repeated input. The repeat is taken as late
    as possible, after padding, phase splitting or windowing of the small ``x``."""
    if x.device.type != "cpu" or (dilation == 1 and k <= 3):
        if x_rep is None:
            x_rep = repeat_channels(x, repeats)
        return _weight_grad_native(g, x_rep, k, 1, padding, dilation)
    xpad = F.pad(x, (padding,) * 4)
    if dilation > 1:
        d = dilation
        Ho, Wo = g.shape[-2:]
        Hg, Wg = -(-Ho // d) * d, -(-Wo // d) * d
        g = _phases(g, d, Hg, Wg).contiguous(memory_format=_CL)
        xpad = _phases(xpad, d, Hg + d * (k - 1), Wg + d * (k - 1))
    if k <= 3:
        return _weight_grad_native(g, repeat_channels(xpad, repeats), k)
    return _weight_grad_tiled(g, xpad, k, repeats)


def depthwise_forward(x, weight, stride: int, padding: int, dilation: int,
                      x_rep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv2d(cat([x] * M, 1), weight, groups=M * C)`` (no autograd); ``x_rep``, if given, is
    the repeated input."""
    if x_rep is None:
        x_rep = repeat_channels(x, weight.shape[0] // x.shape[1])
    return F.conv2d(x_rep, weight, None, stride, padding, dilation, weight.shape[0])


def depthwise_backward(x, weight, g, stride: int, padding: int, dilation: int,
                       need_x: bool = True, need_w: bool = True,
                       x_rep: Optional[torch.Tensor] = None
                       ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(dx, dweight)`` of ``depthwise_forward`` for the output gradient ``g``; ``x`` is only
    read for the weight gradient (its shape is enough otherwise)."""
    N, C, H, W = x.shape
    MC, k = weight.shape[0], weight.shape[-1]
    M = MC // C
    if stride > 1:
        H1, W1 = H + 2 * padding - dilation * (k - 1), W + 2 * padding - dilation * (k - 1)
        full = torch.empty(N, MC, H1, W1, dtype=g.dtype, device=g.device,
                           memory_format=_CL).zero_()
        full[:, :, ::stride, ::stride] = g
        g = full
    g = g.contiguous(memory_format=_CL)
    grad_x = grad_w = None
    if need_x:
        gx = F.conv2d(g, weight.flip(-1, -2), None, 1, dilation * (k - 1) - padding, dilation,
                      MC)
        if M > 1:  # channels_last memory is [N, H, W, M, C]: sum over M
            gx = gx.permute(0, 2, 3, 1).reshape(N, H, W, M, C).sum(3).permute(0, 3, 1, 2)
        grad_x = gx
    if need_w:
        grad_w = depthwise_weight_grad(x, g, k, padding, dilation, M, x_rep)
    return grad_x, grad_w


__all__ = ["depthwise_backward", "depthwise_forward", "depthwise_weight_grad", "repeat_channels"]
