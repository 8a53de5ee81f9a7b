"""Many ReLU -> depthwise -> pointwise -> BatchNorm blocks (the halves of the sep convs and the
dil convs of the DARTS space) as one autograd Function that saves only its inputs and its output.

``conv_blocks(inputs, groups, dw_weights, pw_weight, bns)`` computes, for each group ``t``
(one kernel shape and dilation, ``M_t`` ops), ``h_t = depthwise(relu(inputs[i_t]),
dw_weights[t])`` (``.depthwise``: ``M_t`` kernels per input channel), then the grouped
pointwise conv of all ``h_t`` (``.pointwise``) and one BatchNorm(affine=False) over all the
output channels, with the running statistics of ``bns`` (one module per op):

    y = BN(pointwise(cat_t h_t))

Autograd through these ops separately would keep ``relu(x)``, every depthwise output and every
pointwise output (the BatchNorm input) alive until backward: three extra tensors per op, most
of a search step's memory. This Function keeps ``x`` (a cell state or an earlier block, alive
anyway) and ``y`` (read by the node sums anyway) and in backward

- takes the BatchNorm gradient from its output: with ``y = (z - mu) * invstd``,
  ``dz = invstd * (dy - mean(dy) - y * mean(dy * y))``, which is the native BatchNorm backward
  evaluated at input ``y``, mean 0, invstd 1 and weight ``invstd``;
- recomputes ``relu(x)`` and the depthwise outputs (cheap forward kernels) only when a weight
  gradient is asked for (the architecture step asks for none).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from . import grad_edges
from .batch_norm import concatenated_stats, write_back_running_stats
from .depthwise import depthwise_backward, depthwise_forward, repeat_channels
from .pointwise import pointwise_forward, pointwise_input_grads, pointwise_weight_grad

_CL = torch.channels_last
Group = Tuple[int, int, int, int]  # (input index, stride, padding, dilation)


def _repeated_relus(inputs, groups, dw_weights, relu=True):
    """Per group, ``relu(inputs[i])`` repeated ``M`` times over channels (``depthwise_forward``'s
    input), each distinct (input, M) built once: the four kernel shapes of a state share one."""
    cache, out = {}, []
    for (i, _, _, _), w in zip(groups, dw_weights):
        m = w.shape[0] // inputs[i].shape[1]
        if (i, m) not in cache:
            x = torch.relu(inputs[i]) if relu else inputs[i]
            cache[i, m] = repeat_channels(x, m)
        out.append(cache[i, m])
    return out


class _ConvBlocks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, conf, pw_weight, *tensors):
        groups, bn_state = conf
        n_in = len(tensors) - len(groups)
        inputs, dw_weights = tensors[:n_in], tensors[n_in:]
        reps = _repeated_relus(inputs, groups, dw_weights)
        ds = [depthwise_forward(None, w, s, p, d, rep)
              for (_, s, p, d), w, rep in zip(groups, dw_weights, reps)]
        del reps
        z = pointwise_forward(ds, pw_weight)
        running_mean, running_var, training, momentum, eps = bn_state
        y, _, invstd = torch.native_batch_norm(z, None, None, running_mean, running_var,
                                               training, momentum, eps)
        if not training:
            invstd = torch.rsqrt(running_var + eps)
        grad_edges.record(ctx, conf, pw_weight, *tensors)
        ctx.save_for_backward(pw_weight, y, invstd, *tensors)
        ctx.conf = (groups, n_in, training, eps)
        return y

    @staticmethod
    def backward(ctx, gy):
        pw_weight, y, invstd, *tensors = ctx.saved_tensors
        groups, n_in, training, eps = ctx.conf
        inputs, dw_weights = tensors[:n_in], tensors[n_in:]
        C = pw_weight.shape[2]
        gy = gy.contiguous(memory_format=_CL)
        if training:
            ones = torch.ones_like(invstd)
            gz = torch.ops.aten.native_batch_norm_backward(
                gy, y, invstd, None, None, torch.zeros_like(invstd), ones, True, eps,
                [True, False, False])[0]
        else:
            gz = gy * invstd.view(1, -1, 1, 1).to(gy.dtype)
        need_pw = grad_edges.needed(ctx, 1)
        need_x = [grad_edges.needed(ctx, 2 + i) for i in range(n_in)]
        need_w = [grad_edges.needed(ctx, 2 + n_in + t) for t in range(len(groups))]
        relus = None
        if need_pw or any(need_w):
            relus = [torch.relu(x).contiguous(memory_format=_CL) for x in inputs]
        sizes = [w.shape[0] // C for w in dw_weights]
        gds = pointwise_input_grads(gz, pw_weight, sizes)
        reps = [None] * len(groups)  # relu(x) repeated per group, rebuilt only for dpw
        grad_pw = None
        if need_pw:
            reps = _repeated_relus(relus, groups, dw_weights, relu=False)
            ds = [depthwise_forward(None, w, s, p, d, rep)
                  for (_, s, p, d), w, rep in zip(groups, dw_weights, reps)]
            grad_pw = pointwise_weight_grad(gz, ds, C)
            del ds
        grad_r: List = [None] * n_in
        grad_w: List = [None] * len(groups)
        for t, ((i, s, p, d), w, gd) in enumerate(zip(groups, dw_weights, gds)):
            if not (need_x[i] or need_w[t]):
                continue
            x_for_w = relus[i] if need_w[t] else inputs[i]
            gx, grad_w[t] = depthwise_backward(x_for_w, w, gd, s, p, d, need_x[i], need_w[t],
                                               reps[t])
            reps[t] = None
            if gx is not None:
                grad_r[i] = gx if grad_r[i] is None else grad_r[i] + gx
        grad_in = [None if g is None else torch.ops.aten.threshold_backward(g, x, 0)
                   for g, x in zip(grad_r, inputs)]
        return (None, grad_pw, *grad_in, *grad_w)


def conv_blocks(inputs: Sequence[torch.Tensor], groups: Sequence[Group],
                    dw_weights: Sequence[torch.Tensor], pw_weight: torch.Tensor,
                    bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """See the module docstring. ``groups[t] = (input index, stride, padding, dilation)``,
    ``dw_weights[t]: [M_t * C, 1, k_t, k_t]``, ``pw_weight: [sum M_t, C_out, C]``; ``bns`` are
    the ``sum M_t`` BatchNorm modules whose statistics normalize (eval) or are updated
    (training). Returns ``[N, sum M_t * C_out, Ho, Wo]``, channels_last.
    """
    device = inputs[0].device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        inputs = [x.to(dtype) for x in inputs]
        dw_weights = [w.to(dtype) for w in dw_weights]
        pw_weight = pw_weight.to(dtype)
    # Views give leaf weights a graph node, so backward can tell whether their gradient is used.
    dw_weights = [w.view_as(w) if w.is_leaf else w for w in dw_weights]
    if pw_weight.is_leaf:
        pw_weight = pw_weight.view_as(pw_weight)
    bn = bns[0]
    running_mean, running_var = concatenated_stats(bns)
    bn_state = (running_mean, running_var, bn.training, bn.momentum, bn.eps)
    with torch.autocast(device, enabled=False):
        y = _ConvBlocks.apply((tuple(groups), bn_state), pw_weight, *inputs, *dw_weights)
    if bn.training:
        write_back_running_stats(bns, running_mean, running_var)
    return y
