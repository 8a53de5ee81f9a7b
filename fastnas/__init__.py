"""fastnas: gradient-based neural architecture search (DARTS, ENAS) for PyTorch.

The layers, each importing only the ones below it (checked by import-linter, see
``pyproject.toml``)::

    cli                      the ``fastnas`` command line
    tune                     DARTS/ENAS, then Bayesian optimization (Optuna, optional)
    pipeline, profiling,     stage runners (search, train) with checkpoints and metrics, the
      paper                  search-step profile, the DARTS paper's checkpoints
    reports                  alpha history, figures, Graphviz cells, TensorBoard
    darts | enas | training  the search strategies and final training
    supernet | networks      the DARTS supernet (reference and fast) and the final networks;
      | choice               Choice and InputChoice, the mixed ops of a search in your own model
    space                    the cell space, the relaxation, the architecture parameters
    genotypes                discrete architectures
    ops                      candidate ops as modules, the cell plan, fused CPU Functions
    kernels                  Triton kernels (``kernels/`` in the repository) and their dispatch
    engine, data, image_folder, checkpoint, config, console, reproducibility, errors
                             shared foundations
"""
import importlib.abc
import importlib.util
import os
import sys
import warnings


class _CheckoutKernels(importlib.abc.MetaPathFinder):
    """Serve ``fastnas.kernels`` from ``<repository>/kernels`` when fastnas is imported from a
    source checkout: ``setup.py`` installs that folder as ``fastnas.kernels``, and a checkout
    (or a second clone next to an installed one) must import its own kernels, not a copy."""

    def __init__(self, folder: str):
        self.folder = folder

    def find_spec(self, name, path=None, target=None):
        if name != __name__ + ".kernels":
            return None
        return importlib.util.spec_from_file_location(
            name, os.path.join(self.folder, "__init__.py"),
            submodule_search_locations=[self.folder])


def _mount_checkout_kernels() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isdir(os.path.join(here, "kernels")):  # an installed wheel: kernels/ is in place
        return
    folder = os.path.join(os.path.dirname(here), "kernels")
    if os.path.isfile(os.path.join(folder, "__init__.py")):
        sys.meta_path.insert(0, _CheckoutKernels(folder))


_mount_checkout_kernels()

from . import data, enas, genotypes  # noqa: E402
from .choice import Choice, InputChoice  # noqa: E402
from .darts import Architect, DARTSConfig, DARTSOptimizer  # noqa: E402
from .enas import ENASConfig, ENASOptimizer, MacroArch, MacroNetwork  # noqa: E402
from .errors import UserError  # noqa: E402
from .genotypes import Genotype  # noqa: E402
from .networks import NetworkCIFAR, NetworkImageNet  # noqa: E402
from .ops import OPS, PRIMITIVES  # noqa: E402
from .paper import load_paper_state_dict  # noqa: E402
from .supernet import FastSearchNetwork, MixedOp, SearchCell, SearchNetwork  # noqa: E402
from .training import (  # noqa: E402
    FinalTrainer,
    TrainConfig,
    count_multiply_adds,
    count_parameters,
    load_model,
    train_genotype,
)

__version__ = "0.2.0"


def __getattr__(name: str):
    if name == "Network":
        warnings.warn("fastnas.Network is deprecated: the DARTS supernet is fastnas.SearchNetwork "
                      "(the final networks are NetworkCIFAR and NetworkImageNet)",
                      DeprecationWarning, stacklevel=2)
        return SearchNetwork
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Architect", "Choice", "DARTSConfig", "DARTSOptimizer", "ENASConfig", "ENASOptimizer",
    "FastSearchNetwork", "FinalTrainer", "Genotype", "InputChoice", "MacroArch", "MacroNetwork",
    "MixedOp",
    "NetworkCIFAR", "NetworkImageNet", "OPS", "PRIMITIVES", "SearchCell", "SearchNetwork",
    "TrainConfig", "UserError", "count_multiply_adds", "count_parameters", "data", "enas",
    "genotypes", "load_model", "load_paper_state_dict", "train_genotype",
]
