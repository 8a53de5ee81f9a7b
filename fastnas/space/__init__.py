"""The space layer, between the ops and the supernets: what is searched, apart from how.

- ``cell``: ``CellSpace``, a cell search space as data (ops, inputs, nodes, edges kept by
  derivation): the one edge walk of the code base, and derivation from strengths;
- ``relaxation``: how alphas become mixing weights (per phase), the strengths every consumer
  reads, and an optional penalty on the validation loss (``Softmax``: DARTS);
- ``gumbel``: ``Gumbel``, GDAS's sampled one-hot relaxation (one op per edge);
- ``uniform``: discrete relaxations, one op per edge as exact one-hot weights (``Uniform``:
  RSPS' uniform cells; ``Fixed``: the cell the alphas hold, ENAS over a cell space);
- ``parameters``: ``ArchitectureParameters``, the alphas of every cell type as one module;
- ``regularizers``: terms on the alphas for the architecture loss (beta-DARTS, FairDARTS);
- ``derivation``: derivation rules beyond the space's own (P-DARTS skip cap, FairDARTS
  threshold).
"""
from .cell import CellSpace, Edge, darts_space
from .gumbel import Gumbel
from .parameters import ArchitectureParameters, attach_state_dict_names
from .relaxation import (
    ARCHITECTURE,
    EVALUATION,
    PHASES,
    WEIGHTS,
    Relaxation,
    Softmax,
    check_phase,
)
from .uniform import Fixed, Uniform, held_cell, hold_cell

__all__ = ["ARCHITECTURE", "ArchitectureParameters", "CellSpace", "EVALUATION", "Edge", "Gumbel",
           "PHASES", "Relaxation", "Softmax", "WEIGHTS", "attach_state_dict_names", "check_phase",
           "darts_space"]

# issue 18: the methods' relaxations, regularizers and derivation rules
from .derivation import Derivation  # noqa: E402
from .regularizers import BetaDecay, Regularizer, ZeroOne  # noqa: E402
from .relaxation import Dirichlet, Sigmoid  # noqa: E402

__all__ += ["BetaDecay", "Derivation", "Dirichlet", "Regularizer", "Sigmoid", "ZeroOne"]
__all__ += ["Fixed", "Uniform", "held_cell", "hold_cell"]
