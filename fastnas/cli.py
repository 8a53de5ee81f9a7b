"""The ``fastnas`` command line: argument parsing, and one exit status per outcome.

    fastnas run --dataset digits                  # the whole pipeline, minutes on a laptop CPU
    fastnas search --method darts --dataset cifar10 --data-dir data
    fastnas train --genotype runs/cifar10-search/genotype.json --dataset cifar10

The stages themselves (data, checkpoints, metrics, resume policy) are ``fastnas.pipeline``'s;
this module maps flags to their settings. A subcommand is one ``_add_<name>_command`` function
in ``COMMANDS``.

Exit statuses: 0 done; 2 bad input (``UserError``, printed as one ``fastnas: error: ...``
line); 1 an operating-system error (e.g. a full disk); 130 Ctrl-C (with the resume command).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any, Callable, Dict, List, Optional

import torch

from . import __version__, data
from .errors import UserError
from .genotypes import PUBLISHED
from .pipeline import (
    SEARCH_METHODS,
    Interrupted,
    StageOptions,
    resolve_genotype,
    run_pipeline,
    search_stage,
    train_stage,
)


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
    g.add_argument("--method", choices=tuple(SEARCH_METHODS), default="darts",
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
    g.add_argument("--compile", action="store_true", default=None,
                   help="DARTS: run the supernet under torch.compile (minutes of compilation "
                        "first; see README 'Speed and memory')")


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


SEARCH_KEYS = ("epochs", "layers", "channels", "batch_size", "order", "compile")
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


def _options(args: argparse.Namespace) -> StageOptions:
    return StageOptions(args.dataset, args.data_dir, args.download, args.limit, args.device,
                        args.workers, args.threads, args.resume, args.quiet)


# -- commands -------------------------------------------------------------------------------------
def _default_output(args: argparse.Namespace, command: str) -> str:
    return args.output or os.path.join("runs", f"{args.dataset or 'digits'}-{command}")


def _cmd_search(args: argparse.Namespace) -> int:
    search_stage(_options(args), args.method, _given(args, SEARCH_KEYS),
                 _default_output(args, "search"))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    genotype = resolve_genotype(args.genotype) if args.genotype is not None else None
    train_stage(_options(args), _given(args, TRAIN_KEYS), _default_output(args, "train"),
                genotype)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    run_pipeline(_options(args), args.method, _given(args, SEARCH_KEYS, "search_"),
                 _given(args, TRAIN_KEYS, "train_"), _default_output(args, "run"))
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


__all__ = ["COMMANDS", "build_parser", "main"]
