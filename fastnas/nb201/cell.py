"""An NAS-Bench-201 cell as a value: six edges, one op each, and the benchmark's string.

The cell has 4 nodes; node ``j`` is the sum over ``i < j`` of ``op_ij(node_i)``, so it has 6
edges, listed in the benchmark's order ``NB201_EDGES``: (1<-0), (2<-0), (2<-1), (3<-0), (3<-1),
(3<-2). Each edge holds one of the 5 ``NB201_OPS``. The benchmark writes a cell as

    |op_10~0|+|op_20~0|op_21~1|+|op_30~0|op_31~1|op_32~2|

(node 1's edge, then node 2's, then node 3's, each ``op~source``). ``NB201Cell.parse`` reads
exactly that grammar with string operations, never ``eval``, and says what is wrong otherwise.
A cell's ``index`` is its base-5 number ``sum_e NB201_OPS.index(op_e) * 5 ** (5 - e)`` (edge 0 most
significant), so the 15,625 cells are ``NB201Cell.from_index(0 .. 15624)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Sequence, Tuple

import torch

from ..checkpoint import write_json_atomic
from ..genotypes import parse_json, read_architecture_file

NB201_OPS: Tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                              "avg_pool_3x3")
NUM_NODES = 4
# (target, source) of each edge, in the benchmark string's order.
NB201_EDGES: Tuple[Tuple[int, int], ...] = tuple((j, i) for j in range(1, NUM_NODES)
                                                 for i in range(j))
NB201_CELLS = len(NB201_OPS) ** len(NB201_EDGES)  # 15,625
SPACE = "nb201"
MAX_TEXT = 1000  # a cell string is under 150 characters


@dataclass(frozen=True)
class NB201Cell:
    """The op of each of the 6 edges: ``ops[e]`` on edge ``NB201_EDGES[e]``."""

    ops: Tuple[str, ...]

    def __post_init__(self):
        ops = self.ops
        if isinstance(ops, str) or not isinstance(ops, Sequence):
            raise ValueError(f"an NB201 cell takes a sequence of {len(NB201_EDGES)} op names, got "
                             f"{type(ops).__name__}")
        if len(ops) != len(NB201_EDGES):
            raise ValueError(f"an NB201 cell has {len(NB201_EDGES)} edges, got {len(ops)} ops")
        for (target, source), op in zip(NB201_EDGES, ops):
            if op not in NB201_OPS:
                raise ValueError(f"unknown NB201 op {op!r} on edge {target}<-{source}; "
                                 f"known: {', '.join(NB201_OPS)}")
        object.__setattr__(self, "ops", tuple(ops))

    # -- the benchmark's string -----------------------------------------------------------------
    def __str__(self) -> str:
        nodes = []
        for target in range(1, NUM_NODES):
            nodes.append("|" + "|".join(f"{op}~{source}" for (t, source), op
                                        in zip(NB201_EDGES, self.ops) if t == target) + "|")
        return "+".join(nodes)

    def __repr__(self) -> str:
        return f"NB201Cell('{self}')"

    @classmethod
    def parse(cls, text: str) -> NB201Cell:
        """The cell of a benchmark string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (surrounding
        whitespace allowed); a ValueError says what is wrong."""
        if not isinstance(text, str):
            raise ValueError(f"an NB201 cell string must be a string, got {type(text).__name__}")
        if len(text) > MAX_TEXT:
            raise ValueError(f"an NB201 cell string is under {MAX_TEXT} characters, got "
                             f"{len(text)}")
        stripped = text.strip()
        nodes = stripped.split("+")
        if len(nodes) != NUM_NODES - 1:
            raise ValueError(f"NB201 cell {stripped!r}: expected {NUM_NODES - 1} nodes joined "
                             f"by '+', got {len(nodes)}")
        ops = []
        for target, node in enumerate(nodes, start=1):
            if len(node) < 2 or not (node.startswith("|") and node.endswith("|")):
                raise ValueError(f"NB201 cell {stripped!r}: node {target} {node!r} must be "
                                 "written |op~source|...|")
            edges = node[1:-1].split("|")
            if len(edges) != target:
                raise ValueError(f"NB201 cell {stripped!r}: node {target} needs {target} "
                                 f"edge(s), got {len(edges)}")
            for source, edge in enumerate(edges):
                op, tilde, index = edge.partition("~")
                if not tilde or index != str(source):
                    raise ValueError(f"NB201 cell {stripped!r}: edge {edge!r} of node {target} "
                                     f"must be op~{source}")
                if op not in NB201_OPS:
                    raise ValueError(f"NB201 cell {stripped!r}: unknown op {op!r}; known: "
                                     f"{', '.join(NB201_OPS)}")
                ops.append(op)
        return cls(tuple(ops))

    # -- index ----------------------------------------------------------------------------------
    @property
    def index(self) -> int:
        """The base-5 number of the op indices, edge 0 most significant: 0 .. 15624."""
        value = 0
        for op in self.ops:
            value = value * len(NB201_OPS) + NB201_OPS.index(op)
        return value

    @classmethod
    def from_index(cls, index: int) -> NB201Cell:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < NB201_CELLS:
            raise ValueError(f"an NB201 cell index is an integer in 0..{NB201_CELLS - 1}, got "
                             f"{index!r}")
        digits = []
        for _ in NB201_EDGES:
            index, digit = divmod(index, len(NB201_OPS))
            digits.append(NB201_OPS[digit])
        return cls(tuple(reversed(digits)))

    @classmethod
    def all(cls) -> Iterator[NB201Cell]:
        """Every cell of the space, by index."""
        return (cls.from_index(i) for i in range(NB201_CELLS))

    @classmethod
    def derive(cls, weights: Sequence[Sequence[float]]) -> NB201Cell:
        """The benchmark's derivation from architecture weights ``[6, 5]`` (rows in
        ``NB201_EDGES`` order, columns in ``NB201_OPS`` order): per edge the op of the largest
        weight, ``none`` included (ties: the first op); ``nb201_space().derive``."""
        from .space import CELL_TYPE, nb201_space  # the space derives NB201Cells itself

        rows = [list(map(float, row)) for row in weights]
        if len(rows) != len(NB201_EDGES) or any(len(r) != len(NB201_OPS) for r in rows):
            raise ValueError(f"NB201 weights must be {len(NB201_EDGES)} x {len(NB201_OPS)}, got "
                             f"{len(rows)} rows of {sorted({len(r) for r in rows})}")
        return nb201_space().derive({CELL_TYPE: torch.tensor(rows, dtype=torch.float64)})

    def edges(self) -> Iterator[Tuple[int, int, str]]:
        """``(target, source, op)`` per edge, in ``NB201_EDGES`` order."""
        return ((t, s, op) for (t, s), op in zip(NB201_EDGES, self.ops))

    # -- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return {"space": SPACE, "cell": str(self)}

    @classmethod
    def from_dict(cls, data: Any) -> NB201Cell:
        if not isinstance(data, dict):
            raise ValueError(f"NB201 cell JSON must be an object, got {type(data).__name__}")
        if set(data) != {"space", "cell"} or data["space"] != SPACE:
            raise ValueError("NB201 cell JSON must be {\"space\": \"nb201\", \"cell\": "
                             f"\"|...|\"}}, got the keys {sorted(data)}")
        return cls.parse(data["cell"])

    def save(self, path: str) -> None:
        """Write JSON atomically."""
        write_json_atomic(self.to_dict(), path)

    @classmethod
    def load(cls, path: str) -> NB201Cell:
        """Read a cell file: the JSON of ``save``, or the benchmark string as plain text."""
        text = read_architecture_file(path, "NB201 cell")
        if text.lstrip().startswith("{"):
            return cls.from_dict(parse_json(text, "NB201 cell JSON"))
        return cls.parse(text)


def resolve_cell(text: str) -> NB201Cell:
    """A cell from the command line: a benchmark string, a cell file (JSON or text), or a
    folder holding ``genotype.json`` (a search's or a tune's output). Bad input is a
    ValueError naming what was given."""
    if isinstance(text, str) and text.lstrip().startswith("|"):
        return NB201Cell.parse(text)
    path = os.path.join(text, "genotype.json") if os.path.isdir(text) else text
    if not os.path.exists(path):
        raise ValueError(f"{text!r} is neither an NB201 cell string (|op~0|+...) nor a file")
    try:
        return NB201Cell.load(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read NB201 cell file {path}: "
                         f"{getattr(e, 'strerror', None) or e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


__all__ = ["NB201Cell", "NB201_CELLS", "NB201_EDGES", "NB201_OPS", "resolve_cell"]
