"""The NAS-Bench-201 cell as a search space of the space layer (``fastnas.space.CellSpace``).

NB201's cell has one input (node 0) and three computed nodes; node ``j`` sums ``op_ij(node_i)``
over every ``i < j``. As a ``CellSpace``: ``num_inputs=1``, ``num_nodes=3``, so its edges, node
by node and each node's from state 0 up, are (1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2):
``NB201_EDGES``, the benchmark's order, and the rows of the one alpha matrix ``[6, 5]`` (columns
in ``NB201_OPS`` order). Every search cell of the network shares that matrix (xautodl's
``arch_parameters``): one cell type, ``"cell"``. The cell's output is its last node
(``multiplier=1``).

Derivation is the benchmark's: every edge is kept (``keep=None``) with its strongest op, ``none``
included (``never_derived=()``), ties to the first op; the architecture is an ``NB201Cell``.
"""
from __future__ import annotations

from typing import List, Mapping, Tuple

from ..space import CellSpace
from .cell import NB201_OPS, NB201Cell

CELL_TYPE = "cell"


def _nb201_architecture(space: CellSpace, cells: Mapping[str, Tuple[list, List[int]]]
                        ) -> NB201Cell:
    gene, _ = cells[CELL_TYPE]
    return NB201Cell(tuple(op for op, _ in gene))


def nb201_space() -> CellSpace:
    """NAS-Bench-201's cell space (see the module docstring); it derives an ``NB201Cell``."""
    return CellSpace(ops=NB201_OPS, num_nodes=3, num_inputs=1, keep=None,
                     cell_types=(CELL_TYPE,), multiplier=1, never_derived=(),
                     architecture=_nb201_architecture)


def is_nb201_space(space: CellSpace) -> bool:
    """Whether ``space`` is NB201's (compared as data: ops, shape, derivation)."""
    return space == nb201_space()


__all__ = ["CELL_TYPE", "is_nb201_space", "nb201_space"]
