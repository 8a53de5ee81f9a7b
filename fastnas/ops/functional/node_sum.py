"""The node sum of the fast supernet: one weighted sum over all the edges and ops of a node.

``node_sum(parts, w)`` with ``parts[p]: [N, K_p, *S]`` and ``w: [sum_p K_p]`` is

    out[n] = sum_p sum_k w[o_p + k] * parts[p][n, k],   o_p = K_0 + ... + K_{p-1},

with the backward

    d parts[p][n, k] = w[o_p + k] * g[n],     d w[o_p + k] = sum_n <parts[p][n, k], g[n]>.

A part is ``K`` op outputs of one edge that a fused call produced side by side (an edge's
``[sep3, sep5]``, a state's ``[max_pool, avg_pool]``), read in place as a strided view; its
gradient comes back as one tensor. Runs as the custom op ``torch.ops.fastnas.node_sum``
(backward: ``node_sum_backward``), one node of a compiled graph. Only the parts and ``w`` are
saved: the products ``w_k * y_k`` and the partial sums of the autograd version are never stored,
and the ``w`` gradient is only computed when the backward asks for it. With the Triton kernels
the fast supernet calls ``fastnas.kernels.weighted_sum`` instead (one tensor per op).
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import list_op


def _forward(parts: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    out = None
    o = 0
    for part in parts:
        for k in range(part.shape[1]):
            if out is None:  # takes the memory layout of the first part (channels_last)
                out = part[:, k] * w[o + k]
            else:
                out.addcmul_(part[:, k], w[o + k])
        o += part.shape[1]
    return out


def _backward(parts: Sequence[torch.Tensor], w: torch.Tensor, g: torch.Tensor,
              need_parts: Sequence[bool], need_w: bool):
    """``([d part or empty], d w or empty)``."""
    g = g.unsqueeze(1)
    grads, grad_w = [], []
    acc = torch.promote_types(g.dtype, torch.float32)  # half precision sums in fp32
    o = 0
    for part, need in zip(parts, need_parts):
        K = part.shape[1]
        wp = w[o:o + K].view(1, K, *([1] * (part.dim() - 2)))
        o += K
        grads.append(g * wp.to(g.dtype) if need else g.new_empty(0))
        if need_w:
            g0 = g.squeeze(1)
            grad_w += [torch.sum(part[:, k] * g0, dtype=acc) for k in range(K)]
    gw = torch.stack(grad_w).to(w.dtype) if need_w else w.new_empty(0)
    return grads, gw


node_sum_op = list_op.define("node_sum", _forward, _backward)


def node_sum(parts: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """``sum_p sum_k w[o_p + k] * parts[p][:, k]`` (see the module docstring): ``[N, *S]``.

    All parts share ``N`` and ``S``; they are brought to one dtype (the promoted one) first.
    The custom op ``torch.ops.fastnas.node_sum`` (one node of a compiled graph).
    """
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    parts = [p if p.dtype == dtype else p.to(dtype) for p in parts]
    return torch.ops.fastnas.node_sum(parts, w)


__all__ = ["node_sum"]
