"""GDAS's relaxation: one op per edge, sampled with Gumbel noise, straight-through gradients.

Following the official GDAS code (D-X-Y/AutoDL-Projects, ``search_model_gdas.py`` and
``search_model_gdas_nasnet.py``), for the alphas ``a`` of a cell type (``[num_edges, K]``):

    g     = -log(E),  E ~ Exp(1)                    (Gumbel noise, drawn again while any g or p
    p     = softmax((log_softmax(a) + g) / tau)      is not finite)
    index = argmax_k p                              (one op per edge)
    h     = onehot(index) - p.detach() + p          (straight-through: forward one-hot,
                                                     backward the Jacobian of p)

``sample`` returns ``(h, index)``: the supernet computes only ``op_index(x) * h[index]`` on each
edge (the DARTS-space ``MixedOp.forward_gdas``), so the other alphas of the edge get their
gradient through the softmax coupling of ``p[index]`` alone.

- One sample per call, i.e. per forward pass and cell type (the supernet calls ``sample`` once
  per type): every cell of a type shares it, as in GDAS.
- The noise comes from the relaxation's own CPU ``torch.Generator`` (seeded by ``seed``, drawn in
  float32, then moved to the alphas' device and dtype), so every rank of a distributed run and
  every precision draws the same noise; its state and ``tau`` are in ``state_dict()``.
- ``set_epoch(e, E)``: ``tau = tau_max - (tau_max - tau_min) * e / (E - 1)`` (``E = 1``:
  ``tau_max``), linear per epoch, ending exactly at ``tau_min``, as the official scripts.
- ``EVALUATION`` phase (a model in eval mode): no noise; the one-hot of ``argmax a`` (the mode of
  the sampling distribution), constant (no gradient), with that index. The official code samples
  in eval too; we choose the deterministic argmax so that evaluating the supernet is repeatable.
- ``strengths(a) = softmax(a)`` (what derivation, the alpha history and the plots read).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from .relaxation import EVALUATION, Relaxation, check_phase


class Gumbel(Relaxation):
    """GDAS's hard Gumbel-softmax sampling (see the module docstring)."""

    name = "gumbel"
    what = "softmax of the alphas per edge (GDAS samples one op per edge from them)"

    def __init__(self, tau_max: float = 10.0, tau_min: float = 0.1, seed: int = 0):
        if not (0 < tau_min <= tau_max and tau_max < float("inf")):
            raise ValueError(f"the Gumbel temperatures need 0 < tau_min <= tau_max, got "
                             f"tau_min={tau_min}, tau_max={tau_max}")
        self.tau_max, self.tau_min = float(tau_max), float(tau_min)
        self.tau = self.tau_max
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """``tau = tau_max - (tau_max - tau_min) * epoch / (total_epochs - 1)``."""
        if total_epochs <= 1:
            self.tau = self.tau_max
        else:
            self.tau = self.tau_max - (self.tau_max - self.tau_min) * epoch / (total_epochs - 1)

    def noise(self, shape) -> torch.Tensor:
        """Gumbel noise ``-log(Exp(1))`` of ``shape`` (float32, CPU), from the own generator."""
        return -torch.empty(shape, dtype=torch.float32).exponential_(
            generator=self.generator).log()

    def sample(self, alphas: torch.Tensor, phase: str
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(h, index)`` (see the module docstring); ``index`` a CPU LongTensor [num_edges]."""
        if check_phase(phase) == EVALUATION:
            index = alphas.detach().argmax(dim=-1)
            hard = F.one_hot(index, alphas.shape[-1]).to(alphas.dtype)
            return hard, index.cpu()
        while True:
            g = self.noise(alphas.shape).to(device=alphas.device, dtype=alphas.dtype)
            p = F.softmax((F.log_softmax(alphas, dim=-1) + g) / self.tau, dim=-1)
            if bool(torch.isfinite(g).all()) and bool(torch.isfinite(p).all()):
                break
        index = p.detach().argmax(dim=-1)
        one_hot = torch.zeros_like(p).scatter_(-1, index.unsqueeze(-1), 1.0)
        return one_hot - p.detach() + p, index.cpu()

    def weights(self, alphas: torch.Tensor, phase: str) -> torch.Tensor:
        """The straight-through weights of one sample (``sample(a, phase)[0]``)."""
        return self.sample(alphas, phase)[0]

    def strengths(self, alphas: torch.Tensor) -> torch.Tensor:
        """``softmax(a)``, detached, on the CPU, at least float32."""
        a = alphas.detach().cpu()
        if a.dtype in (torch.float16, torch.bfloat16):
            a = a.float()
        return F.softmax(a, dim=-1)

    def state_dict(self) -> Dict[str, Any]:
        return {"tau": self.tau, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tau = float(state["tau"])
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu())


__all__ = ["Gumbel"]
