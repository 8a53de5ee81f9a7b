"""Discrete relaxations: one op per edge, as exact one-hot weights, for the sampling methods.

Random search with weight sharing (RSPS, Li & Talwalkar 2019) and ENAS over a cell space train
the supernet's weights on one *cell* at a time (one op per edge) and never train the alphas.
These relaxations give the supernet that cell as exact one-hot mixing weights

    w_e,k = 1 if k = c_e else 0,

with the index ``c`` (a CPU ``LongTensor`` ``[num_edges]``) in ``ArchitectureParameters.selected``
so that a supernet that honours it runs only the selected op of each edge (one that computes
every op gets the same result: the others are multiplied by an exact 0). The weights are
constants: no gradient reaches the alphas.

The alphas serve as the *holder* of a fixed cell: the cell of a cell type is the argmax of its
alpha rows, ``c_e = argmax_k a_e,k``, which ``hold_cell`` sets (``a = onehot(c)``) and
``held_cell`` reads. So a held cell is in the model's ``state_dict``, and the space's derivation
(``CellSpace.derive`` of the strengths ``onehot(argmax a)``) turns it into the space's
architecture (NB201: the benchmark cell; the DARTS space keeps its top-2 edges per node).

- ``Fixed``: the held cell in every phase (ENAS: the strategy holds the controller's sample).
- ``Uniform(seed)``: in the training phases (``WEIGHTS``, ``ARCHITECTURE``) a fresh cell per
  forward pass and cell type, each ``c_e`` uniform over the ops, independent across edges, from
  its own CPU ``torch.Generator`` seeded by ``seed`` (so every rank of a distributed run draws
  the same cells, and nothing else that draws random numbers changes them); in the
  ``EVALUATION`` phase (eval mode) the held cell, which is how RSPS scores a chosen cell. Its
  ``state_dict`` holds the generator's state, so a resumed search draws the same cells.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .relaxation import EVALUATION, Relaxation


def one_hot(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``onehot(index)`` ``[num_edges, num_ops]`` in ``like``'s dtype and device (no grad)."""
    return F.one_hot(index.to(like.device), like.shape[-1]).to(like.dtype)


class Fixed(Relaxation):
    """The held cell (module docstring): ``w = onehot(argmax a)`` and its index, every phase."""

    name = "fixed"
    what = "one-hot of the cell the alphas hold"

    def weights(self, alphas: torch.Tensor, phase: str) -> torch.Tensor:
        return one_hot(alphas.detach().argmax(dim=-1), alphas)

    def sample(self, alphas: torch.Tensor, phase: str
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        index = alphas.detach().argmax(dim=-1)
        return one_hot(index, alphas), index.cpu()


class Uniform(Fixed):
    """RSPS' sampling (module docstring): a uniform cell per training forward pass, the held
    cell in evaluation; ``seed`` seeds its own CPU generator."""

    name = "uniform"
    what = "one-hot of the cell the alphas hold (training passes draw uniform cells)"

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def draw(self, num_edges: int, num_ops: int) -> torch.Tensor:
        """One uniform cell: ``[num_edges]`` op indices, from the generator."""
        return torch.randint(num_ops, (num_edges,), generator=self.generator)

    def sample(self, alphas: torch.Tensor, phase: str
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if phase == EVALUATION:
            return super().sample(alphas, phase)
        index = self.draw(*alphas.shape)
        return one_hot(index, alphas), index

    def state_dict(self) -> Dict[str, Any]:
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.seed = int(state.get("seed", self.seed))
            self.generator.set_state(state["generator"])


def hold_cell(arch, cells: Mapping[str, Sequence[int]]) -> None:
    """Make ``arch`` (``ArchitectureParameters``) hold ``{cell type: op index per edge}``: its
    alphas become ``onehot(c)``. A ValueError names a cell type, length or index that does not
    fit the space."""
    space = arch.space
    for t, index in cells.items():
        if t not in space.cell_types:
            raise ValueError(f"no cell type {t!r}; the space has {list(space.cell_types)}")
        index = torch.as_tensor(list(index), dtype=torch.long)
        if index.shape != (space.num_edges,):
            raise ValueError(f"a {t} cell has {space.num_edges} edges, got {index.numel()} ops")
        if index.numel() and not 0 <= int(index.min()) <= int(index.max()) < len(space.ops):
            raise ValueError(f"op indices must be in 0..{len(space.ops) - 1}, got "
                             f"{index.tolist()}")
        alphas = getattr(arch, f"alphas_{t}")
        with torch.no_grad():
            alphas.copy_(one_hot(index, alphas))


def held_cell(arch) -> Dict[str, Tuple[int, ...]]:
    """``{cell type: op index per edge}``: the cell ``arch``'s alphas hold (their argmax)."""
    return {t: tuple(a.detach().argmax(dim=-1).tolist()) for t, a in arch.by_type().items()}


__all__ = ["Fixed", "Uniform", "held_cell", "hold_cell", "one_hot"]
