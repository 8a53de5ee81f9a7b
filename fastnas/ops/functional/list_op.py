"""The custom-op shape that ``node_sum`` and ``grouped_pointwise`` share.

``define(name, forward, backward)`` registers two ``torch.library`` custom ops in the ``fastnas``
namespace:

- ``fastnas::<name>(Tensor[] xs, Tensor w) -> Tensor``, computing ``forward(xs, w)``;
- ``fastnas::<name>_backward(Tensor[] xs, Tensor w, Tensor g, bool[] need_xs, bool need_w) ->
  (Tensor[], Tensor)``, computing ``backward(xs, w, g, need_xs, need_w)``: the gradients the
  flags ask for, and empty tensors in place of the others;

and the first op's autograd formula, which asks ``grad_edges`` which gradients the running
backward will use (the architecture step wants the alphas' only, the weight step the weights')
and calls the backward op for those alone. Only ``xs`` and ``w`` are saved for backward. The
fake (shape) implementations are the real functions run on fake tensors, so the outputs' layouts
follow the real ones by construction. Each op is one node of a ``torch.compile`` graph.
"""
from __future__ import annotations

from typing import Callable

from torch.library import CustomOpDef, custom_op

from . import grad_edges


def define(name: str, forward: Callable, backward: Callable) -> CustomOpDef:
    """Register ``fastnas::<name>`` and ``fastnas::<name>_backward`` (see the module docstring);
    returns the first."""
    op = custom_op(f"fastnas::{name}", forward, mutates_args=(),
                   schema="(Tensor[] xs, Tensor w) -> Tensor")
    op.register_fake(forward)
    backward_op = custom_op(f"fastnas::{name}_backward", backward, mutates_args=(),
                            schema="(Tensor[] xs, Tensor w, Tensor g, bool[] need_xs, "
                                   "bool need_w) -> (Tensor[], Tensor)")
    backward_op.register_fake(backward)

    def setup_context(ctx, inputs, output):
        xs, w = inputs
        grad_edges.record(ctx, w, *xs)
        ctx.save_for_backward(w, *xs)

    def grads(ctx, g):
        w, *xs = ctx.saved_tensors
        needs_xs, needs_w = ctx.needs_input_grad
        need_w = grad_edges.needed(ctx, 0, needs_w)
        need = [grad_edges.needed(ctx, i + 1, r) for i, r in enumerate(needs_xs)]
        gxs, gw = backward_op(xs, w, g, need, need_w)
        return [t if n else None for t, n in zip(gxs, need)], (gw if need_w else None)

    op.register_autograd(grads, setup_context=setup_context)
    return op


__all__ = ["define"]
