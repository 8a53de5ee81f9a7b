"""Regularizers: terms on the alphas that join the architecture step's loss (issue 18).

A regularizer is called with ``{cell type: alphas}`` (each ``[num_edges, len(ops)]``) and
returns a scalar tensor that the architecture step adds to its validation loss, and only there
(``fastnas.darts.architect.Architect.val_loss``, next to the relaxation's own penalty). Like a
relaxation it follows the search's schedule through ``set_epoch(epoch, total_epochs)`` (called
at the start of every epoch, 0-based) and keeps what it needs for an exact resume in
``state_dict()``.

- ``BetaDecay`` (beta-DARTS; Sunshine-Ye/Beta-DARTS, ``optimizers/darts/architect.py``,
  ``mlc_loss``): ``lambda_e * mean_e logsumexp_k(a_e,k)``, the mean over the rows of every
  cell type together, on the raw alphas. Its gradient is ``lambda_e * softmax(a_e) / rows``.
  ``lambda_e = lam * e / E``: linear from 0 by epoch; the code hard-codes ``50 * epoch / 100``,
  which this equals at its default 100 epochs with ``lam = 50``.
- ``ZeroOne`` (FairDARTS; xiaomi-automl/FairDARTS, ``separate_loss.py``, ``sep_loss='l2'``):
  ``-w * mean((sigmoid(a) - 0.5)^2)`` over every entry of every cell type, constant in time
  (``w = 10`` in the code), which pushes each sigmoid towards 0 or 1.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch


class Regularizer:
    """The interface (see the module docstring)."""

    name = "regularizer"

    def __call__(self, alphas: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing to schedule."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def _rows(alphas: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([a.reshape(-1, a.shape[-1]) for a in alphas.values()])


class BetaDecay(Regularizer):
    """``lambda_e * mean(logsumexp(a, -1))`` with ``lambda_e = lam * e / E`` (module
    docstring)."""

    name = "beta-decay"

    def __init__(self, lam: float):
        self.lam = float(lam)
        self.weight = 0.0

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        self.weight = self.lam * epoch / total_epochs

    def __call__(self, alphas: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.weight * torch.logsumexp(_rows(alphas), dim=-1).mean()

    def state_dict(self) -> Dict[str, Any]:
        return {"weight": self.weight}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.weight = float(state.get("weight", self.weight))


class ZeroOne(Regularizer):
    """``-w * mean((sigmoid(a) - 0.5)^2)`` (module docstring)."""

    name = "zero-one"

    def __init__(self, weight: float):
        self.weight = float(weight)

    def __call__(self, alphas: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return -self.weight * ((torch.sigmoid(_rows(alphas)) - 0.5) ** 2).mean()


__all__ = ["BetaDecay", "Regularizer", "ZeroOne"]
