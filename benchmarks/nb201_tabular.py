"""Tabular search on NAS-Bench-201: the best-so-far test accuracy after 25, 50, 100, 200 and 500
table queries, mean and std over seeds, per strategy and dataset.

    python benchmarks/nb201_tabular.py                      # 30 seeds, every strategy, 3 datasets
    python benchmarks/nb201_tabular.py --strategies gp --datasets cifar10 --max-queries 100
    python benchmarks/nb201_tabular.py --seeds 3 --max-queries 50        # a smoke run

Each run is ``fastnas.tune.tabular.run_tabular`` (what ``fastnas tune --space nb201`` runs) with
seed ``s`` for ``s`` in ``0 .. seeds - 1``; the objective, and the number reported, is the
shipped table's 200-epoch test accuracy of the queried cell (the table has no validation
accuracies). One query is one ask/tell pair; a cell asked twice costs two. The std is the
sample standard deviation over seeds (n - 1).

Resumable: every finished run appends its curve (the best so far after each of ``POINTS``
queries) to ``OUT/nb201_tabular.csv``; a rerun skips the runs it holds. Writes the table
(``nb201_tabular.md``) and the plot (``nb201_tabular.png``: per strategy the mean over seeds,
shaded between the first and third quartiles, from 5 queries on) into
``--report`` from everything the CSV holds.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fastnas.nb201 import Table  # noqa: E402
from fastnas.nb201.table import TABLE_DATASET_TITLES, TABLE_DATASETS  # noqa: E402
from fastnas.tune.tabular import TABULAR_STRATEGIES, run_tabular  # noqa: E402

REPORTED = (25, 50, 100, 200, 500)
POINTS = (1, 2, 3, 5, 7, 10, 15, 20, 25, 30, 40, 50, 70, 100, 150, 200, 300, 400, 500)
COLUMNS = ["strategy", "dataset", "seed", "queries", "best", "seconds"]
ORDER = ("random", "tpe", "gp", "rea", "reinforce")
COLORS = {"random": "tab:blue", "tpe": "tab:orange", "gp": "tab:green", "rea": "tab:red",
          "reinforce": "tab:purple"}
# The NB201 paper (Dong and Yang, ICLR 2020, Table 5): CIFAR-10 test accuracy of the searched
# cell, mean +- std over 500 runs, each under a budget of simulated training time.
PAPER = {"random": "93.70 +- 0.36", "rea": "93.92 +- 0.30", "reinforce": "93.85 +- 0.37",
         "bohb": "93.61 +- 0.52"}


def done_runs(path: str) -> set:
    if not os.path.exists(path):
        return set()
    with open(path, newline="", encoding="utf-8") as f:
        return {(r["strategy"], r["dataset"], int(r["seed"])) for r in csv.DictReader(f)}


def run(table: Table, strategy: str, dataset: str, seed: int, queries: int, path: str) -> float:
    started = time.perf_counter()
    trials = run_tabular({"strategy": strategy, "dataset": dataset, "seed": seed,
                          "trials": queries}, table)
    seconds = time.perf_counter() - started
    new = not os.path.exists(path)
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(COLUMNS)
        for n in POINTS:
            if n <= queries:
                writer.writerow([strategy, dataset, seed, n, repr(trials[n - 1].best_value),
                                 round(seconds, 3)])
    return seconds


def load(path: str) -> Dict[Tuple[str, str, int], List[float]]:
    """``(strategy, dataset, queries) -> [best of each seed]``."""
    out: Dict[Tuple[str, str, int], List[float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out.setdefault((r["strategy"], r["dataset"], int(r["queries"])), []).append(
                float(r["best"]))
    return out


def seconds_per_run(path: str) -> Dict[Tuple[str, str], float]:
    runs: Dict[Tuple[str, str, int], float] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            runs[(r["strategy"], r["dataset"], int(r["seed"]))] = float(r["seconds"])
    out: Dict[Tuple[str, str], List[float]] = {}
    for (strategy, dataset, _), s in runs.items():
        out.setdefault((strategy, dataset), []).append(s)
    return {k: statistics.median(v) for k, v in out.items()}


def cell(values: List[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} +- {std:.2f}"


def optimum(table: Table, dataset: str) -> float:
    return table.best(dataset).accuracy


def markdown(results, table: Table, path: str) -> str:
    strategies = [s for s in ORDER if any(k[0] == s for k in results)]
    datasets = [d for d in TABLE_DATASETS if any(k[1] == d for k in results)]
    times = seconds_per_run(path)
    lines = []
    for dataset in datasets:
        lines.append(f"**{TABLE_DATASET_TITLES[dataset]}** (table optimum "
                     f"{optimum(table, dataset):.2f}; best-so-far test accuracy %, mean +- std "
                     "over seeds)\n")
        header = "| strategy | seeds | " + " | ".join(f"{n} queries" for n in REPORTED)
        header += " | median s per run |"
        if dataset == "cifar10":
            header += " NB201 paper (time budget) |"
        lines += [header, "|" + "---|" * (len(REPORTED) + 3 + (dataset == "cifar10"))]
        for s in strategies:
            if not any(k[0] == s and k[1] == dataset for k in results):
                continue
            seeds = len(results.get((s, dataset, 1), []))
            row = [str(seeds)] + [cell(results.get((s, dataset, n), [])) for n in REPORTED]
            seconds = times.get((s, dataset))
            row.append(f"{seconds:.1f}" if seconds is not None else "-")
            if dataset == "cifar10":
                row.append(PAPER.get(s, "-"))
            lines.append(f"| {s} | " + " | ".join(row) + " |")
        if dataset == "cifar10":
            lines.append("| bohb (not run here) | - | " + " | ".join("-" for _ in REPORTED)
                         + f" | - | {PAPER['bohb']} |")
        lines.append("")
    return "\n".join(lines)


def plot(results, table: Table, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in TABLE_DATASETS if any(k[1] == d for k in results)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for s in ORDER:
            points = [n for n in POINTS if (s, dataset, n) in results and n >= 5]
            if not points:
                continue
            mean = [statistics.fmean(results[(s, dataset, n)]) for n in points]
            quartiles = [statistics.quantiles(results[(s, dataset, n)], n=4) for n in points]
            ax.plot(points, mean, label=s, color=COLORS[s])
            ax.fill_between(points, [q[0] for q in quartiles], [q[2] for q in quartiles],
                            color=COLORS[s], alpha=0.12)
        best = optimum(table, dataset)
        ax.axhline(best, color="k", lw=0.8, ls="--", label=f"optimum {best:.2f}")
        ax.set_xscale("log")
        ax.set_xlabel("table queries")
        ax.set_ylabel("best-so-far test accuracy (%)")
        ax.set_title(f"NB201 {TABLE_DATASET_TITLES[dataset]}")
        low = min(statistics.fmean(results[k]) for k in results if k[1] == dataset and k[2] >= 5)
        ax.set_ylim(low - 1.0, best + 0.4)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--max-queries", type=int, default=500)
    parser.add_argument("--strategies", nargs="+", default=["random", "tpe", "rea", "reinforce"],
                        choices=TABULAR_STRATEGIES)
    parser.add_argument("--datasets", nargs="+", default=list(TABLE_DATASETS),
                        choices=TABLE_DATASETS)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    parser.add_argument("--report", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.report, exist_ok=True)
    path = os.path.join(args.out, "nb201_tabular.csv")
    table = Table.load()
    if not args.report_only:
        import torch

        torch.set_num_threads(1)  # Optuna's GP sampler runs on torch
        done = done_runs(path)
        for dataset in args.datasets:
            for strategy in args.strategies:
                for seed in range(args.seeds):
                    if (strategy, dataset, seed) in done:
                        continue
                    seconds = run(table, strategy, dataset, seed, args.max_queries, path)
                    print(f"{strategy:9s} {dataset:14s} seed {seed:2d}: {seconds:.1f}s",
                          flush=True)
    results = load(path)
    text = markdown(results, table, path)
    stamp = (f"{datetime.date.today()}, {platform.node()}, Python "
             f"{platform.python_version()}, {os.cpu_count()} CPUs (shared)")
    with open(os.path.join(args.report, "nb201_tabular.md"), "w", encoding="utf-8") as f:
        f.write(f"<!-- python benchmarks/nb201_tabular.py; {stamp} -->\n\n{text}")
    try:
        plot(results, table, os.path.join(args.report, "nb201_tabular.png"))
    except ImportError:
        print("matplotlib is missing: no plot")
    print(text)


if __name__ == "__main__":
    main()
