"""The ``fastnas`` command line: ``search``, ``train``, and ``run`` (search, then train).

    fastnas run --dataset digits                  # the whole pipeline, minutes on a laptop CPU
    fastnas search --method darts --dataset cifar10 --data-dir data
    fastnas train --genotype runs/cifar10-search/genotype.json --dataset cifar10

Settings left out fall back to per-dataset defaults (``SEARCH_DEFAULTS``, ``TRAIN_DEFAULTS``): the
paper's for CIFAR-10, small quick ones for digits. A resumed run takes its settings from its
checkpoint; a flag that contradicts the checkpoint is an error (``--epochs`` may change).

Bad input raises :class:`UserError`; ``main`` prints it as one line and returns 2. Ctrl-C prints
where the last checkpoint is and how to resume, and returns 130. A subcommand is one
``_add_<name>_command`` function in ``COMMANDS``; search methods are ``SearchMethod``
entries of ``SEARCH_METHODS``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from . import data
from .checkpoint import load_checkpoint, save_atomic, write_json_atomic
from .darts import DARTSOptimizer
from .errors import UserError
from .genotypes import PUBLISHED, Genotype
from .progress import Progress
from .reproducibility import resolve_device
from .training import FinalTrainer

SEARCH_DEFAULTS = {
    "digits": {"epochs": 8, "layers": 5, "channels": 8, "batch_size": 64, "seed": 2},
    "cifar10": {"epochs": 50, "layers": 8, "channels": 16, "batch_size": 64, "seed": 2},
}
TRAIN_DEFAULTS = {
    "digits": {"epochs": 30, "layers": 5, "channels": 16, "batch_size": 128, "auxiliary": False,
               "cutout": 0, "seed": 0},
    "cifar10": {"epochs": 600, "layers": 20, "channels": 36, "batch_size": 96, "auxiliary": True,
                "cutout": 16, "seed": 0},
}
SEARCH_METHOD_NAMES = ("darts", "enas")
EVAL_BATCH_SIZE = 256


class Interrupted(Exception):
    """Ctrl-C during a stage; the message says what was lost and where the checkpoint is."""

    def __init__(self, message: str, resumable: bool):
        super().__init__(message)
        self.resumable = resumable


# -- argument types -------------------------------------------------------------------------------
def _integer(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be a {what} integer, got {text!r}")
        return value
    return parse


def _number(low: float, high: Optional[float] = None, low_open=False, high_open=True):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or value != value:
            bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}"
            bounds += ")" if high is None or high_open else "]"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {text!r}")
        return value
    return parse


positive_int = _integer(1, "positive")
non_negative_int = _integer(0, "non-negative")


class _Parser(argparse.ArgumentParser):
    """Argument errors become one-line UserErrors instead of usage text and sys.exit."""

    def error(self, message):
        raise UserError(message)


# -- arguments ------------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data, device and files")
    g.add_argument("--dataset", choices=tuple(data.DATASETS), default=None,
                   help="digits (embedded, default) or cifar10")
    g.add_argument("--data-dir", default="data", metavar="DIR",
                   help=f"folder holding {data.CIFAR10_FOLDER} (cifar10; default: data)")
    g.add_argument("--download", action="store_true",
                   help="fetch CIFAR-10 into --data-dir through torchvision if it is not there")
    g.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="use only the first N images of each split (quick trials)")
    g.add_argument("--seed", type=non_negative_int, default=None, metavar="S",
                   help="random seed (default: 2 for search, 0 for training, as the paper)")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                   help="data loader processes (default: 0 for digits, up to 4 for cifar10)")
    g.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="PyTorch CPU threads (default: 1 for digits, PyTorch's own for cifar10)")
    g.add_argument("--output", default=None, metavar="DIR",
                   help="output folder (default: runs/<dataset>-<command>)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --output (starts anew if there is none)")
    g.add_argument("--quiet", action="store_true",
                   help="no progress bars; one log line per epoch")


def _add_search_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    g = p.add_argument_group("search")
    g.add_argument("--method", choices=SEARCH_METHOD_NAMES, default="darts",
                   help="search strategy (default: darts)")
    g.add_argument(f"--{prefix}epochs", type=positive_int, metavar="N",
                   help="search epochs (digits: 8, cifar10: 50)")
    g.add_argument(f"--{prefix}layers", type=positive_int, metavar="L",
                   help="cells in the supernet (digits: 5, cifar10: 8)")
    g.add_argument(f"--{prefix}channels", type=positive_int, metavar="C",
                   help="initial channels of the supernet (digits: 8, cifar10: 16)")
    g.add_argument(f"--{prefix}batch-size", type=positive_int, metavar="B",
                   help="search batch size (default: 64)")
    g.add_argument("--order", type=int, choices=(1, 2), default=None,
                   help="1: first-order DARTS (default), 2: second-order (unrolled)")


def _add_train_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    g = p.add_argument_group("final training")
    g.add_argument(f"--{prefix}epochs", type=positive_int, metavar="N",
                   help="training epochs (digits: 30, cifar10: 600)")
    g.add_argument(f"--{prefix}layers", type=positive_int, metavar="L",
                   help="cells in the network (digits: 5, cifar10: 20)")
    g.add_argument(f"--{prefix}channels", type=positive_int, metavar="C",
                   help="initial channels (digits: 16, cifar10: 36)")
    g.add_argument(f"--{prefix}batch-size", type=positive_int, metavar="B",
                   help="batch size (digits: 128, cifar10: 96)")
    g.add_argument("--learning-rate", type=_number(0, low_open=True, high=None), metavar="LR",
                   help="initial SGD learning rate, cosine-annealed to --lr-min (0.025)")
    g.add_argument("--lr-min", type=_number(0, high=None), metavar="LR",
                   help="final learning rate (0)")
    g.add_argument("--momentum", type=_number(0, 1), metavar="M", help="SGD momentum (0.9)")
    g.add_argument("--weight-decay", type=_number(0, high=None), metavar="WD",
                   help="weight decay (3e-4)")
    g.add_argument("--auxiliary", action=argparse.BooleanOptionalAction, default=None,
                   help="auxiliary classifier (digits: off, cifar10: on)")
    g.add_argument("--auxiliary-weight", type=_number(0, high=None), metavar="W",
                   help="weight of the auxiliary loss (0.4)")
    g.add_argument("--drop-path", dest="drop_path_prob", type=_number(0, 1), metavar="P",
                   help="drop path probability, ramped linearly from 0 over the epochs (0.2)")
    g.add_argument("--cutout", type=non_negative_int, metavar="N",
                   help="cutout square side, 0 for none (digits: 0, cifar10: 16)")
    g.add_argument("--grad-clip", type=_number(0, low_open=True, high=None), metavar="NORM",
                   help="gradient norm clip (5)")


SEARCH_KEYS = ("epochs", "layers", "channels", "batch_size", "order")
TRAIN_KEYS = ("epochs", "layers", "channels", "batch_size", "learning_rate", "lr_min", "momentum",
              "weight_decay", "auxiliary", "auxiliary_weight", "drop_path_prob", "cutout",
              "grad_clip")


def _given(args: argparse.Namespace, keys, prefix: str = "") -> Dict[str, Any]:
    """The stage settings the user gave, ``{key: value}`` for each flag that is not None; in
    ``fastnas run`` a stage's own flags carry a prefix (``--train-epochs``: ``train_``)."""
    out = {}
    for key in keys:
        value = getattr(args, prefix + key, None)
        if value is None:
            value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    if args.seed is not None:
        out["seed"] = args.seed
    return out


