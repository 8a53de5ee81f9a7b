"""The ops layer: the candidate operations as modules (``primitives``), the cell-stack layout
(``plan``), and the fused CPU autograd Functions of the fast supernet (``functional``)."""
from .plan import CellSpec, cell_plan, reduction_layers
from .primitives import (
                         OPS,
                         PRIMITIVES,
                         DilConv,
                         FactorizedReduce,
                         Identity,
                         PoolBN,
                         ReLUConvBN,
                         SepConv,
                         Zero,
                         drop_path,
                         factorized_convs,
                         make_op,
)

__all__ = ["CellSpec", "DilConv", "FactorizedReduce", "Identity", "OPS", "PRIMITIVES",
           "PoolBN", "ReLUConvBN", "SepConv", "Zero", "cell_plan", "drop_path", "factorized_convs",
           "make_op", "reduction_layers"]
