"""``fastnas tune``: a gradient search for the coarse search, Bayesian optimization for the fine.

1. The search: a run folder of ``fastnas search`` (its ``checkpoint.pt`` rebuilds the strategy),
   or a fresh search into ``OUTPUT/search`` (``fastnas.pipeline.search_stage``; a rerun reuses
   or resumes it).
2. The pruned space from the strategy (``SPACES``: DARTS's alphas, ENAS's controller) and the
   strategy's answers as the warm start: the search's final pick (``genotype.json``) and its
   ``architecture()`` (for ENAS the controller's most likely cell), once each.
3. The Optuna study (``fastnas.tune.study``), trials scored on the validation split.
4. The best trial's candidate trained again and tested once on the test split.

Files in ``OUTPUT``: ``genotype.json`` (the best trial's, for ``fastnas train --genotype``),
``trials.csv``, ``metrics.json``, and ``study.db`` (the default storage).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

from ..checkpoint import check_kind, load_latest, write_json_atomic
from ..console import duration, log, print_block
from ..errors import UserError
from ..genotypes import Genotype
from ..interrupts import Terminated
from ..pipeline import (
    DEFAULT_METHOD,
    SEARCH_METHODS,
    Interrupted,
    StageOptions,
    prepare_output,
    resolve_method,
    search_stage,
)
from ..reproducibility import resolve_device
from ..runfiles import read_metrics
from .config import TUNE_DEFAULTS, TuneConfig
from .objective import TuneData, evaluate_best, make_objective
from .space import DecisionSpace, EdgeSpace
from .storage import check_url, storage_errors

INSTALL_HINT = 'fastnas tune needs Optuna: pip install -e ".[tune]"'

# The pruned space of each search method, from its loaded optimizer; ``include``: the warm-start
# genotypes (the ENAS space widens to hold them; the DARTS space holds the derived cell by
# construction).
SPACES: Dict[str, Callable[[Any, TuneConfig, List[Genotype]], Any]] = {
    "darts": lambda opt, cfg, include: EdgeSpace.from_strengths(
        opt.model.space, opt.model.arch.strengths(), k=cfg.k, m=cfg.m),
    "enas": lambda opt, cfg, include: DecisionSpace.from_controller(
        opt, cfg.k, cfg.m, cfg.enas_samples, cfg.seed, include),
}


def require_optuna() -> None:
    """A one-line UserError saying what to install when Optuna is missing."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


@dataclass
class SearchRun:
    """A search run folder as the tune stage reads it."""

    folder: str
    method: str
    dataset: str
    optimizer: Any          # the strategy, rebuilt from the checkpoint
    answer: Optional[Genotype]  # genotype.json: the search's final pick (None if unfinished)
    complete: bool
    seconds: float          # the search's own wall clock, summed over its epochs


def load_search(folder: str) -> SearchRun:
    """Rebuild the strategy of the search in ``folder`` from its ``checkpoint.pt`` (or the
    previous generation, if the latest is unreadable)."""
    path = os.path.join(folder, "checkpoint.pt")
    try:
        state, path = load_latest(path)
    except UserError:
        raise UserError(f"no search in {folder}: {path} does not exist or is unreadable "
                        f"(fastnas search --output {folder} writes it)") from None
    try:
        check_kind(state, "search", source=path)
    except ValueError as e:
        raise UserError(str(e)) from None
    if "run" not in state or "config" not in state:
        raise UserError(f"{path} is not a checkpoint of the fastnas command line")
    method = state["run"].get("method", "darts")
    if state.get("config", {}).get("space") == "nb201":
        raise UserError(f"{path} is a search of the NB201 space: tune it against the table with "
                        f"fastnas tune --space nb201 --objective table:cifar10")
    if method not in SPACES:
        raise UserError(f"{path}: cannot tune a {method!r} search")
    config = dict(state["config"], device="cpu")
    if config.get("search_space", "micro") != "micro":
        raise UserError(f"{path} is an ENAS macro search: only cell spaces (DARTS, ENAS micro) "
                        "can be tuned")
    try:
        optimizer = SEARCH_METHODS[method].optimizer(config)
        optimizer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot rebuild the search of {path}: {e}") from None
    answer_path = os.path.join(folder, "genotype.json")
    answer = Genotype.load(answer_path) if os.path.exists(answer_path) else None
    return SearchRun(folder, method, state["run"]["dataset"], optimizer, answer,
                     complete=optimizer.epoch >= optimizer.total_epochs,
                     seconds=sum(r.get("seconds", 0.0) for r in optimizer.history))


