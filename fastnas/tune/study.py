"""The Optuna side of a tune run: storage, study, samplers, pruners, and the worker loop that
any number of processes run on one study.

This module imports Optuna; ``fastnas.tune`` imports it only when a study runs
(``require_optuna`` first), so ``import fastnas`` never needs Optuna.

Several processes share a study through its storage (a database or a journal file). Each runs
``run_trials``:

    repeat:
        fail stale trials (heartbeat silent > 2 * heartbeat s, or a dead process of this host)
        finished = complete + pruned trials; running = trials still running
        if finished + running < trials:  run one trial (ask, train, report, tell)
        elif trials of live or checkable processes still run:  wait for them
        else:  stop

so the study ends with ``trials`` finished trials (a few more only when several processes start
their last trial in the same instant), every process waits for the others' last trials, and all
of them then read the same best trial. A stale trial is marked FAIL and queued once more with the
same parameters (``RetryHeartbeatStaleTrialCallback``), so a killed process loses only the work of
its running trial, and the rerun of a command continues the study where it stopped.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from ..checkpoint import write_file_atomic
from ..errors import NonFiniteError, UserError
from ..genotypes import Genotype
from .config import TuneConfig
from .objective import TuneData, make_objective
from .storage import check_url, explain, journal_path, permanent, redact, storage_errors

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
DEFAULT_STUDY_NAME = "fastnas-tune"


def worker_id() -> str:
    """``host:pid`` of this process, recorded on every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def _quiet_experimental():
    """Heartbeats and retries are marked experimental by Optuna; their warnings say nothing new."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


# -- samplers and pruners -------------------------------------------------------------------------
def _mix(*values: int) -> int:
    return int(np.random.SeedSequence([v % 2**32 for v in values]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler rebuilt for every trial with the seed ``mix(seed, trial number)``.

    One process's study is reproducible (its trial ``n`` is drawn with the same seed from the
    same history), and processes sharing a study never draw the same parameters from the same
    history, since no two trials have the same number.
    """

    def __init__(self, factory: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self.factory, self.seed = factory, seed
        self.inner = factory(seed)

    def before_trial(self, study, trial: FrozenTrial) -> None:
        self.inner = self.factory(_mix(self.seed, trial.number))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def make_sampler(name: str, seed: int, startup_trials: int) -> TrialSeededSampler:
    """``tpe`` (multivariate: the space is the same for every trial), ``gp`` or ``random``."""
    samplers = optuna.samplers
    factories = {
        "tpe": lambda s: samplers.TPESampler(seed=s, n_startup_trials=startup_trials,
                                             multivariate=True, constant_liar=True),
        "gp": lambda s: samplers.GPSampler(seed=s, n_startup_trials=startup_trials),
        "random": lambda s: samplers.RandomSampler(seed=s),
    }
    if name not in factories:
        raise UserError(f"unknown sampler {name!r}; use {', '.join(factories)}")
    with _quiet_experimental():
        return TrialSeededSampler(factories[name], seed)


def make_pruner(name: str, epochs: int, startup_trials: int) -> optuna.pruners.BasePruner:
    """``median`` (prune below the median of earlier trials at the same epoch), ``hyperband``
    (1 to ``epochs`` epochs, reduction factor 3) or ``none``."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs,
                                              reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {name!r}; use median, hyperband or none")


# -- storage and study ----------------------------------------------------------------------------
def _immediate_transactions(engine) -> None:
    """Every SQLite transaction of ``engine`` starts with ``BEGIN IMMEDIATE`` (SQLAlchemy's
    recipe for pysqlite). SQLite's default deferred transactions take the write lock only at the
    first write, so a read-check-write is not atomic across processes: two workers could both
    read the enqueued warm-start trial as WAITING, both set it RUNNING, both train it, and the
    second ``tell`` fails with "Cannot tell a COMPLETE trial" (optuna/optuna#4621). Taking the
    write lock at ``BEGIN`` serializes those transactions; SQLite waits for the lock (60 s)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, record):  # pysqlite must not BEGIN on its own
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners: reopened with them


def open_storage(url: Optional[str], heartbeat: int = 10, attempts: int = 5):
    """An Optuna storage: in memory (``None``), a journal file (``journal:PATH``, for shared file
    systems), or a database URL (``sqlite:///PATH``, ``postgresql://...``, ``mysql://...``).

    Database storages record a heartbeat every ``heartbeat`` seconds while a trial runs;
    SQLite waits up to 60 s for a lock instead of failing at once. Processes that create the
    tables at the same moment may collide; creation is retried."""
    if url is None:
        return optuna.storages.InMemoryStorage()
    check_url(url)
    if url.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(journal_path(url))
        with storage_errors(url):
            return optuna.storages.JournalStorage(backend)
    engine_kwargs = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                     else {"pool_pre_ping": True})
    for attempt in range(attempts):
        try:
            with _quiet_experimental(), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                    grace_period=2 * heartbeat, heartbeat_stale_trial_callback=_retry)
                if url.startswith("sqlite"):
                    _immediate_transactions(storage.engine)
            for w in caught:  # SQLAlchemy ignoring part of the URL is an error, not a warning
                if issubclass(w.category, optuna.exceptions.ExperimentalWarning):
                    continue  # what _quiet_experimental silences
                text = str(w.message).splitlines()[0]
                if "are not accepted by" in text:
                    raise UserError(f"--storage {redact(url)}: {text.split(';')[0]}")
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            return storage
        except UserError:
            raise
        except ImportError as e:  # a database driver (psycopg, pymysql) is missing
            raise explain(e, url) from None
        except Exception as e:  # sqlalchemy's errors: a concurrent creation, or a bad URL
            better = explain(e, url)
            if better is not None and (attempt == attempts - 1 or permanent(e)):
                raise better from None
            if attempt == attempts - 1:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise UserError(f"cannot open --storage {redact(url)}: {reason}") from None
            time.sleep(0.5 * (attempt + 1))


