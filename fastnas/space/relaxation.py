"""Relaxations: how architecture parameters become the mixing weights of a supernet.

A relaxation maps the alphas ``a`` of a cell type (``[num_edges, len(ops)]``) to

- ``weights(a, phase)``: the mixing weights ``w`` of ``sum_k w_e,k op_k(x)``, differentiable in
  ``a``. ``phase`` says which pass asks: ``ARCHITECTURE`` (the architecture step's passes),
  ``WEIGHTS`` (the weight step) or ``EVALUATION`` (the model in eval mode). A relaxation may
  sample in training and take the argmax in evaluation (GDAS), or perturb only the weight
  step (SDARTS);
- ``strengths(a)``: what derivation, the alpha history (``alphas.json``), its plots and tune's
  pruned space read, detached, on the CPU, in the alphas' precision and at least float32;
  ``what`` names them in ``alphas.json``;
- ``penalty(alphas)``: an optional term on ``{cell type: alphas}`` that the architecture step
  adds to the validation loss, and only there (``None``: no term);
- ``sample(a, phase)``: ``(weights, index)``, where ``index`` (a CPU ``LongTensor``
  ``[num_edges]``, or ``None``) names the one op per edge that a hard relaxation (GDAS)
  selected: the supernet then computes only that op of each edge, the others entering through
  their (zero-valued) weights alone. The default is ``(weights(a, phase), None)``: every op;
- ``set_epoch(epoch, total_epochs)``: called by the search at the start of every epoch
  (0-based) for what follows a schedule (a temperature, say); ``state_dict()`` /
  ``load_state_dict()``: the relaxation's own state (schedules, noise generators) as plain data
  and tensors, kept in the search checkpoint so that a resumed run draws the same noise.

``Softmax`` is DARTS': ``w = strengths = softmax(a)`` row by row, no penalty. This module is the
one place the code base takes the softmax of the alphas. ``Dirichlet`` (DrNAS) and ``Sigmoid``
(FairDARTS) are the other relaxations of issue 18 (GDAS's ``Gumbel`` is ``fastnas.space.gumbel``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

ARCHITECTURE = "architecture"
WEIGHTS = "weights"
EVALUATION = "evaluation"
PHASES = (ARCHITECTURE, WEIGHTS, EVALUATION)


class Relaxation:
    """The interface (see the module docstring); subclasses override ``weights`` and, where they
    differ from the weights of the evaluation phase, ``strengths``."""

    name = "relaxation"
    what = "mixing weights of the alphas per edge"

    def weights(self, alphas: torch.Tensor, phase: str) -> torch.Tensor:
        raise NotImplementedError

    def strengths(self, alphas: torch.Tensor) -> torch.Tensor:
        """``weights(a, EVALUATION)`` of the detached alphas on the CPU, half precision upcast
        to float32."""
        a = alphas.detach().cpu()
        if a.dtype in (torch.float16, torch.bfloat16):
            a = a.float()
        with torch.no_grad():
            return self.weights(a, EVALUATION)

    def penalty(self, alphas: Mapping[str, torch.Tensor]) -> Optional[torch.Tensor]:
        return None

    def sample(self, alphas: torch.Tensor, phase: str
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(weights(a, phase), None)``: every op is computed (see the module docstring)."""
        return self.weights(alphas, phase), None

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing to schedule."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class Softmax(Relaxation):
    """DARTS: ``w_e,k = exp(a_e,k) / sum_k' exp(a_e,k')`` in every phase."""

    name = "softmax"
    what = "softmax of the alphas per edge"

    def weights(self, alphas: torch.Tensor, phase: str) -> torch.Tensor:
        return F.softmax(alphas, dim=-1)


class Sigmoid(Relaxation):
    """FairDARTS (xiaomi-automl/FairDARTS, ``model_search.py``): ``w_e,k = sigmoid(a_e,k)``,
    each op on its own (no normalization over the edge), in every phase; the strengths are the
    same. Its zero-one loss is a regularizer (``fastnas.space.regularizers.ZeroOne``)."""

    name = "sigmoid"
    what = "sigmoid of the alphas per op"

    def weights(self, alphas: torch.Tensor, phase: str) -> torch.Tensor:
        return torch.sigmoid(alphas)