def _search(options: StageOptions, method: Optional[str], source: Optional[str],
            search_given: Dict[str, Any], output: str) -> SearchRun:
    if source is not None:
        if search_given:
            flags = ", ".join("--search-" + k.replace("_", "-") for k in sorted(search_given))
            raise UserError(f"{flags}: the search in {source} is already done; drop them or "
                            "drop --search")
        run = load_search(source)
        if method is not None:
            strategy, preset = resolve_method(method)   # a DARTS method: its preset too
            found = getattr(run.optimizer.config, "method", None) if run.method == "darts" else None
            if strategy.name != run.method or (preset is not None and found != preset):
                held = found or run.method
                article = "an" if held[0] in "aeiou" else "a"
                raise UserError(f"--from {method}: {source} holds {article} {held} search")
        return run
    folder = os.path.join(output, "search")
    metrics = os.path.join(folder, "metrics.json")
    if os.path.exists(metrics) and read_metrics(metrics).get("complete"):
        return _search(options, method, folder, {}, output)
    search_stage(dataclasses.replace(options, resume=True), method or DEFAULT_METHOD, search_given,
                 folder)
    return load_search(folder)


def _warm_start(run: SearchRun) -> List[Genotype]:
    """The search's final pick and its ``architecture()``, once each."""
    out: List[Genotype] = []
    for genotype in (run.answer, run.optimizer.architecture()):
        if genotype is not None and genotype not in out:
            out.append(genotype)
    return out


def _check_tunable(dataset: Any) -> None:
    if dataset is not None and dataset not in TUNE_DEFAULTS:
        name = getattr(dataset, "name", dataset)
        raise UserError(f"fastnas tune reads {' and '.join(TUNE_DEFAULTS)}, not {name} (not "
                        "yet: use fastnas run for it)")


