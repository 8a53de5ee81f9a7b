"""Discrete cell spaces for Bayesian optimization, pruned by what a gradient search learned.

Two spaces, one per strategy, each with the same small interface: ``suggest(trial)`` draws a
``Genotype`` through Optuna's ``suggest_categorical``, ``params(genotype)`` is the inverse (the
parameters that make ``suggest`` return that genotype, for ``study.enqueue_trial``),
``contains(genotype)``, ``size`` (how many genotypes the space holds) and ``describe()`` (a JSON
description, stored with the study so that a rerun cannot search another space by mistake).

``EdgeSpace`` (DARTS). From the strengths ``w_e`` of each edge ``e`` that the search's relaxation
gives (``fastnas.space``; DARTS: ``w_e = softmax(alpha_e)``), the ones derivation reads:

    strength(e) = max_{o != none} w_e[o]
    node i:  the top-k incoming edges by strength;    edge e:  the top-m ops by w_e, none excluded

(ties go to the lower index, as the paper's derivation). A genotype picks, per node, 2 of its k
edges and, for each picked edge, one of that edge's m ops; the cell concatenates its last
``multiplier`` nodes. The paper's derivation takes, per node, the 2 strongest edges with their
strongest op: the top of both rankings, so the derived genotype always lies in the pruned space
(k >= 2, m >= 1). ``EdgeSpace.full`` is the whole DARTS cell space (every edge, every op but
``none``), for comparisons.

Parameters, per cell ``c`` and node ``i``: ``c.node{i}.inputs`` (the pair, e.g. ``"0,2"``) and, for
each candidate edge from state ``j``, ``c.node{i}.op{j}``. Every trial draws every parameter,
so the space is the same for all trials (TPE's multivariate mode and the GP sampler model it
whole); the ops of the two edges not picked are drawn and unused.

``DecisionSpace`` (ENAS micro). The controller's decisions per node are two inputs and two ops.
Their marginal probabilities are estimated by sampling the controller: ``p_i(j)`` the frequency
with which node ``i`` reads state ``j`` (either input), ``q_i(o)`` the frequency of op ``o`` (either
op). Node ``i`` keeps its top-k inputs and top-m ops (ties to the lower index), widened by the
choices of the warm-start architectures so that they are always in the space. A genotype picks
``c.node{i}.input_a``, ``input_b`` (repeats allowed, as in ENAS) and ``op_a``, ``op_b``; the cell
concatenates its loose ends, as the ENAS micro space.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..enas.micro import MICRO_OPS, choices_from_genotype, loose_ends
from ..genotypes import Genotype
from ..ops import PRIMITIVES
from ..space import CellSpace, Relaxation, Softmax, darts_space
from ..supernet import num_edges

CELLS = ("normal", "reduce")


def _ranked(scores: Sequence[float], keep: int) -> List[int]:
    """Indices of the ``keep`` largest ``scores``, largest first, ties to the lower index."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:keep]


