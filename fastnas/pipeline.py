"""The stages of a NAS run, with their files: ``search`` (a strategy finds an architecture) and
``train`` (the architecture is trained from scratch), and ``run_pipeline`` (both).

Each stage reads its dataset, builds loaders whose order depends only on the seed and the epoch,
checkpoints atomically after every epoch, writes ``metrics.json`` as it goes, and prints one
summary block at the end. Settings left out take per-dataset defaults (``SEARCH_DEFAULTS``,
``TRAIN_DEFAULTS``): the paper's for CIFAR-10, small quick ones for digits; a DARTS method's
preset (``fastnas.darts.methods``) overrides them, and the DARTS family adds its own
(``DARTS_SEARCH_DEFAULTS``) under the preset. A resumed stage
takes its settings from its checkpoint; a setting that contradicts the checkpoint is an error
(``epochs`` may change).

Search strategies plug in through ``SEARCH_METHODS``: each is a ``SearchMethod`` whose optimizer
answers ``search``, ``architecture()``, ``evaluate(loader)``, ``state_dict``/``load_state_dict``
and keeps ``epoch``, ``total_epochs`` and ``history``; the stage never asks which one it runs.

Failures: bad input raises :class:`UserError`; Ctrl-C or SIGTERM raises :class:`Interrupted`
with where the last checkpoint is; a NaN or Inf loss, gradient or weight raises
``NonFiniteError`` naming the stage, epoch, step and quantity (nothing of the bad epoch is
written: the last good checkpoint, ``model.pt`` and ``genotype.json`` stay as they were). A
stage keeps two checkpoint generations (``checkpoint.pt``, ``checkpoint.prev.pt``) and resumes
from the newest readable one. The command line (``fastnas.cli``) turns each into one line and an
exit status.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from . import data, distributed
from .checkpoint import check_kind, load_latest, previous_path, save_checkpoint, write_json_atomic
from .config import RUNTIME_KEYS
from .console import Progress, duration, epochs, log, print_block
from .darts import DARTSOptimizer
from .darts.config import NB201_SEARCH
from .darts.methods import METHODS, PRESETS
from .darts.rsps import RSPSOptimizer
from .enas import ENASOptimizer
from .enas.cells import CellENASOptimizer
from .errors import NonFiniteError, UserError
from .genotypes import PUBLISHED, Genotype
from .interrupts import Terminated, deferred
from .nb201 import NB201Cell, Table
from .plugins import check_plugins, import_plugins, merge_plugins
from .reports import remove_figures, write_alpha_history
from .reproducibility import resolve_device
from .training import FinalTrainer, TrainConfig, parse_architecture

SEARCH_DEFAULTS = {
    "digits": {"epochs": 8, "layers": 5, "channels": 8, "batch_size": 64, "seed": 2},
    "cifar10": {"epochs": 50, "layers": 8, "channels": 16, "batch_size": 64, "seed": 2},
}
# CIFAR-100 and image folders (and any other dataset, from Python) take the paper's CIFAR-10
# settings, except that a folder trains without cutout and without the auxiliary head (both are
# sized for 32x32 images; the head fits only 8x8 features at 2/3 depth).
SEARCH_DEFAULTS.update({name: dict(SEARCH_DEFAULTS["cifar10"]) for name in ("cifar100",
                                                                          data.FOLDER)})
# The DARTS family's own per-dataset defaults, over SEARCH_DEFAULTS (and under a method's
# preset): on digits the paper's architecture learning rate (3e-4) leaves every op's weight
# between 0.123 and 0.127 after 8 epochs (uniform: 0.125); 1e-2 moves them to 0.077-0.179
# (3e-3: 0.111-0.143), so the quick start's search visibly learns (README "Quick start").
DARTS_SEARCH_DEFAULTS = {"digits": {"arch_learning_rate": 1e-2}}
TRAIN_DEFAULTS = {
    "digits": {"epochs": 30, "layers": 5, "channels": 16, "batch_size": 128, "auxiliary": False,
               "cutout": 0, "seed": 0},
    "cifar10": {"epochs": 600, "layers": 20, "channels": 36, "batch_size": 96, "auxiliary": True,
                "cutout": 16, "seed": 0},
}
TRAIN_DEFAULTS.update({"cifar100": dict(TRAIN_DEFAULTS["cifar10"]),
                       data.FOLDER: {**TRAIN_DEFAULTS["cifar10"], "cutout": 0,
                                     "auxiliary": False}})
# An NB201 cell trains with the benchmark's recipe on any dataset (xautodl's
# configs/nas-benchmark/hyper-opts/200E.config, and TinyNetwork's C and N):
# C=16, N=5, 200 epochs, SGD with Nesterov momentum 0.9, lr 0.1 cosine to 0, weight decay 5e-4,
# batch 256, no clipping, no cutout.
NB201_TRAIN_DEFAULTS = {"epochs": 200, "layers": 5, "channels": 16, "batch_size": 256,
                        "learning_rate": 0.1, "lr_min": 0.0, "momentum": 0.9, "nesterov": True,
                        "weight_decay": 5e-4, "grad_clip": None, "auxiliary": False,
                        "drop_path_prob": 0.0, "cutout": 0, "seed": 0}
# issue 19: a search of the NAS-Bench-201 space (``space="nb201"``): the stage settings per dataset
# (``layers`` is N, the search cells per stage; digits: a small quick supernet, cifar10 and the
# rest: xautodl's C=16, N=5) and the config keys xautodl's NB201 searches set beyond DARTS's
# (``fastnas.darts.config.NB201_SEARCH``: weight decay 5e-4, Nesterov momentum).
NB201_SEARCH_DEFAULTS = {
    "digits": {"epochs": 8, "layers": 1, "channels": 8, "batch_size": 64, "seed": 2},
    "cifar10": {"epochs": 50, "layers": 5, "channels": 16, "batch_size": 64, "seed": 2},
}
NB201_SEARCH_CONFIG = {"weight_decay": NB201_SEARCH["weight_decay"],
                       "nesterov": NB201_SEARCH["nesterov"]}
EVAL_BATCH_SIZE = 256


class Interrupted(Exception):
    """Ctrl-C (``signal`` "SIGINT") or SIGTERM during a stage; the message says what was lost
    and where the checkpoint is."""

    def __init__(self, message: str, resumable: bool, signal: str = "SIGINT"):
        super().__init__(message)
        self.resumable = resumable
        self.signal = signal


@dataclass
class StageRun:
    """One running stage, as its observers see it."""

    kind: str                 # "search" or "train"
    output: str               # the stage's folder
    dataset: str
    method: Optional[str]     # the search method, None for training
    owner: Any                # the strategy's optimizer, or the FinalTrainer


class StageObserver:
    """Watches stages: ``start`` once, ``epoch`` after every epoch (its checkpoint and
    ``metrics.json`` written), ``end`` with the final metrics (files written). Plots, TensorBoard
    and other reports plug in here; the base class ignores everything."""

    def start(self, run: StageRun) -> None:
        pass

    def epoch(self, run: StageRun, record: dict) -> None:
        pass

    def end(self, run: StageRun, result: dict) -> None:
        pass


@dataclass
class StageOptions:
    """What every stage reads besides its own settings: data, device, files, output style, and
    the observers told about its progress."""

    dataset: Union[str, data.DataSource, None] = None   # a name, or fastnas.data.from_dataset(...)
    data_dir: str = "data"
    download: bool = False
    limit: Optional[int] = None
    device: str = "auto"
    workers: Optional[int] = None
    threads: Optional[int] = None
    resume: bool = False
    quiet: bool = False
    observers: Sequence[StageObserver] = field(default_factory=tuple)
    # Stage tables of a config file (``fastnas.config.read_config_file``): their keys are the
    # stage config's own, under the flags and over the per-dataset defaults.
    config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    image_size: Optional[int] = None       # --dataset folder: scale and crop to this side
    test_fraction: Optional[float] = None  # --dataset folder: split one folder into train/test
    # resume is on because torchrun runs the stage, not because it was asked for
    resume_automatic: bool = False
    # the user asked to start anew (--no-resume): a folder holding another stage's run (another
    # search method, or a training) is replaced instead of refused
    replace: bool = False
    # issue 19: an NB201 table (CSV) that replaces the shipped one for the found cell's
    # accuracies (--table FILE); only for space nb201
    table: Optional[str] = None
    # modules to import before the settings are read (--plugins; ``fastnas.plugins``): recorded
    # in the checkpoint and config.json, imported again on resume
    plugins: Sequence[str] = ()


@dataclass(frozen=True)
class SearchMethod:
    """A search strategy as the search stage sees it: its optimizer class, the config key each
    stage setting maps to, and what its final validation accuracy scores."""

    name: str
    optimizer: Callable[[Mapping[str, Any]], Any]
    config_keys: Mapping[str, str]
    scored: str   # what the final validation accuracy measures, in which mode

    def config_given(self, given: Mapping[str, Any]) -> Dict[str, Any]:
        for key in given:
            if key not in self.config_keys:
                flag = "--" + key.replace("_", "-")
                raise UserError(f"{flag} does not apply to --method {self.name}")
        return {self.config_keys[k]: v for k, v in given.items()}


_COMMON_KEYS = {"epochs": "epochs", "channels": "channels", "batch_size": "batch_size",
                "seed": "seed", "on_nonfinite": "on_nonfinite",
                "max_nonfinite_skips": "max_nonfinite_skips", "lr_min": "lr_min",
                "momentum": "momentum", "weight_decay": "weight_decay", "grad_clip": "grad_clip"}
# Settings a resumed stage may change: how long it runs, what a non-finite value does, and
# whether the supernet runs compiled (the same computation).
RESUME_MAY_CHANGE = ("epochs", "on_nonfinite", "max_nonfinite_skips", "compile")
# The DARTS config keys of the methods built on it (issue 18), each its own search setting.
DARTS_METHOD_KEYS = ("method", "relaxation", "tau_max", "tau_min", "dirichlet_kl",
                     "partial_channels", "edge_normalization", "aux_skip", "beta_lambda",
                     "zero_one_weight", "perturbation", "epsilon_min", "epsilon_max", "pgd_steps",
                     "warmup_epochs", "early_stop_skips", "max_skips", "threshold")
SEARCH_METHODS: Dict[str, SearchMethod] = {
    "darts": SearchMethod("darts", DARTSOptimizer,
                          {**_COMMON_KEYS, "layers": "layers", "order": "order",
                           "compile": "compile", "space": "space", "primitives": "primitives",
                           "learning_rate": "learning_rate_w",
                           "arch_learning_rate": "learning_rate_alpha",
                           "arch_weight_decay": "arch_weight_decay",
                           **{k: k for k in DARTS_METHOD_KEYS}},
                          scored="supernet in eval mode: BatchNorm running statistics"),
    "enas": SearchMethod("enas", ENASOptimizer,
                         {**_COMMON_KEYS, "layers": "num_layers", "learning_rate": "shared_lr",
                          "arch_learning_rate": "controller_lr"},
                         scored="derived child with the shared weights, BatchNorm on batch "
                                "statistics"),
}
# Issue 19: random search with weight sharing, and ENAS over a cell space (one decision per edge).
SEARCH_METHODS.update({
    "rsps": SearchMethod("rsps", RSPSOptimizer,
                         {**_COMMON_KEYS, "layers": "layers", "compile": "compile",
                          "space": "space", "learning_rate": "learning_rate_w"},
                         scored="the selected cell with the shared weights, eval mode"),
    "enas-cells": SearchMethod("enas-cells", CellENASOptimizer,
                               {**_COMMON_KEYS, "layers": "layers", "space": "space",
                                "learning_rate": "shared_lr",
                                "arch_learning_rate": "controller_lr"},
                               scored="derived cell with the shared weights, eval mode"),
})
# ``--method enas`` over a cell space (``--space`` other than darts) runs ENAS over that space.
CELL_VARIANTS = {"enas": "enas-cells"}
DEFAULT_METHOD = "darts"
# Every name ``--method`` takes: the strategies, and the DARTS methods (``fastnas.darts.methods``),
# which search with the ``darts`` strategy and their preset.
METHOD_NAMES = tuple(dict.fromkeys([*SEARCH_METHODS, *METHODS]))


def resolve_method(name: str) -> Tuple[SearchMethod, Optional[str]]:
    """The strategy that searches with ``--method name`` and, for the DARTS family, the preset
    (``darts`` itself included); a UserError names the known methods."""
    if name in METHODS:
        return SEARCH_METHODS["darts"], name
    if name in SEARCH_METHODS:
        return SEARCH_METHODS[name], None
    raise UserError(f"unknown search method {name!r}; use --method one of "
                    f"{', '.join(METHOD_NAMES)}")


def method_for_space(method: str, space: Optional[str]) -> str:
    """The search method that runs ``method`` over the cell space ``space`` (None: the
    method's own space): ``enas`` over ``nb201`` is ``enas-cells``."""
    if space not in (None, "darts") and method in CELL_VARIANTS:
        return CELL_VARIANTS[method]
    return method


# -- shared plumbing ------------------------------------------------------------------------------
def _on_main(work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0, its result (or its UserError) on every rank. Under torchrun only
    rank 0 touches the output folder, which therefore need not be shared between nodes."""
    if not distributed.active():
        return work()
    outcome: Tuple[bool, Any] = (True, None)
    if distributed.is_main():
        try:
            outcome = (True, work())
        except UserError as e:
            outcome = (False, str(e))
    ok, value = distributed.broadcast(outcome)
    if not ok:
        raise UserError(value)
    return value


def _per_rank(batch_size: int) -> int:
    """The batch each rank takes: ``--batch-size`` is the global batch, split evenly."""
    world = distributed.world_size()
    if batch_size % world:
        raise UserError(f"--batch-size {batch_size} does not split evenly over {world} ranks; "
                        f"use a multiple of {world}")
    return batch_size // world


def _shard() -> Tuple[int, int]:
    return (distributed.rank(), distributed.world_size())


def _observers(options: StageOptions) -> Sequence[StageObserver]:
    return options.observers if distributed.is_main() else ()


def prepare_output(path: str) -> None:
    """Create ``path`` and check that it is writable, or raise a UserError naming it."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output directory {path}: {e.strerror or e}") from None


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--device {name}: {e}") from None


def _build(factory: Callable[[], Any]) -> Any:
    """Run a validating constructor; its ValueError/TypeError is the user's settings' fault."""
    try:
        return factory()
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def _resume_state(options: StageOptions, path: str, kind: str,
                  method: Optional[str] = None) -> Optional[dict]:
    """The checkpoint to resume from (the newest readable generation), or None (no resume
    asked, or no checkpoint yet); a checkpoint of another kind or method is a UserError."""
    if not options.resume:
        return None
    if not os.path.exists(path) and not os.path.exists(previous_path(path)):
        log(f"no checkpoint at {path}; starting a new {'training' if kind == 'train' else kind}")
        return None
    state, used = load_latest(path)
    try:
        check_kind(state, kind, method, source=used)
    except ValueError as e:
        if options.resume_automatic:
            raise UserError(f"{e} (resuming is automatic under torchrun: --no-resume starts "
                            "anew over it, --output DIR writes elsewhere)") from None
        raise UserError(str(e)) from None
    if "config" not in state or "run" not in state:
        raise UserError(f"{used} is not a checkpoint of the fastnas command line")
    return state


STAGE_FILES = ("checkpoint.pt", "checkpoint.prev.pt", "metrics.json", "genotype.json",
               "alphas.json", "config.json", "model.pt")


def _written_by(folder: str) -> Optional[str]:
    """Which stage wrote ``folder``, from its ``metrics.json``: ``"darts search"``, ``"enas
    search"``, ``"training"``, or None (no such file, or not a stage's)."""
    try:
        with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict):
        return None
    if "method" in metrics and "history" in metrics:
        return f"{metrics['method']} search"
    if "test_accuracy" in metrics:
        return "training"
    return None


