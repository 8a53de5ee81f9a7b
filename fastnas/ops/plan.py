"""The macro layout every cell stack shares: which cells reduce, and how channels flow.

A stack of ``layers`` cells (the DARTS supernet, the final CIFAR/ImageNet networks, the ENAS
micro supergraph) puts its two reduction cells at depths ``layers // 3`` and ``2 * layers // 3``;
a reduction cell halves the resolution and doubles the channels of its nodes. Cell ``i`` reads
the outputs of cells ``i - 2`` and ``i - 1`` (the stem's output for the first cells), so the
cell after a reduction must reduce its older input itself (``reduction_prev``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple


def reduction_layers(layers: int) -> Tuple[int, int]:
    """Depths of the two reduction cells: ``(layers // 3, 2 * layers // 3)``."""
    return (layers // 3, 2 * layers // 3)


@dataclass(frozen=True)
class CellSpec:
    """One cell of the stack: its depth, whether it (or the cell before it) reduces, and the
    channel count ``C`` of its nodes."""

    index: int
    reduction: bool
    reduction_prev: bool
    C: int


def cell_plan(layers: int, C: int, stem_reduces: bool = False) -> List[CellSpec]:
    """The cells of a ``layers``-cell stack whose first cells have ``C`` channels per node;
    ``stem_reduces``: the stem's two outputs differ in resolution (the ImageNet stems), so the
    first cell reduces its older input as if it followed a reduction cell.

    Callers keep the channel shuffle themselves, since a cell's output width depends on the
    cell (``C_prev_prev, C_prev = C_prev, cell output channels``).
    """
    reductions = reduction_layers(layers)
    plan, C_curr, reduction_prev = [], C, stem_reduces
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            C_curr *= 2
        plan.append(CellSpec(i, reduction, reduction_prev, C_curr))
        reduction_prev = reduction
    return plan


__all__ = ["CellSpec", "cell_plan", "reduction_layers"]