def tune_stage(options: StageOptions, given: Dict[str, Any], output: str, *,
               method: Optional[str] = None, source: Optional[str] = None,
               search_given: Optional[Dict[str, Any]] = None, storage: Optional[str] = None,
               study_name: Optional[str] = None) -> dict:
    """Tune the cell of the search ``source`` (a run folder; None: a fresh ``method`` search
    with ``search_given`` into ``output/search``) with the settings ``given`` (keys of
    ``TuneConfig``); writes ``genotype.json``, ``trials.csv`` and ``metrics.json`` in ``output``
    and returns the metrics. ``storage``: an Optuna storage URL (default: SQLite in
    ``output``), shared by every process that runs the same study."""
    require_optuna()
    from . import study as studies

    if storage is not None:  # before the search: a URL tune cannot use fails at once
        check_url(storage)
    started = time.perf_counter()
    _check_tunable(options.dataset)
    run = _search(options, method, source, dict(search_given or {}), output)
    _check_tunable(run.dataset)
    if options.dataset is not None and options.dataset != run.dataset:
        raise UserError(f"--dataset {options.dataset}: the search in {run.folder} ran on "
                        f"{run.dataset}")
    try:
        config = TuneConfig.from_dict({**TUNE_DEFAULTS[run.dataset], **given})
        device = resolve_device(options.device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(str(e)) from None
    threads = options.threads or (1 if run.dataset == "digits" else None)
    if threads:
        torch.set_num_threads(threads)
    prepare_output(output)
    warm = _warm_start(run)
    picked = warm[0]   # the search's answer (genotype.json, else its architecture())
    space = SPACES[run.method](run.optimizer, config, warm)
    ruled = getattr(getattr(run.optimizer, "model", None), "arch", None)
    if getattr(ruled, "derivation", None) is not None:
        # a method's derivation rule (P-DARTS skip cap, FairDARTS threshold) may pick a cell
        # outside the ranking the space is pruned by: such a warm start is left out
        kept = [g for g in warm if space.contains(g)]
        for genotype in warm:
            if genotype not in kept:
                log(f"warm start left out: {genotype} (derived by the search's "
                    f"{ruled.derivation} rule) is outside the pruned space")
        warm = kept
    for genotype in warm:
        if not space.contains(genotype):  # never for DARTS's derived cell (tested)
            raise UserError(f"the warm start {genotype} is outside the pruned space")
    tune_data = TuneData.load(run.dataset, config.val_fraction, options.data_dir, options.limit)
    url = storage or f"sqlite:///{os.path.abspath(os.path.join(output, 'study.db'))}"
    name = study_name or studies.DEFAULT_STUDY_NAME
    log(f"tune: {run.method} space of {run.folder} (k {config.k}, m {config.m}: "
        f"{space.size:.3g} cells), {len(warm)} warm start(s); {config.sampler} sampler, "
        f"{config.pruner} pruner, {config.trials} trials of {config.epochs} epoch(s), "
        f"{config.layers} layers x {config.channels} channels on {len(tune_data.train)} train / "
        f"{len(tune_data.val)} validation images; study {name!r} in {studies.redact(url)}")

    with storage_errors(url):  # a storage failure is one line naming its cause
        storage_obj = studies.open_storage(url, config.heartbeat)
        sampler = studies.make_sampler(config.sampler, config.seed, config.startup_trials)
        pruner = studies.make_pruner(config.pruner, config.epochs, config.startup_trials)
        settings = studies.study_settings(space, config, run.dataset, options.limit)
        study, created = studies.open_study(
            storage_obj, name, sampler, pruner, settings,
            studies.warm_start_trials(space, warm, config, run.method))
        if not created:
            log(f"tune: continuing study {name!r} ({len(study.trials)} trial(s) so far)")
        objective = make_objective(space, config, tune_data, device,
                                           workers=options.workers or 0)
        try:
            ran = studies.run_trials(study, objective, config.trials,
                                     on_trial=None if options.quiet else _log_trial)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
            finished = sum(t.state in studies.FINISHED for t in study.get_trials(deepcopy=False))
            signal = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
            how = "terminated (SIGTERM)" if signal == "SIGTERM" else "interrupted"
            raise Interrupted(f"tune {how}; study {name!r} in {studies.redact(url)} holds "
                              f"{finished} finished trial(s); rerun the same command to continue",
                              resumable=False, signal=signal) from None
        result = studies.TuneResult.of(study, ran)
        log(f"tune: training the best trial's cell (trial {result.best_number}, validation "
            f"accuracy {result.best_value:.4f}) again as its trial did, {config.epochs} "
            f"epoch(s), then testing it once on the {len(tune_data.test)} test images")
        final = evaluate_best(result.best_genotype, result.best_hparams, config, tune_data, device,
                              options.workers or 0, progress="lines" if options.quiet else True)
        log(f"tune: the best trial's cell, trained again: validation accuracy "
            f"{final['val_accuracy']:.4f}, test accuracy {final['test_accuracy']:.4f} (eval mode)")

        paths = {name: os.path.join(output, name)
                 for name in ("genotype.json", "trials.csv", "metrics.json")}
        result.best_genotype.save(paths["genotype.json"])
        rows = studies.write_trials_csv(study, paths["trials.csv"])
    states = [r["state"] for r in rows]
    workers: Dict[str, int] = {}
    for r in rows:
        workers[r["worker"]] = workers.get(r["worker"], 0) + 1
    metrics = {
        "dataset": run.dataset,
        "search": {"folder": run.folder, "method": run.method, "complete": run.complete,
                   "seconds": run.seconds, "genotype": str(picked)},
        "space": space.describe(),
        "study": {"name": name, "storage": studies.redact(url), "sampler": config.sampler,
                  "pruner": config.pruner},
        "trials": {"requested": config.trials, "total": len(rows),
                   **{s.lower(): states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL",
                                                           "RUNNING", "WAITING")},
                   "ran_here": ran, "workers": workers},
        "warm_start": [{k: r[k] for k in ("number", "state", "value", "genotype")}
                       for r in rows if r["warm_start"] and not r["retry_of"]],
        "best": {"number": result.best_number, "val_accuracy": result.best_value,
                 "genotype": str(result.best_genotype), "hyperparameters": result.best_hparams},
        "test": final,
        "trial_seconds": sum(r["seconds"] or 0.0 for r in rows),
        "seconds": time.perf_counter() - started,
        "config": config.to_dict(),
    }
    write_json_atomic(metrics, paths["metrics.json"])
    print_block(f"tune finished: {len(ran)} trial(s) here, {states.count('COMPLETE')} complete "
                f"+ {states.count('PRUNED')} pruned in the study, in "
                f"{duration(metrics['seconds'])}",
                [("best", f"trial {result.best_number}: validation accuracy "
                          f"{result.best_value:.4f}"),
                 ("genotype", str(result.best_genotype)),
                 ("hyperparameters", json.dumps(result.best_hparams, sort_keys=True)),
                 ("test accuracy", f"{final['test_accuracy']:.4f} (best trial trained again, "
                                   f"test split evaluated once)"),
                 ("warm start", [f"trial {w['number']}: {w['state'].lower()} "
                                 f"{_value(w['value'])}" for w in metrics["warm_start"]]
                  or "none"),
                 ("files", list(paths.values()))])
    return metrics


def _value(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _log_trial(study, trial) -> None:
    try:
        best = study.best_trial
        best_text = f"best {best.value:.4f} (trial {best.number})"
    except ValueError:
        best_text = "no trial complete yet"
    start, end = trial.datetime_start, trial.datetime_complete
    seconds = f"{(end - start).total_seconds():.1f}s" if start and end else ""
    warm = f"  [warm start: {trial.user_attrs['warm_start']}]" if trial.user_attrs.get(
        "warm_start") else ""
    last = list(trial.intermediate_values.values())[-1:] or [None]
    log(f"tune trial {trial.number}  {trial.state.name.lower()}  val "
        f"{_value(trial.value if trial.value is not None else last[0])}  {best_text}  "
        f"{seconds}{warm}")


__all__ = ["INSTALL_HINT", "SPACES", "SearchRun", "load_search", "require_optuna", "tune_stage"]
