"""Derivation rules beyond the space's own (``CellSpace.derive_cell``), for the methods of
issue 18. ``Derivation(max_skips=, threshold=)`` derives with ``derive(space, strengths)``;
``CellSpace.derive(strengths, derivation)`` and ``ArchitectureParameters.derivation`` use it, so
``genotype()`` and everything that derives from a search follow the rule.

- ``max_skips`` M (P-DARTS; chenxin061/pdarts, ``train_search.py``): in the ``normal`` cell,
  while the derived cell holds more than M ``skip_connect``: among the edges that hold one in
  the derived cell, the one whose skip_connect strength is the smallest loses it (the code
  sets that probability to 0; here it is never derived), so that edge takes its next-best op,
  and the cell is derived again (the edges of each node re-ranked); repeat. The code applies it
  to the last stage's three ops per edge; here to every op of the space.
- ``threshold`` t (FairDARTS; xiaomi-automl/FairDARTS, ``utils.parse``,
  ``parse_method='threshold_sparse'``): the space's rule picks each node's edges and their
  strongest op, and an edge whose strength is below t is dropped. A genotype holds two inputs
  per node, so a dropped edge is written as ``('none', j)``: an input of zeros, which adds
  nothing to the node, as the code's node with fewer inputs (a node can lose both).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple

import torch

SKIP = "skip_connect"
Gene = List[Tuple[str, int]]


@dataclass(frozen=True)
class Derivation:
    """A derivation rule (module docstring); both None: the space's own rule."""

    max_skips: Optional[int] = None
    threshold: Optional[float] = None
    capped: Tuple[str, ...] = ("normal",)   # the cell types ``max_skips`` applies to

    def check(self, space) -> None:
        """A ValueError if the rule does not fit ``space``."""
        if self.max_skips is not None and SKIP not in space.ops:
            raise ValueError(f"max_skips needs a {SKIP} op in the space; its ops: "
                             f"{', '.join(space.ops)}")
        if self.threshold is not None and "none" not in space.ops:
            raise ValueError("threshold writes a dropped edge as 'none', which the space "
                             f"lacks; its ops: {', '.join(space.ops)}")

    def derive_cell(self, space, cell_type: str, strengths: torch.Tensor) -> Gene:
        """The cell of ``strengths`` ``[num_edges, len(ops)]`` under this rule."""
        s = strengths.detach().clone()
        gene = space.derive_cell(s)
        if self.max_skips is not None and cell_type in self.capped:
            skip = space.ops.index(SKIP)
            while sum(op == SKIP for op, _ in gene) > self.max_skips:
                rows = _rows_of(space, gene)
                holders = [r for r, (op, _) in zip(rows, gene) if op == SKIP]
                weakest = min(holders, key=lambda r: float(s[r, skip]))
                s[weakest, skip] = -float("inf")
                gene = space.derive_cell(s)
        if self.threshold is not None:
            rows = _rows_of(space, gene)
            gene = [(op, j) if float(s[r, space.ops.index(op)]) >= self.threshold
                    else ("none", j) for r, (op, j) in zip(rows, gene)]
        return gene

    def derive(self, space, strengths: Mapping[str, torch.Tensor]):
        with torch.no_grad():
            cells = {t: (self.derive_cell(space, t, strengths[t]), space.concat)
                     for t in space.cell_types}
        return space.architecture(space, cells)


def _rows_of(space, gene: Gene) -> List[int]:
    """The alpha row of each ``(op, state)`` of a derived cell, node by node."""
    rows, k = [], 0
    for i in range(space.num_nodes):
        n = space.num_inputs + i if space.keep is None else space.keep
        for _, j in gene[k:k + n]:
            rows.append(space.rows(i).start + j)
        k += n
    return rows


__all__ = ["Derivation", "SKIP"]
