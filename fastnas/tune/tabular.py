"""Tabular search on NAS-Bench-201: a study whose objective is a table lookup, not a training.

Each strategy answers ``ask() -> NB201Cell`` and ``tell(cell, value)``; one *query* is one
ask/tell pair (a cell asked twice costs two queries, as in the NB201 baselines). The objective is
the table's test accuracy (%) of the cell on ``dataset``: the table holds no validation
accuracies, so this search sees the number it is scored on, without noise; the NB201 paper's
baselines searched on validation accuracies (REINFORCE on a 12-epoch proxy) under a simulated
training-time budget.

Strategies (``TABULAR_STRATEGIES``):

- ``random``, ``tpe``, ``gp``: Optuna's samplers over 6 categorical parameters (one per edge,
  5 choices), seeded; TPE is multivariate; TPE and GP start with ``startup_trials`` random
  trials. CMA-ES does not apply: it needs ordered (real or integer) parameters, and the ops of
  an edge are unordered (Optuna's CMA-ES sampler falls back to random sampling for them).
- ``rea``: regularized (aging) evolution as in the NB201 baseline (``regularized_ea.py``,
  Real et al. 2019): ``population`` random cells first; then per query a tournament of
  ``tournament`` members drawn with replacement from the population, the best one's child
  (one random edge switched to a different op) is evaluated, joins the population, and the
  oldest member leaves.
- ``reinforce``: the NB201 baseline's REINFORCE (``reinforce.py``): a policy of independent
  per-edge categoricals ``p_e = softmax(theta_e)``, ``theta`` [6, 5] drawn from
  ``1e-3 * N(0, 1)``; after each reward ``R`` the bias-corrected moving average

      b_n = (sum_k (1 - m) m^(n - k) R_k) / (sum_k (1 - m) m^(n - k))      (m = ``momentum``)

  is updated first, then one Adam step (``learning_rate``) on the loss
  ``-(R - b_n) sum_e log p_e(a_e)``, whose gradient is ``-(R - b_n) (onehot(a_e) - p_e)`` per
  edge. fastnas's ENAS controller is an LSTM over DARTS-cell decisions (inputs and op pairs
  per node), not over NB201's fixed 6 edges x 5 ops, so the baseline's policy is used here.
"""
from __future__ import annotations

import csv
import os
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from ..checkpoint import write_file_atomic, write_json_atomic
from ..config import Config, choice, integer, number
from ..console import duration, log, print_block
from ..errors import UserError
from ..nb201 import NB201_CELLS, NB201_EDGES, NB201_OPS, NB201Cell, Table
from ..nb201.table import TABLE_DATASETS
from ..pipeline import prepare_output
from .stage import require_optuna

TABULAR_STRATEGIES = ("tpe", "gp", "random", "rea", "reinforce")
OPTUNA_STRATEGIES = ("tpe", "gp", "random")
EDGE_PARAMS = tuple(f"edge_{target}<-{source}" for target, source in NB201_EDGES)


@dataclass
class TabularConfig(Config):
    """One tabular study: ``trials`` queries of ``strategy`` on the ``dataset`` column, seeded
    by ``seed``; ``startup_trials`` (TPE, GP), ``population`` and ``tournament`` (REA; the
    NB201 baseline's 10 and 3), ``learning_rate`` and ``momentum`` (REINFORCE; the baseline's
    Adam lr 0.01 and moving-average momentum 0.9)."""

    trials: int = integer(100, low=1)
    strategy: str = choice("tpe", TABULAR_STRATEGIES)
    dataset: str = choice("cifar10", TABLE_DATASETS)
    seed: int = integer(0, low=0)
    startup_trials: int = integer(10, low=0)
    population: int = integer(10, low=1)
    tournament: int = integer(3, low=1)
    learning_rate: float = number(0.01, low=0, low_open=True)
    momentum: float = number(0.9, low=0, high=1, high_open=True)


# -- strategies -----------------------------------------------------------------------------------
class OptunaStrategy:
    """An Optuna sampler through ``study.ask`` / ``study.tell``, in memory."""

    def __init__(self, name: str, seed: int, startup_trials: int = 10):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        samplers = optuna.samplers
        if name == "tpe":
            sampler = samplers.TPESampler(seed=seed, n_startup_trials=startup_trials,
                                          multivariate=True)
        elif name == "gp":
            sampler = samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
        elif name == "random":
            sampler = samplers.RandomSampler(seed=seed)
        else:
            raise ValueError(f"unknown Optuna strategy {name!r}; use "
                             f"{', '.join(OPTUNA_STRATEGIES)}")
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.distributions = {p: optuna.distributions.CategoricalDistribution(NB201_OPS)
                              for p in EDGE_PARAMS}
        self._pending: Dict[NB201Cell, List[Any]] = {}

    def ask(self) -> NB201Cell:
        trial = self.study.ask(self.distributions)
        cell = NB201Cell(tuple(trial.params[p] for p in EDGE_PARAMS))
        self._pending.setdefault(cell, []).append(trial)
        return cell

    def tell(self, cell: NB201Cell, value: float) -> None:
        pending = self._pending.get(cell)
        if pending:
            self.study.tell(pending.pop(0), value)
        else:  # a cell this strategy did not ask for: record it as a finished trial
            import optuna

            self.study.add_trial(optuna.trial.create_trial(
                params=dict(zip(EDGE_PARAMS, cell.ops)), distributions=self.distributions,
                value=value))


