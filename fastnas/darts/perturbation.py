"""SDARTS (Chen & Hsieh, ICML 2020; xiangning-chen/SmoothDARTS): the weight step trains on
perturbed mixing weights, which smooths the validation loss landscape in the alphas.

The perturbation acts on the relaxation's weights of the weight step ``p0`` (``softmax(a)``,
or a Dirichlet sample), which lie on the simplex of each edge, and is projected back onto it
as the code's ``model.clip()``: per row, ``clamp(p, 0, 1)``; a row that clamps to all zeros
takes 1 at the argmax of the unclamped row; then ``p / sum(p)``.

- ``random`` (SDARTS-RS, ``Random_alpha``): ``p = proj(p0 + u)``, ``u ~ U[-eps, eps]`` per
  entry, drawn afresh for every weight step.
- ``adversarial`` (SDARTS-ADV, ``Linf_PGD_alpha``): with the model in eval mode (BatchNorm on
  its running statistics) and the weight step's training batch, a random start
  ``p = proj(p0 + u)``, then ``steps`` signed-gradient ascent steps of size ``2 eps / steps`` on
  the loss, each followed by ``p = proj(p0 + clamp(p - p0, -eps, eps))``; if the loss at ``p``
  is below the loss at ``p0``, ``p = p0`` (the code's revert). The weight step then mixes with
  ``p``. Under torchrun the ascent direction and both losses are the means over the ranks, so
  every rank holds the same ``p``.

``eps`` follows the epochs as the code: ``eps_e = eps_min + (eps_max - eps_min) * e / E``
(0.03 to just under 0.3). The noise comes from the perturbation's own CPU generator, seeded
from the config's seed, so every rank draws the same; it and ``eps`` are in ``state_dict``.

It plugs into ``ArchitectureParameters.perturbation``: the hook ``__call__(mixing, phase)``
perturbs the ``WEIGHTS`` phase (random) or returns the attack's ``p`` (adversarial) while
``attack`` has left one; the architecture step and evaluation see the plain weights.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Mapping, Optional

import torch
import torch.nn as nn

from .. import distributed
from ..space import WEIGHTS

KINDS = ("random", "adversarial")


def project(p: torch.Tensor) -> torch.Tensor:
    """Each row back onto the simplex as SDARTS' ``clip()`` (module docstring)."""
    top = p.argmax(dim=-1)
    q = p.clamp(0, 1)
    empty = q.sum(dim=-1) == 0
    if bool(empty.any()):
        q = q.clone()
        rows = empty.nonzero().flatten()
        q[rows, top[rows]] = 1.0
    return q / q.sum(dim=-1, keepdim=True)


class Perturbation:
    """The SDARTS perturbation of the weight step (module docstring)."""

    def __init__(self, kind: str, epsilon_min: float = 0.03, epsilon_max: float = 0.3,
                 steps: int = 7, seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"perturbation must be one of {list(KINDS)}, got {kind!r}")
        self.kind = kind
        self.epsilon_min, self.epsilon_max = float(epsilon_min), float(epsilon_max)
        self.steps = int(steps)
        self.epsilon = self.epsilon_min
        self.generator = torch.Generator().manual_seed(int(seed))
        self.fixed: Optional[Dict[str, torch.Tensor]] = None   # the attack's p, while set

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        self.epsilon = (self.epsilon_min
                        + (self.epsilon_max - self.epsilon_min) * epoch / total_epochs)

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """``U[-eps, eps]`` shaped like ``like``, drawn on the CPU, in its dtype and device."""
        u = torch.rand(like.shape, generator=self.generator, dtype=like.dtype)
        return ((2 * u - 1) * self.epsilon).to(like.device)

    # -- the hook of ArchitectureParameters.mixing ----------------------------------------------
    def __call__(self, mixing: Dict[str, torch.Tensor], phase: str) -> Dict[str, torch.Tensor]:
        if self.fixed is not None:
            return dict(self.fixed)
        if self.kind == "random" and phase == WEIGHTS:
            return {t: project(w.detach() + self.noise(w)) for t, w in mixing.items()}
        return mixing

    # -- SDARTS-ADV -----------------------------------------------------------------------------
    def attack(self, model: nn.Module, batch, loss_fn: Callable, autocast=None) -> None:
        """Find ``p`` by PGD on ``batch`` (module docstring) and keep it in ``fixed`` for the
        next passes; ``release()`` ends that."""
        autocast = autocast or contextlib.nullcontext
        x, y = batch
        arch = model.arch
        with torch.no_grad():
            p0 = {t: w.detach() for t, w in arch.mixing(True).items()}   # the WEIGHTS phase
        was_training = model.training
        model.eval()
        try:
            def loss_at(p, grad: bool):
                self.fixed = p
                with autocast(), torch.set_grad_enabled(grad):
                    loss = loss_fn(model(x), y)
                return loss

            def mean(value: torch.Tensor) -> float:
                return float(distributed.averaged([value.detach()])[0])

            before = mean(loss_at(p0, False))
            step = 2 * self.epsilon / self.steps
            p = {t: project(w + self.noise(w)) for t, w in p0.items()}
            for _ in range(self.steps):
                leaves = {t: w.clone().requires_grad_() for t, w in p.items()}
                loss = loss_at(leaves, True)
                grads = distributed.averaged(torch.autograd.grad(loss, list(leaves.values())))
                p = {}
                for (t, w), g in zip(leaves.items(), grads):
                    moved = w.detach() + step * torch.sign(g)
                    diff = (moved - p0[t]).clamp(-self.epsilon, self.epsilon)
                    p[t] = project(p0[t] + diff)
            after = mean(loss_at(p, False))
            self.fixed = p0 if before > after else p
        except BaseException:
            self.fixed = None
            raise
        finally:
            model.train(was_training)

    def release(self) -> None:
        self.fixed = None

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state(), "epsilon": self.epsilon}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.epsilon = float(state.get("epsilon", self.epsilon))


__all__ = ["KINDS", "Perturbation", "project"]
