"""The ``fastnas`` command line: argument parsing, and one exit status per outcome.

    fastnas run --dataset digits                  # the whole pipeline, minutes on a laptop CPU
    fastnas search --method darts --dataset cifar10 --data-dir data
    fastnas train --genotype runs/cifar10-darts-search/genotype.json --dataset cifar10
    fastnas plot runs/digits-darts-run            # cells, alphas and curves into plots/
    fastnas profile --batch-size 8 --compare      # time and peak memory of a search step
    fastnas convert-paper weights.pt model.pt --genotype DARTS_V2

The stages themselves (data, checkpoints, metrics, resume policy) are ``fastnas.pipeline``'s,
the figures and TensorBoard ``fastnas.reports``', the profile ``fastnas.profiling``'s and the
paper's checkpoints ``fastnas.paper``'s; this module maps flags to their settings. A subcommand
is one ``_add_<name>_command`` function in ``COMMANDS``.

Exit statuses (``EXIT``): 0 done; 1 a file could not be written (full disk, permissions) or
another operating-system error; 2 bad input (``UserError``, printed as one
``fastnas: error: ...`` line); 3 a NaN or Inf loss, gradient or weight stopped a stage; 130
Ctrl-C and 143 SIGTERM (with the command that resumes). Nothing prints a traceback unless
``FASTNAS_DEBUG=1``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any, Callable, Dict, List, Optional

import torch

from . import __version__, data, distributed, profiling
from .checkpoint import check_writable, write_json_atomic
from .config import STAGES, read_config_file
from .darts.config import CELL_SPACES, PERTURBATIONS, RELAXATIONS
from .darts.methods import METHODS
from .errors import CheckpointWriteError, NonFiniteError, UserError
from .genotypes import PUBLISHED
from .interrupts import handle_termination
from .limits import CPUS, MAX_THREADS, MAX_WORKERS
from .nb201 import resolve_cell
from .ops import PRIMITIVES
from .paper import convert_paper_checkpoint
from .pipeline import (
    DARTS_METHOD_KEYS,
    DEFAULT_METHOD,
    METHOD_NAMES,
    Interrupted,
    StageOptions,
    resolve_genotype,
    run_pipeline,
    search_stage,
    train_stage,
)
from .plugins import import_plugins, parse_plugins
from .reports import PlotObserver, TensorBoardObserver, plot_run
from .reproducibility import resolve_device
from .tune import PRUNERS, SAMPLERS, tune_stage
from .tune.tabular import TABULAR_STRATEGIES, parse_objective, tabular_stage


# -- argument types -------------------------------------------------------------------------------
def _integer(low: int, what: str = "") -> Callable[[str], int]:
    """An integer >= ``low``; ``what`` names the range in words ("positive"), else ">= low"."""
    wanted = f"a {what} integer" if what else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text) if len(text) <= 30 else None
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text[:40]!r}")
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
EXIT = {"ok": 0, "os": 1, "usage": 2, "nonfinite": 3, "SIGINT": 130, "SIGTERM": 143}


def _bounded(high: int, what: str) -> Callable[[str], int]:
    parse = _integer(0 if what == "workers" else 1, "non-negative" if what == "workers"
                     else "positive")

    def bounded(text: str) -> int:
        value = parse(text)
        if value > high:
            raise argparse.ArgumentTypeError(
                f"{value} {what} is more than this machine can use ({CPUS} CPUs: at most "
                f"{high})")
        return value
    return bounded


def _folder(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string")
    return text


class _Parser(argparse.ArgumentParser):
    """Argument errors become one-line UserErrors instead of usage text and sys.exit."""

    def error(self, message):
        raise UserError(message)


# -- arguments ------------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data, device and files")
    g.add_argument("--dataset", choices=data.DATASET_NAMES, default=None,
                   help="digits (embedded, default), cifar10, cifar100, or folder (your images "
                        "in --data-dir)")
    g.add_argument("--data-dir", default="data", metavar="DIR",
                   help=f"folder holding {data.CIFAR10_FOLDER} or {data.CIFAR100_FOLDER}, or "
                        "with --dataset folder the image folder: DIR/train/<class>/* and "
                        "DIR/test/<class>/*, or DIR/<class>/* with --test-fraction (default: data)")
    g.add_argument("--download", action="store_true",
                   help="fetch CIFAR-10 or CIFAR-100 into --data-dir through torchvision if it "
                        "is not there")
    _add_folder_options(g)
    g.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="use only the first N images of each split (quick trials)")
    g.add_argument("--seed", type=non_negative_int, default=None, metavar="S",
                   help="random seed (default: 2 for search, 0 for training, as the paper)")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--workers", type=_bounded(MAX_WORKERS, "workers"), default=None, metavar="N",
                   help="data loader processes (default: 0 for digits, up to 4 for cifar10; "
                        f"at most {MAX_WORKERS} here)")
    g.add_argument("--threads", type=_bounded(MAX_THREADS, "threads"), default=None, metavar="N",
                   help="PyTorch CPU threads (default: 1 for digits, PyTorch's own for cifar10; "
                        f"at most {MAX_THREADS} here)")
    g.add_argument("--output", type=_folder, default=None, metavar="DIR",
                   help="output folder (default: runs/<dataset>-<command>; search and run: "
                        "runs/<dataset>-<method>-<command>)")
    g.add_argument("--on-nonfinite", choices=("stop", "skip"), default=None,
                   help="a NaN/Inf loss, gradient or weight: stop the stage (default, exit 3) or "
                        "skip that step's update")
    g.add_argument("--max-nonfinite-skips", type=positive_int, default=None, metavar="N",
                   help="with --on-nonfinite skip: stop after N skipped steps in a row (10)")
    g.add_argument("--resume", nargs="?", const="auto", choices=("auto",), default=None,
                   help="continue from the checkpoint in --output, or start anew if there is none "
                        "(`--resume` = `--resume auto`; the default under torchrun, so that "
                        "restarted workers resume by themselves)")
    g.add_argument("--no-resume", dest="resume", action="store_const", const="no",
                   help="start anew even under torchrun, replacing what --output holds (also "
                        "another method's search, which is otherwise refused)")
    d = p.add_argument_group("distributed (under torchrun)")
    d.add_argument("--dist-backend", choices=distributed.BACKENDS, default=None,
                   help="collective backend (default: nccl on CUDA, gloo on the CPU)")
    d.add_argument("--dist-timeout", type=_number(0, low_open=True, high=None), metavar="S",
                   default=distributed.DEFAULT_TIMEOUT_S,
                   help="seconds a collective may wait before the run stops: a rank that failed "
                        f"never hangs the others (default {distributed.DEFAULT_TIMEOUT_S:g})")
    g.add_argument("--quiet", action="store_true",
                   help="no progress bars; one log line per epoch")
    _add_plugins_option(p)
    _add_report_options(p)


def _add_plugins_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugins", type=parse_plugins, default=None, metavar="MODULE[,MODULE]",
                   help="import these Python modules first (in every process), e.g. ones that "
                        "register ops with fastnas.ops.register; a search or training records "
                        "them and imports them again on resume. Plugins are code you run: "
                        "name only modules you trust")


def _op_names(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be op names separated by commas, got {text!r}")
    return names


def _add_folder_options(g) -> None:
    g.add_argument("--image-size", type=positive_int, default=None, metavar="N",
                   help="--dataset folder: scale each image's shorter side to N and crop the "
                        "centre NxN (default: keep the size, which all images must share)")
    g.add_argument("--test-fraction", type=_number(0, 1, low_open=True), default=None,
                   metavar="F", help="--dataset folder without train/ and test/: put this share "
                                     "of each class into the test split (seeded, always the same)")


def _add_report_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("plots and TensorBoard")
    g.add_argument("--no-plots", dest="plots", action="store_false",
                   help="do not draw the figures into DIR/plots/ at the end")
    g.add_argument("--tensorboard", action="store_true",
                   help="log scalars, alphas and the genotype per epoch for TensorBoard")
    g.add_argument("--log-dir", metavar="DIR", default=None,
                   help="TensorBoard folder (implies --tensorboard; events in DIR/search and "
                        "DIR/train; default: the stage folder's tensorboard/)")


def _add_search_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    g = p.add_argument_group("search")
    g.add_argument("--method", choices=METHOD_NAMES, default=None,
                   help="search strategy: darts, enas, or a method built on DARTS with its "
                        "paper's defaults (README 'Methods'; default: the config file's, else "
                        "darts)")
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
    g.add_argument("--primitives", type=_op_names, default=None, metavar="OP[,OP]",
                   help="DARTS: the cell's candidate ops, in alpha-column order: built-in ones "
                        "(a subset of the default " + ",".join(PRIMITIVES) + ", or others such "
                        "as sep_conv_7x7) and ops registered by --plugins (default: those eight)")
    g.add_argument("--compile", action="store_true", default=None,
                   help="DARTS: run the supernet under torch.compile (minutes of compilation "
                        "first; see README 'Speed and memory')")
    positive = _number(0, low_open=True, high=None)
    g.add_argument(f"--{prefix}learning-rate", type=positive, metavar="LR",
                   help="weights: initial SGD learning rate, cosine-annealed (DARTS 0.025, "
                        "ENAS 0.05)")
    g.add_argument(f"--{prefix}lr-min", type=_number(0, high=None), metavar="LR",
                   help="weights: final learning rate (DARTS 0.001, ENAS 0.0005)")
    g.add_argument(f"--{prefix}momentum", type=_number(0, 1), metavar="M",
                   help="weights: SGD momentum (0.9)")
    g.add_argument(f"--{prefix}weight-decay", type=_number(0, high=None), metavar="WD",
                   help="weights: weight decay (DARTS 3e-4)")
    g.add_argument(f"--{prefix}grad-clip", type=positive, metavar="NORM",
                   help="weights: gradient norm clip (5)")
    g.add_argument("--arch-learning-rate", type=positive, metavar="LR",
                   help="architecture: DARTS's Adam learning rate for the alphas (3e-4), "
                        "ENAS's controller learning rate")
    g.add_argument("--arch-weight-decay", type=_number(0, high=None), metavar="WD",
                   help="architecture: DARTS's weight decay of the alphas (1e-3)")
    _add_method_options(p)


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """The settings of the methods built on DARTS (README 'Methods'); each overrides its
    --method preset."""
    g = p.add_argument_group("DARTS methods (each overrides the --method preset)")
    unit = _number(0, 1, high_open=False)
    non_negative = _number(0, high=None)
    positive = _number(0, low_open=True, high=None)
    g.add_argument("--relaxation", choices=RELAXATIONS, default=None,
                   help="mixing weights: softmax (DARTS), gumbel (GDAS), dirichlet (DrNAS), "
                        "sigmoid (FairDARTS)")
    g.add_argument("--tau-max", type=positive, metavar="T",
                   help="gumbel: temperature at the first epoch (10)")
    g.add_argument("--tau-min", type=positive, metavar="T",
                   help="gumbel: temperature at the last epoch (0.1)")
    g.add_argument("--dirichlet-kl", type=non_negative, metavar="S",
                   help="dirichlet: scale of the KL term to Dirichlet(1), summed over edges "
                        "(0: off, the code's L2 option; its KL option uses 1e-3)")
    g.add_argument("--partial-channels", type=positive_int, metavar="K",
                   help="PC-DARTS: 1/K of the channels go through the mixed ops (1: off)")
    g.add_argument("--edge-normalization", action=argparse.BooleanOptionalAction, default=None,
                   help="PC-DARTS: weigh each node's inputs by softmax(beta)")
    g.add_argument("--aux-skip", type=positive_int, metavar="E",
                   help="DARTS-: a skip on every edge, weighted 1 - epoch/E (off by default)")
    g.add_argument("--beta-lambda", type=non_negative, metavar="L",
                   help="beta-DARTS: lambda * mean(logsumexp(alpha)), lambda ramped 0 -> L")
    g.add_argument("--zero-one-weight", type=non_negative, metavar="W",
                   help="FairDARTS: -W * mean((sigmoid(alpha) - 0.5)^2)")
    g.add_argument("--perturbation", choices=PERTURBATIONS, default=None,
                   help="SDARTS: perturb the weight step's mixing weights (none, random, "
                        "adversarial)")
    g.add_argument("--epsilon-min", type=non_negative, metavar="E",
                   help="SDARTS: perturbation radius at the first epoch (0.03)")
    g.add_argument("--epsilon-max", type=non_negative, metavar="E",
                   help="SDARTS: radius the ramp heads to at the last epoch (0.3)")
    g.add_argument("--pgd-steps", type=positive_int, metavar="N",
                   help="SDARTS adversarial: PGD steps (7)")
    g.add_argument("--warmup-epochs", type=non_negative_int, metavar="N",
                   help="alphas frozen for the first N epochs (PC-DARTS 15, DrNAS 10)")
    g.add_argument("--early-stop-skips", type=positive_int, metavar="N",
                   help="DARTS+: stop once the derived normal cell holds N skip_connects")
    g.add_argument("--max-skips", type=non_negative_int, metavar="N",
                   help="P-DARTS: at most N skip_connects in the derived normal cell")
    g.add_argument("--threshold", type=unit, metavar="T",
                   help="FairDARTS: derived edges whose weight is below T become none "
                        "(fair-darts: 0.85)")


def _add_space_options(p: argparse.ArgumentParser) -> None:
    """issue 19: the cell space a search (or run) searches, and the NB201 table it reports."""
    g = p.add_argument_group("search space")
    g.add_argument("--space", choices=CELL_SPACES, default=None,
                   help="darts (default: the DARTS cell) or nb201 (NAS-Bench-201's cell: "
                        "--layers is N, the search cells per stage; xautodl's weight decay "
                        "5e-4 and Nesterov momentum; the found cell's accuracies from the "
                        "NB201 table into metrics.json)")
    g.add_argument("--table", metavar="FILE", default=None,
                   help="--space nb201: a CSV with the shipped table's columns (arch, cifar10, "
                        "cifar100, imagenet16_120) that replaces it")


def _add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=None,
                   help="a JSON (.json) or TOML file of config keys, in [search] and [train] "
                        "tables (or at the top level for search or train); flags override it. "
                        "Every stage writes its resolved settings to DIR/config.json in this "
                        "form, so `--config DIR/config.json` repeats a run")


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
    g.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun on GPUs: SyncBatchNorm (statistics over all ranks)")


GUARD_KEYS = ("on_nonfinite", "max_nonfinite_skips")
SEARCH_KEYS = ("epochs", "layers", "channels", "batch_size", "order", "compile", "learning_rate",
               "lr_min", "momentum", "weight_decay", "grad_clip", "arch_learning_rate",
               "arch_weight_decay", "space", *GUARD_KEYS, "primitives",
               *(k for k in DARTS_METHOD_KEYS if k != "method"))
TRAIN_KEYS = ("epochs", "layers", "channels", "batch_size", "learning_rate", "lr_min", "momentum",
              "weight_decay", "auxiliary", "auxiliary_weight", "drop_path_prob", "cutout",
              "grad_clip", "sync_bn", *GUARD_KEYS)


def _given(args: argparse.Namespace, keys, prefix: str = "") -> Dict[str, Any]:
    """The stage settings the user gave, ``{key: value}`` for each flag that is not None; in
    ``fastnas run`` a stage's own flags carry a prefix (``--train-epochs``: ``train_``), and a
    key with a prefixed flag never reads the unprefixed one (the other stage's)."""
    out = {}
    for key in keys:
        value = getattr(args, prefix + key if hasattr(args, prefix + key) else key, None)
        if value is not None:
            out[key] = value
    if args.seed is not None:
        out["seed"] = args.seed
    return out


def _observers(args: argparse.Namespace) -> list:
    observers: list = [PlotObserver()] if args.plots else []
    if args.tensorboard or args.log_dir is not None:
        observers.append(TensorBoardObserver(args.log_dir))
    return observers


def _options(args: argparse.Namespace) -> StageOptions:
    automatic = args.resume is None and distributed.active()
    config = {}
    if getattr(args, "config", None) is not None:
        try:
            config = read_config_file(args.config, args.command if args.command in STAGES
                                      else None)
        except ValueError as e:
            raise UserError(str(e)) from None
    return StageOptions(args.dataset, args.data_dir, args.download, args.limit, args.device,
                        args.workers, args.threads, args.resume == "auto" or automatic,
                        args.quiet, observers=_observers(args), resume_automatic=automatic,
                        replace=args.resume == "no", config=config,
                        image_size=args.image_size, test_fraction=args.test_fraction,
                        table=getattr(args, "table", None) if args.command != "tune" else None,
                        plugins=args.plugins or ())


# -- commands -------------------------------------------------------------------------------------
def _default_output(args: argparse.Namespace, command: str,
                    options: Optional[StageOptions] = None) -> str:
    """``runs/<dataset>-<command>``; a search, or a run, also names its method (the flag's, else
    the config file's, else darts: ``runs/digits-darts-search``), and a training of an NB201
    cell its space (``runs/digits-nb201-train``), so that one kind of run never lands in
    another's folder."""
    kind = None
    if command in ("search", "run"):
        table = options.config.get("search", {}) if options is not None else {}
        kind = getattr(args, "method", None) or table.get("method") or DEFAULT_METHOD
        if (getattr(args, "space", None) or table.get("space")) == "nb201":
            kind += "-nb201"   # issue 19: runs/digits-darts-nb201-search
    elif command == "train" and getattr(args, "space", None) == "nb201":
        kind = "nb201"
    name = "-".join(part for part in (args.dataset or "digits", kind, command) if part)
    return args.output or os.path.join("runs", name)


def _cmd_search(args: argparse.Namespace) -> int:
    options = _options(args)
    search_stage(options, args.method, _given(args, SEARCH_KEYS),
                 _default_output(args, "search", options))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    options = _options(args)
    if args.space == "nb201":  # an NB201 cell: its benchmark string, a file or a folder
        if args.genotype is None and not options.resume:
            raise UserError("train --space nb201 needs --genotype '|op~0|+|op~0|op~1|+...|' "
                            "(or a cell file, or a search or tune folder)")
        try:
            genotype = resolve_cell(args.genotype) if args.genotype is not None else None
        except ValueError as e:
            raise UserError(f"--genotype: {e}") from None
    else:
        genotype = resolve_genotype(args.genotype) if args.genotype is not None else None
    train_stage(options, _given(args, TRAIN_KEYS), _default_output(args, "train", options),
                genotype)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    options = _options(args)
    run_pipeline(options, args.method, _given(args, SEARCH_KEYS, "search_"),
                 _given(args, TRAIN_KEYS, "train_"), _default_output(args, "run", options))
    return 0


def _add_search_command(sub) -> None:
    p = sub.add_parser("search", help="search a cell architecture (writes genotype.json)",
                       description="Search a cell on the train split (50/50 weights/architecture)"
                                   "; writes genotype.json, metrics.json and checkpoint.pt.")
    _add_search_options(p)
    _add_space_options(p)
    _add_common(p)
    _add_config_option(p)
    p.set_defaults(handler=_cmd_search)


def _add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train a genotype from scratch (writes model.pt)",
                       description="Train a genotype from scratch and report its test accuracy; "
                                   "writes model.pt, metrics.json and checkpoint.pt.")
    p.add_argument("--genotype", metavar="FILE|NAME",
                   help="genotype.json from fastnas search, or a published cell: "
                        + ", ".join(PUBLISHED))
    p.add_argument("--space", choices=("darts", "nb201"), default="darts",
                   help="darts (default: NetworkCIFAR) or nb201 (the NAS-Bench-201 network of "
                        "the cell --genotype '|op~0|+...|', a cell file or a search folder; "
                        "the benchmark's recipe: 200 epochs, SGD Nesterov 0.9, lr 0.1 cosine, "
                        "weight decay 5e-4, batch 256, C=16, N=5 (--channels, --layers))")
    _add_train_options(p)
    _add_common(p)
    _add_config_option(p)
    p.set_defaults(handler=_cmd_train)