# -- shared stage plumbing ------------------------------------------------------------------------
@dataclass
class CommonFlags:
    """The flags every stage reads (data, device, files, output style)."""

    dataset: Optional[str]
    data_dir: str
    download: bool
    limit: Optional[int]
    device: str
    workers: Optional[int]
    threads: Optional[int]
    resume: bool
    quiet: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CommonFlags":
        return cls(args.dataset, args.data_dir, args.download, args.limit, args.device,
                   args.workers, args.threads, args.resume, args.quiet)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _prepare_output(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output directory {path}: {e.strerror or e}") from None


def _check_device(name: str):
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


def _load_resume_state(flags: CommonFlags, path: str, kind: str) -> Optional[dict]:
    """The checkpoint to resume from, or None (no --resume, or no checkpoint yet)."""
    if not flags.resume:
        return None
    if not os.path.exists(path):
        _log(f"no checkpoint at {path}; starting a new {kind}")
        return None
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "config" not in state or "run" not in state:
        raise UserError(f"{path} is not a fastnas {kind} checkpoint")
    return state


def _resolve_data(flags: CommonFlags, state: Optional[dict],
                  path: str) -> Tuple[str, Optional[int]]:
    """``(dataset, limit)``: the checkpoint's when resuming (a contradicting flag is an error),
    else the flags' (digits by default)."""
    if state is None:
        return flags.dataset or "digits", flags.limit
    saved = state["run"]
    for flag, key in (("--dataset", "dataset"), ("--limit", "limit")):
        given = getattr(flags, key)
        if given is not None and given != saved.get(key):
            raise UserError(f"{flag} {given} does not match the checkpoint {path} "
                            f"({key} {saved.get(key)}); drop the flag or drop --resume")
    return saved["dataset"], saved.get("limit")


def _check_unchanged(given: Mapping[str, Any], config: Mapping[str, Any], path: str) -> None:
    for key, value in given.items():
        if key != "epochs" and key in config and config[key] != value:
            flag = "--" + {"drop_path_prob": "drop-path"}.get(key, key.replace("_", "-"))
            raise UserError(f"{flag} {value} does not match the checkpoint {path} "
                            f"({key} {config[key]}); drop the flag or drop --resume")


def _load_data(flags: CommonFlags, dataset: str, loader: Callable[[], Any]):
    if flags.download and dataset == "cifar10":
        folder = data.cifar10_folder(flags.data_dir)
        if not os.path.isdir(folder):
            _log(f"downloading CIFAR-10 into {flags.data_dir}")
            data.download_cifar10(flags.data_dir)
    return loader()


def _check_size(smallest: int, limit: Optional[int]) -> None:
    if smallest < 2:
        raise UserError(f"--limit {limit} leaves {smallest} image(s) in a split; "
                        "training needs at least 2")


def _workers(flags: CommonFlags, dataset: str) -> int:
    return data.default_workers(dataset) if flags.workers is None else flags.workers


def _set_threads(flags: CommonFlags, dataset: str) -> None:
    """Digits' tensors are too small to gain from intra-op threads, and threads that wait on
    each other lose several times over when other processes share the cores: one by default."""
    threads = flags.threads or (1 if dataset == "digits" else None)
    if threads:
        torch.set_num_threads(threads)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def _interrupted(kind: str, done: int, total: int, checkpoint: str, saved: bool) -> Interrupted:
    if saved:
        return Interrupted(f"{kind} interrupted in epoch {done + 1}/{total}; the last checkpoint "
                           f"{checkpoint} holds {done} finished epoch(s)", resumable=True)
    return Interrupted(f"{kind} interrupted in epoch {done + 1}/{total} before any checkpoint "
                       f"was written", resumable=False)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _print_block(title: str, rows: List[Tuple[str, Any]]) -> None:
    width = max(len(label) for label, _ in rows)
    print(title)
    for label, value in rows:
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            print(f"  {(label if i == 0 else ''):<{width}}  {v}")
    sys.stdout.flush()


# -- search ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchMethod:
    """How ``_search`` drives one strategy: its optimizer class, the names its config gives the
    command line's settings, and how it scores the architecture it returns."""

    name: str
    optimizer: Callable[[Mapping[str, Any]], Any]
    config_keys: Mapping[str, str]
    scored: str

    def config_given(self, given: Mapping[str, Any]) -> Dict[str, Any]:
        for key in given:
            if key not in self.config_keys:
                flag = "--" + key.replace("_", "-")
                raise UserError(f"{flag} does not apply to --method {self.name}")
        return {self.config_keys[k]: v for k, v in given.items()}


def _enas_optimizer(config):
    from .enas import ENASOptimizer  # imported on use: the CLI starts faster without it

    return ENASOptimizer(config)


_COMMON_KEYS = {"epochs": "epochs", "channels": "channels", "batch_size": "batch_size",
                "seed": "seed"}
DARTS_METHOD = SearchMethod("darts", DARTSOptimizer, {**_COMMON_KEYS, "layers": "layers",
                                                      "order": "order"},
                            scored="supernet")
ENAS_METHOD = SearchMethod("enas", _enas_optimizer, {**_COMMON_KEYS, "layers": "num_layers"},
                           scored="derived child with the shared weights")


def _search(method: SearchMethod, flags: CommonFlags, given: Dict[str, Any],
            output: str) -> Tuple[Genotype, dict]:
    paths = {name: os.path.join(output, name)
             for name in ("genotype.json", "metrics.json", "checkpoint.pt")}
    checkpoint = paths["checkpoint.pt"]
    device = _check_device(flags.device)
    state = _load_resume_state(flags, checkpoint, "search")
    dataset, limit = _resolve_data(flags, state, checkpoint)
    info = data.dataset_info(dataset)
    _set_threads(flags, dataset)
    given = method.config_given(given)
    if state:
        if state["run"].get("method", "darts") != method.name:
            raise UserError(f"{checkpoint} is a {state['run'].get('method')} search; "
                            f"resume it with --method {state['run'].get('method')}")
        _check_unchanged(given, state["config"], checkpoint)
        config = dict(state["config"])
        total = given.get("epochs", int(state.get("total_epochs", config["num_steps"])))
    else:
        defaults = method.config_given(SEARCH_DEFAULTS[dataset])
        settings = {**defaults, **given}
        total = settings.pop("epochs")
        config = dict(settings, in_channels=info.in_channels, num_classes=info.num_classes)
    config.update(num_steps=total, device=str(device))
    run_info = {"method": method.name, "dataset": dataset, "limit": limit}

    split = _load_data(flags, dataset, lambda: data.search_data(dataset, flags.data_dir, limit))
    _check_size(len(split.arch), limit)
    _prepare_output(output)
    optimizer = _build(lambda: method.optimizer(config))
    if state:
        optimizer.load_state_dict(state)
    cfg = optimizer.config
    seed, workers = cfg.seed or 0, _workers(flags, dataset)
    train_loader = data.make_loader(split.weights, cfg.batch_size, shuffle=True, device=device,
                                    seed=seed, stream=0, num_workers=workers)
    val_loader = data.make_loader(split.arch, cfg.batch_size, shuffle=True, device=device,
                                  seed=seed, stream=1, num_workers=workers)
    eval_loader = data.make_loader(split.arch_eval, EVAL_BATCH_SIZE, shuffle=False,
                                   device=device, num_workers=workers)
    loaders = [train_loader, val_loader]
    data.set_epoch(loaders, optimizer.epoch)

    size = ", ".join(f"{k} {getattr(cfg, k)}" for k in ("layers", "num_layers", "channels",
                                                          "batch_size", "order", "search_space")
                     if hasattr(cfg, k))
    _log(f"search: {method.name} on {dataset} ({len(split.weights)} weight + {len(split.arch)} "
         f"architecture images), {size}, epochs {optimizer.epoch}->{total}, "
         f"device {device}, output {output}")
    started = time.perf_counter()
    saved = state is not None

    def metrics(final: Optional[dict], arch=None) -> dict:
        if arch is None:
            arch = optimizer.genotype() if method is DARTS_METHOD else optimizer.ask(greedy=True)
        return {"method": method.name, "dataset": dataset, "complete": final is not None,
                "epochs": optimizer.epoch,
                "val_accuracy": final["accuracy"] if final else None,
                "val_loss": final["loss"] if final else None,
                "genotype": str(arch),
                "seconds": sum(r["seconds"] for r in optimizer.history),
                "config": cfg.to_dict(), "history": optimizer.history}

    with Progress("search", total, optimizer.epoch, len(train_loader),
                  bars=False if flags.quiet else None) as progress:
        def on_epoch(opt: DARTSOptimizer, record: dict) -> None:
            nonlocal saved
            data.set_epoch(loaders, opt.epoch)
            save_atomic({**opt.state_dict(), "run": run_info}, checkpoint)
            saved = True
            write_json_atomic(metrics(None), paths["metrics.json"])
            val_loss = f"loss {record['val_loss']:.3f} " if "val_loss" in record else ""
            progress.epoch(record["epoch"],
                           f"train loss {record['train_loss']:.3f} acc {record['train_acc']:.3f}"
                           f"  val {val_loss}acc {record['val_acc']:.3f}"
                           f"  lr {record['lr']:.4f}  {record['seconds']:.1f}s")

        try:
            genotype = optimizer.search(train_loader, val_loader, epochs=total, callback=on_epoch,
                             on_step=lambda opt, s: progress.step(s["train_loss"], s["train_acc"]))
        except KeyboardInterrupt:
            raise _interrupted("search", optimizer.epoch, total, checkpoint, saved) from None

    if method is DARTS_METHOD:
        final = optimizer.evaluate(eval_loader)
    else:
        final = optimizer.evaluate(eval_loader, genotype)
    genotype.save(paths["genotype.json"])
    result = metrics(final, genotype)
    write_json_atomic(result, paths["metrics.json"])
    _print_block(f"search finished: {method.name} on {dataset}, {_epochs(optimizer.epoch)} "
                 f"in {_duration(time.perf_counter() - started)}",
                 [("genotype", str(genotype)),
                  ("val accuracy", f"{final['accuracy']:.4f} ({method.scored}, architecture "
                                   "half of the train split)"),
                  ("files", list(paths.values()))])
    return genotype, result


# A method takes the common flags, the search settings the user gave and the output folder; it
# writes genotype.json, metrics.json (with "dataset" and "val_accuracy") and checkpoint.pt there
# and returns (genotype, metrics). `fastnas run` trains the genotype it returns.
SEARCH_METHODS: Dict[str, SearchMethod] = {"darts": DARTS_METHOD, "enas": ENAS_METHOD}


def search_stage(flags: CommonFlags, method: str, given: Dict[str, Any], output: str):
    """Run search ``method``; returns ``(genotype, metrics)``."""
    if method not in SEARCH_METHODS:
        raise UserError(f"unknown search method {method!r}; use --method "
                        f"{' or '.join(SEARCH_METHODS)}")
    return _search(SEARCH_METHODS[method], flags, given, output)


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


def train_stage(flags: CommonFlags, given: Dict[str, Any], output: str,
                genotype: Optional[Genotype] = None) -> Tuple[Genotype, dict]:
    """Train ``genotype`` (or the checkpoint's, on resume) from scratch; ``(genotype, metrics)``."""
    paths = {name: os.path.join(output, name) for name in ("model.pt", "metrics.json",
                                                           "checkpoint.pt")}
    checkpoint = paths["checkpoint.pt"]
    device = _check_device(flags.device)
    state = _load_resume_state(flags, checkpoint, "training")
    if state is None and genotype is None:
        raise UserError("train needs --genotype FILE|NAME: a genotype.json written by "
                        f"fastnas search, or a published cell ({', '.join(PUBLISHED)})")
    dataset, limit = _resolve_data(flags, state, checkpoint)
    info = data.dataset_info(dataset)
    _set_threads(flags, dataset)
    if state:
        saved_genotype = Genotype.parse(state["genotype"])
        if genotype is not None and genotype != saved_genotype:
            raise UserError(f"the genotype differs from the one being trained in {checkpoint}; "
                            "drop --resume to start over")
        genotype = saved_genotype
        _check_unchanged(given, state["config"], checkpoint)
        config = dict(state["config"], epochs=given.get("epochs", state["config"]["epochs"]))
    else:
        config = {**TRAIN_DEFAULTS[dataset], **given, "in_channels": info.in_channels,
                  "num_classes": info.num_classes}
    config["device"] = str(device)
    run_info = {"dataset": dataset, "limit": limit}

    trainer = _build(lambda: FinalTrainer(genotype, config))
    if state:
        trainer.load_state_dict(state)
    cfg = trainer.config
    train_set, test_set = _load_data(flags, dataset, lambda: (
        data.load_split(dataset, "train", flags.data_dir, augment=True, cutout=cfg.cutout,
                        limit=limit),
        data.load_split(dataset, "test", flags.data_dir, limit=limit)))
    _check_size(min(len(train_set), len(test_set)), limit)
    _prepare_output(output)
    workers = _workers(flags, dataset)
    train_loader = data.make_loader(train_set, cfg.batch_size, shuffle=True, device=device,
                                    seed=cfg.seed, stream=2, num_workers=workers)
    test_loader = data.make_loader(test_set, EVAL_BATCH_SIZE, shuffle=False, device=device,
                                   num_workers=workers)

    _log(f"train: {dataset} ({len(train_set)} train, {len(test_set)} test images), "
         f"{cfg.layers} layers x {cfg.channels} channels, batch {cfg.batch_size}, "
         f"epochs {trainer.epoch}->{cfg.epochs}, device {device}, output {output}")
    started = time.perf_counter()
    saved = state is not None

    with Progress("train", cfg.epochs, trainer.epoch, len(train_loader),
                  bars=False if flags.quiet else None) as progress:
        def on_epoch(t: FinalTrainer, record: dict) -> None:
            nonlocal saved
            save_atomic({**t.state_dict(), "run": run_info}, checkpoint)
            saved = True
            write_json_atomic({"dataset": dataset, **t.metrics()}, paths["metrics.json"])
            progress.epoch(record["epoch"],
                           f"train loss {record['train_loss']:.3f} acc {record['train_acc']:.3f}"
                           f"  test loss {record['test_loss']:.3f} acc {record['test_acc']:.3f}"
                           f"  lr {record['lr']:.4f}  {record['seconds']:.1f}s")

        try:
            result = trainer.fit(train_loader, test_loader, callback=on_epoch,
                                 on_step=lambda t, s: progress.step(s["loss"], s["acc"]))
        except KeyboardInterrupt:
            raise _interrupted("training", trainer.epoch, cfg.epochs, checkpoint, saved) from None

    result = {"dataset": dataset, **result}
    trainer.save_model(paths["model.pt"], dataset=dataset, test_accuracy=result["test_accuracy"])
    write_json_atomic(result, paths["metrics.json"])
    _print_block(f"training finished: {dataset}, {_epochs(trainer.epoch)} "
                 f"in {_duration(time.perf_counter() - started)}",
                 [("genotype", str(genotype)),
                  ("test accuracy", f"{result['test_accuracy']:.4f} (best "
                                    f"{result['best_test_accuracy']:.4f} at epoch "
                                    f"{result['best_epoch'] + 1})"),
                  ("parameters", f"{result['params'] / 1e6:.3f} M (without the auxiliary head)"),
                  ("multiply-adds", f"{result['multiply_adds'] / 1e6:.2f} M per image"),
                  ("files", list(paths.values()))])
    return genotype, result


# -- commands -------------------------------------------------------------------------------------
def _default_output(args: argparse.Namespace, command: str) -> str:
    return args.output or os.path.join("runs", f"{args.dataset or 'digits'}-{command}")


def _cmd_search(args: argparse.Namespace) -> int:
    search_stage(CommonFlags.from_args(args), args.method, _given(args, SEARCH_KEYS),
                 _default_output(args, "search"))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    genotype = resolve_genotype(args.genotype) if args.genotype is not None else None
    train_stage(CommonFlags.from_args(args), _given(args, TRAIN_KEYS),
                _default_output(args, "train"), genotype)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    output = _default_output(args, "run")
    flags = CommonFlags.from_args(args)
    started = time.perf_counter()
    genotype, searched = search_stage(flags, args.method, _given(args, SEARCH_KEYS, "search_"),
                                      os.path.join(output, "search"))
    flags.dataset = searched["dataset"]
    _, trained = train_stage(flags, _given(args, TRAIN_KEYS, "train_"),
                             os.path.join(output, "train"), genotype)
    _print_block(f"pipeline finished in {_duration(time.perf_counter() - started)}",
                 [("search", f"val accuracy {searched['val_accuracy']:.4f} -> "
                             f"{os.path.join(output, 'search', 'genotype.json')}"),
                  ("train", f"test accuracy {trained['test_accuracy']:.4f} -> "
                            f"{os.path.join(output, 'train', 'model.pt')}")])
    return 0


def _add_search_command(sub) -> None:
    p = sub.add_parser("search", help="search a cell architecture (writes genotype.json)",
                       description="Search a cell on the train split (50/50 weights/architecture)"
                                   "; writes genotype.json, metrics.json and checkpoint.pt.")
    _add_search_options(p)
    _add_common(p)
    p.set_defaults(handler=_cmd_search)


def _add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train a genotype from scratch (writes model.pt)",
                       description="Train a genotype from scratch and report its test accuracy; "
                                   "writes model.pt, metrics.json and checkpoint.pt.")
    p.add_argument("--genotype", metavar="FILE|NAME",
                   help="genotype.json from fastnas search, or a published cell: "
                        + ", ".join(PUBLISHED))
    _add_train_options(p)
    _add_common(p)
    p.set_defaults(handler=_cmd_train)


