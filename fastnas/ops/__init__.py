"""The ops layer: the candidate operations as modules (``primitives``), your own ops
(``registry``: ``register(name, factory)``), the cell-stack layout (``plan``), and the fused CPU
autograd Functions of the fast supernet (``functional``)."""
from .plan import CellSpec, cell_plan, reduction_layers
from .primitives import (
                         OPS,
                         PRIMITIVES,
                         UNKNOWN_OP_HINT,
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
from .registry import RegisteredOp, is_registered, register, registered_ops, unregister

__all__ = ["CellSpec", "DilConv", "FactorizedReduce", "Identity", "OPS", "PRIMITIVES",
           "PoolBN", "ReLUConvBN", "RegisteredOp", "SepConv", "UNKNOWN_OP_HINT", "Zero",
           "cell_plan", "drop_path", "factorized_convs", "is_registered", "make_op",
           "reduction_layers", "register", "registered_ops", "unregister"]
