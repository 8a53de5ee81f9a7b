"""Hybrid search: a gradient search (DARTS, ENAS) for the coarse search, Bayesian optimization
(Optuna) for the fine one.

- ``space.py``: the pruned discrete spaces (``EdgeSpace`` from DARTS's alphas, ``DecisionSpace``
  from ENAS's controller) and the whole DARTS cell space (``EdgeSpace.full``);
- ``config.py``: ``TuneConfig``, the settings of a run and the short training budget of a trial;
- ``objective.py``: the trial (a candidate trained from scratch, scored on a validation split
  carved from the train split) and the single test of the best;
- ``study.py``: Optuna: storages, samplers, pruners, the worker loop several processes share;
- ``stage.py``: ``tune_stage``, what ``fastnas tune`` runs (search, space, study, test, files).

Optuna is an optional dependency (``pip install -e ".[tune]"``): ``study.py`` imports it, and is
itself imported only when a study runs, so ``import fastnas`` and ``import fastnas.tune`` never
need it. ``tune``, ``TuneResult`` and the other names of ``study.py`` are served from here on
first use.
"""
from .config import HPARAM_RANGES, PRUNERS, SAMPLERS, TUNE_DEFAULTS, TuneConfig
from .objective import TuneData, evaluate_best, make_objective, train_candidate
from .space import DecisionSpace, EdgeSpace
from .stage import INSTALL_HINT, SPACES, load_search, require_optuna, tune_stage

_FROM_STUDY = ("tune", "TuneResult", "open_storage", "open_study", "run_trials",
               "write_trials_csv")


def __getattr__(name: str):
    if name in _FROM_STUDY:
        require_optuna()
        from . import study

        return getattr(study, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DecisionSpace", "EdgeSpace", "HPARAM_RANGES", "INSTALL_HINT", "PRUNERS", "SAMPLERS",
           "SPACES", "TUNE_DEFAULTS", "TuneConfig", "TuneData", "evaluate_best", "load_search",
           "make_objective", "require_optuna", "train_candidate", "tune_stage", *_FROM_STUDY]