def _claim_output(options: StageOptions, folder: str, stage: str) -> None:
    """Before a stage starts anew in ``folder``: refuse a folder that another stage (another
    search method, or a training) wrote, unless the user asked to start anew (``replace``), in
    which case that stage's files and figures go, so none of them is left to mislead."""
    found = _written_by(folder)
    if found is None or found == stage:
        return
    if not options.replace:
        raise UserError(f"{folder} holds {_a(found)} (see its metrics.json), which {_a(stage)} "
                        "would overwrite: give another --output, or --no-resume to replace it")
    log(f"replacing the {found} in {folder} (--no-resume)")
    for name in STAGE_FILES:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)
    remove_figures(os.path.join(folder, "plots"))


def _a(what: str) -> str:
    return ("an " if what[0] in "aeiou" else "a ") + what


def _restore(owner: Any, state: dict, path: str) -> None:
    """``owner.load_state_dict(state)``; a state that does not fit is the file's fault."""
    try:
        owner.load_state_dict(state)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def _total_epochs(given: Optional[int], done: int, saved_total: int, path: str) -> int:
    """The epochs a resumed stage runs to: ``--epochs`` if given (not below what is done)."""
    if given is None:
        return saved_total
    if given < done:
        raise UserError(f"--epochs {given} is below the {done} epoch(s) the checkpoint {path} "
                        f"has done; give --epochs {done} or more, or drop --resume")
    return given


