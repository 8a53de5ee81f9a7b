"""ENAS (Pham et al., ICML 2018): an LSTM controller trained by REINFORCE samples children of a
weight-sharing supergraph, in the micro (cells, ``fastnas.Genotype``) or the macro (whole
networks, ``MacroArch``) search space; ``cells``: ENAS over a cell space (``CellSpace``: one
decision per edge, its op; NAS-Bench-201's ENAS baseline) on the DARTS-style supernets.
"""

from ..genotypes import Genotype, parse_json, read_architecture_file
from .cells import CellController, CellENASConfig, CellENASOptimizer
from .config import SEARCH_SPACES, ENASConfig
from .controller import MacroController, MicroController
from .macro import MACRO_OPS, MacroArch, MacroNetwork, MacroSupernet
from .micro import MICRO_OPS, MicroSupernet
from .optimizer import ENASOptimizer


def load_architecture(path: str):
    """Read an architecture file: a ``MacroArch`` (JSON with ``ops``/``skips``, or its text) or
    otherwise a ``Genotype``."""
    text = read_architecture_file(path, "architecture")
    stripped = text.lstrip()
    if stripped.startswith("MacroArch"):
        return MacroArch.parse(text)
    if stripped.startswith("{"):
        data = parse_json(text, f"{path}: JSON")
        if isinstance(data, dict) and "ops" in data:
            return MacroArch.from_dict(data)
        return Genotype.from_dict(data)
    return Genotype.parse(text)


__all__ = ["ENASConfig", "ENASOptimizer", "MACRO_OPS", "MICRO_OPS", "MacroArch",
           "MacroController", "MacroNetwork", "MacroSupernet", "MicroController",
           "MicroSupernet", "SEARCH_SPACES", "load_architecture"]
__all__ += ["CellController", "CellENASConfig", "CellENASOptimizer"]
