"""The architecture step of DARTS' bi-level optimization.

The method gives the loss ``L(logits, y)`` (default: cross-entropy) and, through the
supernet's relaxation (``fastnas.space``) and its regularizers (``fastnas.space.regularizers``),
an optional penalty ``P(a)`` (the relaxation's plus every regularizer's) on the alphas that
joins the validation loss only: ``L_val(w, a) = L(f(x_val; w, a), y_val) + P(a)``, in both
orders (in the unrolled step's ``grad_a L_val(w', a)`` too; ``P`` does not depend on the
weights, so ``v`` and ``H v`` are those of the data loss). Every forward pass of the step runs
in the relaxation's ``ARCHITECTURE`` phase.

First order: ``grad_a L_val(w, a)``.

Second order (the unrolled step). With ``xi`` the current weight learning rate, ``m`` the SGD
momentum, ``buf`` its momentum buffer and ``wd`` the weight decay, the virtual weights are

    w' = w - xi * (m * buf + grad_w L_train(w, a) + wd * w)

and the architecture gradient is

    grad_a L_val(w', a) - xi * H v,   v = grad_w' L_val(w', a),   H v = grad^2_{a,w} L_train(w, a) v

with the Hessian-vector product by central finite differences around ``w``:

    H v ~= (grad_a L_train(w + R v, a) - grad_a L_train(w - R v, a)) / (2 R),  R = r / ||v||.

No copy of the model is made: the virtual and perturbed weights are plain tensors passed to the
model through ``torch.func.functional_call``, and BatchNorm running statistics are left untouched
by those extra passes (they see copies of the buffers).

Under torchrun each rank computes these gradients on its shard of the batches and they are
averaged over the ranks as soon as they are computed (``_grad``), before the next stage uses
them, so every rank takes the bitwise same step.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .. import distributed
from ..space import ARCHITECTURE


class Architect:
    """Computes and applies the architecture gradient for a supernet.

    The supernet must provide ``alphas()`` (list of parameters) and ``named_weights()``.
    ``autocast`` is a zero-argument callable returning the context the forward passes run in
    (mixed precision); the finite-difference arithmetic itself is always done in fp32 or wider.
    ``loss_scale`` (fp16) is a zero-argument callable giving the factor every loss is multiplied
    by before differentiation and every gradient divided by right after; a step whose gradient
    is not finite is skipped (``skipped_steps`` counts them). ``check(quantity, value)``, if
    given, vets the validation loss and the alpha gradient before they are used: it returns
    False to skip the step or raises (``fastnas.engine.NonFiniteGuard``); with a loss scale,
    non-finite gradients are the scale's business and are not passed to it.
    ``loss(logits, y)`` is the method's loss (default ``cross_entropy``, half precision logits
    upcast); ``architecture`` (default the model's ``arch``, if it has one) is the
    ``ArchitectureParameters`` whose phase the passes run in and whose penalty joins the
    validation loss; each of ``regularizers`` (``fastnas.space.regularizers``), called with its
    ``by_type()`` alphas, joins it too.
    """

    def __init__(self, model: nn.Module, lr: float, betas=(0.5, 0.999), weight_decay: float = 1e-3,
                 order: int = 1, momentum: float = 0.9, network_weight_decay: float = 3e-4,
                 hessian_r: float = 0.01, autocast: Optional[Callable] = None,
                 loss_scale: Optional[Callable[[], float]] = None,
                 check: Optional[Callable[[str, object], bool]] = None,
                 loss: Optional[Callable] = None, architecture: Optional[nn.Module] = None,
                 regularizers: Sequence[Callable] = ()):
        self.model = model
        self.loss_fn = cross_entropy if loss is None else loss
        self.architecture = getattr(model, "arch", None) if architecture is None else architecture
        self.regularizers = list(regularizers)
        self.order = order
        self.momentum = momentum
        self.network_weight_decay = network_weight_decay
        self.hessian_r = hessian_r
        self.autocast = autocast or contextlib.nullcontext
        self.loss_scale = loss_scale
        self.check = check
        self.skipped_steps = 0
        self.optimizer = torch.optim.Adam(model.alphas(), lr=lr, betas=betas,
                                          weight_decay=weight_decay)

    # -- losses -------------------------------------------------------------------------------
    def _forward(self, x, weights: Optional[Dict[str, torch.Tensor]] = None):
        if weights is None:
            with self.autocast():
                return self.model(x)
        state = dict(weights)
        for name, buf in self.model.named_buffers():
            state[name] = buf.clone()
        with self.autocast():
            return functional_call(self.model, state, (x,))

    def loss(self, x, y, weights=None):
        """The method's loss on ``(x, y)`` (weights ``weights`` if given) and the logits."""
        logits = self._forward(x, weights)
        return self.loss_fn(logits, y), logits

    def val_loss(self, x, y, weights=None):
        """``L(f(x; w, a), y) + P(a)``: the loss plus the relaxation's penalty and the
        regularizers' terms, if any."""
        loss, logits = self.loss(x, y, weights)
        penalty = self.penalty()
        return (loss if penalty is None else loss + penalty), logits

    def penalty(self) -> Optional[torch.Tensor]:
        """``P(a)``: the relaxation's penalty plus each regularizer's term (None: no term)."""
        terms = []
        if self.architecture is not None:
            own = self.architecture.penalty()
            if own is not None:
                terms.append(own)
            terms += [r(self.architecture.by_type()) for r in self.regularizers]
        return sum(terms[1:], terms[0]) if terms else None

    def _phase(self):
        if self.architecture is None:
            return contextlib.nullcontext()
        return self.architecture.phase(ARCHITECTURE)

    def _grad(self, loss, inputs, zero_unused: bool = False, **kwargs):
        """``torch.autograd.grad`` of ``loss``, through the loss scale when there is one; the
        gradients come back unscaled (fp32 for fp32 inputs) and, under torchrun, averaged over
        the ranks: every quantity a later stage uses (the alpha gradient, the virtual-step
        gradient that makes ``w'``, ``v``, and both finite-difference alpha gradients) is then
        the same on every rank. ``zero_unused``: an input the loss does not depend on gets a
        zero gradient (an alpha whose choice a sampled path skipped), not an error."""
        if zero_unused:
            kwargs["allow_unused"] = True
        scale = None if self.loss_scale is None else float(self.loss_scale())
        grads = torch.autograd.grad(loss if scale is None else loss * scale, inputs, **kwargs)
        if scale is not None:
            grads = [None if g is None else g / scale for g in grads]
        if zero_unused:
            grads = [_zero_if_none(g, x) for g, x in zip(grads, inputs)]
        return tuple(distributed.averaged(grads))

    # -- the step -----------------------------------------------------------------------------
    def step(self, train_batch, val_batch, xi: float, weight_optimizer: torch.optim.Optimizer):
        """One Adam step on the alphas; returns ``(val_loss, val_logits, applied)`` of the
        minimized loss (``applied`` False: the step was skipped)."""
        with self._phase():
            return self._step(train_batch, val_batch, xi, weight_optimizer)

    def _step(self, train_batch, val_batch, xi, weight_optimizer):
        alphas = self.model.alphas()
        if self.order == 1:
            loss, logits = self.val_loss(*val_batch)
            if self.check is not None and not self.check("validation loss", loss.detach()):
                return loss.detach(), logits.detach(), False
            grads = self._grad(loss, alphas, zero_unused=True)
        else:
            grads, loss, logits = self.unrolled_gradient(train_batch, val_batch, xi,
                                                         weight_optimizer)
        if self.loss_scale is not None:
            if not all(torch.isfinite(g).all() for g in grads):
                self.skipped_steps += 1  # fp16 overflow: keep the alphas
                return loss.detach(), logits.detach(), False
        elif self.check is not None:
            if self.order == 2 and not self.check("validation loss", loss.detach()):
                return loss.detach(), logits.detach(), False
            if not self.check("alpha gradient", torch.stack([g.detach().abs().max()
                                                             for g in grads])):
                return loss.detach(), logits.detach(), False
        for a, g in zip(alphas, grads):
            a.grad = g.detach().to(a.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), logits.detach(), True

    def virtual_weights(self, train_batch, xi: float, weight_optimizer) -> Dict[str, torch.Tensor]:
        """``w' = w - xi * (m * buf + grad_w L_train(w, a) + wd * w)`` as detached tensors."""
        names, weights = zip(*self.model.named_weights())
        loss, _ = self.loss(*train_batch)
        grads = self._grad(loss, weights, allow_unused=True)
        out = {}
        for name, param, g in zip(names, weights, grads):
            w = param.detach()
            d = self.network_weight_decay * w
            if g is not None:
                d = d + g.detach()
            buf = weight_optimizer.state.get(param, {}).get("momentum_buffer")
            if buf is not None:
                d = d + self.momentum * buf
            out[name] = w - xi * d
        return out

    def unrolled_gradient(self, train_batch, val_batch, xi: float, weight_optimizer):
        """``grad_a L_val(w', a) - xi * H v``; returns ``(grads, val_loss, val_logits)``."""
        alphas = self.model.alphas()
        virtual = self.virtual_weights(train_batch, xi, weight_optimizer)
        virtual = {n: w.requires_grad_() for n, w in virtual.items()}
        loss, logits = self.val_loss(*val_batch, weights=virtual)
        grads = self._grad(loss, list(alphas) + list(virtual.values()), allow_unused=True)
        d_alpha = [_zero_if_none(g, a) for g, a in zip(grads[:len(alphas)], alphas)]
        vector = [_zero_if_none(g, w) for g, w in zip(grads[len(alphas):], virtual.values())]
        hv = self.hessian_vector_product(vector, train_batch)
        return [da - xi * h for da, h in zip(d_alpha, hv)], loss, logits

    def hessian_vector_product(self, vector: Sequence[torch.Tensor], train_batch,
                               r: Optional[float] = None) -> List[torch.Tensor]:
        """``grad^2_{a,w} L_train(w, a) v`` by central differences with ``R = r / ||v||``."""
        r = self.hessian_r if r is None else r
        names, weights = zip(*self.model.named_weights())
        norm = torch.sqrt(sum((v.double() ** 2).sum() for v in vector))
        if norm == 0:
            return [torch.zeros_like(a) for a in self.model.alphas()]
        R = (r / norm).item()
        alphas = self.model.alphas()

        def grad_at(sign):
            shifted = {n: w.detach() + sign * R * v for n, w, v in zip(names, weights, vector)}
            loss, _ = self.loss(*train_batch, weights=shifted)
            return self._grad(loss, alphas, zero_unused=True)

        plus, minus = grad_at(1.0), grad_at(-1.0)
        return [(p - m) / (2 * R) for p, m in zip(plus, minus)]

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to fp32; fp32 and fp64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DARTS' loss: cross-entropy of the (upcast) logits."""
    return F.cross_entropy(upcast(logits), y)


def _zero_if_none(g, like):
    return torch.zeros_like(like) if g is None else g


__all__ = ["Architect", "cross_entropy", "upcast"]