def _check_batches(loaders: Mapping[str, Any], limit: Optional[int]) -> None:
    for name, loader in loaders.items():
        if len(loader) == 0:
            n = len(loader.dataset)
            raise UserError(f"--limit {limit} leaves {n} image(s) for the {name}, fewer than one "
                            f"batch of {loader.batch_size}; raise --limit or lower --batch-size")


@dataclass
class _Saved:
    """Whether the stage has a checkpoint on disk (for the message after an interrupt)."""

    value: bool


def _write_epoch(writes: Sequence[Callable[[], None]], saved: Optional[_Saved] = None) -> None:
    """An epoch's files, all written or (Ctrl-C and SIGTERM held back meanwhile) none; under
    torchrun by rank 0 alone (every rank calls it with the same, already gathered, state).
    ``saved`` is set inside the same deferred block, on every rank, so an interrupt never falls
    between the writes and the flag."""
    with deferred():
        if distributed.is_main():
            for write in writes:
                write()
        if saved is not None:
            saved.value = True


def _stopped(error: NonFiniteError, kind: str, checkpoint: str, done: int,
             saved: bool) -> NonFiniteError:
    kept = (f"the last good checkpoint {checkpoint} ({epochs(done)} done) is kept"
            if saved else "no checkpoint was written")
    return error.in_stage(kind, f"{kept}; see --on-nonfinite")


