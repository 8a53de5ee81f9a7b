"""A cell search space as data: its ops, its inputs, its nodes, and how derivation reads it.

A cell has ``num_inputs`` input states (DARTS: the two previous cells' outputs ``c_{k-2}``,
``c_{k-1}``) and ``num_nodes`` intermediate nodes. Node ``i`` reads every earlier state: the
inputs and nodes ``0 .. i - 1``, i.e. states ``0 .. num_inputs + i - 1``, one *edge* each. Edges
are numbered node by node (DARTS, 4 nodes: node 0 edges 0-1, node 1 edges 2-4, ...), and edge
``e`` is row ``e`` of each alpha matrix ``[num_edges, len(ops)]``:

    num_edges = sum_{i < num_nodes} (num_inputs + i).

This module holds the one walk over those edges (``edges``, ``rows``, ``readers``) that the
supernets, derivation, the alpha history and tune's pruned space use.

Derivation turns the *strengths* of a cell (``[num_edges, len(ops)]``, what the relaxation
gives, ``fastnas.space.relaxation``) into a discrete cell: per node, the ``keep`` incoming edges
whose strongest op outside ``never_derived`` is strongest (DARTS: 2, ``none`` never chosen; ties
to the lower state), each with that op; ``keep=None`` keeps every edge, in state order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

from ..genotypes import Architecture, Genotype
from ..ops import PRIMITIVES

Gene = List[Tuple[str, int]]


class Edge(NamedTuple):
    """Edge ``row`` of the alpha matrices: from state ``state`` into node ``node``."""

    row: int
    node: int
    state: int


@dataclass(frozen=True)
class CellSpace:
    """The search space of one cell (see the module docstring).

    ``ops``: the candidate ops, in alpha-column order (names of ``fastnas.ops.OPS``).
    ``cell_types``: the cell types that each own an alpha matrix (DARTS: ``normal``,
    ``reduce``; a one-cell space: one type). ``multiplier``: the last nodes a cell
    concatenates (default every node). ``architecture(space, cells)`` builds the derived
    architecture from ``{cell type: (gene, concat)}`` (default a generic ``Architecture``).
    """

    ops: Tuple[str, ...]
    num_nodes: int
    num_inputs: int = 2
    keep: Optional[int] = 2
    cell_types: Tuple[str, ...] = ("normal", "reduce")
    multiplier: Optional[int] = None
    never_derived: Tuple[str, ...] = ("none",)
    architecture: Callable = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "cell_types", tuple(self.cell_types))
        object.__setattr__(self, "never_derived", tuple(self.never_derived))
        if len(self.ops) == 0 or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"a cell space needs distinct ops, got {list(self.ops)}")
        if self.num_nodes < 1 or self.num_inputs < 1:
            raise ValueError(f"a cell needs at least one input and one node, got "
                             f"num_inputs={self.num_inputs}, num_nodes={self.num_nodes}")
        if self.keep is not None and not 1 <= self.keep <= self.num_inputs:
            raise ValueError(f"keep must be in 1..num_inputs ({self.num_inputs}) or None "
                             f"(every edge), got {self.keep}")
        multiplier = self.num_nodes if self.multiplier is None else self.multiplier
        if not 1 <= multiplier <= self.num_nodes:
            raise ValueError(f"multiplier must be in 1..num_nodes ({self.num_nodes}), "
                             f"got {multiplier}")
        object.__setattr__(self, "multiplier", multiplier)
        if not self.cell_types or len(set(self.cell_types)) != len(self.cell_types):
            raise ValueError(f"cell types must be distinct names, got {list(self.cell_types)}")
        if self.architecture is None:
            object.__setattr__(self, "architecture", _generic_architecture)

    # -- the edge walk --------------------------------------------------------------------------
    @property
    def num_states(self) -> int:
        return self.num_inputs + self.num_nodes

    @property
    def num_edges(self) -> int:
        return sum(self.num_inputs + i for i in range(self.num_nodes))

    @property
    def shape(self) -> Tuple[int, int]:
        """The shape of each alpha matrix: ``[num_edges, len(ops)]``."""
        return (self.num_edges, len(self.ops))

    @property
    def edges(self) -> Tuple[Edge, ...]:
        """Every edge, node by node, each node's from state 0 up."""
        out, row = [], 0
        for i in range(self.num_nodes):
            for j in range(self.num_inputs + i):
                out.append(Edge(row, i, j))
                row += 1
        return tuple(out)

    def rows(self, node: int) -> slice:
        """The alpha rows of ``node``'s incoming edges (from states ``0 .. num_inputs+node-1``)."""
        first = sum(self.num_inputs + i for i in range(node))
        return slice(first, first + self.num_inputs + node)

    def readers(self, state: int) -> Tuple[Edge, ...]:
        """The edges that read ``state``, in node order."""
        return tuple(e for e in self.edges if e.state == state)

    @property
    def concat(self) -> List[int]:
        """The states the cell concatenates: its last ``multiplier`` nodes."""
        return list(range(self.num_states - self.multiplier, self.num_states))

    def index(self, op: str) -> int:
        """The alpha column of ``op``; a ValueError naming the space's ops if it has none."""
        try:
            return self.ops.index(op)
        except ValueError:
            raise ValueError(f"operation {op!r} is not in the space; its ops: "
                             f"{', '.join(self.ops)}") from None

    # -- derivation -----------------------------------------------------------------------------
    def derive_cell(self, strengths: torch.Tensor) -> Gene:
        """The discrete cell of ``strengths`` ``[num_edges, len(ops)]`` (module docstring):
        ``[(op, state), ...]`` node by node."""
        masked = strengths.clone()
        for name in self.never_derived:
            if name in self.ops:
                masked[:, self.ops.index(name)] = -float("inf")
        gene = []
        for i in range(self.num_nodes):
            block = masked[self.rows(i)]
            n = self.num_inputs + i
            if self.keep is None:
                chosen = range(n)
            else:
                strength = block.max(dim=1).values.tolist()
                chosen = sorted(range(n), key=lambda j: -strength[j])[:self.keep]
            for j in chosen:
                gene.append((self.ops[int(block[j].argmax())], j))
        return gene

    def derive(self, strengths: Mapping[str, torch.Tensor], derivation=None):
        """The architecture of ``{cell type: strengths}``: ``architecture(space, cells)``;
        ``derivation`` (a ``fastnas.space.derivation.Derivation``) replaces the rule."""
        if derivation is not None:
            return derivation.derive(self, strengths)
        with torch.no_grad():
            cells = {t: (self.derive_cell(strengths[t]), self.concat) for t in self.cell_types}
        return self.architecture(self, cells)

    def check_architecture(self, arch) -> None:
        """A ValueError naming the first op of ``arch`` (cells of ``(op, state)`` pairs) that
        is not one of this space's ops."""
        for cell_type, cell in _cells_of(arch).items():
            for node, edges in enumerate(cell):
                for op, _ in edges:
                    if op not in self.ops:
                        raise ValueError(f"{cell_type} cell, node {node}: operation {op!r} is "
                                         f"not in the space; its ops: {', '.join(self.ops)}")


