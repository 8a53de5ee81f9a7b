"""The architecture parameters of a supernet as one module.

``ArchitectureParameters(space, relaxation)`` owns one alpha matrix per cell type of the space,
registered as ``alphas_<type>`` (DARTS: ``alphas_normal``, ``alphas_reduce``, each
``[num_edges, len(ops)]``, initialized ``1e-3 * randn`` in that order), and the relaxation that
turns them into mixing weights. It keeps the phase (``fastnas.space.relaxation``) the next
forward passes run in: the architect runs its passes inside ``phase(ARCHITECTURE)``; a module
in eval mode mixes in the ``EVALUATION`` phase.

With ``edge_normalization`` (PC-DARTS), it also owns one edge vector per cell type, registered
as ``betas_<type>`` (``[num_edges]``, initialized ``1e-3 * randn`` after all the alphas, as the
official code): node ``i`` weighs its incoming edge ``e`` by

    b_e = exp(beta_e) / sum_{e' into node i} exp(beta_e')        (``edge_weights``)

and derivation ranks edges by ``strength_e,k * b_e`` (``strengths``: the relaxation's strengths
scaled per edge, so ``max_k`` over the ops that may be derived is PC-DARTS's edge score
``max_{k != none} softmax(a)_e,k * b_e``; the op chosen on an edge does not change). The betas
are in ``alphas()`` (after the alphas), so the architecture optimizer steps them.

A supernet holds it as its ``arch`` submodule and names the alphas (and betas) in its
``state_dict`` without that prefix (``attach_state_dict_names``), so checkpoints, the paper's
checkpoints and the paper-equivalence keep their ``alphas_normal`` / ``alphas_reduce`` keys.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.nn as nn

from .cell import CellSpace
from .relaxation import EVALUATION, WEIGHTS, Relaxation, Softmax, check_phase


class ArchitectureParameters(nn.Module):
    """The alphas of every cell type, the relaxation and the current phase."""

    def __init__(self, space: CellSpace, relaxation: Optional[Relaxation] = None,
                 edge_normalization: bool = False):
        super().__init__()
        self.space = space
        self.relaxation = Softmax() if relaxation is None else relaxation
        self.cell_types = space.cell_types
        self.current_phase = WEIGHTS
        # {cell type: index or None} of the last ``mixing`` call (``Relaxation.sample``).
        self.selected: Dict[str, Optional[torch.Tensor]] = {t: None for t in space.cell_types}
        # issue 18: a hook ``(mixing, phase) -> mixing`` on every pass's weights (SDARTS,
        # fastnas.darts.perturbation), and the derivation rule (fastnas.space.derivation)
        self.perturbation: Optional[Callable] = None
        self.derivation = None
        for t in self.cell_types:
            self.register_parameter(f"alphas_{t}", nn.Parameter(1e-3 * torch.randn(space.shape)))
        self.edge_normalization = bool(edge_normalization)
        if self.edge_normalization:
            for t in self.cell_types:
                self.register_parameter(f"betas_{t}",
                                        nn.Parameter(1e-3 * torch.randn(space.num_edges)))

    def alphas(self) -> List[nn.Parameter]:
        """The alpha matrices in cell-type order, then (edge normalization) the betas."""
        out = [getattr(self, f"alphas_{t}") for t in self.cell_types]
        if self.edge_normalization:
            out += [getattr(self, f"betas_{t}") for t in self.cell_types]
        return out

    def edge_weights(self) -> Optional[Dict[str, torch.Tensor]]:
        """``{cell type: b}`` (``[num_edges]``, a softmax per node over its incoming edges; see
        the module docstring), or None without edge normalization."""
        if not self.edge_normalization:
            return None
        return {t: node_softmax(getattr(self, f"betas_{t}"), self.space)
                for t in self.cell_types}

    def by_type(self) -> Dict[str, torch.Tensor]:
        return {t: getattr(self, f"alphas_{t}") for t in self.cell_types}

    @contextlib.contextmanager
    def phase(self, phase: str) -> Iterator[None]:
        """Forward passes inside run in ``phase`` (training mode; eval mode is ``EVALUATION``)."""
        before, self.current_phase = self.current_phase, check_phase(phase)
        try:
            yield
        finally:
            self.current_phase = before

    def mixing(self, training: bool = True) -> Dict[str, torch.Tensor]:
        """``{cell type: weights}`` for one forward pass, from ``relaxation.sample(alphas,
        phase)``; the sampled op indices (or None: every op) are left in ``selected``."""
        phase = self.current_phase if training else EVALUATION
        out = {}
        for t, a in self.by_type().items():
            out[t], self.selected[t] = self.relaxation.sample(a, phase)
        if self.perturbation is not None:
            out = self.perturbation(out, phase)
        return out

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """The relaxation's schedules at the start of epoch ``epoch`` (0-based)."""
        self.relaxation.set_epoch(epoch, total_epochs)

    def strengths(self) -> Dict[str, torch.Tensor]:
        """``{cell type: relaxation.strengths(alphas)}``: what derivation, the alpha history,
        the plots and tune read; with edge normalization each row scaled by its edge weight
        (the module docstring)."""
        out = {t: self.relaxation.strengths(a) for t, a in self.by_type().items()}
        if self.edge_normalization:
            with torch.no_grad():
                for t, b in self.edge_weights().items():
                    out[t] = out[t] * b.detach().cpu().to(out[t].dtype).unsqueeze(1)
        return out

    def penalty(self) -> Optional[torch.Tensor]:
        """The relaxation's term on the validation loss, or None."""
        return self.relaxation.penalty(self.by_type())

    def derive(self):
        """The space's architecture from the current strengths."""
        return self.space.derive(self.strengths(), self.derivation)


def node_softmax(betas: torch.Tensor, space: CellSpace) -> torch.Tensor:
    """``[num_edges]``: ``softmax(betas[rows(i)])`` for every node ``i``, concatenated (each
    node's incoming edges share one simplex; PC-DARTS's edge normalization)."""
    return torch.cat([torch.softmax(betas[space.rows(i)], dim=-1)
                      for i in range(space.num_nodes)])


_OWN = ("alphas_", "betas_")


def attach_state_dict_names(module: nn.Module, child: str = "arch") -> None:
    """``module.state_dict()`` names ``child.alphas_*`` (and ``child.betas_*``) as ``alphas_*``
    (``betas_*``) and ``load_state_dict`` reads them back under that name (see the module
    docstring)."""
    inner = tuple(f"{child}.{own}" for own in _OWN)

    def save(mod, state, prefix, local_metadata) -> None:
        # The module's own keys are the last ones so far; put the alphas first among them, where
        # a module's own parameters go (the order of checkpoints written before this layer).
        section = [(k, state.pop(k)) for k in [k for k in state if k.startswith(prefix)]]
        mine = tuple(prefix + i for i in inner)
        for key, value in section:
            if key.startswith(mine):
                state[prefix + key[len(prefix) + len(child) + 1:]] = value
        for key, value in section:
            if not key.startswith(mine):
                state[key] = value

    def load(mod, state, prefix, *args):
        for key in [k for k in state if k.startswith(tuple(prefix + o for o in _OWN))]:
            state[prefix + f"{child}." + key[len(prefix):]] = state.pop(key)

    module.register_state_dict_post_hook(save)
    module.register_load_state_dict_pre_hook(load)


__all__ = ["ArchitectureParameters", "attach_state_dict_names", "node_softmax"]