def _data_source(options: StageOptions, state: Optional[dict], path: str) -> data.DataSource:
    """The stage's data: the checkpoint's when resuming (its dataset, limit, folder settings and
    stored normalization; a contradicting option is an error), else the options' (digits by
    default)."""
    if state is None:
        return _open_data(options, options.dataset, lambda: data.open_data(
            options.dataset, options.data_dir, options.limit, options.image_size,
            options.test_fraction))
    saved = state["run"]
    record = saved.get("data") or {"dataset": saved["dataset"], "limit": saved.get("limit")}
    source = options.dataset if isinstance(options.dataset, data.DataSource) else None
    for flag, key, given in (("--dataset", "dataset", source.name if source else options.dataset),
                             ("--limit", "limit", options.limit),
                             ("--image-size", "image_size", options.image_size),
                             ("--test-fraction", "test_fraction", options.test_fraction)):
        if given is not None and given != record.get(key):
            raise UserError(f"{flag} {given} does not match the checkpoint {path} "
                            f"({key} {record.get(key)}); drop the flag or drop --resume")
    return source or _open_data(options, record["dataset"], lambda: data.open_data(
        data_dir=options.data_dir, record=record))


def _file_settings(options: StageOptions, stage: str, info: Any) -> Dict[str, Any]:
    """The config file's table for ``stage`` (config keys; a search's epochs are its config's
    ``num_steps``) without the keys the stage sets itself; a data key that contradicts the
    dataset is an error."""
    table = {k: v for k, v in options.config.get(stage, {}).items()
             if k not in ("method", "plugins")}
    for key in ("in_channels", "num_classes"):
        if key in table and table.pop(key) != getattr(info, key):
            raise UserError(f"the config file's {stage}.{key} does not match the dataset "
                            f"({key} {getattr(info, key)}); drop the key")
    if stage == "search" and "num_steps" in table:
        table["epochs"] = table.pop("num_steps")
    return table


def _stage_plugins(options: StageOptions, state: Optional[dict], checkpoint: str) -> List[str]:
    """Import the stage's plugins (``fastnas.plugins``) and return them, to be recorded: those
    of ``--plugins``, of the config file's tables (a run folder's ``config.json`` lists them) and
    of the checkpoint being resumed. A missing one is a UserError naming it."""
    tables = [table.get("plugins", []) for table in options.config.values()]
    plugins = import_plugins(merge_plugins(check_plugins(list(options.plugins)),
                                           *map(check_plugins, tables)))
    recorded = check_plugins(state["run"].get("plugins", [])) if state else []
    try:
        import_plugins(recorded)
    except UserError as e:
        raise UserError(f"{e}; the checkpoint {checkpoint} was written with it") from None
    return merge_plugins(plugins, recorded)


def _with_plugins(table: Mapping[str, Any], plugins: Sequence[str]) -> Dict[str, Any]:
    """A stage's ``config.json`` table, listing its plugins first when it has any."""
    return {"plugins": list(plugins), **table} if plugins else dict(table)


def _write_config(stage: str, table: Mapping[str, Any], path: str) -> None:
    """``config.json``: the resolved settings of a stage, in the form ``--config`` reads, so a
    run can be repeated from its folder."""
    write_json_atomic({stage: {k: v for k, v in table.items() if k not in RUNTIME_KEYS}}, path)