def _generic_architecture(space: CellSpace, cells: Mapping[str, Tuple[Gene, List[int]]]):
    nodes = {}
    for cell_type, (gene, concat) in cells.items():
        per_node, k = [], 0
        for i in range(space.num_nodes):
            n = space.num_inputs + i if space.keep is None else space.keep
            per_node.append(gene[k:k + n])
            k += n
        nodes[cell_type] = (per_node, concat)
    return Architecture.from_cells(space.num_inputs, nodes)


def _darts_genotype(space: CellSpace, cells):
    (normal, concat), (reduce, _) = cells["normal"], cells["reduce"]
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


def _cells_of(arch) -> Dict[str, List[List[Tuple[str, int]]]]:
    if isinstance(arch, Genotype):
        arch = arch.to_architecture()
    return {t: [list(n) for n in c.nodes] for t, c in arch.cells.items()}


def darts_space(num_nodes: int = 4, multiplier: Optional[int] = None,
                ops: Sequence[str] = PRIMITIVES) -> CellSpace:
    """The DARTS cell space: two inputs, ``num_nodes`` nodes, 2 edges kept per node, a normal
    and a reduction cell, ``none`` never derived; it derives a ``Genotype``."""
    return CellSpace(ops=tuple(ops), num_nodes=num_nodes, num_inputs=2, keep=2,
                     cell_types=("normal", "reduce"), multiplier=multiplier,
                     never_derived=("none",), architecture=_darts_genotype)


__all__ = ["CellSpace", "Edge", "darts_space"]