def _add_run_command(sub) -> None:
    p = sub.add_parser("run", help="search, then train the result: the whole pipeline",
                       description="Search, then train the found genotype from scratch; writes "
                                   "DIR/search/ and DIR/train/.")
    _add_search_options(p, prefix="search-")
    _add_space_options(p)
    _add_train_options(p, prefix="train-")
    _add_common(p)
    _add_config_option(p)
    p.set_defaults(handler=_cmd_run)


TUNE_KEYS = ("trials", "k", "m", "sampler", "pruner", "startup_trials", "tune_hparams",
             "heartbeat", "epochs", "layers", "channels", "batch_size", "learning_rate",
             "weight_decay", "drop_path_prob", "val_fraction")
TUNE_SEARCH_KEYS = ("epochs", "layers", "channels", "batch_size", "seed")


def _cmd_tune(args: argparse.Namespace) -> int:
    if args.space == "nb201":
        return _cmd_tune_table(args)
    if args.objective is not None or args.table is not None:
        raise UserError("--objective and --table are for --space nb201 (a table search)")
    search_given = {k: getattr(args, "search_" + k) for k in TUNE_SEARCH_KEYS
                    if getattr(args, "search_" + k) is not None}
    if args.order is not None:
        search_given["order"] = args.order
    if args.search is None:  # the guard flags apply to the fresh search
        search_given.update({k: getattr(args, k) for k in GUARD_KEYS
                             if getattr(args, k) is not None})
    tune_stage(_options(args), _given(args, TUNE_KEYS), _default_output(args, "tune"),
               method=args.source_method, source=args.search, search_given=search_given,
               storage=args.storage, study_name=args.study_name)
    return 0


