"""NAS-Bench-201 (Dong and Yang, ICLR 2020): its cell space, its final network and its table.

- ``cell.py``: ``NB201Cell``, a frozen value of 6 edge ops, to and from the benchmark's string
  ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` and JSON; ``resolve_cell`` for the command line;
- ``space.py``: ``nb201_space()``, the cell as a ``fastnas.space.CellSpace`` (what the search
  supernets and derivation read);
- ``network.py``: ``NB201Network``, xautodl's ``TinyNetwork`` of a fixed cell (C=16, N=5);
- ``table.py``: the shipped table of the 15,625 cells' test accuracies on CIFAR-10, CIFAR-100
  and ImageNet16-120 (``TABLE.md``: provenance and MIT license, (c) Xuanyi Dong), ``lookup``.

    >>> from fastnas import nb201
    >>> nb201.lookup("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
    ...              "+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|").summary()
    'NB201 table: CIFAR-10 94.37, CIFAR-100 73.22, ImageNet16-120 46.71'
"""
from .cell import NB201_CELLS, NB201_EDGES, NB201_OPS, NB201Cell, resolve_cell
from .network import NB201Network, ResNetBasicBlock
from .space import CELL_TYPE, is_nb201_space, nb201_space
from .table import TABLE_DATASETS, Accuracies, Table, lookup

__all__ = ["Accuracies", "CELL_TYPE", "NB201Cell", "NB201Network", "NB201_CELLS", "NB201_EDGES",
           "NB201_OPS", "ResNetBasicBlock", "TABLE_DATASETS", "Table", "is_nb201_space", "lookup",
           "nb201_space", "resolve_cell"]
