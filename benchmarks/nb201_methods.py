"""One-shot methods on NAS-Bench-201, and the collapse study: each method searches the NB201
cell with the same budget over several seeds; each found cell is read off the shipped table
(CIFAR-10, CIFAR-100, ImageNet16-120 test accuracy after 200 epochs), counted (skip_connects,
parameter-free ops: skip_connect, avg_pool_3x3, none) and, unless ``--train-epochs 0``,
trained from scratch on the searched dataset.

    python benchmarks/nb201_methods.py                        # digits, 3 seeds, every method
    python benchmarks/nb201_methods.py --methods darts gdas --seeds 1 --epochs 2 --train-epochs 1
    python benchmarks/nb201_methods.py --dataset cifar10 --data-dir DIR --epochs 10   # on a GPU

What it measures depends on the data. On CIFAR-10 (a GPU) it is the papers' experiment. On the
digits (this project's CPU machine) it measures something else: how a cell searched on 8x8
digit images ranks on the benchmark's CIFAR/ImageNet16 table (transfer), and whether the
method collapses to parameter-free ops there. Every search is ``fastnas search --space nb201
--method M`` (the method's preset, the dataset's NB201 search defaults, ``--epochs`` and
``--seed`` given); every training is ``fastnas train --space nb201`` of the found cell
(``--train-epochs``, ``--train-layers`` cells per stage, ``--train-channels``). Each run is a
subprocess with ``OMP_NUM_THREADS=--threads``.

Resumable: finished runs are rows of ``OUT/nb201_methods.csv`` and are skipped on a rerun.
Writes ``nb201_methods.md`` (per method: mean and std over seeds, and every found cell) into
``--report``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fastnas.nb201 import NB201Cell  # noqa: E402

# (label, fastnas search arguments)
METHODS = {
    "darts": ["--method", "darts"],
    "darts-2nd": ["--method", "darts", "--order", "2"],
    "gdas": ["--method", "gdas"],
    "drnas": ["--method", "drnas"],
    "beta-darts": ["--method", "beta-darts"],
    "rsps": ["--method", "rsps"],
    "enas": ["--method", "enas"],
}
PARAMETER_FREE = ("skip_connect", "avg_pool_3x3", "none")
COLUMNS = ["method", "seed", "cell", "skips", "parameter_free", "cifar10", "cifar100",
           "imagenet16_120", "search_val_accuracy", "search_seconds", "test_accuracy",
           "train_seconds"]
# CIFAR-10 test accuracy of the cell each method found when searching CIFAR-10, as the issue
# quotes the papers (RSPS: the NB201 paper's Table 5).
PAPER = {"darts": "54.30", "darts-2nd": "54.30", "gdas": "93.61", "drnas": "94.36",
         "beta-darts": "94.36", "rsps": "87.66", "enas": "54.30"}


def fastnas(args: List[str], threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fastnas", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fastnas {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def run_one(method: str, seed: int, args) -> Dict[str, object]:
    folder = os.path.join(args.out, f"{method}-s{seed}")
    search = os.path.join(folder, "search")
    common = ["--dataset", args.dataset, "--quiet", "--threads", str(args.threads)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    fresh = [] if os.path.exists(os.path.join(search, "checkpoint.pt")) else ["--no-resume"]
    search_seconds = fastnas(["search", "--space", "nb201", *METHODS[method], *common,
                              "--epochs", str(args.epochs), "--seed", str(seed), "--output",
                              search, *fresh], args.threads)
    with open(os.path.join(search, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    cell = NB201Cell.load(os.path.join(search, "genotype.json"))
    ops = [op for _, _, op in cell.edges()]
    table = metrics.get("nb201_table") or {}
    row = {"method": method, "seed": seed, "cell": str(cell),
           "skips": ops.count("skip_connect"),
           "parameter_free": sum(op in PARAMETER_FREE for op in ops),
           "cifar10": table.get("cifar10"), "cifar100": table.get("cifar100"),
           "imagenet16_120": table.get("imagenet16_120"),
           "search_val_accuracy": metrics.get("val_accuracy"),
           "search_seconds": round(search_seconds, 1), "test_accuracy": None,
           "train_seconds": None}
    if args.train_epochs > 0:
        train = os.path.join(folder, "train")
        seconds = fastnas(["train", "--space", "nb201", "--genotype", search, *common,
                           "--epochs", str(args.train_epochs), "--layers",
                           str(args.train_layers), "--channels", str(args.train_channels),
                           "--seed", str(seed), "--output", train, "--no-resume"], args.threads)
        with open(os.path.join(train, "metrics.json"), encoding="utf-8") as f:
            row["test_accuracy"] = json.load(f)["test_accuracy"]
        row["train_seconds"] = round(seconds, 1)
    return row


def read_rows(path: str) -> List[Dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def mean_std(values: List[float], scale: float = 1.0) -> str:
    if not values:
        return "n/a"
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.2f} +- {s:.2f}"


def report(rows: List[Dict[str, str]], args) -> str:
    def floats(rs, key):
        return [float(r[key]) for r in rs if r.get(key) not in (None, "", "None")]

    machine = platform.processor() or platform.machine()
    lines = [f"NB201 one-shot search on {args.dataset}: {args.epochs} search epochs per run "
             f"(the dataset's NB201 search defaults and each method's preset), "
             f"{len({r['seed'] for r in rows})} seeds; found cells trained from scratch on "
             f"{args.dataset} for {args.train_epochs} epochs (N={args.train_layers}, "
             f"C={args.train_channels}). Table: the shipped NB201 table (200-epoch test "
             f"accuracy, %). Measured {datetime.date.today()} on {machine}, "
             f"{os.cpu_count()} cores, {args.threads} thread(s) per run.",
             "",
             "| method | seeds | skips (of 6) | parameter-free ops | CIFAR-10 (table) | "
             "CIFAR-100 (table) | ImageNet16-120 (table) | paper, CIFAR-10 searched | "
             f"{args.dataset} test acc. (trained) | search s (median) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        lines.append(
            f"| {method} | {len(rs)} | {mean_std(floats(rs, 'skips'))} | "
            f"{mean_std(floats(rs, 'parameter_free'))} | {mean_std(floats(rs, 'cifar10'))} | "
            f"{mean_std(floats(rs, 'cifar100'))} | {mean_std(floats(rs, 'imagenet16_120'))} | "
            f"{PAPER.get(method, '')} | {mean_std(floats(rs, 'test_accuracy'), 100)} | "
            f"{statistics.median(floats(rs, 'search_seconds')):.0f} |")
    lines += ["", "Found cells:", ""]
    lines += [f"- {r['method']} seed {r['seed']}: `{r['cell']}`" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30, help="search epochs per run (30)")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-epochs", type=int, default=15)
    p.add_argument("--train-layers", type=int, default=3)
    p.add_argument("--train-channels", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "nb201_methods"))
    p.add_argument("--report", default=os.path.join(ROOT, "benchmarks", "results"))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.report, exist_ok=True)
    path = os.path.join(args.out, "nb201_methods.csv")
    done = {(r["method"], int(r["seed"])) for r in read_rows(path)}
    for method in args.methods:
        for seed in range(args.seeds):
            if (method, seed) in done:
                continue
            row = run_one(method, seed, args)
            new = not os.path.exists(path)
            with open(path, "a", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
            print(f"{method} seed {seed}: {row['cell']} skips {row['skips']} CIFAR-10 "
                  f"{row['cifar10']} test {row['test_accuracy']} ({row['search_seconds']} s)",
                  flush=True)
    text = report(read_rows(path), args)
    with open(os.path.join(args.report, "nb201_methods.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