def _add_tune_command(sub) -> None:
    p = sub.add_parser("tune", help="DARTS/ENAS for the coarse search, Bayesian optimization "
                                    "(Optuna) for the fine one",
                       description="Prune the cell space to what a search found plausible, "
                                   "search it with Optuna (short trainings scored on a "
                                   "validation split), test the best once; writes "
                                   "genotype.json, trials.csv and metrics.json. Needs Optuna: "
                                   'pip install -e ".[tune]".')
    g = p.add_argument_group("the search that prunes the space")
    g.add_argument("--from", dest="source_method",
                   choices=[m for m in METHOD_NAMES if m not in ("rsps", "enas-cells")],
                   default=None,
                   help="search method: darts, enas or a method built on DARTS (default: "
                        "darts, or the one of --search)")
    g.add_argument("--search", metavar="DIR", default=None,
                   help="a fastnas search output folder (checkpoint.pt); default: search first, "
                        "into OUTPUT/search")
    for key, what in (("epochs", "epochs"), ("layers", "cells"), ("channels", "channels"),
                      ("batch-size", "batch size"), ("seed", "seed")):
        g.add_argument(f"--search-{key}", type=positive_int if key != "seed" else
                       non_negative_int, metavar="N", help=f"fresh search: {what}")
    g.add_argument("--order", type=int, choices=(1, 2), default=None,
                   help="fresh DARTS search: first (1, default) or second order")
    g.add_argument("--top-k", dest="k", type=_integer(2), metavar="K",
                   help="incoming edges (DARTS) or inputs (ENAS) kept per node (3)")
    g.add_argument("--top-m", dest="m", type=positive_int, metavar="M",
                   help="ops kept per edge (DARTS) or per node (ENAS), none excluded (3)")
    _add_tune_table_options(p)
    g = p.add_argument_group("the study")
    g.add_argument("--trials", type=positive_int, metavar="N",
                   help="finished trials the study must hold (20); a rerun continues to N")
    g.add_argument("--sampler", choices=tuple(dict.fromkeys(SAMPLERS + TABULAR_STRATEGIES)),
                   help="tpe (default), gp or random; with --space nb201 also rea (regularized "
                        "evolution) or reinforce")
    g.add_argument("--pruner", choices=PRUNERS, help="median (default), hyperband or none")
    g.add_argument("--startup-trials", type=non_negative_int, metavar="N",
                   help="random trials before TPE/GP model, and before median pruning (5)")
    g.add_argument("--tune-hparams", action="store_true", default=None,
                   help="search learning rate, weight decay and drop path with the cell")
    g.add_argument("--storage", metavar="URL",
                   help="Optuna storage: sqlite:///FILE, postgresql://..., mysql://..., "
                        "journal:FILE (default: sqlite OUTPUT/study.db)")
    g.add_argument("--study-name", metavar="NAME", help="study name (default: fastnas-tune)")
    g.add_argument("--heartbeat", type=positive_int, metavar="S",
                   help="database storages: heartbeat period; trials silent for 2*S seconds "
                        "are failed and retried (10)")
    g = p.add_argument_group("each trial (digits: 5 epochs, 3 cells, 8 channels, batch 64)")
    g.add_argument("--epochs", type=positive_int, metavar="N", help="training epochs")
    g.add_argument("--layers", type=_integer(3), metavar="L", help="cells")
    g.add_argument("--channels", type=positive_int, metavar="C", help="initial channels")
    g.add_argument("--batch-size", type=positive_int, metavar="B", help="batch size")
    g.add_argument("--learning-rate", type=_number(0, low_open=True, high=None), metavar="LR",
                   help="SGD learning rate, cosine to 0 (0.025)")
    g.add_argument("--weight-decay", type=_number(0, high=None), metavar="WD",
                   help="weight decay (3e-4)")
    g.add_argument("--drop-path", dest="drop_path_prob", type=_number(0, 1), metavar="P",
                   help="drop path probability (0)")
    g.add_argument("--val-fraction", type=_number(0, 1, low_open=True), metavar="F",
                   help="share of the train split that validates the trials (0.2)")
    _add_common(p)
    p.set_defaults(handler=_cmd_tune)