def random_cell(rng: random.Random) -> NB201Cell:
    return NB201Cell(tuple(rng.choice(NB201_OPS) for _ in NB201_EDGES))


def mutate(cell: NB201Cell, rng: random.Random) -> NB201Cell:
    """One random edge switched to a different op (the NB201 baseline's mutation)."""
    edge = rng.randrange(len(NB201_EDGES))
    op = rng.choice([o for o in NB201_OPS if o != cell.ops[edge]])
    ops = list(cell.ops)
    ops[edge] = op
    return NB201Cell(tuple(ops))


class RegularizedEvolution:
    """Aging evolution (see the module docstring)."""

    def __init__(self, seed: int, population: int = 10, tournament: int = 3):
        self.rng = random.Random(seed)
        self.size, self.tournament = population, tournament
        self.population: Deque[Tuple[NB201Cell, float]] = deque()

    def ask(self) -> NB201Cell:
        if len(self.population) < self.size:
            return random_cell(self.rng)
        members = list(self.population)
        sample = [self.rng.choice(members) for _ in range(self.tournament)]
        parent = max(sample, key=lambda m: m[1])[0]  # ties: the first drawn
        return mutate(parent, self.rng)

    def tell(self, cell: NB201Cell, value: float) -> None:
        self.population.append((cell, value))
        if len(self.population) > self.size:
            self.population.popleft()


class MovingAverage:
    """The bias-corrected exponential moving average of the NB201 REINFORCE baseline."""

    def __init__(self, momentum: float):
        self.momentum, self.numerator, self.denominator = momentum, 0.0, 0.0

    def update(self, value: float) -> None:
        self.numerator = self.momentum * self.numerator + (1 - self.momentum) * value
        self.denominator = self.momentum * self.denominator + (1 - self.momentum)

    def value(self) -> float:
        return self.numerator / self.denominator


