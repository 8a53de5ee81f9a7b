"""Validated settings of a tune run: the pruned space, the study, and the short training budget
of each trial. Defaults per dataset are in ``TUNE_DEFAULTS`` (digits: a trial takes seconds on a
CPU core)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..config import Config, choice, flag, integer, number
from ..limits import check_sizes

SAMPLERS = ("tpe", "gp", "random")
PRUNERS = ("median", "hyperband", "none")

# Searched with --tune-hparams: (low, high, log scale).
HPARAM_RANGES = {
    "learning_rate": (0.005, 0.2, True),
    "weight_decay": (1e-5, 1e-2, True),
    "drop_path_prob": (0.0, 0.4, False),
}

# The trial budget per dataset (the keys a user may override with flags).
TUNE_DEFAULTS = {
    "digits": {"epochs": 5, "layers": 3, "channels": 8, "batch_size": 64},
    "cifar10": {"epochs": 10, "layers": 8, "channels": 16, "batch_size": 96},
}


@dataclass
class TuneConfig(Config):
    """One tune run.

    Space: ``k`` incoming edges (DARTS) or inputs (ENAS) per node, ``m`` ops per edge (DARTS) or
    per node (ENAS); ``enas_samples`` controller samples estimate the ENAS decision frequencies.

    Study: ``trials`` is the number of finished (complete or pruned) trials the study must hold
    when the run ends; ``sampler`` (``tpe``, ``gp``, ``random``), seeded per trial from ``seed``
    and the trial number; the first ``startup_trials`` trials of TPE and GP are random;
    ``pruner`` (``median``, ``hyperband``, ``none``) stops a trial whose validation accuracy after
    an epoch is poor against the other trials'; ``heartbeat`` (seconds, database storages) lets
    other processes fail the trials of a dead one after ``2 * heartbeat`` seconds of silence.

    Trial budget: each candidate trains ``epochs`` epochs as ``NetworkCIFAR`` with ``layers``
    cells of ``channels`` initial channels, batch ``batch_size``, SGD at ``learning_rate``
    (cosine to 0), ``weight_decay``, drop path ``drop_path_prob`` (ramped from 0), no auxiliary
    head, no cutout, network seed ``seed``. ``tune_hparams`` searches the three hyperparameters of
    ``HPARAM_RANGES`` with the cell. ``val_fraction`` of the train split (stratified, fixed) is
    the validation split that scores the trials; the test split is evaluated once, for the best.
    """

    trials: int = integer(20, low=1)
    k: int = integer(3, low=2)
    m: int = integer(3, low=1)
    sampler: str = choice("tpe", SAMPLERS)
    pruner: str = choice("median", PRUNERS)
    startup_trials: int = integer(5, low=0)
    tune_hparams: bool = flag(False)
    heartbeat: int = integer(10, low=1)
    enas_samples: int = integer(256, low=1)
    epochs: int = integer(5, low=1)
    layers: int = integer(3, low=3)
    channels: int = integer(8, low=1)
    batch_size: int = integer(64, low=1)
    learning_rate: float = number(0.025, low=0, low_open=True)
    weight_decay: float = number(3e-4, low=0)
    drop_path_prob: float = number(0.0, low=0, high=1, high_open=True)
    val_fraction: float = number(0.2, low=0, high=1, low_open=True, high_open=True)
    seed: int = integer(0, low=0)

    def validate(self) -> None:
        check_sizes(self.layers, self.channels)  # each trial's network (fastnas.limits)

    def hparams(self) -> Dict[str, float]:
        """The budget's own training hyperparameters (those ``tune_hparams`` searches)."""
        return {name: getattr(self, name) for name in HPARAM_RANGES}

    def train_config(self, in_channels: int, num_classes: int, device: str = "auto",
                     hparams: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """The ``TrainConfig`` of one trial (``hparams`` replace the budget's)."""
        return {"epochs": self.epochs, "layers": self.layers, "channels": self.channels,
                "batch_size": self.batch_size, "auxiliary": False, "cutout": 0,
                "in_channels": in_channels, "num_classes": num_classes, "seed": self.seed,
                "device": device, **self.hparams(), **(hparams or {})}


__all__ = ["HPARAM_RANGES", "PRUNERS", "SAMPLERS", "TUNE_DEFAULTS", "TuneConfig"]