# -- tune --space nb201: NAS-Bench-201 table search --------------------------------------------
# The flags of a trained tune that a table search has no use for.
NOT_FOR_TABLE = ("source_method", "search", "search_epochs", "search_layers", "search_channels",
                 "search_batch_size", "search_seed", "order", "k", "m", "pruner", "tune_hparams",
                 "storage", "study_name", "heartbeat", "epochs", "layers", "channels",
                 "batch_size", "learning_rate", "weight_decay", "drop_path_prob", "val_fraction",
                 "dataset")


def _add_tune_table_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("NAS-Bench-201 table search (--space nb201: no training)")
    g.add_argument("--space", choices=("darts", "nb201"), default="darts",
                   help="darts (default: a search, then trained trials) or nb201 (queries of "
                        "the shipped NAS-Bench-201 table)")
    g.add_argument("--objective", metavar="table:DATASET",
                   help="nb201: table:cifar10 (default), table:cifar100 or "
                        "table:imagenet16_120, the test accuracy that scores each query")
    g.add_argument("--table", metavar="FILE",
                   help="nb201: a CSV with the shipped table's columns (arch, cifar10, "
                        "cifar100, imagenet16_120) that replaces it")


def _cmd_tune_table(args: argparse.Namespace) -> int:
    given = [k for k in NOT_FOR_TABLE if getattr(args, k, None) not in (None, False)]
    if given:
        flags = ", ".join("--" + {"source_method": "from", "k": "top-k", "m": "top-m",
                                  "drop_path_prob": "drop-path"}.get(k, k.replace("_", "-"))
                          for k in given)
        raise UserError(f"{flags}: not for --space nb201 (a table search trains nothing)")
    dataset = parse_objective(args.objective or "table:cifar10")
    settings = {"dataset": dataset, "strategy": args.sampler or "tpe"}
    settings.update({k: getattr(args, k) for k in ("trials", "seed", "startup_trials")
                     if getattr(args, k) is not None})
    output = args.output or os.path.join("runs", f"nb201-{dataset}-tune")
    tabular_stage(settings, output, args.table, quiet=args.quiet)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    written = plot_run(args.run_dir)
    folders = sorted({os.path.dirname(p) for p in written})
    print(f"{len(written)} files in {', '.join(folders)}")
    return 0