def _check_k_m(k: Any, m: Any) -> None:
    for name, value, low in (("k", k, 2), ("m", m, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


# -- DARTS ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EdgeNode:
    """One node of an ``EdgeSpace`` cell: candidate edges (input states, strongest first) and,
    per candidate, its ops (strongest first)."""

    inputs: Tuple[int, ...]
    ops: Tuple[Tuple[str, ...], ...]

    def ops_of(self, j: int) -> Tuple[str, ...]:
        return self.ops[self.inputs.index(j)]

    @property
    def pairs(self) -> List[Tuple[int, int]]:
        """The pairs of distinct candidates, each in rank order."""
        return list(itertools.combinations(self.inputs, 2))

    @property
    def size(self) -> int:
        return sum(len(self.ops_of(a)) * len(self.ops_of(b)) for a, b in self.pairs)


def _pair_key(a: int, b: int) -> str:
    return f"{min(a, b)},{max(a, b)}"


class EdgeSpace:
    """The DARTS cell space pruned to top-k edges per node and top-m ops per edge (see the
    module docstring). ``cells`` maps ``normal``/``reduce`` to a list of ``EdgeNode``."""

    kind = "darts-edges"

    def __init__(self, cells: Dict[str, Sequence[EdgeNode]], multiplier: Optional[int] = None):
        self.cells = {c: tuple(cells[c]) for c in CELLS}
        self.num_nodes = len(self.cells["normal"])
        if len(self.cells["reduce"]) != self.num_nodes or self.num_nodes == 0:
            raise ValueError("both cells need the same positive number of nodes")
        self.multiplier = self.num_nodes if multiplier is None else multiplier
        self.concat = list(range(2 + self.num_nodes - self.multiplier, self.num_nodes + 2))

    @classmethod
    def from_alphas(cls, alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, k: int = 3,
                    m: int = 3, multiplier: Optional[int] = None,
                    primitives: Sequence[str] = PRIMITIVES,
                    relaxation: Optional[Relaxation] = None) -> EdgeSpace:
        """The pruned space of two ``[edges, len(primitives)]`` alpha matrices, read through
        ``relaxation`` (default ``Softmax``)."""
        _check_k_m(k, m)
        edges = alphas_normal.shape[0]
        num_nodes = next((n for n in range(1, 64) if num_edges(n) == edges), None)
        if num_nodes is None or tuple(alphas_reduce.shape) != tuple(alphas_normal.shape):
            raise ValueError(f"alphas of shapes {tuple(alphas_normal.shape)} and "
                             f"{tuple(alphas_reduce.shape)} are not the two matrices of a cell")
        relaxation = Softmax() if relaxation is None else relaxation
        space = darts_space(num_nodes, multiplier, primitives)
        return cls.from_strengths(space, {"normal": relaxation.strengths(alphas_normal),
                                          "reduce": relaxation.strengths(alphas_reduce)}, k, m)

    @classmethod
    def from_strengths(cls, space: CellSpace, strengths: Dict[str, torch.Tensor], k: int = 3,
                       m: int = 3) -> EdgeSpace:
        """The pruned space of a DARTS-shaped ``space`` from the relaxation's strengths of each
        cell type (``ArchitectureParameters.strengths()``), walked edge by edge as
        ``space`` walks them."""
        _check_k_m(k, m)
        if space.cell_types != CELLS or space.num_inputs != 2 or space.keep != 2:
            raise ValueError("the pruned edge space needs a DARTS-shaped space (normal and "
                             "reduce cells, two inputs, two edges kept per node)")
        real = [o for o, name in enumerate(space.ops) if name not in space.never_derived]
        cells = {}
        for cell in CELLS:
            weights = strengths[cell][:, real].tolist()
            nodes = []
            for i in range(space.num_nodes):
                block = weights[space.rows(i)]
                inputs = _ranked([max(row) for row in block], k)
                ops = tuple(tuple(space.ops[real[o]] for o in _ranked(block[j], m))
                            for j in inputs)
                nodes.append(EdgeNode(tuple(inputs), ops))
            cells[cell] = nodes
        return cls(cells, space.multiplier)

    @classmethod
    def full(cls, num_nodes: int = 4, multiplier: Optional[int] = None,
             primitives: Sequence[str] = PRIMITIVES) -> EdgeSpace:
        """The whole DARTS cell space: every edge of every node, every op but ``none``."""
        ops = tuple(p for p in primitives if p != "none")
        nodes = [EdgeNode(tuple(range(i + 2)), (ops,) * (i + 2)) for i in range(num_nodes)]
        return cls({"normal": nodes, "reduce": nodes}, multiplier)

    # -- the parameters --------------------------------------------------------------------------
    def suggest(self, trial) -> Genotype:
        """Draw a genotype through ``trial.suggest_categorical`` (every parameter, every time)."""
        cells = {}
        for cell in CELLS:
            edges = []
            for i, node in enumerate(self.cells[cell]):
                pair = trial.suggest_categorical(f"{cell}.node{i}.inputs",
                                                 [_pair_key(a, b) for a, b in node.pairs])
                ops = {j: trial.suggest_categorical(f"{cell}.node{i}.op{j}", list(node.ops_of(j)))
                       for j in node.inputs}
                chosen = {int(s) for s in pair.split(",")}
                edges += [(ops[j], j) for j in node.inputs if j in chosen]  # rank order
            cells[cell] = edges
        return Genotype(normal=cells["normal"], normal_concat=self.concat,
                        reduce=cells["reduce"], reduce_concat=self.concat)

    def params(self, genotype: Genotype) -> Dict[str, Any]:
        """The parameters whose ``suggest`` is ``genotype`` (up to the order of a node's two
        edges); the ops of unpicked edges take their strongest op. ValueError if ``genotype`` is
        outside the space."""
        problem = self._problem(genotype)
        if problem:
            raise ValueError(f"the genotype is outside the pruned space: {problem}")
        params = {}
        for cell in CELLS:
            edges = getattr(genotype, cell)
            for i, node in enumerate(self.cells[cell]):
                (op_a, a), (op_b, b) = edges[2 * i], edges[2 * i + 1]
                params[f"{cell}.node{i}.inputs"] = _pair_key(a, b)
                for j in node.inputs:
                    params[f"{cell}.node{i}.op{j}"] = {a: op_a, b: op_b}.get(j, node.ops_of(j)[0])
        return params

    def contains(self, genotype: Genotype) -> bool:
        return not self._problem(genotype)

    def _problem(self, genotype: Genotype) -> str:
        if not isinstance(genotype, Genotype):
            return f"not a Genotype: {type(genotype).__name__}"
        for cell in CELLS:
            edges = getattr(genotype, cell)
            if len(edges) != 2 * self.num_nodes:
                return f"{cell}: {len(edges) // 2} nodes, the space has {self.num_nodes}"
            if list(getattr(genotype, f"{cell}_concat")) != self.concat:
                return f"{cell}_concat is not {self.concat}"
            for i, node in enumerate(self.cells[cell]):
                (op_a, a), (op_b, b) = edges[2 * i], edges[2 * i + 1]
                if a == b:
                    return f"{cell} node {i} reads state {a} twice"
                for op, j in ((op_a, a), (op_b, b)):
                    if j not in node.inputs:
                        return f"{cell} node {i}: edge from {j} is not among {list(node.inputs)}"
                    if op not in node.ops_of(j):
                        return (f"{cell} node {i}: {op} on the edge from {j} is not among "
                                f"{list(node.ops_of(j))}")
        return ""

    @property
    def size(self) -> int:
        """The number of genotypes in the space."""
        return math.prod(node.size for cell in CELLS for node in self.cells[cell])

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "multiplier": self.multiplier, "size": self.size,
                **{cell: [{"inputs": list(n.inputs), "ops": [list(o) for o in n.ops]}
                          for n in self.cells[cell]] for cell in CELLS}}


# -- ENAS -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecisionNode:
    """One node of a ``DecisionSpace`` cell: candidate inputs and candidate ops, most likely
    first."""

    inputs: Tuple[int, ...]
    ops: Tuple[str, ...]

    @property
    def size(self) -> int:
        return (len(self.inputs) * len(self.ops)) ** 2


class DecisionSpace:
    """The ENAS micro space pruned to the controller's top-k inputs and top-m ops per node (see
    the module docstring). ``cells`` maps ``normal``/``reduce`` to a list of ``DecisionNode``."""

    kind = "enas-decisions"

    def __init__(self, cells: Dict[str, Sequence[DecisionNode]]):
        self.cells = {c: tuple(cells[c]) for c in CELLS}
        self.num_nodes = len(self.cells["normal"])
        if len(self.cells["reduce"]) != self.num_nodes or self.num_nodes == 0:
            raise ValueError("both cells need the same positive number of nodes")

    @classmethod
    def from_samples(cls, samples: Iterable[Genotype], num_nodes: int, k: int = 3, m: int = 3,
                     include: Sequence[Genotype] = ()) -> DecisionSpace:
        """The pruned space of the marginal decision frequencies of ``samples`` (architectures
        drawn from the controller), widened by the choices of ``include``."""
        _check_k_m(k, m)
        inputs = {c: [Counter() for _ in range(num_nodes)] for c in CELLS}
        ops = {c: [Counter() for _ in range(num_nodes)] for c in CELLS}
        count = 0
        for genotype in samples:
            count += 1
            for cell, i, (a, b, op_a, op_b) in _decisions(genotype, num_nodes):
                inputs[cell][i].update((a, b))
                ops[cell][i].update((op_a, op_b))
        if count == 0:
            raise ValueError("no samples to estimate the decision probabilities from")
        included = [{(cell, i): d for cell, i, d in _decisions(g, num_nodes)} for g in include]
        cells = {}
        for cell in CELLS:
            nodes = []
            for i in range(num_nodes):
                top_inputs = _ranked([inputs[cell][i][j] for j in range(i + 2)], k)
                top_ops = _ranked([ops[cell][i][o] for o in range(len(MICRO_OPS))], m)
                for a, b, op_a, op_b in (decisions[(cell, i)] for decisions in included):
                    for chosen, top in (((a, b), top_inputs), ((op_a, op_b), top_ops)):
                        top.extend(dict.fromkeys(c for c in chosen if c not in top))
                nodes.append(DecisionNode(tuple(top_inputs),
                                          tuple(MICRO_OPS[o] for o in top_ops)))
            cells[cell] = nodes
        return cls(cells)

    @classmethod
    def from_controller(cls, optimizer, k: int = 3, m: int = 3, samples: int = 256,
                        seed: int = 0, include: Sequence[Genotype] = ()) -> DecisionSpace:
        """Sample ``samples`` architectures from an ``ENASOptimizer``'s controller (its generator
        reseeded with ``seed``) and prune to their most frequent decisions."""
        if not getattr(optimizer, "micro", False):
            raise ValueError("only the ENAS micro space has cells to tune; this search is macro")
        optimizer.generator.manual_seed(seed)
        drawn = [optimizer.ask() for _ in range(samples)]
        return cls.from_samples(drawn, optimizer.config.num_nodes, k, m, include)

    def suggest(self, trial) -> Genotype:
        cells = {}
        for cell in CELLS:
            edges = []
            for i, node in enumerate(self.cells[cell]):
                p = f"{cell}.node{i}."
                a = trial.suggest_categorical(p + "input_a", list(node.inputs))
                b = trial.suggest_categorical(p + "input_b", list(node.inputs))
                op_a = trial.suggest_categorical(p + "op_a", list(node.ops))
                op_b = trial.suggest_categorical(p + "op_b", list(node.ops))
                edges += [(op_a, a), (op_b, b)]
            cells[cell] = edges
        return _micro_genotype(cells["normal"], cells["reduce"], self.num_nodes)

    def params(self, genotype: Genotype) -> Dict[str, Any]:
        problem = self._problem(genotype)
        if problem:
            raise ValueError(f"the genotype is outside the pruned space: {problem}")
        params = {}
        for cell, i, (a, b, op_a, op_b) in _decisions(genotype, self.num_nodes):
            p = f"{cell}.node{i}."
            params.update({p + "input_a": a, p + "input_b": b, p + "op_a": MICRO_OPS[op_a],
                           p + "op_b": MICRO_OPS[op_b]})
        return params

    def contains(self, genotype: Genotype) -> bool:
        return not self._problem(genotype)

    def _problem(self, genotype: Genotype) -> str:
        try:
            decisions = _decisions(genotype, self.num_nodes)
        except (TypeError, ValueError) as e:
            return str(e)
        for cell, i, (a, b, op_a, op_b) in decisions:
            node = self.cells[cell][i]
            for j in (a, b):
                if j not in node.inputs:
                    return f"{cell} node {i}: input {j} is not among {list(node.inputs)}"
            for o in (op_a, op_b):
                if MICRO_OPS[o] not in node.ops:
                    return f"{cell} node {i}: {MICRO_OPS[o]} is not among {list(node.ops)}"
        return ""

    @property
    def size(self) -> int:
        return math.prod(node.size for cell in CELLS for node in self.cells[cell])

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "size": self.size,
                **{cell: [{"inputs": list(n.inputs), "ops": list(n.ops)}
                          for n in self.cells[cell]] for cell in CELLS}}


def _decisions(genotype: Genotype, num_nodes: int) -> List[Tuple[str, int, Tuple[int, ...]]]:
    """``(cell, node, (input_a, input_b, op_a, op_b))`` of a micro genotype (ValueError or
    TypeError outside the ENAS micro space)."""
    flat = choices_from_genotype(genotype, num_nodes)
    return [(cell, i, tuple(flat[4 * (c * num_nodes + i):][:4]))
            for c, cell in enumerate(CELLS) for i in range(num_nodes)]


def _micro_genotype(normal, reduce, num_nodes: int) -> Genotype:
    return Genotype(normal=normal, normal_concat=loose_ends([j for _, j in normal], num_nodes),
                    reduce=reduce, reduce_concat=loose_ends([j for _, j in reduce], num_nodes))


__all__ = ["CELLS", "DecisionNode", "DecisionSpace", "EdgeNode", "EdgeSpace"]