class _DirichletSample(torch.autograd.Function):
    """``x ~ Dirichlet(c)`` row by row, drawn on the CPU from ``generator`` in ``c``'s dtype,
    with torch's implicit reparameterization gradient (``torch.distributions.Dirichlet
    .rsample``'s backward): ``dL/dc = d(x(c, noise))/dc^T dL/dx`` through
    ``torch._dirichlet_grad``."""

    @staticmethod
    def forward(ctx, concentration, generator):
        x = torch._sample_dirichlet(concentration.detach().cpu(), generator=generator)
        x = x.to(concentration.device)
        ctx.save_for_backward(x, concentration)
        return x

    @staticmethod
    def backward(ctx, grad_output):
        x, concentration = ctx.saved_tensors
        total = concentration.sum(-1, True).expand_as(concentration)
        grad = torch._dirichlet_grad(x, concentration, total)
        return grad * (grad_output - (x * grad_output).sum(-1, True)), None


class Dirichlet(Relaxation):
    """DrNAS (xiangning-chen/DrNAS, ``DARTS-space/model_search.py``): the mixing weights of each
    edge are one reparameterized sample ``w_e ~ Dirichlet(elu(a_e) + 1)``, drawn afresh for
    every forward pass in every phase, evaluation included (as the code does). The noise comes
    from the relaxation's own CPU generator, seeded with ``seed``, so every rank under torchrun
    draws the same samples, and its state is in ``state_dict`` (exact resume). The gradient is
    the pathwise one of ``torch.distributions.Dirichlet.rsample`` (implicit reparameterization).

    ``strengths`` (derivation, ``alphas.json``, tune) are ``softmax(a)``, as the code's
    genotype derivation, not the Dirichlet mean ``(elu(a) + 1) / sum(elu(a) + 1)``: within an
    edge both rank the ops alike, across edges the code's rule is kept.

    ``penalty``: ``kl * sum_cells sum_e KL(Dirichlet(elu(a_e) + 1) || Dirichlet(1))``, a sum
    over edges and cells as the code's ``reg_type='kl'`` (``kl`` 0: no term; the code's default
    is its L2 option, the Adam weight decay on the alphas). With ``c = elu(a_e) + 1``, ``c0 =
    sum_k c_k`` and ``K`` ops::

        KL = lgamma(c0) - sum_k lgamma(c_k) - lgamma(K)
             + sum_k (c_k - 1) (digamma(c_k) - digamma(c0))
    """

    name = "dirichlet"
    what = "softmax of the alphas per edge (DrNAS derives from it; it mixes Dirichlet samples)"

    def __init__(self, kl: float = 0.0, seed: int = 0):
        self.kl = float(kl)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    @staticmethod
    def concentration(alphas: torch.Tensor) -> torch.Tensor:
        """``elu(a) + 1``, positive."""
        return F.elu(alphas) + 1

    def weights(self, alphas: torch.Tensor, phase: str) -> torch.Tensor:
        return _DirichletSample.apply(self.concentration(alphas), self.generator)

    def strengths(self, alphas: torch.Tensor) -> torch.Tensor:
        a = alphas.detach().cpu()
        if a.dtype in (torch.float16, torch.bfloat16):
            a = a.float()
        return F.softmax(a, dim=-1)

    @staticmethod
    def kl_to_uniform(concentration: torch.Tensor) -> torch.Tensor:
        """``KL(Dirichlet(c_e) || Dirichlet(1))`` per row ``e`` (the class docstring)."""
        c = concentration
        c0 = c.sum(-1)
        k = c.shape[-1]
        return (torch.lgamma(c0) - torch.lgamma(c).sum(-1) - math.lgamma(k)
                + ((c - 1) * (torch.digamma(c) - torch.digamma(c0).unsqueeze(-1))).sum(-1))

    def penalty(self, alphas: Mapping[str, torch.Tensor]) -> Optional[torch.Tensor]:
        if self.kl == 0:
            return None
        return self.kl * sum(self.kl_to_uniform(self.concentration(a)).sum()
                             for a in alphas.values())

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


def check_phase(phase: str) -> str:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {list(PHASES)}, got {phase!r}")
    return phase


__all__ = ["ARCHITECTURE", "Dirichlet", "EVALUATION", "PHASES", "Relaxation", "Sigmoid", "Softmax",
           "WEIGHTS", "check_phase"]
