"""Discrete cell architectures (genotypes): a value type, a safe parser, JSON, and published cells.

``Architecture`` is the architecture of any cell space (``fastnas.space``): per cell type, per
node, its ``(op, input state)`` pairs (any number: 2 in the DARTS space, every edge in a
one-cell every-edge space), and the concatenated states. ``Genotype`` is the DARTS space's:

A genotype lists, for the normal and the reduction cell, two ``(op, input)`` pairs per
intermediate node. Node ``i`` (0-based) may read the two cell inputs (indices 0 and 1) or any
earlier node (indices ``2 .. i + 1``); ``*_concat`` lists the states concatenated as the cell's
output. Text is parsed by a small tokenizer and never evaluated.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from .checkpoint import write_json_atomic
from .limits import MAX_FILE_BYTES, MAX_NODES
from .ops import OPS, UNKNOWN_OP_HINT

Edge = Tuple[str, int]


def read_architecture_file(path: str, what: str = "genotype") -> str:
    """The text of an architecture file, or a ValueError if it is over ``MAX_FILE_BYTES``
    (``OSError`` and ``UnicodeDecodeError`` pass through, naming the file)."""
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{what} file {path} is {size} bytes; an architecture file is at most "
                         f"{MAX_FILE_BYTES} bytes")
    with open(path, encoding="utf-8") as f:
        return f.read()


def parse_json(text: str, what: str = "genotype JSON"):
    """``json.loads(text)`` with every failure (syntax, absurd nesting) as a one-line
    ValueError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} does not parse: {e}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to be an architecture") from None

_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")


def _check_cell(kind: str, edges: Sequence[Edge], concat: Sequence[int]) -> None:
    if len(edges) == 0 or len(edges) % 2:
        raise ValueError(f"{kind}: a cell needs two (op, input) pairs per node, got "
                         f"{len(edges)} pairs")
    if len(edges) > 2 * MAX_NODES:
        raise ValueError(f"{kind}: {len(edges) // 2} nodes; a cell has at most {MAX_NODES} "
                         "(fastnas.limits.MAX_NODES)")
    for position, (op, index) in enumerate(edges):
        node = position // 2
        if op not in OPS:
            raise ValueError(f"{kind}: unknown operation {op!r} on node {node}; "
                             f"known: {', '.join(sorted(OPS))}; {UNKNOWN_OP_HINT}")
        if not 0 <= index <= node + 1:
            raise ValueError(f"{kind}: node {node} cannot take input {index} "
                             f"(allowed 0..{node + 1}: the two cell inputs and earlier nodes)")
    num_states = len(edges) // 2 + 2
    if len(concat) == 0:
        raise ValueError(f"{kind}_concat: empty; the cell needs at least one output state")
    for index in concat:
        if not 0 <= index < num_states:
            raise ValueError(f"{kind}_concat: state {index} does not exist "
                             f"(the cell has states 0..{num_states - 1})")
    if len(set(concat)) != len(concat):
        raise ValueError(f"{kind}_concat: repeated state in {list(concat)}")


def _as_edges(kind: str, edges: Iterable) -> Tuple[Edge, ...]:
    out = []
    if isinstance(edges, (str, bytes, dict)) or not hasattr(edges, "__iter__"):
        raise ValueError(f"{kind}: expected a list of (op, input) pairs, got "
                         f"{type(edges).__name__}")
    for item in edges:
        try:
            op, index = item
        except (TypeError, ValueError):
            raise ValueError(f"{kind}: expected (op, input) pairs, got {item!r}") from None
        if not isinstance(op, str):
            raise ValueError(f"{kind}: operation names are strings, got {op!r}")
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"{kind}: input indices are integers, got {index!r}")
        out.append((op, index))
    return tuple(out)


def _as_ints(kind: str, values: Iterable) -> Tuple[int, ...]:
    try:
        out = tuple(values)
    except TypeError:
        raise ValueError(f"{kind}: expected a list of state indices, got {values!r}") from None
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{kind}: state indices are integers, got {v!r}")
    return out