def open_study(storage, study_name: str, sampler, pruner, settings: Dict[str, Any],
               warm_start: Sequence[Tuple[Dict[str, Any], Dict[str, Any]]] = ()
               ) -> Tuple[optuna.Study, bool]:
    """Create the study, or load it if it exists: ``(study, created)``.

    Only the process that creates the study records ``settings`` (the space and the trial
    budget) and enqueues the ``warm_start`` trials (``(params, user_attrs)`` pairs), so the warm
    start is queued once however many processes start together. A study whose settings differ
    from ``settings`` is refused: its trials would not be comparable."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name,
                                    direction="maximize", sampler=sampler, pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                                  pruner=pruner)
        created = False
    if created:
        study.set_user_attr("fastnas", settings)
        for params, user_attrs in warm_start:
            study.enqueue_trial(params, user_attrs=user_attrs)
        return study, created
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UserError(f"study {study_name!r} minimizes; a tune study maximizes accuracy")
    saved = study.user_attrs.get("fastnas")
    if saved is not None and saved != json.loads(json.dumps(settings)):
        differ = sorted(k for k in set(saved) | set(settings)
                        if json.dumps(saved.get(k)) != json.dumps(settings.get(k)))
        raise UserError(f"study {study_name!r} was started with other settings ({', '.join(differ)}"
                        "); rerun with those, or use another --study-name or --output")
    return study, created


# -- the worker loop ------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's), or we cannot tell: assume alive
    return True


def _local_pid(trial: FrozenTrial) -> Optional[int]:
    """The pid of the process of this host that runs ``trial``, or None (another host, or not
    recorded yet)."""
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def _storage(study: optuna.Study):
    """The study's storage: Optuna's own ``fail_stale_trials`` reaches it the same way (there
    is no public accessor), and failing a trial of another process needs it."""
    return study._storage


def _heartbeat(study: optuna.Study) -> bool:
    interval = getattr(_storage(study), "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def _retry(study: optuna.Study, trial: FrozenTrial) -> None:
    with _quiet_experimental():
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)


def fail_stale_trials(study: optuna.Study) -> List[int]:
    """Mark FAIL (and queue once more) the running trials whose process is gone: those of a dead
    process of this host at once, and with a heartbeat storage those silent for the grace
    period. Returns the numbers of the trials failed here."""
    if _heartbeat(study):
        with _quiet_experimental():
            optuna.storages.fail_stale_trials(study)
    storage = _storage(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = _local_pid(trial)
        if pid is None or _pid_alive(pid):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
                _retry(study, storage.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed it first
    return failed


def run_trials(study: optuna.Study, objective: Callable, trials: int, poll: float = 1.0,
               on_trial: Optional[Callable[[optuna.Study, FrozenTrial], None]] = None,
               max_failures: int = 5) -> List[int]:
    """Run trials until the study holds ``trials`` finished ones and no checkable trial runs
    (see the module docstring); returns the numbers of the trials this process ran.
    ``on_trial(study, trial)`` runs after each. A candidate whose training diverges
    (``NonFiniteError``) is a failed trial and another one runs in its place; ``max_failures``
    of them in a row are a UserError. Ctrl-C fails the running trial, queues it again, and
    raises KeyboardInterrupt."""
    worker, mine = worker_id(), []
    heartbeat = _heartbeat(study)
    failures = 0

    def run(trial) -> float:
        trial.set_user_attr("worker", worker)
        mine.append(trial.number)
        return objective(trial)

    while True:
        fail_stale_trials(study)
        everything = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in everything)
        running = [t for t in everything if t.state == TrialState.RUNNING]
        if finished + len(running) < trials:
            count = len(mine)
            try:
                study.optimize(run, n_trials=1, catch=(NonFiniteError,))
            except KeyboardInterrupt:
                if len(mine) > count:
                    _retry(study, study.get_trials(deepcopy=False)[mine[-1]])
                raise
            if len(mine) > count:
                trial = study.get_trials(deepcopy=False)[mine[-1]]
                failures = failures + 1 if trial.state == TrialState.FAIL else 0
                if on_trial is not None:
                    on_trial(study, trial)
                if failures >= max_failures:
                    raise UserError(f"{failures} trials in a row diverged (non-finite loss); "
                                    "lower the learning rate or the trial budget's ranges")
            continue
        if not any(heartbeat or _local_pid(t) is not None for t in running):
            return mine
        time.sleep(poll)


# -- results --------------------------------------------------------------------------------------
TRIAL_COLUMNS = ["number", "state", "value", "epochs", "seconds", "genotype", "hyperparameters",
                 "warm_start", "retry_of", "worker"]


def trial_row(trial: FrozenTrial) -> Dict[str, Any]:
    """One row of ``trials.csv``."""
    start, end = trial.datetime_start, trial.datetime_complete
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "epochs": len(trial.intermediate_values),
        "seconds": round((end - start).total_seconds(), 3) if start and end else None,
        "genotype": trial.user_attrs.get("genotype", ""),
        "hyperparameters": json.dumps(trial.user_attrs.get("hyperparameters", {}),
                                      sort_keys=True),
        "warm_start": trial.user_attrs.get("warm_start", ""),
        "retry_of": trial.system_attrs.get("failed_trial", ""),
        "worker": trial.user_attrs.get("worker", ""),
    }


def write_trials_csv(study: optuna.Study, path: str) -> List[Dict[str, Any]]:
    """Every trial of the study, one row each, written atomically; returns the rows."""
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=TRIAL_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    write_file_atomic(path, write)
    return rows


@dataclass
class TuneResult:
    """A finished tune: the study, the best trial's genotype, validation accuracy and
    hyperparameters, and the trials this process ran."""

    study: optuna.Study
    best_number: int
    best_value: float
    best_genotype: Genotype
    best_hparams: Dict[str, float]
    ran_here: List[int] = field(default_factory=list)

    @classmethod
    def of(cls, study: optuna.Study, ran_here: Sequence[int] = ()) -> TuneResult:
        try:
            best = study.best_trial  # ties: the lowest number, in every process
        except ValueError:
            raise UserError(f"no trial of study {study.study_name!r} completed (all pruned or "
                            "failed); use --pruner none or more --trials") from None
        return cls(study, best.number, best.value, Genotype.parse(best.user_attrs["genotype"]),
                   dict(best.user_attrs.get("hyperparameters", {})), list(ran_here))


def warm_start_trials(space, genotypes: Sequence[Genotype], config: TuneConfig, label: str
                      ) -> List[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """``(params, user_attrs)`` to enqueue for each genotype (with the budget's own
    hyperparameters when they are searched too); a genotype outside ``space`` is a ValueError."""
    hparams = config.hparams() if config.tune_hparams else {}
    return [({**space.params(g), **hparams}, {"warm_start": label}) for g in genotypes]


def tune(space, config: Any = None, *, warm_start: Sequence[Genotype] = (),
         tune_data: Optional[TuneData] = None, storage: Optional[str] = None,
         study_name: str = DEFAULT_STUDY_NAME, device: str = "cpu", workers: int = 0,
         on_trial: Optional[Callable[[optuna.Study, FrozenTrial], None]] = None,
         on_fit: Optional[Callable] = None, warm_start_label: str = "warm start"
         ) -> TuneResult:
    """Search ``space`` with Optuna: ``config`` (a ``TuneConfig`` or its dict) sets the trials,
    sampler, pruner and trial budget; ``warm_start`` genotypes are the first trials;
    ``tune_data`` defaults to digits; ``storage`` is an Optuna storage URL (None: in memory).
    Returns the ``TuneResult`` (the test split is not touched: see ``evaluate_best``)."""
    config = TuneConfig.from_dict(config)
    tune_data = tune_data or TuneData.load("digits", config.val_fraction)
    sampler = make_sampler(config.sampler, config.seed, config.startup_trials)
    pruner = make_pruner(config.pruner, config.epochs, config.startup_trials)
    settings = study_settings(space, config, tune_data.dataset)
    study, _ = open_study(open_storage(storage, config.heartbeat), study_name, sampler, pruner,
                          settings, warm_start_trials(space, warm_start, config, warm_start_label))
    objective = make_objective(space, config, tune_data, torch.device(device), workers, on_fit)
    ran = run_trials(study, objective, config.trials, on_trial=on_trial)
    return TuneResult.of(study, ran)


def study_settings(space, config: TuneConfig, dataset: str, limit: Optional[int] = None
                   ) -> Dict[str, Any]:
    """What makes the trials of a study comparable: the space, the data and the budget."""
    budget = {k: getattr(config, k) for k in ("epochs", "layers", "channels", "batch_size",
                                               "learning_rate", "weight_decay", "drop_path_prob",
                                               "val_fraction", "seed", "tune_hparams")}
    return {"space": space.describe(), "dataset": dataset, "limit": limit, "budget": budget}


__all__ = ["DEFAULT_STUDY_NAME", "TRIAL_COLUMNS", "TrialSeededSampler", "TuneResult",
           "fail_stale_trials", "make_pruner", "make_sampler", "open_storage", "open_study",
           "redact", "run_trials", "study_settings", "trial_row", "tune", "warm_start_trials",
           "worker_id", "write_trials_csv"]