def _add_plot_command(sub) -> None:
    p = sub.add_parser("plot", help="draw a run's cells, alphas and curves (into DIR/plots/)",
                       description="Write the figures of a search, train or run folder into "
                                   "its plots/ folder: cell_normal, cell_reduce (also as "
                                   "Graphviz .dot), alphas, curves and, for ENAS, controller; "
                                   "PNG and SVG (with matplotlib, a dependency of fastnas).")
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="a folder written by fastnas search, train or run")
    _add_plugins_option(p)
    p.set_defaults(handler=_cmd_plot)


def _cmd_profile(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    for path in (args.json, args.trace):
        if path is not None:  # before minutes of profiling, not after
            check_writable(path)
    try:
        device = str(resolve_device(args.device))
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--device {args.device}: {e}") from None
    # a method's preset fills the rest; its warm-up is left out, so that the profiled step is
    # the method's full step (architecture step included)
    config = dict(method=args.method, supernet=args.supernet, precision=args.precision,
                  checkpointing=args.checkpointing, order=args.order, channels=args.channels,
                  layers=args.layers, device=device, seed=0, warmup_epochs=0)
    batch_size = args.batch_size or (64 if device.startswith("cuda") else 8)
    sizes = dict(batch_size=batch_size, image_size=args.image_size, warmup=args.warmup,
                 steps=args.steps)
    try:
        reports = profiling.profile_supernets(config, compare=args.compare, **sizes)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    print(profiling.format_table(reports))
    for report in reports:
        print(f"\nsupernet {report.supernet}: {profiling.format_breakdown(report)}")
    if args.json is not None:
        write_json_atomic({"settings": dict(config, **sizes),
                           "rows": [r.to_dict() for r in reports]}, args.json)
        print(f"\ntable as JSON: {args.json}")
    if args.trace is not None:
        profiling.trace_search_steps(config, args.trace, **sizes)
        print(f"torch.profiler trace of {args.steps} step(s): {args.trace} "
              "(open in ui.perfetto.dev)")
    return 0


def _add_profile_command(sub) -> None:
    p = sub.add_parser("profile", help="time and peak memory of a DARTS search step",
                       description="Run a few DARTS search steps on synthetic data and print "
                                   "the median time per step, steps per second and the peak "
                                   "memory growth of a step (CUDA max_memory_allocated on a "
                                   "GPU, peak RSS on the CPU), then the activations kept for "
                                   "backward per cell and per op.")
    g = p.add_argument_group("search settings")
    g.add_argument("--method", choices=METHODS, default="darts",
                   help="the DARTS method whose step to profile, with its preset (README "
                        "'Methods'; warm-up epochs left out; default darts)")
    g.add_argument("--supernet", choices=("fast", "reference"), default="fast",
                   help="fast (fused, default) or reference (a module per op)")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16", "fp64"), default="fp32")
    g.add_argument("--checkpointing", action="store_true",
                   help="recompute activations in backward")
    g.add_argument("--order", type=int, choices=(1, 2), default=1,
                   help="1: first-order DARTS (default), 2: second-order")
    g.add_argument("--batch-size", type=positive_int, metavar="B",
                   help="default: 8 on the CPU, 64 on CUDA")
    g.add_argument("--channels", type=positive_int, default=16, metavar="C",
                   help="initial channels (default: 16, the paper's search)")
    g.add_argument("--layers", type=positive_int, default=8, metavar="L",
                   help="cells (default: 8)")
    g.add_argument("--image-size", type=positive_int, default=32, metavar="N",
                   help="synthetic NxN RGB images (default: 32)")
    g = p.add_argument_group("measurement and output")
    g.add_argument("--steps", type=positive_int, default=3, metavar="N",
                   help="timed steps; the table shows their median (default: 3)")
    g.add_argument("--warmup", type=non_negative_int, default=1, metavar="N",
                   help="untimed steps first (default: 1)")
    g.add_argument("--compare", action="store_true",
                   help="add a row for the reference supernet at the same settings")
    g.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    g.add_argument("--trace", metavar="FILE",
                   help="also write a torch.profiler Chrome trace of the timed steps")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:N]")
    g.add_argument("--threads", type=_bounded(MAX_THREADS, "threads"), default=None, metavar="N",
                   help=f"PyTorch CPU threads (default: PyTorch's own; at most {MAX_THREADS} here)")
    p.set_defaults(handler=_cmd_profile)