def _check_unchanged(given: Mapping[str, Any], config: Mapping[str, Any], path: str) -> None:
    def plain(v):   # a pair read from JSON or TOML is a list, the checkpoint's a tuple
        return list(v) if isinstance(v, tuple) else v

    for key, value in given.items():
        if key not in RESUME_MAY_CHANGE and key in config and plain(config[key]) != plain(value):
            flag = "--" + {"drop_path_prob": "drop-path"}.get(key, key.replace("_", "-"))
            raise UserError(f"{flag} {value} does not match the checkpoint {path} "
                            f"({key} {config[key]}); drop the flag or drop --resume")


def _open_data(options: StageOptions, dataset: Any, opener: Callable[[], data.DataSource]
               ) -> data.DataSource:
    """``opener()``, after fetching CIFAR with ``--download`` if its folder is missing."""
    if options.download and dataset in data.CIFAR_FOLDERS:
        if not os.path.isdir(data.cifar_folder(dataset, options.data_dir)):
            log(f"downloading {data.CIFAR_TITLES[dataset]} into {options.data_dir}")
            data.download_cifar(dataset, options.data_dir)
    return opener()


def _check_size(smallest: int, limit: Optional[int], dataset: str = "") -> None:
    if smallest < 2:
        cause = f"--limit {limit} leaves" if limit is not None else f"the {dataset} data has"
        raise UserError(f"{cause} {smallest} image(s) in a split; training needs at least 2")


def _workers(options: StageOptions, source: data.DataSource) -> int:
    return source.workers if options.workers is None else options.workers


def _set_threads(options: StageOptions, dataset: str) -> None:
    """Digits' tensors are too small to gain from intra-op threads, and threads that wait on
    each other lose several times over when other processes share the cores: one by default."""
    threads = options.threads or (1 if dataset == "digits" else None)
    if threads:
        torch.set_num_threads(threads)


def _interrupted(kind: str, done: int, total: int, checkpoint: str, saved: bool,
                 error: BaseException) -> Interrupted:
    signal = "SIGTERM" if isinstance(error, Terminated) else "SIGINT"
    how = "terminated (SIGTERM)" if signal == "SIGTERM" else "interrupted"
    if saved:
        return Interrupted(f"{kind} {how} in epoch {done + 1}/{total}; the last checkpoint "
                           f"{checkpoint} holds {done} finished epoch(s)", True, signal)
    return Interrupted(f"{kind} {how} in epoch {done + 1}/{total} before any checkpoint "
                       f"was written", False, signal)


