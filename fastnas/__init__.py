"""fastnas: gradient-based neural architecture search (DARTS, ENAS) for PyTorch."""
from . import enas, genotypes
from .architect import Architect
from .config import DARTSConfig
from .darts import DARTSOptimizer
from .enas import ENASConfig, ENASOptimizer, MacroArch, MacroNetwork
from .genotypes import Genotype
from .networks import NetworkCIFAR, NetworkImageNet
from .ops import OPS, PRIMITIVES
from .supernet import MixedOp, Network, SearchCell

__version__ = "0.1.0"

__all__ = [
    "Architect", "DARTSConfig", "DARTSOptimizer", "ENASConfig", "ENASOptimizer", "Genotype",
    "MacroArch", "MacroNetwork", "MixedOp", "Network", "NetworkCIFAR", "NetworkImageNet", "OPS",
    "PRIMITIVES", "SearchCell", "enas", "genotypes",
]