def _cmd_convert_paper(args: argparse.Namespace) -> int:
    genotype = resolve_genotype(args.genotype)
    shape = convert_paper_checkpoint(args.source, args.target, genotype)
    print(f"{args.target}: NetworkCIFAR(C={shape['channels']}, layers={shape['layers']}, "
          f"classes={shape['num_classes']}, auxiliary={shape['auxiliary']}) with "
          f"{args.genotype}; load it with fastnas.load_model")
    return 0


def _add_convert_paper_command(sub) -> None:
    p = sub.add_parser("convert-paper", help="convert a DARTS paper checkpoint to fastnas",
                       description="Rename the tensors of a NetworkCIFAR checkpoint of the DARTS "
                                   "paper's code into a fastnas model file (fastnas.load_model "
                                   "reads it). A name that fits no rule is an error.")
    p.add_argument("source", metavar="IN.pt", help="the paper's checkpoint (a state_dict)")
    p.add_argument("target", metavar="OUT.pt", help="the fastnas model file to write")
    p.add_argument("--genotype", required=True, metavar="FILE|NAME",
                   help="the cell it was trained with, e.g. DARTS_V2, or a genotype file")
    _add_plugins_option(p)
    p.set_defaults(handler=_cmd_convert_paper)


COMMANDS: List[Callable[[Any], None]] = [_add_search_command, _add_train_command,
                                         _add_run_command, _add_plot_command,
                                         _add_profile_command, _add_convert_paper_command,
                                         _add_tune_command]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastnas", description="Neural architecture search (DARTS, ENAS) "
                                                 "and final training from the command line.")
    parser.add_argument("--version", action="version", version=f"fastnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(sub)
    parser.set_defaults(command_names=tuple(sub.choices))
    return parser


def _resume_command(argv: List[str]) -> str:
    """The command that resumes: the same one plus ``--resume``; under torchrun, with the
    ``torchrun`` prefix and its process counts (from torchrun's environment)."""
    prefix = ["fastnas"]
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        env = os.environ
        prefix = ["torchrun"]
        if env.get("GROUP_WORLD_SIZE", "1") != "1":
            prefix.append(f"--nnodes={env['GROUP_WORLD_SIZE']}")
        prefix += [f"--nproc_per_node={env.get('LOCAL_WORLD_SIZE', env['WORLD_SIZE'])}",
                   "-m", "fastnas"]
    return shlex.join([*prefix, *argv] + ([] if "--resume" in argv else ["--resume"]))


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fastnas`` console script; returns the exit status (``EXIT``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    threads = torch.get_num_threads()
    debug = os.environ.get("FASTNAS_DEBUG", "") not in ("", "0")

    def fail(message: str, status: str) -> int:
        if distributed.active():  # every rank prints its own line, named
            message = message.replace("fastnas:", f"fastnas (rank {distributed.rank()}):", 1)
        print(message, file=sys.stderr, flush=True)
        return EXIT[status]

    try:
        with handle_termination():
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:
                commands = ", ".join(args.command_names)
                raise UserError(f"missing command, one of: {commands} (see fastnas --help)")
            if getattr(args, "plugins", None):  # before any setting is read, on every rank
                import_plugins(args.plugins)
            if distributed.launched() is not None and hasattr(args, "dist_backend"):
                try:
                    _, args.device = distributed.init(args.dist_backend, args.dist_timeout,
                                                      args.device)
                except ValueError as e:
                    raise UserError(str(e)) from None
            return args.handler(args)
    except UserError as e:
        return fail(f"fastnas: error: {e}", "usage")
    except NonFiniteError as e:
        return fail(f"fastnas: {e}", "nonfinite")
    except Interrupted as e:
        resume = f"; resume with: {_resume_command(argv)}" if e.resumable else ""
        return fail(f"fastnas: {e}{resume}", e.signal)
    except KeyboardInterrupt as e:  # outside a stage: nothing to resume
        signal_name = "SIGTERM" if type(e).__name__ == "Terminated" else "SIGINT"
        return fail("fastnas: " + ("terminated (SIGTERM)" if signal_name == "SIGTERM"
                                   else "interrupted"), signal_name)
    except CheckpointWriteError as e:
        return fail(f"fastnas: error: {e}", "os")
    except OSError as e:
        return fail(f"fastnas: error: {e.strerror or e}" + (
            f": {e.filename}" if getattr(e, "filename", None) else ""), "os")
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    except Exception as e:  # a bug, or a peer that died: one line, the traceback on request
        if debug:
            raise
        if distributed.collective_failure(e):
            return fail("fastnas: error: a collective failed or timed out: another rank stopped "
                        "(see its message above)", "os")
        return fail(f"fastnas: internal error: {type(e).__name__}: {e} (run with FASTNAS_DEBUG=1 "
                    "for the traceback, and please report it)", "os")
    finally:
        torch.set_num_threads(threads)
        distributed.shutdown()


__all__ = ["COMMANDS", "EXIT", "build_parser", "main"]