# -- search ---------------------------------------------------------------------------------------
def search_stage(options: StageOptions, method: Optional[str], given: Dict[str, Any],
                 output: str) -> Tuple[Any, dict]:
    """Search with ``method`` (a key of ``SEARCH_METHODS``; None: the config file's, else
    ``darts``) and the settings ``given`` (keys of ``SEARCH_DEFAULTS`` and the search flags,
    over the config file's ``search`` table); writes ``genotype.json``, ``metrics.json``,
    ``alphas.json`` (``fastnas.reports.alphas``), ``config.json`` and ``checkpoint.pt`` in
    ``output``. Returns ``(architecture, metrics)``."""
    method = method or options.config.get("search", {}).get("method")
    explicit = method is not None   # else a resumed search keeps its checkpoint's method
    method = method or DEFAULT_METHOD
    method = method_for_space(method, given.get("space",
                                                 options.config.get("search", {}).get("space")))
    method, preset = resolve_method(method)
    title = preset or method.name   # what the log lines call it: the DARTS method's name
    if preset is not None and explicit:
        given = {**given, "method": preset}
    paths = {name: os.path.join(output, name)
             for name in ("genotype.json", "metrics.json", "alphas.json", "config.json",
                          "checkpoint.pt")}
    checkpoint = paths["checkpoint.pt"]
    device = _device(options.device)
    state = _on_main(lambda: _resume_state(options, checkpoint, "search", method.name))
    plugins = _stage_plugins(options, state, checkpoint)  # before any setting or op name is read
    if state is None:
        _on_main(lambda: _claim_output(options, output, f"{method.name} search"))
    source = _data_source(options, state, checkpoint)
    dataset, limit, info = source.name, source.limit, source.info
    _set_threads(options, dataset)
    given = {**_file_settings(options, "search", info), **method.config_given(given)}
    if state:
        _check_unchanged(given, state["config"], checkpoint)
        config = dict(state["config"], **{k: v for k, v in given.items()
                                          if k in RESUME_MAY_CHANGE and k != "epochs"})
        total = _total_epochs(given.get("epochs"), int(state["epoch"]),
                              int(state.get("total_epochs", config["num_steps"])), checkpoint)
    else:
        defaults = method.config_given(SEARCH_DEFAULTS.get(dataset, SEARCH_DEFAULTS[data.FOLDER]))
        if given.get("space") == "nb201":
            defaults = {**method.config_given(NB201_SEARCH_DEFAULTS.get(
                dataset, NB201_SEARCH_DEFAULTS["cifar10"])), **NB201_SEARCH_CONFIG}
        if preset is not None:   # a DARTS method: its preset over the dataset's defaults
            defaults.update(method.config_given(DARTS_SEARCH_DEFAULTS.get(dataset, {})))
            defaults = {k: v for k, v in defaults.items() if k not in PRESETS[preset]}
            if given.get("space") == "nb201":   # xautodl's NB201 weight settings stay
                defaults.update(NB201_SEARCH_CONFIG)
        settings = {**defaults, **given}
        total = settings.pop("epochs")
        config = dict(settings, in_channels=info.in_channels, num_classes=info.num_classes)
    config.update(num_steps=total, device=str(device))
    run_info = {"method": method.name, "dataset": dataset, "limit": limit,
                "data": source.record(), **({"plugins": plugins} if plugins else {})}
    table = _nb201_table(options, config.get("space", "darts"))

    split = source.search_data()
    _check_size(len(split.arch), limit, dataset)
    _on_main(lambda: prepare_output(output))
    optimizer = _build(lambda: method.optimizer(config))
    if state:
        _restore(optimizer, state, checkpoint)
    cfg = optimizer.config
    seed, workers = cfg.seed or 0, _workers(options, source)
    batch = _per_rank(cfg.batch_size)
    train_loader = data.make_loader(split.weights, batch, shuffle=True, device=device,
                                    seed=seed, stream=0, num_workers=workers, shard=_shard())
    val_loader = data.make_loader(split.arch, batch, shuffle=True, device=device,
                                  seed=seed, stream=1, num_workers=workers, shard=_shard())
    eval_loader = data.make_loader(split.arch_eval, EVAL_BATCH_SIZE, shuffle=False,
                                   device=device, num_workers=workers, shard=_shard())
    _check_batches({"weight half of the search split": train_loader,
                    "architecture half of the search split": val_loader}, limit)
    # the settings are good (bad input wrote nothing): they go into the folder first
    _on_main(lambda: _write_config("search", _with_plugins(
        {"method": method.name, **cfg.to_dict()}, plugins), paths["config.json"]))
    loaders = [train_loader, val_loader]
    data.set_epoch(loaders, optimizer.epoch)

    size = ", ".join(f"{k} {getattr(cfg, k)}" for k in ("space", "layers", "num_layers",
                                                          "channels", "batch_size", "order",
                                                          "search_space")
                     if hasattr(cfg, k))
    log(f"search: {title} on {dataset} ({len(split.weights)} weight + {len(split.arch)} "
        f"architecture images), {size}, epochs {optimizer.epoch}->{total}, "
        f"device {device}, output {output}")
    started = time.perf_counter()
    saved = _Saved(state is not None)
    run = StageRun("search", output, dataset, method.name, optimizer)
    for observer in _observers(options):
        observer.start(run)

    def metrics(final: Optional[dict], arch) -> dict:
        return {"method": method.name, "dataset": dataset, "data": run_info["data"],
                "complete": final is not None,
                "epochs": optimizer.epoch,
                "val_accuracy": final["accuracy"] if final else None,
                "val_loss": final["loss"] if final else None,
                "genotype": str(arch),
                "seconds": sum(r["seconds"] for r in optimizer.history),
                "config": cfg.to_dict(), "history": optimizer.history}

    with Progress("search", total, optimizer.epoch, len(train_loader),
                  bars=False if options.quiet else None) as progress:
        def on_epoch(opt, record: dict) -> None:
            data.set_epoch(loaders, opt.epoch)
            state = {**opt.state_dict(), "run": run_info}

            _write_epoch([lambda: save_checkpoint(state, checkpoint),
                          lambda: write_json_atomic(metrics(None, opt.architecture()),
                                                    paths["metrics.json"]),
                          lambda: write_alpha_history(paths["alphas.json"], method.name,
                                                      cfg.to_dict(), opt.history)], saved)
            for observer in _observers(options):
                observer.epoch(run, record)
            progress.epoch(record["epoch"], opt.epoch_summary(record))

        try:
            arch = optimizer.search(train_loader, val_loader, epochs=total, callback=on_epoch,
                                    on_step=lambda opt, s: progress.step(s["train_loss"],
                                                                         s["train_acc"]),
                                    progress=False)
        except KeyboardInterrupt as e:
            raise _interrupted("search", optimizer.epoch, total, checkpoint, saved.value,
                               e) from None
        except NonFiniteError as e:
            raise _stopped(e, "search", checkpoint, optimizer.epoch, saved.value) from None

    final = optimizer.evaluate(eval_loader)
    result = metrics(final, arch)
    table_lines = []
    if table is not None:  # NB201: the found cell's accuracies in the table, whatever the data
        result["nb201_table"], table_lines = _table_accuracies(table, arch, options.table)
    _write_epoch([lambda: arch.save(paths["genotype.json"]),
                  lambda: write_json_atomic(result, paths["metrics.json"])])
    for observer in _observers(options):
        observer.end(run, result)
    batch_stats = "; NB201 search cells: batch statistics" if table is not None else ""
    print_block(f"search finished: {title} on {dataset}, {epochs(optimizer.epoch)} "
                f"in {duration(time.perf_counter() - started)}",
                [("genotype", str(arch)),
                 ("val accuracy", f"{final['accuracy']:.4f} ({method.scored}{batch_stats}, "
                                  "architecture half of the train split)"),
                 *table_lines,
                 *([("stopped", optimizer.stopped)] if getattr(optimizer, "stopped", None)
                   else []),
                 ("files", list(paths.values()))])
    return arch, result


def _nb201_table(options: StageOptions, space: str) -> Optional[Table]:
    """The NB201 table a search of ``space`` reports the found cell's accuracies from
    (``--table FILE``, else the shipped one; read before the search, so a bad file costs no
    search), or None for the DARTS space."""
    if space != "nb201":
        if options.table is not None:
            raise UserError("--table is for --space nb201 (the NAS-Bench-201 table)")
        return None
    return Table.load(options.table)


