"""The objective of a trial: a candidate cell trained from scratch with a short budget and
scored on a validation split carved from the train split.

The validation split takes ``val_fraction`` of every class of the train split (a fixed
permutation, seed ``VAL_SPLIT_SEED``, independent of the run's seed), so every trial, every
process and every rerun scores on the same images. The test split is not read here: the stage
evaluates it once, for the best trial.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .. import data
from ..data import labels_of
from ..genotypes import Genotype
from ..pipeline import EVAL_BATCH_SIZE
from ..training import FinalTrainer, count_parameters
from .config import HPARAM_RANGES, TuneConfig

VAL_SPLIT_SEED = 0


def validation_split(labels: Sequence[int], fraction: float,
                     seed: int = VAL_SPLIT_SEED) -> Tuple[List[int], List[int]]:
    """Stratified ``(train, validation)`` indices: per class ``c`` with ``n_c`` images, a seeded
    permutation, of which the first ``round(fraction * n_c)`` (at most ``n_c - 1``) validate."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cut = min(int(round(fraction * len(members))), len(members) - 1)
        val += members[:cut].tolist()
        train += members[cut:].tolist()
    return sorted(train), sorted(val)


@dataclass
class TuneData:
    """The three splits of a tune run: ``train`` and ``val`` carved from the train split (``val``
    without augmentation), and the untouched ``test`` split."""

    dataset: str
    train: Dataset
    val: Dataset
    test: Dataset

    @classmethod
    def load(cls, dataset: str, val_fraction: float = 0.2, data_dir: Optional[str] = None,
             limit: Optional[int] = None) -> TuneData:
        augmented = data.load_split(dataset, "train", data_dir, augment=True, limit=limit)
        plain = data.load_split(dataset, "train", data_dir, augment=False, limit=limit)
        train, val = validation_split(labels_of(plain), val_fraction)
        return cls(dataset, Subset(augmented, train), Subset(plain, val),
                   data.load_split(dataset, "test", data_dir, limit=limit))

    @property
    def info(self) -> data.DatasetInfo:
        return data.dataset_info(self.dataset)

    def loaders(self, batch_size: int, device: torch.device, seed: int, workers: int = 0):
        """``(train, val)`` loaders; the train shuffle depends only on ``seed`` and the epoch."""
        train = data.make_loader(self.train, batch_size, shuffle=True, device=device, seed=seed,
                                 stream=3, num_workers=workers)
        val = data.make_loader(self.val, EVAL_BATCH_SIZE, shuffle=False, device=device,
                               num_workers=workers)
        return train, val

    def test_loader(self, device: torch.device, workers: int = 0):
        return data.make_loader(self.test, EVAL_BATCH_SIZE, shuffle=False, device=device,
                                num_workers=workers)


def suggest_hparams(trial, config: TuneConfig) -> Dict[str, float]:
    """Learning rate, weight decay and drop path from ``HPARAM_RANGES`` (``tune_hparams``), or
    the budget's own values."""
    if not config.tune_hparams:
        return config.hparams()
    return {name: trial.suggest_float(name, low, high, log=log)
            for name, (low, high, log) in HPARAM_RANGES.items()}


def train_candidate(genotype: Genotype, config: TuneConfig, tune_data: TuneData,
                    device: torch.device, hparams: Optional[Dict[str, float]] = None,
                    callback: Optional[Callable[[FinalTrainer, dict], Any]] = None,
                    workers: int = 0, progress: Union[bool, str] = False) -> FinalTrainer:
    """Train ``genotype`` with the trial budget; after every epoch ``callback(trainer, record)``
    sees the record, whose ``test_acc`` is the accuracy on the *validation* split (the loader
    ``FinalTrainer.fit`` evaluates is ``tune_data.val``). ``progress`` as in
    ``FinalTrainer.fit`` (trials are silent: the study logs one line per trial)."""
    info = tune_data.info
    trainer = FinalTrainer(genotype, config.train_config(info.in_channels, info.num_classes,
                                                         str(device), hparams))
    train_loader, val_loader = tune_data.loaders(config.batch_size, device, config.seed, workers)
    trainer.fit(train_loader, val_loader, callback=callback, progress=progress)
    return trainer


def make_objective(space, config: TuneConfig, tune_data: TuneData, device: torch.device,
                   workers: int = 0,
                   on_fit: Optional[Callable[[Any, FinalTrainer], None]] = None):
    """The Optuna objective: draw a genotype from ``space`` (and the hyperparameters), train it,
    report the validation accuracy after every epoch (the pruner may stop the trial there, except
    after the last epoch) and return the last epoch's. ``on_fit(trial, trainer)`` runs after a
    trial's training (a benchmark records the test accuracy of every trial there; selection
    never reads it)."""
    import optuna

    def objective(trial) -> float:
        genotype = space.suggest(trial)
        hparams = suggest_hparams(trial, config)
        trial.set_user_attr("genotype", str(genotype))
        trial.set_user_attr("hyperparameters", hparams)

        def report(trainer: FinalTrainer, record: dict) -> None:
            trial.report(record["test_acc"], record["epoch"])  # the validation accuracy
            # after the last epoch there is nothing left to save: the trial completes
            if record["epoch"] + 1 < config.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {record['test_acc']:.4f} after "
                                         f"epoch {record['epoch'] + 1}")

        trainer = train_candidate(genotype, config, tune_data, device, hparams, report, workers)
        if on_fit is not None:
            on_fit(trial, trainer)
        return trainer.history[-1]["test_acc"]

    return objective


def evaluate_best(genotype: Genotype, hparams: Optional[Dict[str, float]], config: TuneConfig,
              tune_data: TuneData, device: torch.device, workers: int = 0,
              progress: Union[bool, str] = False) -> Dict[str, Any]:
    """Train the best trial's candidate again exactly as its trial did (same budget, seed and
    hyperparameters: on a CPU the same weights) and evaluate the test split, once. Returns the
    validation accuracy of this run (the trial's value again), the test accuracy and loss, and
    the network's parameter count. ``progress`` shows the training's epochs (see
    ``FinalTrainer.fit``)."""
    trainer = train_candidate(genotype, config, tune_data, device, hparams, workers=workers,
                              progress=progress)
    test = trainer.evaluate(tune_data.test_loader(device, workers))
    return {"val_accuracy": trainer.history[-1]["test_acc"], "test_accuracy": test["accuracy"],
            "test_loss": test["loss"], "params": count_parameters(trainer.model)}


__all__ = ["TuneData", "VAL_SPLIT_SEED", "labels_of", "make_objective",
           "suggest_hparams", "evaluate_best", "train_candidate", "validation_split"]
