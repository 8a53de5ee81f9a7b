"""Many ReLU -> depthwise -> pointwise -> BatchNorm blocks (the halves of the sep convs and the
dil convs of the DARTS space) as one custom op that saves only its inputs and its output.

``conv_blocks(inputs, groups, dw_weights, pw_weight, bns)`` computes, for each group ``t``
(one kernel shape and dilation, ``M_t`` ops), ``h_t = depthwise(relu(inputs[i_t]),
dw_weights[t])`` (``.depthwise``: ``M_t`` kernels per input channel), then the grouped
pointwise conv of all ``h_t`` (``.pointwise``) and one BatchNorm(affine=False) over all the
output channels, with the running statistics of ``bns`` (one module per op):

    y = BN(pointwise(cat_t h_t))

Autograd through these ops separately would keep ``relu(x)``, every depthwise output and every
pointwise output (the BatchNorm input) alive until backward: three extra tensors per op, most
of a search step's memory. The op ``torch.ops.fastnas.conv_blocks`` keeps ``x`` (a cell state or
an earlier block, alive anyway) and ``y`` (read by the node sums anyway) and in backward

- takes the BatchNorm gradient from its output: with ``y = (z - mu) * invstd``,
  ``dz = invstd * (dy - mean(dy) - y * mean(dy * y))``, which is the native BatchNorm backward
  evaluated at input ``y``, mean 0, invstd 1 and weight ``invstd``;
- recomputes ``relu(x)`` and the depthwise outputs (cheap forward kernels) only when a weight
  gradient is asked for (the architecture step asks for none).

Its backward is the op ``fastnas::conv_blocks_backward``; the running statistics are not mutated
by the op (it returns the updated copies, which ``conv_blocks`` writes back to the modules), so
a compiler sees a pure function. Under ``torch.compile`` the op is one node of the graph.
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


def _forward(inputs, dw_weights, pw_weight, running_mean, running_var, groups: Sequence[Group],
             training: bool, momentum: float, eps: float):
    """``(y, invstd, running_mean', running_var')``: the blocks' output, the BatchNorm's inverse
    standard deviation (batch or running), and the updated running statistics (new tensors)."""
    reps = _repeated_relus(inputs, groups, dw_weights)
    ds = [depthwise_forward(None, w, s, p, d, rep)
          for (_, s, p, d), w, rep in zip(groups, dw_weights, reps)]
    del reps
    z = pointwise_forward(ds, pw_weight)
    running_mean, running_var = running_mean.clone(), running_var.clone()
    y, _, invstd = torch.native_batch_norm(z, None, None, running_mean, running_var, training,
                                           momentum, eps)
    if not training:
        invstd = torch.rsqrt(running_var + eps)
    return y, invstd, running_mean, running_var


def _backward(gy, y, invstd, inputs, dw_weights, pw_weight, groups: Sequence[Group],
              training: bool, eps: float, need_x: Sequence[bool], need_w: Sequence[bool],
              need_pw: bool):
    """``([d input or empty], [d depthwise weight or empty], d pointwise weight or empty)``."""
    C = pw_weight.shape[2]
    gy = gy.contiguous(memory_format=_CL)
    if training:
        ones = torch.ones_like(invstd)
        gz = torch.ops.aten.native_batch_norm_backward(
            gy, y, invstd, None, None, torch.zeros_like(invstd), ones, True, eps,
            [True, False, False])[0]
    else:
        gz = gy * invstd.view(1, -1, 1, 1).to(gy.dtype)
    relus = None
    if need_pw or any(need_w):
        relus = [torch.relu(x).contiguous(memory_format=_CL) for x in inputs]
    sizes = [w.shape[0] // C for w in dw_weights]
    gds = pointwise_input_grads(gz, pw_weight, sizes)
    reps = [None] * len(groups)  # relu(x) repeated per group, rebuilt only for dpw
    grad_pw = pw_weight.new_empty(0)
    if need_pw:
        reps = _repeated_relus(relus, groups, dw_weights, relu=False)
        ds = [depthwise_forward(None, w, s, p, d, rep)
              for (_, s, p, d), w, rep in zip(groups, dw_weights, reps)]
        grad_pw = pointwise_weight_grad(gz, ds, C).contiguous()
        del ds
    grad_r: List = [None] * len(inputs)
    grad_w: List = [w.new_empty(0) for w in dw_weights]
    for t, ((i, s, p, d), w, gd) in enumerate(zip(groups, dw_weights, gds)):
        if not (need_x[i] or need_w[t]):
            continue
        x_for_w = relus[i] if need_w[t] else inputs[i]
        gx, gw = depthwise_backward(x_for_w, w, gd, s, p, d, need_x[i], need_w[t], reps[t])
        reps[t] = None
        if gw is not None:
            grad_w[t] = gw.contiguous()
        if gx is not None:
            grad_r[i] = gx if grad_r[i] is None else grad_r[i] + gx
    grad_in = [x.new_empty(0) if g is None
               else torch.ops.aten.threshold_backward(g, x, 0).contiguous(memory_format=_CL)
               for g, x in zip(grad_r, inputs)]
    return grad_in, grad_w, grad_pw


def _groups(flat: Sequence[int]) -> List[Group]:
    return [tuple(flat[i:i + 4]) for i in range(0, len(flat), 4)]


# Fake (shape) implementations: the real ones run on fake tensors.
@torch.library.custom_op(
    "fastnas::conv_blocks", mutates_args=(),
    schema="(Tensor[] inputs, Tensor[] dw_weights, Tensor pw_weight, Tensor running_mean, "
           "Tensor running_var, int[] groups, bool training, float momentum, float eps) "
           "-> (Tensor, Tensor, Tensor, Tensor)")
def conv_blocks_op(inputs, dw_weights, pw_weight, running_mean, running_var, groups, training,
                   momentum, eps):
    """``(y, invstd, running_mean', running_var')`` (see ``_forward``); ``groups`` flattened,
    four ints per group."""
    return _forward(inputs, dw_weights, pw_weight, running_mean, running_var, _groups(groups),
                    training, momentum, eps)


@conv_blocks_op.register_fake
def _(inputs, dw_weights, pw_weight, running_mean, running_var, groups, training, momentum, eps):
    # The shapes of _forward: the depthwise convs (with their stride) set Ho x Wo, the
    # pointwise matmul writes a channels_last output.
    i, s, p, d = _groups(groups)[0]
    N, _, H, W = inputs[i].shape
    k = dw_weights[0].shape[-1]
    Ho, Wo = (H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1
    y = torch.empty(N, pw_weight.shape[0] * pw_weight.shape[1], Ho, Wo, dtype=inputs[0].dtype,
                    device=inputs[0].device, memory_format=_CL)
    return (y, torch.empty_like(running_var, dtype=torch.promote_types(running_var.dtype,
                                                                       inputs[0].dtype)),
            torch.empty_like(running_mean), torch.empty_like(running_var))


_BACKWARD_SCHEMA = (
    "(Tensor gy, Tensor y, Tensor invstd, Tensor[] inputs, Tensor[] dw_weights, "
    "Tensor pw_weight, int[] groups, bool training, float eps, bool[] need_x, bool[] need_w, "
    "bool need_pw) -> (Tensor[], Tensor[], Tensor)")


@torch.library.custom_op("fastnas::conv_blocks_backward", mutates_args=(),
                         schema=_BACKWARD_SCHEMA)
def conv_blocks_backward_op(gy, y, invstd, inputs, dw_weights, pw_weight, groups, training, eps,
                            need_x, need_w, need_pw):
    """The gradients of ``conv_blocks`` asked for (see ``_backward``)."""
    return _backward(gy, y, invstd, inputs, dw_weights, pw_weight, _groups(groups), training, eps,
                     need_x, need_w, need_pw)


@conv_blocks_backward_op.register_fake
def _(gy, y, invstd, inputs, dw_weights, pw_weight, groups, training, eps, need_x, need_w,
      need_pw):
    # _backward returns channels_last input gradients and contiguous weight gradients.
    return ([torch.empty_like(x, memory_format=_CL) if n else x.new_empty(0)
             for x, n in zip(inputs, need_x)],
            [torch.empty_like(w, memory_format=torch.contiguous_format) if n else w.new_empty(0)
             for w, n in zip(dw_weights, need_w)],
            torch.empty_like(pw_weight, memory_format=torch.contiguous_format) if need_pw
            else pw_weight.new_empty(0))


def _setup_context(ctx, inputs, output):
    xs, dw_weights, pw_weight, _, _, groups, training, _, eps = inputs
    y, invstd = output[:2]
    grad_edges.record(ctx, pw_weight, *xs, *dw_weights)
    ctx.save_for_backward(pw_weight, y, invstd, *xs, *dw_weights)
    ctx.conf = (list(groups), len(xs), training, eps)


def _grads(ctx, gy, *_):
    pw_weight, y, invstd, *tensors = ctx.saved_tensors
    groups, n_in, training, eps = ctx.conf
    needs_x, needs_w, needs_pw = ctx.needs_input_grad[:3]
    need_pw = grad_edges.needed(ctx, 0, needs_pw)
    need_x = [grad_edges.needed(ctx, 1 + i, r) for i, r in enumerate(needs_x)]
    need_w = [grad_edges.needed(ctx, 1 + n_in + t, r) for t, r in enumerate(needs_w)]
    grad_in, grad_w, grad_pw = torch.ops.fastnas.conv_blocks_backward(
        gy, y, invstd, tensors[:n_in], tensors[n_in:], pw_weight, groups, training, eps, need_x,
        need_w, need_pw)
    return ([g if n else None for g, n in zip(grad_in, need_x)],
            [g if n else None for g, n in zip(grad_w, need_w)],
            grad_pw if need_pw else None, None, None, None, None, None, None)


conv_blocks_op.register_autograd(_grads, setup_context=_setup_context)


def conv_blocks(inputs: Sequence[torch.Tensor], groups: Sequence[Group],
                dw_weights: Sequence[torch.Tensor], pw_weight: torch.Tensor,
                bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """See the module docstring. ``groups[t] = (input index, stride, padding, dilation)``,
    ``dw_weights[t]: [M_t * C, 1, k_t, k_t]``, ``pw_weight: [sum M_t, C_out, C]``; ``bns`` are
    the ``sum M_t`` BatchNorm modules whose statistics normalize (eval) or are updated
    (training). Returns ``[N, sum M_t * C_out, Ho, Wo]``, channels_last. Runs as the custom op
    ``torch.ops.fastnas.conv_blocks`` (one node of a compiled graph).
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
    with torch.autocast(device, enabled=False):
        y, _, new_mean, new_var = torch.ops.fastnas.conv_blocks(
            list(inputs), list(dw_weights), pw_weight, running_mean, running_var,
            [v for g in groups for v in g], bn.training, bn.momentum, bn.eps)
    if bn.training:
        write_back_running_stats(bns, new_mean, new_var)
    return y