def _table_accuracies(table: Table, cell: NB201Cell, path: Optional[str]
                      ) -> Tuple[Optional[Dict[str, Any]], list]:
    """``metrics.json``'s ``nb201_table`` (the three test accuracies, %, and the table file,
    None for the shipped one) and the summary line; a cell the table lacks is None, said so."""
    source = path or "the shipped table"
    if cell not in table:
        log(f"the found cell {cell} is not in the NB201 table {source}")
        return None, [("table", f"NB201 table: the cell is not in {source}")]
    accuracies = table.lookup(cell)
    return ({**accuracies.as_dict(), "table": path},
            [("table", accuracies.summary() + ("" if path is None else f" ({path})"))])


# -- final training -------------------------------------------------------------------------------
def resolve_genotype(text: str) -> Genotype:
    """A genotype file (JSON or printed text), a published cell name, or ``Genotype(...)`` text."""
    if os.path.exists(text):
        try:
            return Genotype.load(text)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise UserError(f"cannot read genotype file {text}: {reason}") from None
    if text in PUBLISHED:
        return PUBLISHED[text]
    if text.lstrip().startswith("Genotype("):
        try:
            return Genotype.parse(text)
        except ValueError as e:
            raise UserError(f"cannot parse the --genotype text: {e}") from None
    if os.sep in text or "/" in text or text.endswith((".json", ".txt")):
        raise UserError(f"genotype file {text} does not exist")
    raise UserError(f"unknown genotype {text!r}: not a file, nor a published cell "
                    f"({', '.join(PUBLISHED)})")


def train_stage(options: StageOptions, given: Dict[str, Any], output: str,
                genotype: Optional[Genotype] = None) -> Tuple[Genotype, dict]:
    """Train ``genotype`` (or the checkpoint's, on resume) from scratch with the settings
    ``given`` (keys of ``TrainConfig``); writes ``model.pt``, ``metrics.json`` and
    ``checkpoint.pt`` in ``output``. Returns ``(genotype, metrics)``."""
    paths = {name: os.path.join(output, name) for name in ("model.pt", "metrics.json",
                                                           "config.json", "checkpoint.pt")}
    checkpoint = paths["checkpoint.pt"]
    device = _device(options.device)
    state = _on_main(lambda: _resume_state(options, checkpoint, "train"))
    plugins = _stage_plugins(options, state, checkpoint)  # before the genotype's ops are read
    if state is None:
        _on_main(lambda: _claim_output(options, output, "training"))
    if state is None and genotype is None:
        raise UserError("train needs --genotype FILE|NAME: a genotype.json written by "
                        f"fastnas search, or a published cell ({', '.join(PUBLISHED)})")
    source = _data_source(options, state, checkpoint)
    dataset, limit, info = source.name, source.limit, source.info
    _set_threads(options, dataset)
    given = {**_file_settings(options, "train", info), **given}
    if state:
        saved_genotype = parse_architecture(state["genotype"])
        if genotype is not None and genotype != saved_genotype:
            raise UserError(f"the genotype differs from the one being trained in {checkpoint}; "
                            "drop --resume to start over")
        genotype = saved_genotype
        _check_unchanged(given, state["config"], checkpoint)
        config = dict(state["config"], **{k: v for k, v in given.items()
                                          if k in RESUME_MAY_CHANGE and k != "epochs"})
        config["epochs"] = _total_epochs(given.get("epochs"), int(state["epoch"]),
                                         state["config"]["epochs"], checkpoint)
    else:
        defaults = (NB201_TRAIN_DEFAULTS if isinstance(genotype, NB201Cell)
                    else TRAIN_DEFAULTS.get(dataset, TRAIN_DEFAULTS[data.FOLDER]))
        config = {**defaults, **given, "in_channels": info.in_channels,
                  "num_classes": info.num_classes}
    config["device"] = str(device)
    run_info = {"dataset": dataset, "limit": limit, "data": source.record(),
                **({"plugins": plugins} if plugins else {})}

    cfg = _build(lambda: TrainConfig.from_dict(config))
    # Data first: loading may import libraries that draw from the global generators (sklearn's
    # import does), which must happen before the trainer seeds them or restores their state.
    train_set = source.split("train", augment=True, cutout=cfg.cutout)
    test_set = source.split("test")
    _check_size(min(len(train_set), len(test_set)), limit, dataset)
    _on_main(lambda: prepare_output(output))
    trainer = _build(lambda: FinalTrainer(genotype, cfg))
    if state:
        _restore(trainer, state, checkpoint)
    workers = _workers(options, source)
    train_loader = data.make_loader(train_set, _per_rank(cfg.batch_size), shuffle=True,
                                    device=device, seed=cfg.seed, stream=2, num_workers=workers,
                                    shard=_shard())
    test_loader = data.make_loader(test_set, EVAL_BATCH_SIZE, shuffle=False, device=device,
                                   num_workers=workers, shard=_shard())
    _check_batches({"train split": train_loader}, limit)
    _on_main(lambda: _write_config("train", _with_plugins(cfg.to_dict(), plugins),
                                   paths["config.json"]))

    log(f"train: {dataset} ({len(train_set)} train, {len(test_set)} test images), "
        f"{cfg.layers} layers x {cfg.channels} channels, batch {cfg.batch_size}, "
        f"epochs {trainer.epoch}->{cfg.epochs}, device {device}, output {output}")
    started = time.perf_counter()
    saved = _Saved(state is not None)
    run = StageRun("train", output, dataset, None, trainer)
    for observer in _observers(options):
        observer.start(run)

    with Progress("train", cfg.epochs, trainer.epoch, len(train_loader),
                  bars=False if options.quiet else None) as progress:
        def on_epoch(t: FinalTrainer, record: dict) -> None:
            state = {**t.state_dict(), "run": run_info}

            _write_epoch([lambda: save_checkpoint(state, checkpoint),
                          lambda: write_json_atomic({"dataset": dataset, **t.metrics()},
                                                    paths["metrics.json"])], saved)
            for observer in _observers(options):
                observer.epoch(run, record)
            progress.epoch(record["epoch"], t.epoch_summary(record))

        try:
            result = trainer.fit(train_loader, test_loader, callback=on_epoch,
                                 on_step=lambda t, s: progress.step(s["loss"], s["acc"]),
                                 progress=False)
        except KeyboardInterrupt as e:
            raise _interrupted("training", trainer.epoch, cfg.epochs, checkpoint,
                               saved.value, e) from None
        except NonFiniteError as e:
            raise _stopped(e, "training", checkpoint, trainer.epoch, saved.value) from None

    try:
        result = {"dataset": dataset, **result,
                  **_recalibrated(trainer, train_loader, test_loader)}
    except KeyboardInterrupt as e:  # all epochs are in the checkpoint: resuming recalibrates
        signal = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        how = "terminated (SIGTERM)" if signal == "SIGTERM" else "interrupted"
        raise Interrupted(f"training {how} while recomputing the BatchNorm statistics after "
                          f"the last epoch; the checkpoint {checkpoint} holds all "
                          f"{trainer.epoch} epoch(s)",
                          True, signal) from None
    except NonFiniteError as e:
        raise _stopped(e, "training", checkpoint, trainer.epoch, saved.value) from None
    _write_epoch([lambda: trainer.save_model(paths["model.pt"], dataset=dataset,
                                             test_accuracy=result["test_accuracy"],
                                             data=run_info["data"],
                                             **({"plugins": plugins} if plugins else {})),
                  lambda: write_json_atomic(result, paths["metrics.json"])])
    for observer in _observers(options):
        observer.end(run, result)
    print_block(f"training finished: {dataset}, {epochs(trainer.epoch)} "
                f"in {duration(time.perf_counter() - started)}",
                [("genotype", str(genotype)),
                 ("test accuracy", [
                     f"{result['test_accuracy']:.4f} (eval mode, of model.pt: BatchNorm "
                     "statistics recomputed over the train split)",
                     f"{result['test_accuracy_running_statistics']:.4f} with training's running "
                     f"statistics (best {result['best_test_accuracy']:.4f} at epoch "
                     f"{result['best_epoch'] + 1})"]),
                 ("parameters", f"{result['params'] / 1e6:.3f} M (without the auxiliary head)"),
                 ("multiply-adds", f"{result['multiply_adds'] / 1e6:.2f} M per image"),
                 ("files", list(paths.values()))])
    return genotype, result


