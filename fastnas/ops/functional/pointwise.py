"""Grouped pointwise (1x1) convolution on channels_last memory, as strided batched matmuls.

``grouped_pointwise(xs, weight)`` with ``xs[t]: [N, M_t * C, H, W]`` (channels_last) and
``weight: [sum_t M_t, C_out, C]`` is

    y[n, m * C_out + o, h, w] = sum_c weight[m, o, c] * x[n, m * C + c, h, w]

with ``x = cat(xs, dim=1)`` and ``y: [N, M * C_out, H, W]`` (channels_last). In channels_last
memory ``x`` is a ``[N H W, M, C]`` matrix stack, so each group is a matmul over a strided view
(leading dimension ``M * C``): no transposition, and the inputs are never concatenated, each
``xs[t]`` is read where it lies and its gradient is returned as its own tensor.

This is the pointwise half of all the separable and dilated convs that read one cell state; on
the CPU it is several times faster than a grouped ``conv2d`` or one matmul per op. Runs as the
custom op ``torch.ops.fastnas.grouped_pointwise`` (backward: ``grouped_pointwise_backward``).
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from . import list_op

_CL = torch.channels_last


def _rows(t: torch.Tensor, groups: int) -> torch.Tensor:
    """``[N, groups * C, H, W]`` channels_last -> ``[groups, N H W, C]`` view."""
    N, MC, H, W = t.shape
    return t.permute(0, 2, 3, 1).reshape(N * H * W, groups, MC // groups).transpose(0, 1)


def _bmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out[:] = a @ b`` for a strided ``out`` view. The CPU BLAS path writes it in place;
    elsewhere the product is computed contiguous and copied."""
    if out.device.type == "cpu":
        torch.bmm(a, b, out=out)
    else:
        out.copy_(torch.bmm(a, b))


def pointwise_forward(xs: Sequence[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """The grouped 1x1 conv of the module docstring (no autograd); ``xs`` channels_last."""
    N, _, H, W = xs[0].shape
    M, C_out, C = weight.shape
    out = xs[0].new_empty(N, H, W, M * C_out)
    rows = out.view(N * H * W, M, C_out).transpose(0, 1)
    start = 0
    for x in xs:
        m = x.shape[1] // C
        _bmm_into(rows[start:start + m], _rows(x, m), weight[start:start + m].transpose(1, 2))
        start += m
    return out.permute(0, 3, 1, 2)


def pointwise_input_grads(g: torch.Tensor, weight: torch.Tensor, sizes: Sequence[int]
                          ) -> List[torch.Tensor]:
    """Gradients of the inputs (``sizes[t] = M_t``), each its own channels_last tensor."""
    M, C_out, C = weight.shape
    N, _, H, W = g.shape
    g_rows = _rows(g.contiguous(memory_format=_CL), M)
    grads, start = [], 0
    for m in sizes:
        gx = g.new_empty(N, H, W, m * C)
        _bmm_into(gx.view(N * H * W, m, C).transpose(0, 1), g_rows[start:start + m],
                  weight[start:start + m])
        grads.append(gx.permute(0, 3, 1, 2))
        start += m
    return grads


def pointwise_weight_grad(g: torch.Tensor, xs: Sequence[torch.Tensor], C: int) -> torch.Tensor:
    """Gradient of the ``[M, C_out, C]`` weight for the output gradient ``g``."""
    sizes = [x.shape[1] // C for x in xs]
    g_rows = _rows(g.contiguous(memory_format=_CL), sum(sizes))
    grads, start = [], 0
    for x, m in zip(xs, sizes):
        grads.append(torch.bmm(g_rows[start:start + m].transpose(1, 2), _rows(x, m)))
        start += m
    return torch.cat(grads)


def _forward(xs: Sequence[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    return pointwise_forward([x.contiguous(memory_format=_CL) for x in xs], weight)


def _backward(xs: Sequence[torch.Tensor], weight: torch.Tensor, g: torch.Tensor,
              need_xs: Sequence[bool], need_w: bool):
    """``([d x or empty], d weight or empty)``."""
    xs = [x.contiguous(memory_format=_CL) for x in xs]
    C = weight.shape[2]
    grads = pointwise_input_grads(g, weight, [x.shape[1] // C for x in xs])
    grads = [gx if need else g.new_empty(0) for gx, need in zip(grads, need_xs)]
    gw = pointwise_weight_grad(g, xs, C) if need_w else weight.new_empty(0)
    return grads, gw


grouped_pointwise_op = list_op.define("grouped_pointwise", _forward, _backward)


def grouped_pointwise(xs: Sequence[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """``[N, M_t * C, H, W]``s x ``[M, C_out, C]`` -> ``[N, M * C_out, H, W]`` (channels_last),
    as the custom op ``torch.ops.fastnas.grouped_pointwise``.

    Under autocast the inputs and weight are cast to the autocast dtype, as ``conv2d`` would be.
    """
    device = xs[0].device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        xs, weight = [x.to(dtype) for x in xs], weight.to(dtype)
    with torch.autocast(device, enabled=False):
        return torch.ops.fastnas.grouped_pointwise(list(xs), weight)
