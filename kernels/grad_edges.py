"""Which gradients a custom ``autograd.Function`` must compute in the current backward.

``ctx.needs_input_grad`` says whether an input requires grad, not whether this backward needs it:
the architecture step asks for ``d loss / d alphas`` only and the weight step for the weights
only, and the native backward of ``conv2d`` or ``batch_norm`` skips what is not asked for. The
fast supernet's Functions (``fastnas.ops.functional``) and the Triton ops of this package
(``depthwise_conv2d``, ``weighted_sum``) do the same: ``record(ctx, *inputs)`` in ``forward``
remembers each
input's graph node, ``needed(ctx, i)`` in ``backward`` asks the autograd engine whether that node
will run. Inputs should be non-leaf tensors (the engine cannot answer for a leaf inside
``torch.autograd.grad``); for a leaf, or on a torch without the API, the answer is "needed".
"""
from __future__ import annotations

from typing import Optional

import torch

try:
    from torch.autograd.graph import get_gradient_edge
    _will_execute = torch._C._will_engine_execute_node
except (ImportError, AttributeError):  # older torch: compute every gradient
    get_gradient_edge = _will_execute = None


def record(ctx, *inputs) -> None:
    """Remember the graph node of each input that requires grad (``None`` for the others);
    pass all of ``forward``'s inputs, in order, so indices match ``ctx.needs_input_grad``
    (or the flags given to ``needed``)."""
    nodes = []
    for t in inputs:
        node = None
        if _will_execute is not None and isinstance(t, torch.Tensor) and t.requires_grad \
                and t.grad_fn is not None:
            try:
                node = get_gradient_edge(t).node
            except RuntimeError:  # e.g. a tensor being traced by a compiler
                node = None
        nodes.append(node)
    ctx.grad_nodes = nodes


def needed(ctx, i: int, requires_grad: Optional[bool] = None) -> bool:
    """Whether the gradient of input ``i`` (as passed to ``record``) is used by this backward;
    ``requires_grad`` (default ``ctx.needs_input_grad[i]``) says whether it can be at all."""
    if not (ctx.needs_input_grad[i] if requires_grad is None else requires_grad):
        return False
    node = ctx.grad_nodes[i]
    if node is None:
        return True
    try:
        return bool(_will_execute(node))
    except RuntimeError:
        return True