def _recalibrated(trainer: FinalTrainer, train_loader, test_loader) -> Dict[str, Any]:
    """The trained network's BatchNorm statistics recomputed over the train split (see
    ``FinalTrainer.recalibrate_batch_norm``; its data order that of the epoch after the last,
    so a resumed run recomputes the same), and its test loss and accuracy with them: what
    ``model.pt`` holds and scores. The last epoch's, with training's running statistics, stay
    as ``test_accuracy_running_statistics``."""
    data.set_epoch([train_loader], trainer.epoch)
    trainer.recalibrate_batch_norm(train_loader)
    final = trainer.evaluate(test_loader)
    last = trainer.history[-1]
    return {"test_accuracy": final["accuracy"], "test_loss": final["loss"],
            "test_accuracy_running_statistics": last["test_acc"],
            "test_loss_running_statistics": last["test_loss"]}


# -- both -----------------------------------------------------------------------------------------
def run_pipeline(options: StageOptions, method: Optional[str], search_given: Dict[str, Any],
                 train_given: Dict[str, Any], output: str) -> Dict[str, dict]:
    """Search with ``method`` into ``output/search``, then train the result from scratch into
    ``output/train``; ``output/config.json`` holds both stages' settings. Returns both stages'
    metrics (``{"search": ..., "train": ...}``)."""
    started = time.perf_counter()
    arch, searched = search_stage(options, method, search_given, os.path.join(output, "search"))
    if not isinstance(options.dataset, data.DataSource):  # train on what the search read
        source = data.open_data(data_dir=options.data_dir, record=searched["data"])
        options = dataclasses.replace(options, dataset=source, limit=None, image_size=None,
                                      test_fraction=None)
    _, trained = train_stage(options, train_given, os.path.join(output, "train"), arch)
    _on_main(lambda: _join_configs(output))
    print_block(f"pipeline finished in {duration(time.perf_counter() - started)}",
                [("search", f"val accuracy {searched['val_accuracy']:.4f} -> "
                            f"{os.path.join(output, 'search', 'genotype.json')}"),
                 ("train", f"test accuracy {trained['test_accuracy']:.4f} -> "
                           f"{os.path.join(output, 'train', 'model.pt')}")])
    return {"search": searched, "train": trained}


def _join_configs(output: str) -> None:
    tables = {}
    for stage in ("search", "train"):
        with open(os.path.join(output, stage, "config.json"), encoding="utf-8") as f:
            tables.update(json.load(f))
    write_json_atomic(tables, os.path.join(output, "config.json"))


__all__ = ["DARTS_METHOD_KEYS", "DARTS_SEARCH_DEFAULTS", "DEFAULT_METHOD", "EVAL_BATCH_SIZE",
           "Interrupted", "METHOD_NAMES", "NB201_SEARCH_DEFAULTS", "SEARCH_DEFAULTS",
           "SEARCH_METHODS", "SearchMethod", "resolve_method",
           "StageObserver", "StageOptions", "StageRun", "TRAIN_DEFAULTS", "prepare_output",
           "resolve_genotype", "run_pipeline", "search_stage", "train_stage"]
