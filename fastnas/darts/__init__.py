"""DARTS (Liu et al., ICLR 2019): the bi-level search over a supernet's alphas and weights.

``config.py`` (``DARTSConfig``), ``architect.py`` (the first- and second-order architecture
step), ``precision.py`` (autocast and loss scaling), ``optimizer.py`` (``DARTSOptimizer``).
"""
from .architect import Architect
from .config import DARTSConfig
from .optimizer import DARTSOptimizer
from .precision import Precision

__all__ = ["Architect", "DARTSConfig", "DARTSOptimizer", "Precision"]