class Reinforce:
    """REINFORCE over independent per-edge categoricals (see the module docstring), in float64
    numpy, with Adam written out (PyTorch's defaults, betas (0.9, 0.999), eps 1e-8):

        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
        theta <- theta - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    """

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(self, seed: int, learning_rate: float = 0.01, momentum: float = 0.9):
        self.rng = np.random.default_rng(seed)
        self.theta = 1e-3 * self.rng.standard_normal((len(NB201_EDGES), len(NB201_OPS)))
        self.learning_rate = learning_rate
        self.m = np.zeros_like(self.theta)
        self.v = np.zeros_like(self.theta)
        self.steps = 0
        self.baseline = MovingAverage(momentum)

    def probabilities(self) -> np.ndarray:
        z = np.exp(self.theta - self.theta.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def ask(self) -> NB201Cell:
        cumulative = np.cumsum(self.probabilities(), axis=1)
        u = self.rng.random(len(NB201_EDGES))
        actions = [min(int(np.searchsorted(c, x, side="right")), len(NB201_OPS) - 1)
                   for c, x in zip(cumulative, u)]
        return NB201Cell(tuple(NB201_OPS[a] for a in actions))

    def gradient(self, cell: NB201Cell, advantage: float) -> np.ndarray:
        """``d/d theta`` of ``-advantage * sum_e log p_e(a_e)``."""
        onehot = np.zeros_like(self.theta)
        onehot[np.arange(len(NB201_EDGES)), [NB201_OPS.index(op) for op in cell.ops]] = 1.0
        return -advantage * (onehot - self.probabilities())

    def tell(self, cell: NB201Cell, value: float) -> None:
        self.baseline.update(value)
        g = self.gradient(cell, value - self.baseline.value())
        b1, b2 = self.betas
        self.steps += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        m_hat = self.m / (1 - b1 ** self.steps)
        v_hat = self.v / (1 - b2 ** self.steps)
        self.theta = self.theta - self.learning_rate * m_hat / (np.sqrt(v_hat) + self.eps)

    def best(self) -> NB201Cell:
        """The most likely cell (per edge the op of the largest logit)."""
        return NB201Cell(tuple(NB201_OPS[i] for i in self.theta.argmax(axis=1).tolist()))


def make_strategy(config: TabularConfig):
    if config.strategy in OPTUNA_STRATEGIES:
        return OptunaStrategy(config.strategy, config.seed, config.startup_trials)
    if config.strategy == "rea":
        return RegularizedEvolution(config.seed, config.population, config.tournament)
    return Reinforce(config.seed, config.learning_rate, config.momentum)


# -- the study ------------------------------------------------------------------------------------
@dataclass
class TabularTrial:
    number: int
    cell: NB201Cell
    value: float
    best_value: float
    seconds: float


def run_tabular(config: Any, table: Table,
                on_trial: Optional[Callable[[TabularTrial], None]] = None) -> List[TabularTrial]:
    """``config.trials`` queries of ``config.strategy`` against ``table``'s ``config.dataset``
    column; returns every trial with the best value so far. Seeded: a rerun gives the same
    trials."""
    config = TabularConfig.from_dict(config)
    if not table.complete:
        raise ValueError(f"the NB201 table {table.source} has {len(table)} of the 15625 cells; "
                         "a tabular search needs them all")
    strategy = make_strategy(config)
    trials: List[TabularTrial] = []
    best = float("-inf")
    for index in range(config.trials):
        started = time.perf_counter()
        cell = strategy.ask()
        value = table.accuracy(cell, config.dataset)
        strategy.tell(cell, value)
        best = max(best, value)
        trials.append(TabularTrial(index, cell, value, best, time.perf_counter() - started))
        if on_trial is not None:
            on_trial(trials[-1])
    return trials


def best_trial(trials: List[TabularTrial]) -> TabularTrial:
    """The trial with the highest value (the first such)."""
    return max(trials, key=lambda t: t.value)


# -- the command line's stage ---------------------------------------------------------------------
TABULAR_COLUMNS = ("number", "value", "best_value", "genotype", "seconds")


def parse_objective(text: str) -> str:
    """The dataset of ``table:DATASET``."""
    kind, _, dataset = text.partition(":")
    if kind != "table" or dataset not in TABLE_DATASETS:
        raise UserError(f"--objective {text!r}: use table:{'|'.join(TABLE_DATASETS)}")
    return dataset


def write_tabular_trials(trials: List[TabularTrial], path: str) -> None:
    """One row per query (``genotype`` is the cell's benchmark string), written atomically
    (``fastnas.checkpoint.write_file_atomic``)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(TABULAR_COLUMNS)
            for t in trials:
                writer.writerow([t.number, repr(t.value), repr(t.best_value), str(t.cell),
                                 round(t.seconds, 6)])

    write_file_atomic(path, write)


def tabular_stage(given: Dict[str, Any], output: str, table_path: Optional[str] = None,
                  quiet: bool = False) -> dict:
    """Run a tabular study with the settings ``given`` (keys of ``TabularConfig``) against the
    shipped table or ``table_path``; writes ``trials.csv``, ``genotype.json`` (the best cell)
    and ``metrics.json`` (with the best cell's three table accuracies) in ``output``."""
    started = time.perf_counter()
    try:
        config = TabularConfig.from_dict(given)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    if config.strategy in OPTUNA_STRATEGIES:
        require_optuna()
    table = Table.load(table_path)
    if not table.complete:
        raise UserError(f"the NB201 table {table.source} has {len(table)} of the "
                        f"{NB201_CELLS} cells; a tabular search needs them all")
    prepare_output(output)
    log(f"tune: NB201 table search, {config.strategy}, {config.trials} queries of "
        f"{config.dataset} test accuracy (table {table.source}), seed {config.seed}")

    previous = [float("-inf")]

    def on_trial(trial: TabularTrial) -> None:
        if not quiet and trial.best_value > previous[0]:
            log(f"tune query {trial.number}: new best {trial.value:.2f}  {trial.cell}")
        previous[0] = trial.best_value

    trials = run_tabular(config, table, on_trial)
    best = best_trial(trials)
    accuracies = table.lookup(best.cell, config.dataset)
    paths = {name: os.path.join(output, name)
             for name in ("genotype.json", "trials.csv", "metrics.json")}
    best.cell.save(paths["genotype.json"])
    write_tabular_trials(trials, paths["trials.csv"])
    metrics = {"space": "nb201", "objective": f"table:{config.dataset}",
               "strategy": config.strategy, "table": table.source,
               "best": {"number": best.number, "value": best.value,
                        "genotype": str(best.cell)},
               "nb201_table": accuracies.as_dict(),
               "best_so_far": [t.best_value for t in trials],
               "seconds": time.perf_counter() - started, "config": config.to_dict()}
    write_json_atomic(metrics, paths["metrics.json"])
    print_block(f"tune finished: {config.trials} NB201 table queries ({config.strategy}) in "
                f"{duration(metrics['seconds'])}",
                [("best", f"query {best.number}: {config.dataset} test accuracy "
                          f"{best.value:.2f}"),
                 ("genotype", str(best.cell)),
                 ("table", accuracies.summary()),
                 ("files", list(paths.values()))])
    return metrics


__all__ = ["EDGE_PARAMS", "MovingAverage", "OPTUNA_STRATEGIES", "OptunaStrategy",
           "RegularizedEvolution", "Reinforce", "TABULAR_STRATEGIES", "TabularConfig",
           "TabularTrial", "best_trial", "make_strategy", "mutate", "parse_objective",
           "random_cell", "run_tabular", "tabular_stage", "write_tabular_trials"]
