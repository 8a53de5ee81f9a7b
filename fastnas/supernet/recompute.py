"""Gradient checkpointing (recomputation) of supernet cells, safe with BatchNorm and
``functional_call``.

``checkpoint_module(module, *inputs)`` returns ``module(*inputs)`` but keeps none of the module's
activations: backward runs the module's forward again (``torch.utils.checkpoint``, non-reentrant).
Two things a plain ``checkpoint(module, ...)`` gets wrong in a DARTS search are handled here:

- BatchNorm running statistics: the recomputation is a second training-mode forward and would
  update them a second time. The recomputation runs inside a context that snapshots the module's
  buffers and restores them afterwards, so each step updates them exactly once.
- ``torch.func.functional_call``: the architect evaluates the supernet at virtual and perturbed
  weights and differentiates after ``functional_call`` has put the real parameters back, so a
  recomputation that read the module's attributes would use the wrong weights. The parameters
  and buffers seen at forward time are passed to the checkpoint as explicit inputs and the
  recomputation swaps them in itself.
"""
from __future__ import annotations

import contextlib
from typing import List

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _restored(buffers: List[torch.Tensor]):
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)


def checkpoint_module(module: nn.Module, *inputs):
    """``module(*inputs)``, recomputed in backward; BatchNorm statistics updated once."""
    params = dict(module.named_parameters())
    # Buffers travel by reference, not as checkpoint inputs: the forward updates them in place,
    # which the saved-tensor version check would reject.
    buffers = dict(module.named_buffers())
    names = list(params)
    n = len(inputs)

    def run(*args):
        return functional_call(module, {**dict(zip(names, args[n:])), **buffers}, args[:n])

    # The cells draw no random numbers, so the RNG state need not be preserved.
    return checkpoint(run, *inputs, *params.values(), use_reentrant=False,
                      preserve_rng_state=False,
                      context_fn=lambda: (contextlib.nullcontext(),
                                          _restored(list(buffers.values()))))


__all__ = ["checkpoint_module"]
