"""The methods built on the DARTS search, as presets of ``DARTSConfig`` keys (issue 18).

A method is the DARTS bi-level loop plus a choice along independent axes (``DARTSConfig``):
the relaxation (``softmax``, ``gumbel``, ``dirichlet``, ``sigmoid``), partial channels and edge
normalization, regularizers on the architecture loss, a perturbation of the weight step, and
schedules (alphas frozen for the first epochs, DARTS+ early stop, derivation rules).
``PRESETS[name]`` holds the keys each method's official code sets in its DARTS-space search
(``train_search.py`` and friends); ``DARTSConfig.from_dict`` fills every key the user did not
set from the preset named by ``method``. Presets never set the search's size (epochs, layers,
channels), which is the dataset's (``fastnas.pipeline.SEARCH_DEFAULTS``).

Where a preset departs from the official code (README "Methods" says why):

- ``gdas``: no Nesterov momentum (the weight SGD is DARTS'); the DARTS op list (with BN after
  the pools) and the DARTS derivation rule; batch 256 and weight decay 5e-4 as the NASNet-space
  script.
- ``pc-darts``: as ``train_search.py`` (K=4, edge normalization, lr 0.1, batch 256, arch lr
  6e-4, alphas frozen for 15 epochs).
- ``drnas``: the Dirichlet relaxation with the code's L2 regularizer (Adam weight decay 1e-3;
  ``dirichlet_kl`` turns on its KL option instead), lr 0.1 to 0, arch lr 6e-4, frozen for 10
  epochs; without the progressive pruning/widening stages and without partial channels (the
  code's K=6 then 4 is a memory device of its 20-cell search; set ``partial_channels`` to add
  it).
- ``beta-darts``: ``beta_lambda`` 50 reached linearly at the last epoch (the code hard-codes
  ``50 * epoch / 100``, the same at its 100 epochs).
- ``darts-minus``: the auxiliary skip decaying as ``1 - epoch / 50``.
- ``sdarts-rs`` / ``sdarts-adv``: the DARTS settings plus the perturbation of the weight step.
- ``fair-darts``: sigmoid weights, zero-one loss weight 10, threshold 0.85 at derivation, lr
  0.005, batch 128, arch Adam lr 3e-3 with betas (0.9, 0.999); the DARTS op list keeps ``none``
  (never derived), alphas start at ``1e-3 * randn`` instead of 0.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch

# The DARTS paper code's search optimizer settings, which several methods keep.
_DARTS = {"learning_rate_w": 0.025, "lr_min": 0.001, "momentum": 0.9, "weight_decay": 3e-4,
          "grad_clip": 5.0, "batch_size": 64, "learning_rate_alpha": 3e-4,
          "arch_weight_decay": 1e-3, "arch_betas": (0.5, 0.999)}

PRESETS: Dict[str, Dict[str, Any]] = {
    # today's behaviour: every key at DARTSConfig's default
    "darts": {},
    # D-X-Y/AutoDL-Projects, GDAS-search-NASNet-space.sh and GDAS-NASNet-CIFAR.config
    "gdas": {**_DARTS, "relaxation": "gumbel", "tau_max": 10.0, "tau_min": 0.1,
             "weight_decay": 5e-4, "batch_size": 256},
    # yuhuixu1993/PC-DARTS, train_search.py
    "pc-darts": {**_DARTS, "partial_channels": 4, "edge_normalization": True,
                 "learning_rate_w": 0.1, "batch_size": 256, "learning_rate_alpha": 6e-4,
                 "warmup_epochs": 15},
    # xiangning-chen/DrNAS, DARTS-space/train_search.py (reg_type l2)
    "drnas": {**_DARTS, "relaxation": "dirichlet", "dirichlet_kl": 0.0,
              "learning_rate_w": 0.1, "lr_min": 0.0, "learning_rate_alpha": 6e-4,
              "warmup_epochs": 10},
    # Sunshine-Ye/Beta-DARTS, optimizers/darts/architect.py (mlc_loss)
    "beta-darts": {**_DARTS, "beta_lambda": 50.0},
    # Meituan-AutoML/DARTS-, scripts/run_darts_minus.sh and src/search/args.py
    "darts-minus": {**_DARTS, "aux_skip": 50},
    # xiangning-chen/SmoothDARTS, sota/cnn/train_search.py --perturb_alpha random | pgd_linf
    "sdarts-rs": {**_DARTS, "perturbation": "random", "epsilon_min": 0.03,
                  "epsilon_max": 0.3},
    "sdarts-adv": {**_DARTS, "perturbation": "adversarial", "epsilon_min": 0.03,
                   "epsilon_max": 0.3, "pgd_steps": 7},
    # xiaomi-automl/FairDARTS, fairdarts/train_search.py (README command)
    "fair-darts": {**_DARTS, "relaxation": "sigmoid", "zero_one_weight": 10.0,
                   "threshold": 0.85, "learning_rate_w": 0.005, "batch_size": 128,
                   "learning_rate_alpha": 3e-3, "arch_betas": (0.9, 0.999)},
}
METHODS = tuple(PRESETS)


def apply_preset(values: Mapping[str, Any]) -> Dict[str, Any]:
    """``values`` over the preset its ``method`` names (default ``darts``); an unknown method
    is a ValueError naming the known ones."""
    method = values.get("method", "darts")
    if not isinstance(method, str):
        return dict(values)       # the config's own check names the wrong type
    if method not in PRESETS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    return {**PRESETS[method], **values}




# -- the parts of a config's method ---------------------------------------------------------------
def method_seed(config) -> int:
    """The seed of the methods' own noise generators: the config's, else one drawn from torch's
    global generator (then runs under torchrun must set a seed to share it)."""
    if config.seed is not None:
        return int(config.seed)
    return int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))


def build_relaxation(config, seed: int):
    """The ``fastnas.space`` relaxation that ``config.relaxation`` names (softmax: None, the
    supernet's default). ``gumbel`` is ``fastnas.space.Gumbel`` (``fastnas/space/gumbel.py``)."""
    from ..space import relaxation as relaxations

    if config.relaxation == "softmax":
        return None
    if config.relaxation == "sigmoid":
        return relaxations.Sigmoid()
    if config.relaxation == "dirichlet":
        return relaxations.Dirichlet(kl=config.dirichlet_kl, seed=seed)
    try:
        from ..space.gumbel import Gumbel
    except ImportError:
        raise ValueError("relaxation 'gumbel' needs fastnas.space.gumbel (GDAS), which this "
                         "build lacks") from None
    return Gumbel(tau_max=config.tau_max, tau_min=config.tau_min, seed=seed)


def build_regularizers(config) -> list:
    """The architecture-loss terms the config turns on (``fastnas.space.regularizers``)."""
    from ..space.regularizers import BetaDecay, ZeroOne

    out = []
    if config.beta_lambda > 0:
        out.append(BetaDecay(config.beta_lambda))
    if config.zero_one_weight > 0:
        out.append(ZeroOne(config.zero_one_weight))
    return out


def build_perturbation(config, seed: int):
    """SDARTS' perturbation of the weight step (``fastnas.darts.perturbation``), or None."""
    if config.perturbation == "none":
        return None
    from .perturbation import Perturbation

    # its own stream, apart from the relaxation's (seeded with ``seed``)
    return Perturbation(config.perturbation, config.epsilon_min, config.epsilon_max,
                        config.pgd_steps, seed=seed + 1)


def build_derivation(config):
    """The derivation rule of ``max_skips`` and ``threshold`` (``fastnas.space.derivation``),
    or None: the space's own."""
    if config.max_skips is None and config.threshold is None:
        return None
    from ..space.derivation import Derivation

    capped = ("cell",) if config.space == "nb201" else ("normal",)  # NB201: its one cell
    return Derivation(max_skips=config.max_skips, threshold=config.threshold, capped=capped)


def supernet_options(config) -> Dict[str, Any]:
    """The supernet keyword arguments of the config's method (only those away from plain
    DARTS, so a supernet without them still builds plain DARTS)."""
    out: Dict[str, Any] = {}
    if config.partial_channels != 1:
        out["partial_channels"] = config.partial_channels
    if config.edge_normalization:
        out["edge_normalization"] = True
    if config.aux_skip is not None:
        out["aux_skip"] = config.aux_skip
    return out


__all__ = ["METHODS", "PRESETS", "apply_preset", "build_derivation", "build_perturbation",
           "build_regularizers", "build_relaxation", "method_seed", "supernet_options"]
