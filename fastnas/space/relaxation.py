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
one place the code base takes the softmax of the alphas.
"""
from __future__ import annotations

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


def check_phase(phase: str) -> str:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {list(PHASES)}, got {phase!r}")
    return phase


__all__ = ["ARCHITECTURE", "EVALUATION", "PHASES", "Relaxation", "Softmax", "WEIGHTS",
           "check_phase"]