def _add_run_command(sub) -> None:
    p = sub.add_parser("run", help="search, then train the result: the whole pipeline",
                       description="Search, then train the found genotype from scratch; writes "
                                   "DIR/search/ and DIR/train/.")
    _add_search_options(p, prefix="search-")
    _add_train_options(p, prefix="train-")
    _add_common(p)
    p.set_defaults(handler=_cmd_run)


COMMANDS: List[Callable[[Any], None]] = [_add_search_command, _add_train_command,
                                         _add_run_command]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__  # here, not at the top: the package may import this module

    parser = _Parser(prog="fastnas", description="Neural architecture search (DARTS, ENAS) "
                                                 "and final training from the command line.")
    parser.add_argument("--version", action="version", version=f"fastnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(sub)
    parser.set_defaults(command_names=tuple(sub.choices))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fastnas`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    threads = torch.get_num_threads()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            commands = ", ".join(args.command_names)
            raise UserError(f"missing command, one of: {commands} (see fastnas --help)")
        return args.handler(args)
    except UserError as e:
        print(f"fastnas: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        message = f"fastnas: {e}"
        if e.resumable:
            command = ["fastnas", *argv] + ([] if "--resume" in argv else ["--resume"])
            message += f"; resume with: {shlex.join(command)}"
        print(message, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("fastnas: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # e.g. the disk filled up while writing a checkpoint
        print(f"fastnas: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    finally:
        torch.set_num_threads(threads)


__all__ = ["COMMANDS", "SEARCH_DEFAULTS", "SEARCH_METHODS", "TRAIN_DEFAULTS", "build_parser",
           "main", "resolve_genotype", "search_stage", "train_stage"]
