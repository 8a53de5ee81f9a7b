"""A NAS-Bench-201 cell as a graph: a matplotlib figure, and Graphviz DOT text.

The benchmark's own picture: the four nodes ``0 .. 3`` left to right (node 0 the cell's input,
node 3 its output), and each of the six edges ``j -> i`` labelled with its op. An edge that
skips nodes bows upwards, the longer the higher, so no edge crosses a node; ``none`` edges are
drawn dashed and grey (they carry nothing).
"""
from __future__ import annotations

from typing import List, Tuple

from ..nb201 import NB201Cell
from .extras import require

INPUT_COLOR, NODE_COLOR, OUTPUT_COLOR = "#b4eeb4", "#add8e6", "#eee8aa"  # as the DARTS cells
_DX, _BOX_W, _BOX_H = 2.6, 0.8, 0.55


def nb201_cell_edges(cell: NB201Cell) -> List[Tuple[int, int, str]]:
    """``[(source j, target i, op), ...]`` in the benchmark's edge order."""
    return [(source, target, op) for target, source, op in cell.edges()]


def nb201_cell_dot(cell: NB201Cell) -> str:
    """Graphviz DOT text of ``cell``, laid out left to right."""
    colors = ["darkseagreen2", "lightblue", "lightblue", "palegoldenrod"]
    lines = ["digraph nb201_cell {", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=16];',
             '  edge [fontname="Helvetica", fontsize=12];']
    lines += [f'  "{n}" [fillcolor={c}];' for n, c in enumerate(colors)]
    for j, i, op in nb201_cell_edges(cell):
        style = ", style=dashed, color=gray" if op == "none" else ""
        lines.append(f'  "{j}" -> "{i}" [label="{op}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def nb201_cell_figure(cell: NB201Cell):
    """A matplotlib ``Figure`` of ``cell`` (no pyplot, so no global state is touched)."""
    require("matplotlib", "plotting")
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig = Figure(figsize=(8.0, 3.0))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.84))
    ax.set_axis_off()
    ax.set_aspect("equal")   # arc3 bends in display space: keep it the data's
    ax.set_xlim(-0.7, 3 * _DX + 0.7)
    ax.set_ylim(-0.6, 1.5)
    fig.suptitle(f"NB201 cell\n{cell}", fontsize=8)
    for j, i, op in nb201_cell_edges(cell):
        span = i - j
        rad = 0.0 if span == 1 else -0.3   # longer chords bow higher at the same rad
        dashed = op == "none"
        ax.add_patch(FancyArrowPatch(
            (j * _DX + _BOX_W / 2, 0.0), (i * _DX - _BOX_W / 2, 0.0),
            connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>", mutation_scale=11,
            color="#999999" if dashed else "#333333", linewidth=1.1,
            linestyle="--" if dashed else "-", zorder=1))
        # the label at the arc's apex: the quadratic Bezier of arc3 peaks at rad * chord / 2
        chord = i * _DX - _BOX_W / 2 - (j * _DX + _BOX_W / 2)
        x, y = (j + i) * _DX / 2, -rad * chord / 2
        ax.text(x, y, op, fontsize=8, ha="center", va="center", zorder=3,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9})
    for n, color in enumerate((INPUT_COLOR, NODE_COLOR, NODE_COLOR, OUTPUT_COLOR)):
        ax.add_patch(FancyBboxPatch((n * _DX - _BOX_W / 2, -_BOX_H / 2), _BOX_W, _BOX_H,
                                    boxstyle="round,pad=0,rounding_size=0.12", fc=color,
                                    ec="#333333", lw=1.0, zorder=2))
        ax.text(n * _DX, 0.0, str(n), ha="center", va="center", fontsize=11, zorder=3)
    return fig


__all__ = ["nb201_cell_dot", "nb201_cell_edges", "nb201_cell_figure"]
