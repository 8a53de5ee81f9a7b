"""A genotype's cell as a graph: a matplotlib figure, and Graphviz DOT text.

As the DARTS paper's figures: the cell inputs ``c_{k-2}`` and ``c_{k-1}`` on the left, the
intermediate nodes ``0 .. n-1`` in order, the output ``c_{k}`` (the concatenation) on the right;
each edge ``j -> i`` carries the op node ``i`` applies to state ``j``, and the states the cell
concatenates feed ``c_{k}`` by unlabelled grey edges.

The figure is laid out here (``cell_layout``: left to right, one column per node; edges that
skip columns bow outwards so they pass the nodes between; each op label sits on its own edge
where its box lies farthest from the other edges, boxes and labels); the DOT text leaves the
layout to Graphviz (``dot -Tpng cell_normal.dot -o cell_normal.png``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ..genotypes import Genotype
from .alphas import state_name
from .extras import require

INPUT_COLOR, NODE_COLOR, OUTPUT_COLOR = "#b4eeb4", "#add8e6", "#eee8aa"  # graphviz's darkseagreen2,
#                                                                   lightblue, palegoldenrod
OUTPUT = "c_{k}"


def cell_edges(genotype: Genotype, cell: str) -> Tuple[List[Tuple[int, int, str]], List[int]]:
    """``([(state j, node i, op), ...], concatenated states)`` of ``cell`` (normal or reduce)."""
    if cell not in ("normal", "reduce"):
        raise ValueError(f"cell is 'normal' or 'reduce', got {cell!r}")
    edges = getattr(genotype, cell)
    concat = list(getattr(genotype, f"{cell}_concat"))
    return [(j, position // 2, op) for position, (op, j) in enumerate(edges)], concat


def cell_dot(genotype: Genotype, cell: str = "normal") -> str:
    """Graphviz DOT text of ``cell``, laid out left to right."""
    edges, concat = cell_edges(genotype, cell)
    num_nodes = len(edges) // 2
    lines = [f"digraph cell_{cell} {{", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=16];',
             '  edge [fontname="Helvetica", fontsize=12];']
    lines += [f'  "{state_name(j)}" [fillcolor=darkseagreen2];' for j in range(2)]
    lines += [f'  "{i}" [fillcolor=lightblue];' for i in range(num_nodes)]
    lines += [f'  "{state_name(j)}" -> "{i}" [label="{op}"];' for j, i, op in edges]
    lines.append(f'  "{OUTPUT}" [fillcolor=palegoldenrod];')
    lines += [f'  "{state_name(s)}" -> "{OUTPUT}" [color=gray];' for s in concat]
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- the figure -----------------------------------------------------------------------------------
_DX, _BOX_W, _BOX_H = 2.4, 1.0, 0.55
_INPUT_Y = 1.5


def _positions(num_nodes: int) -> List[Tuple[float, float]]:
    """The centres of states 0 .. num_nodes + 1, then of the output: the inputs left, above and
    below the middle line; the nodes and the output on it."""
    pos = [(0.0, _INPUT_Y), (0.0, -_INPUT_Y)]
    pos += [((i + 1) * _DX, 0.0) for i in range(num_nodes + 1)]
    return pos


def _route(src, dst, lane: float, n: int = 100) -> np.ndarray:
    """Points of a cubic Bezier from ``src`` to ``dst`` that leaves ``src`` within half a column,
    runs at height ``lane`` and comes down to ``dst`` in the last half column (so it passes
    above or below the boxes between); ``lane = src.y = dst.y`` is a straight line."""
    p0, p3 = np.asarray(src, float), np.asarray(dst, float)
    p1 = np.array([p0[0] + _DX / 2, lane])
    p2 = np.array([p3[0] - _DX / 2, lane])
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3


def _lanes(edges: List[Tuple[int, int]]) -> List[float]:
    """The height each edge ``(state, target state)`` runs at: from an input, a lane beyond it
    (one per target, fanning outwards); between neighbours, the middle line; otherwise an arc
    above the boxes it passes, one level higher than any arc it overlaps (so neither the arcs
    nor their labels lie on top of each other)."""
    lanes: List[float] = []
    seen, levels = set(), []  # levels: (first, last, level) of the arcs placed
    for j, t in edges:
        again = (j, t) in seen
        seen.add((j, t))
        if j < 2:
            side = 1 if j == 0 else -1
            lanes.append(side * (_INPUT_Y + 0.22 * (t - 2) + 0.4 * again))
        elif t == j + 1 and not again:
            lanes.append(0.0)
        else:
            taken = {lv for a, b, lv in levels if a < t and j < b}
            level = min(lv for lv in range(len(levels) + 1) if lv not in taken)
            levels.append((j, t, level))
            lanes.append(0.75 + 0.35 * level)
    return lanes


def _outside(points: np.ndarray, centre, margin: float = 0.04) -> np.ndarray:
    inside = ((np.abs(points[:, 0] - centre[0]) <= _BOX_W / 2 + margin)
              & (np.abs(points[:, 1] - centre[1]) <= _BOX_H / 2 + margin))
    return ~inside


# An op label is 8-point text; one data unit is 0.75 inch (54 points) in the figure.
_CHAR_W, _LABEL_H, _LABEL_PAD = 0.09, 0.2, 0.05


def label_half_size(text: str) -> Tuple[float, float]:
    """Half the width and height, in data units, of the box an edge label covers."""
    return len(text) * _CHAR_W / 2 + _LABEL_PAD, _LABEL_H / 2 + _LABEL_PAD / 2


def _rect_distance(centre: np.ndarray, half: Tuple[float, float],
                   points: np.ndarray) -> float:
    """The least distance from ``points`` ([N, 2]) to the rectangle ``centre +- half``
    (0 for a point inside)."""
    if len(points) == 0:
        return float("inf")
    dx = np.maximum(np.abs(points[:, 0] - centre[0]) - half[0], 0.0)
    dy = np.maximum(np.abs(points[:, 1] - centre[1]) - half[1], 0.0)
    return float(np.sqrt(dx * dx + dy * dy).min())


def _rect_gap(a: np.ndarray, half_a, b: np.ndarray, half_b) -> float:
    """The distance between two axis-aligned rectangles (0 when they overlap)."""
    dx = max(abs(a[0] - b[0]) - half_a[0] - half_b[0], 0.0)
    dy = max(abs(a[1] - b[1]) - half_a[1] - half_b[1], 0.0)
    return float(np.hypot(dx, dy))


def _place_labels(paths: List[np.ndarray], texts: List[str], others: List[np.ndarray],
                  boxes: List[Tuple[float, float]]) -> List[np.ndarray]:
    """An anchor on each labelled edge ``paths[k]`` for its label ``texts[k]``: among the
    points of the edge's middle 80%, the one whose label box lies farthest from every other
    edge (``paths`` and the unlabelled ``others``), every node box and every label placed
    before it; where no box is clear (a dense cell), the one whose centre lies farthest from
    the other edges; then the point nearest the edge's middle. So a label sits on its own edge,
    away from where another edge crosses or runs close."""
    anchors: List[np.ndarray] = []
    halves = [label_half_size(t) for t in texts]
    box_half = (_BOX_W / 2, _BOX_H / 2)
    for k, path in enumerate(paths):
        obstacles = np.concatenate([p for i, p in enumerate(paths) if i != k] + others
                                   + [np.empty((0, 2))])
        n = len(path)
        best = path[n // 2]
        best_score = (-1.0, -1.0, 0.0)
        for index in range(int(0.1 * n), max(int(0.9 * n), int(0.1 * n) + 1)):
            centre = path[index]
            clear = min([_rect_distance(centre, halves[k], obstacles)]
                        + [_rect_gap(centre, halves[k], np.asarray(b), box_half) for b in boxes]
                        + [_rect_gap(centre, halves[k], a, halves[i])
                           for i, a in enumerate(anchors)])
            centre_clear = min(_rect_distance(centre, (0.0, 0.0), obstacles), 0.6)
            # 0.01 of clearance is not worth leaving the middle for
            score = (round(clear, 2), round(centre_clear, 2), -abs(index - n / 2))
            if score > best_score:
                best, best_score = centre, score
        anchors.append(np.asarray(best, float))
    return anchors


@dataclass
class CellLayout:
    """Where everything of a cell figure goes, in data units: ``positions`` of the states and
    the output (``state_name`` order, output last), each op edge's ``paths[k]`` (points, clipped
    at the boxes) with its label's centre ``labels[k]`` and text ``ops[k]``, and the unlabelled
    edges into the output (``concat_paths``)."""

    positions: List[Tuple[float, float]]
    edges: List[Tuple[int, int]]
    ops: List[str]
    paths: List[np.ndarray]
    labels: List[np.ndarray]
    concat_paths: List[np.ndarray]
    top: float
    bottom: float
    width: float


def cell_layout(genotype: Genotype, cell: str = "normal") -> CellLayout:
    """The layout of :func:`cell_figure` (no matplotlib needed)."""
    edges, concat = cell_edges(genotype, cell)
    num_nodes = len(edges) // 2
    pos = _positions(num_nodes)
    pairs = [(j, i + 2) for j, i, _ in edges]
    lanes = _lanes(pairs)
    paths = []
    for (j, t), lane in zip(pairs, lanes):
        points = _route(pos[j], pos[t], lane)
        paths.append(points[_outside(points, pos[j]) & _outside(points, pos[t])])
    out = len(pos) - 1
    concat_paths = []
    for s in concat:  # below the middle line, out of the labelled edges' way
        lane = -(0.45 + 0.12 * (out - s - 2)) if s != out - 1 else 0.0
        points = _route(pos[s], pos[out], lane if s >= 2 else pos[s][1])
        concat_paths.append(points[_outside(points, pos[s]) & _outside(points, pos[out])])
    ops = [op for _, _, op in edges]
    labels = _place_labels(paths, ops, concat_paths, pos)
    return CellLayout(pos, pairs, ops, paths, labels, concat_paths,
                      top=max(max(lanes), _INPUT_Y) + 0.45,
                      bottom=min(min(lanes), -_INPUT_Y) - 0.45,
                      width=(num_nodes + 1) * _DX)


def cell_figure(genotype: Genotype, cell: str = "normal"):
    """A matplotlib ``Figure`` of ``cell`` (no pyplot, so no global state is touched)."""
    require("matplotlib", "plotting")
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path

    layout = cell_layout(genotype, cell)
    pos, width = layout.positions, layout.width
    top, bottom = layout.top, layout.bottom
    height = top - bottom
    fig = Figure(figsize=(0.75 * (width + 1.6), 0.75 * height + 0.5))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.75 * height / (0.75 * height + 0.5)))
    ax.set_axis_off()
    ax.set_aspect("equal")
    ax.set_xlim(-0.8, width + 0.8)
    ax.set_ylim(bottom, top)
    fig.suptitle(f"{cell} cell", fontsize=13)

    def arrow(points, color, width_pt):
        ax.add_patch(FancyArrowPatch(path=Path(points), arrowstyle="-|>", mutation_scale=11,
                                     color=color, linewidth=width_pt, zorder=1))

    for points, anchor, op in zip(layout.paths, layout.labels, layout.ops):
        arrow(points, "#333333", 1.2)
        ax.text(anchor[0], anchor[1], op, fontsize=8, ha="center", va="center", zorder=3,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9})
    for points in layout.concat_paths:
        arrow(points, "#999999", 0.9)

    num_nodes = len(pos) - 3
    names = [state_name(j) for j in range(num_nodes + 2)] + [OUTPUT]
    colors = [INPUT_COLOR] * 2 + [NODE_COLOR] * num_nodes + [OUTPUT_COLOR]
    for (x, y), name, color in zip(pos, names, colors):
        ax.add_patch(FancyBboxPatch((x - _BOX_W / 2, y - _BOX_H / 2), _BOX_W, _BOX_H,
                                    boxstyle="round,pad=0,rounding_size=0.12", fc=color,
                                    ec="#333333", lw=1.0, zorder=2))
        label = f"${name}$" if name.startswith("c_") else name
        ax.text(x, y, label, ha="center", va="center", fontsize=11, zorder=3)
    return fig


__all__ = ["CellLayout", "cell_dot", "cell_edges", "cell_figure", "cell_layout",
           "label_half_size"]