@dataclass(frozen=True)
class Genotype:
    """A searched (or published) pair of cells; immutable, hashable, compared by value."""

    normal: Tuple[Edge, ...]
    normal_concat: Tuple[int, ...]
    reduce: Tuple[Edge, ...]
    reduce_concat: Tuple[int, ...]

    def __post_init__(self):
        for kind in ("normal", "reduce"):
            edges = _as_edges(kind, getattr(self, kind))
            concat = _as_ints(f"{kind}_concat", getattr(self, f"{kind}_concat"))
            _check_cell(kind, edges, concat)
            object.__setattr__(self, kind, edges)
            object.__setattr__(self, f"{kind}_concat", concat)

    # -- text ---------------------------------------------------------------------------------
    def __str__(self) -> str:
        def edges(es):
            return "[" + ", ".join(f"({op!r}, {i})" for op, i in es) + "]"

        return (f"Genotype(normal={edges(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={edges(self.reduce)}, reduce_concat={list(self.reduce_concat)})")

    __repr__ = __str__

    @classmethod
    def parse(cls, text: str) -> Genotype:
        """Parse ``str(genotype)`` or the DARTS code's printed form (``range(a, b)`` concat).

        Raises ValueError naming what is wrong; never evaluates the text.
        """
        if not isinstance(text, str):
            raise ValueError(f"genotype text must be a string, got {type(text).__name__}")
        if len(text) > MAX_FILE_BYTES:
            raise ValueError(f"genotype text of {len(text)} characters; at most {MAX_FILE_BYTES}")
        return cls(**_Parser(text).genotype())

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Genotype:
        if not isinstance(data, dict):
            raise ValueError(f"genotype JSON must be an object, got {type(data).__name__}")
        missing = [f for f in _FIELDS if f not in data]
        extra = sorted(set(data) - set(_FIELDS))
        if missing or extra:
            raise ValueError(f"genotype JSON: missing fields {missing}, unknown fields {extra}")
        return cls(**{f: data[f] for f in _FIELDS})

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        return cls.from_dict(parse_json(text))

    def save(self, path: str) -> None:
        """Write JSON atomically (temp file, then rename)."""
        write_json_atomic(self.to_dict(), path)

    @classmethod
    def load(cls, path: str) -> Genotype:
        """Read a genotype file (at most ``MAX_FILE_BYTES``): JSON, or the printed
        ``Genotype(...)`` text."""
        text = read_architecture_file(path)
        if text.lstrip().startswith("{"):
            return cls.from_json(text)
        return cls.parse(text)

    @property
    def num_nodes(self) -> int:
        return len(self.normal) // 2

    # -- as the architecture of a space ---------------------------------------------------------
    def to_architecture(self) -> Architecture:
        """The same cells as a generic ``Architecture`` (two inputs per node)."""
        cells = {}
        for kind in CELL_KINDS:
            edges = getattr(self, kind)
            nodes = tuple(edges[2 * i:2 * i + 2] for i in range(len(edges) // 2))
            cells[kind] = CellArchitecture(nodes, getattr(self, f"{kind}_concat"))
        return Architecture(cells, num_inputs=2)

    @classmethod
    def from_architecture(cls, arch: Architecture) -> Genotype:
        """The genotype of a DARTS-space ``Architecture`` (normal and reduce cells, two inputs,
        two edges per node); a ValueError says what does not fit."""
        if sorted(arch.cells) != ["normal", "reduce"] or arch.num_inputs != 2 or any(
                len(n) != 2 for c in arch.cells.values() for n in c.nodes):
            raise ValueError("a Genotype needs a normal and a reduce cell with two inputs and "
                             "two edges per node")
        return cls(**{f: ([e for n in arch.cells[f].nodes for e in n] if f in CELL_KINDS
                          else arch.cells[f.split("_")[0]].concat) for f in _FIELDS})


CELL_KINDS = ("normal", "reduce")


@dataclass(frozen=True)
class CellArchitecture:
    """One cell: ``nodes[i]`` the ``(op, state)`` pairs node ``i`` sums, ``concat`` its output
    states."""

    nodes: Tuple[Tuple[Edge, ...], ...]
    concat: Tuple[int, ...]


class Architecture:
    """The architecture of a cell space: ``cells`` maps each cell type to a
    ``CellArchitecture``; node ``i`` of a cell may read states ``0 .. num_inputs + i - 1`` (the
    inputs, then earlier nodes). Immutable, compared by value, JSON by ``to_dict``."""

    def __init__(self, cells: Mapping[str, Any], num_inputs: int):
        if isinstance(num_inputs, bool) or not isinstance(num_inputs, int) or num_inputs < 1:
            raise ValueError(f"num_inputs must be a positive integer, got {num_inputs!r}")
        if not isinstance(cells, Mapping) or not cells:
            raise ValueError("an architecture needs at least one cell")
        out = {}
        for kind, cell in cells.items():
            if not isinstance(kind, str):
                raise ValueError(f"cell types are names, got {kind!r}")
            nodes, concat = ((cell.nodes, cell.concat) if isinstance(cell, CellArchitecture)
                             else cell)
            nodes = tuple(_as_edges(f"{kind} node {i}", n) for i, n in enumerate(nodes))
            concat = _as_ints(f"{kind} concat", concat)
            for i, edges in enumerate(nodes):
                if not edges:
                    raise ValueError(f"{kind}: node {i} has no inputs")
                for _, j in edges:
                    if not 0 <= j < num_inputs + i:
                        raise ValueError(f"{kind}: node {i} cannot take input {j} (allowed "
                                         f"0..{num_inputs + i - 1})")
            states = num_inputs + len(nodes)
            if not concat or len(set(concat)) != len(concat) or not all(
                    0 <= c < states for c in concat):
                raise ValueError(f"{kind} concat: {list(concat)} is not a set of states "
                                 f"0..{states - 1}")
            out[kind] = CellArchitecture(nodes, concat)
        self.cells: Dict[str, CellArchitecture] = out
        self.num_inputs = num_inputs

    @classmethod
    def from_cells(cls, num_inputs: int, cells: Mapping[str, Any]) -> Architecture:
        return cls(cells, num_inputs)

    def ops(self) -> List[str]:
        """Every op name used, in order of appearance."""
        return list(dict.fromkeys(op for c in self.cells.values() for n in c.nodes
                                  for op, _ in n))

    def check_ops(self, ops: Sequence[str]) -> None:
        """A ValueError naming the first op not in ``ops`` (the space's ops)."""
        for op in self.ops():
            if op not in ops:
                raise ValueError(f"unknown operation {op!r}; the space's ops: {', '.join(ops)}")

    def to_dict(self) -> dict:
        return {"num_inputs": self.num_inputs,
                "cells": {k: {"nodes": [[[op, j] for op, j in n] for n in c.nodes],
                              "concat": list(c.concat)} for k, c in self.cells.items()}}

    @classmethod
    def from_dict(cls, data: Any) -> Architecture:
        if not isinstance(data, dict) or sorted(data) != ["cells", "num_inputs"]:
            raise ValueError("architecture JSON must be an object with 'num_inputs' and 'cells'")
        cells = data["cells"]
        if not isinstance(cells, dict) or not all(
                isinstance(c, dict) and sorted(c) == ["concat", "nodes"] for c in cells.values()):
            raise ValueError("architecture JSON: each cell is {'nodes': [...], 'concat': [...]}")
        return cls({k: (c["nodes"], c["concat"]) for k, c in cells.items()}, data["num_inputs"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        return cls.from_dict(parse_json(text, "architecture JSON"))

    def __eq__(self, other) -> bool:
        return isinstance(other, Architecture) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"Architecture({self.to_json()})"


class _Parser:
    """Recursive descent over the tokens of ``Genotype(field=value, ...)``."""

    _TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_]\w*)|(?P<int>-?\d+)"
                        r"|(?P<str>'[^'\\]*'|\"[^\"\\]*\")|(?P<punct>[()\[\],=]))")

    def __init__(self, text: str):
        self.tokens: List[Tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = self._TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise ValueError(f"genotype text: unexpected character {text[pos]!r} at {pos}")
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.i = 0

    def _peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "")

    def _take(self, kind, value=None):
        tok = self._peek()
        if tok[0] != kind or (value is not None and tok[1] != value):
            want = value if value is not None else kind
            got = tok[1] if tok[0] != "end" else "end of text"
            raise ValueError(f"genotype text: expected {want!r}, got {got!r}")
        self.i += 1
        return tok[1]

    def genotype(self) -> dict:
        self._take("name", "Genotype")
        self._take("punct", "(")
        fields = {}
        while self._peek() != ("punct", ")"):
            name = self._take("name")
            if name not in _FIELDS:
                raise ValueError(f"genotype text: unknown field {name!r}")
            if name in fields:
                raise ValueError(f"genotype text: field {name!r} given twice")
            self._take("punct", "=")
            fields[name] = self._edges() if name in ("normal", "reduce") else self._concat()
            if self._peek() == ("punct", ","):
                self.i += 1
            elif self._peek() != ("punct", ")"):
                self._take("punct", ",")
        self._take("punct", ")")
        if self._peek()[0] != "end":
            raise ValueError(f"genotype text: trailing text after ')': {self._peek()[1]!r}")
        missing = [f for f in _FIELDS if f not in fields]
        if missing:
            raise ValueError(f"genotype text: missing fields {missing}")
        return fields

    def _list(self, item):
        self._take("punct", "[")
        out = []
        while self._peek() != ("punct", "]"):
            out.append(item())
            if self._peek() == ("punct", ","):
                self.i += 1
            elif self._peek() != ("punct", "]"):
                self._take("punct", ",")
        self._take("punct", "]")
        return out

    def _int(self):
        return int(self._take("int"))

    def _edge(self):
        self._take("punct", "(")
        op = self._take("str")[1:-1]
        self._take("punct", ",")
        index = self._int()
        if self._peek() == ("punct", ","):
            self.i += 1
        self._take("punct", ")")
        return (op, index)

    def _edges(self):
        return self._list(self._edge)

    def _concat(self):
        if self._peek() == ("name", "range"):
            self.i += 1
            self._take("punct", "(")
            start = self._int()
            self._take("punct", ",")
            stop = self._int()
            self._take("punct", ")")
            return list(range(start, stop))
        return self._list(self._int)


DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5],
)

DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)

DARTS = DARTS_V2

NASNet = Genotype(
    normal=[("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
            ("sep_conv_3x3", 1), ("skip_connect", 1)],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
            ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
            ("sep_conv_3x3", 2), ("max_pool_3x3", 1)],
    reduce_concat=[4, 5, 6],
)

AmoebaNet = Genotype(
    normal=[("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
            ("skip_connect", 0), ("avg_pool_3x3", 1)],
    normal_concat=[4, 5, 6],
    reduce=[("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
            ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)],
    reduce_concat=[3, 4, 6],
)

PUBLISHED = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "NASNet": NASNet, "AmoebaNet": AmoebaNet}


def by_name(name: str) -> Genotype:
    """A published genotype by name (``DARTS_V1``, ``DARTS_V2``, ``NASNet``, ``AmoebaNet``)."""
    try:
        return PUBLISHED[name]
    except KeyError:
        raise ValueError(f"unknown published genotype {name!r}; known: "
                         f"{', '.join(PUBLISHED)}") from None
