"""fastnas: gradient-based neural architecture search (DARTS, ENAS) for PyTorch."""
from . import data, enas, genotypes
from .architect import Architect
from .config import DARTSConfig
from .darts import DARTSOptimizer
from .enas import ENASConfig, ENASOptimizer, MacroArch, MacroNetwork
from .errors import UserError
from .genotypes import Genotype
from .networks import NetworkCIFAR, NetworkImageNet
from .ops import OPS, PRIMITIVES
from .supernet import MixedOp, Network, SearchCell
from .training import (FinalTrainer, TrainConfig, count_multiply_adds, count_parameters,
                       load_model, train_genotype)

__version__ = "0.1.0"

__all__ = [
    "Architect", "DARTSConfig", "DARTSOptimizer", "ENASConfig", "ENASOptimizer", "Genotype",
    "MacroArch", "MacroNetwork", "MixedOp", "Network", "NetworkCIFAR", "NetworkImageNet", "OPS",
    "PRIMITIVES", "SearchCell", "enas", "genotypes", "data", "UserError", "FinalTrainer",
    "TrainConfig", "count_multiply_adds", "count_parameters", "load_model", "train_genotype",
]
