"""DARTS (Liu et al., ICLR 2019): the bi-level search over a supernet's alphas and weights.

``config.py`` (``DARTSConfig``), ``architect.py`` (the first- and second-order architecture
step), ``precision.py`` (autocast and loss scaling), ``optimizer.py`` (``DARTSOptimizer``);
``rsps.py``: random search with weight sharing on the same supernets (``RSPSOptimizer``).
"""
from .architect import Architect
from .config import DARTSConfig
from .optimizer import DARTSOptimizer
from .precision import Precision
from .rsps import RSPSConfig, RSPSOptimizer

__all__ = ["Architect", "DARTSConfig", "DARTSOptimizer", "Precision"]
__all__ += ["RSPSConfig", "RSPSOptimizer"]
