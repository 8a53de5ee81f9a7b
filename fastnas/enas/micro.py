"""The ENAS micro search space: cells as ``fastnas.Genotype``, and the weight-sharing supergraph.

Node ``i`` of a cell (``i = 0 .. num_nodes - 1``) is ``op_a(state_a) + op_b(state_b)`` with
``a, b`` in ``0 .. i + 1`` (the two cell inputs, then earlier nodes) and ops from ``MICRO_OPS``.
The cell's output concatenates its *loose ends*: the nodes no other node reads. A sampled cell
pair is a ``Genotype`` with ``concat`` = those loose ends, so ``NetworkCIFAR`` trains it.

The supergraph (``MicroSupernet``) has the layout of ``NetworkCIFAR`` (3C stem, ``layers`` cells,
reductions at ``layers // 3`` and ``2 * layers // 3``; for 8 cells this is also the reference's
6 + 2 layout) and one module per (cell, node, input, op), built by ``fastnas.ops.make_op``, so a
child runs the very op definitions its final network will. A forward pass runs the sampled child
only: the chosen op of each chosen input, and nothing else.

The loose ends' channel count varies with the child, so the layers that read a cell's output (the
next cells' preprocessing, the classifier) hold weights for all ``num_nodes`` blocks and use the
columns of the blocks present, which is the reference's ``final_conv`` with gathered rows.

Differences from the reference, all so that a ``Genotype`` means the same thing here and in
``NetworkCIFAR``: the cell output is the loose intermediate nodes (the reference also concatenates
an unused cell input), reduction cells apply their ops with stride 2 on the cell inputs (the
reference reduces the inputs first and runs the cell at stride 1), and there is no auxiliary
head or drop path during the search.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..genotypes import Genotype
from ..ops import cell_plan, factorized_convs, make_op, reduction_layers

MICRO_OPS = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "skip_connect")


def loose_ends(inputs: Sequence[int], num_nodes: int) -> List[int]:
    """States ``2 .. num_nodes + 1`` (the nodes) that no node takes as input, ascending."""
    used = set(inputs)
    return [s for s in range(2, num_nodes + 2) if s not in used]


def genotype_from_choices(choices: Sequence[int], num_nodes: int) -> Genotype:
    """Build the genotype from the controller's flat choices: per cell (normal, then reduce),
    per node ``[input_a, input_b, op_a, op_b]``."""
    cells = []
    for cell in range(2):
        edges = []
        for node in range(num_nodes):
            a, b, op_a, op_b = choices[4 * (cell * num_nodes + node):][:4]
            edges += [(MICRO_OPS[op_a], a), (MICRO_OPS[op_b], b)]
        cells.append((edges, loose_ends([i for _, i in edges], num_nodes)))
    (normal, normal_concat), (reduce, reduce_concat) = cells
    return Genotype(normal=normal, normal_concat=normal_concat, reduce=reduce,
                    reduce_concat=reduce_concat)


def choices_from_genotype(genotype: Genotype, num_nodes: int) -> List[int]:
    """The inverse of ``genotype_from_choices``; raises ValueError for a genotype outside the
    space (other ops, another node count, or a concat that is not the loose ends)."""
    if not isinstance(genotype, Genotype):
        raise TypeError(f"a micro architecture is a fastnas.Genotype, "
                        f"got {type(genotype).__name__}")
    choices = []
    for kind in ("normal", "reduce"):
        edges = getattr(genotype, kind)
        if len(edges) != 2 * num_nodes:
            raise ValueError(f"{kind}: the search space has {num_nodes} nodes, the genotype "
                             f"{len(edges) // 2}")
        for op, _ in edges:
            if op not in MICRO_OPS:
                raise ValueError(f"{kind}: operation {op!r} is not in the micro search space "
                                 f"{list(MICRO_OPS)}")
        concat = list(getattr(genotype, f"{kind}_concat"))
        expected = loose_ends([i for _, i in edges], num_nodes)
        if sorted(concat) != expected:
            raise ValueError(f"{kind}_concat: the micro space concatenates the loose ends "
                             f"{expected}, the genotype has {concat}")
        for node in range(num_nodes):
            (op_a, a), (op_b, b) = edges[2 * node], edges[2 * node + 1]
            choices += [a, b, MICRO_OPS.index(op_a), MICRO_OPS.index(op_b)]
    return choices


def _block_columns(blocks: Sequence[int], width: int, device) -> torch.Tensor:
    return torch.tensor([b * width + k for b in blocks for k in range(width)], device=device)


class BlockInput(nn.Module):
    """Preprocess a cell input made of some of ``num_blocks`` channel blocks of ``width`` each.

    ``ReLU -> 1x1 conv -> BN`` (``ReLUConvBN``), or with ``reduce`` the ``FactorizedReduce`` of
    ``fastnas.ops``, computed with the conv-weight columns of the blocks present.
    """

    def __init__(self, num_blocks: int, width: int, C_out: int, reduce: bool):
        super().__init__()
        self.width = width
        self.reduce = reduce
        C_in = num_blocks * width
        if reduce:
            if C_out % 2:
                raise ValueError(f"a factorized reduction needs an even C_out, got {C_out}")
            self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
            self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        else:
            self.conv = nn.Conv2d(C_in, C_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(C_out)

    def forward(self, x: torch.Tensor, blocks: Sequence[int]) -> torch.Tensor:
        cols = _block_columns(blocks, self.width, x.device)
        x = F.relu(x)
        if not self.reduce:
            return self.bn(F.conv2d(x, self.conv.weight.index_select(1, cols)))
        return self.bn(factorized_convs(x, self.conv_1.weight.index_select(1, cols),
                                        self.conv_2.weight.index_select(1, cols)))


class SharedCell(nn.Module):
    """All candidate edges of one cell: ``edges[node][input][op]``, each with its own weights."""

    def __init__(self, num_nodes: int, C_pp: Tuple[int, int], C_p: Tuple[int, int], C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.num_nodes = num_nodes
        self.reduction = reduction
        self.preprocess0 = BlockInput(*C_pp, C, reduce=reduction_prev)
        self.preprocess1 = BlockInput(*C_p, C, reduce=False)
        self.edges = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleList(make_op(op, C, 2 if reduction and j < 2 else 1, True)
                              for op in MICRO_OPS)
                for j in range(node + 2))
            for node in range(num_nodes))

    def forward(self, s0, blocks0, s1, blocks1, edges, concat) -> torch.Tensor:
        states: Dict[int, torch.Tensor] = {}

        def state(j: int) -> torch.Tensor:
            if j not in states:  # a cell input no node reads is never preprocessed
                states[j] = (self.preprocess0(s0, blocks0) if j == 0
                             else self.preprocess1(s1, blocks1))
            return states[j]

        for node in range(self.num_nodes):
            out = 0
            for op, j in edges[2 * node: 2 * node + 2]:
                out = out + self.edges[node][j][MICRO_OPS.index(op)](state(j))
            states[node + 2] = out
        return torch.cat([states[j] for j in concat], dim=1)


class MicroSupernet(nn.Module):
    """The shared weights of every micro child; ``forward(x, genotype)`` runs that child.

    BatchNorm layers normalize with the batch statistics always, as the reference does during the
    search (it forces ``is_training=True``): running averages taken over different children would
    describe none of them.
    """

    def __init__(self, C: int, num_classes: int, layers: int, num_nodes: int = 5,
                 in_channels: int = 3, stem_multiplier: int = 3):
        super().__init__()
        self.num_nodes = num_nodes
        self.layers = layers
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_stem))
        # a cell's output is described as (number of blocks, block width); the stem is one block
        out_pp = out_p = (1, C_stem)
        self.cells = nn.ModuleList()
        for spec in cell_plan(layers, C):
            self.cells.append(SharedCell(num_nodes, out_pp, out_p, spec.C, spec.reduction,
                                         spec.reduction_prev))
            out_pp, out_p = out_p, (num_nodes, spec.C)
        self.classifier = nn.Linear(num_nodes * spec.C, num_classes)
        self._classifier_width = spec.C
        batch_statistics_only(self)

    @property
    def reduction_layers(self) -> Tuple[int, int]:
        return reduction_layers(self.layers)

    def forward(self, x: torch.Tensor, genotype: Genotype) -> torch.Tensor:
        s = self.stem(x)
        (s0, b0), (s1, b1) = (s, [0]), (s, [0])
        for cell in self.cells:
            if cell.reduction:
                edges, concat = genotype.reduce, genotype.reduce_concat
            else:
                edges, concat = genotype.normal, genotype.normal_concat
            out = cell(s0, b0, s1, b1, edges, concat)
            (s0, b0), (s1, b1) = (s1, b1), (out, [j - 2 for j in concat])
        cols = _block_columns(b1, self._classifier_width, s1.device)
        pooled = F.adaptive_avg_pool2d(s1, 1).flatten(1)
        return F.linear(pooled, self.classifier.weight.index_select(1, cols), self.classifier.bias)


def batch_statistics_only(module: nn.Module) -> None:
    """Make every BatchNorm in ``module`` normalize with the batch statistics, in eval mode too."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


__all__ = ["MICRO_OPS", "MicroSupernet", "SharedCell", "BlockInput", "loose_ends",
           "genotype_from_choices", "choices_from_genotype", "batch_statistics_only"]
