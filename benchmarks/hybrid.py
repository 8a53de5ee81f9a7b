"""Sample efficiency of the hybrid search on digits: the best validation accuracy found, and the
test accuracy of that pick, against the number of trials, for

    random-full   random search over the whole DARTS cell space (every edge, every op but none)
    tpe-full      TPE over the whole space
    tpe-pruned    TPE over the DARTS-pruned space (k=3 edges, m=3 ops), warm-started with
                  DARTS's genotype as trial 0
    darts         DARTS's genotype alone: one trial (trial 0 of tpe-pruned: the same training)

    python benchmarks/hybrid.py                                  # 3 seeds x 20 trials per method
    python benchmarks/hybrid.py --seeds 0 --trials 3 --search-epochs 1 --epochs 1   # a smoke run

Every trial trains its cell from scratch with the same budget (``fastnas tune``'s digits trial:
5 epochs, 3 cells x 8 channels, batch 64, network seed = the run's seed, no pruning) and is
scored on the validation split carved from the train split; the test accuracy of every trial is
recorded too (``on_fit``), never used to select, so the test accuracy of the pick after ``n``
trials can be read off. The DARTS search (``fastnas search`` defaults for digits: 8 epochs,
5 cells x 8 channels, seed = the run's seed) counts in the wall clock of tpe-pruned and darts.

Resumable: searches checkpoint per epoch, every study lives in ``OUT/studies.db`` (a rerun
continues each one; a trial killed mid-way is failed and run again), so the script can run as
several invocations of a few minutes each. Writes ``hybrid.csv`` (one row per method, seed and
trial), ``hybrid.png`` (best-so-far curves, median and min-max over seeds) and ``hybrid.md``
(the table) into ``--report``.
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
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fastnas.pipeline import StageOptions, search_stage  # noqa: E402
from fastnas.tune import EdgeSpace, TuneConfig, TuneData, load_search  # noqa: E402
from fastnas.tune.study import tune  # noqa: E402

METHODS = ("random-full", "tpe-full", "tpe-pruned", "darts")
COLUMNS = ["method", "seed", "trial", "val_accuracy", "test_accuracy", "best_val",
           "test_of_best", "seconds", "search_seconds", "genotype"]


def darts_search(out: str, seed: int, epochs: int):
    """The DARTS search of one seed (resumed if a run stopped it), as the tune stage loads it."""
    folder = os.path.join(out, f"search-s{seed}")
    done = os.path.join(folder, "genotype.json")
    if not os.path.exists(done):
        search_stage(StageOptions(dataset="digits", resume=True, quiet=True), "darts",
                     {"seed": seed, "epochs": epochs}, folder)
    return load_search(folder)


def run_study(method: str, seed: int, args, search, tune_data: TuneData, storage: str):
    """The trials of one method and seed, each with its test accuracy as a user attribute."""
    test_loader = tune_data.test_loader(torch.device("cpu"))

    def record_test(trial, trainer):
        trial.set_user_attr("test_accuracy", trainer.evaluate(test_loader)["accuracy"])

    config = TuneConfig(trials=args.trials, sampler="random" if method == "random-full" else "tpe",
                        pruner="none", startup_trials=args.startup_trials, epochs=args.epochs,
                        seed=seed)
    if method == "tpe-pruned":
        space = EdgeSpace.from_alphas(*search.optimizer.arch_parameters(), k=3, m=3)
        warm = [search.optimizer.architecture()]
    else:
        space, warm = EdgeSpace.full(4), []
    return tune(space, config, warm_start=warm, tune_data=tune_data, storage=storage,
                study_name=f"{method}-s{seed}", on_fit=record_test, warm_start_label="darts",
                on_trial=lambda study, t: print(f"  {method} seed {seed} trial {t.number}: "
                                                f"val {t.value:.4f}", flush=True))


def rows_of(method: str, seed: int, study, search_seconds: float, trials: int) -> List[dict]:
    """Best-so-far rows: the pick after n trials is the best validation accuracy so far (the
    first on ties), with the test accuracy of that same trial. ``darts``: the warm-start trial
    of the pruned study alone."""
    done = [t for t in study.trials if t.state.name == "COMPLETE"
            and (method != "darts" or t.user_attrs.get("warm_start"))][:trials]
    rows, best, clock = [], None, search_seconds
    for n, t in enumerate(done):
        clock += (t.datetime_complete - t.datetime_start).total_seconds()
        if best is None or t.value > best.value:
            best = t
        rows.append({"method": method, "seed": seed, "trial": n + 1, "val_accuracy": t.value,
                     "test_accuracy": t.user_attrs["test_accuracy"], "best_val": best.value,
                     "test_of_best": best.user_attrs["test_accuracy"], "seconds": round(clock, 2),
                     "search_seconds": round(search_seconds, 2),
                     "genotype": t.user_attrs["genotype"]})
    return rows


def spread(values: List[float]) -> str:
    return (f"{statistics.median(values):.4f} ({min(values):.4f}-{max(values):.4f})"
            if values else "-")


def at_trial(rows: List[dict], method: str, n: int) -> List[dict]:
    """Each seed's row after ``n`` trials (``darts`` has one trial: its only row)."""
    n = 1 if method == "darts" else n
    return [r for r in rows if r["method"] == method and r["trial"] == n]


def table(rows: List[dict], checkpoints: List[int]) -> str:
    lines = ["| method | " + " | ".join(f"best val @{n}" for n in checkpoints)
             + f" | test of pick @{checkpoints[-1]} | wall clock s (search + trials) |",
             "|---" * (len(checkpoints) + 3) + "|"]
    for method in METHODS:
        cells = [spread([r["best_val"] for r in at_trial(rows, method, n)]) for n in checkpoints]
        last = at_trial(rows, method, checkpoints[-1])
        tests = [r["test_of_best"] for r in last]
        clock = [r["seconds"] for r in last]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {spread(tests)} | "
                     + (f"{statistics.median(clock):.0f}" if clock else "-") + " |")
    return "\n".join(lines)


def curve(rows: List[dict], method: str, key: str, trials: int):
    """Per trial count n: (n, median, min, max over seeds of ``key``, median wall clock)."""
    out = []
    for n in range(1, trials + 1):
        at = at_trial(rows, method, n)
        if at:
            values = [r[key] for r in at]
            out.append((n, statistics.median(values), min(values), max(values),
                        statistics.median(r["seconds"] for r in at)))
    return out


def plot(rows: List[dict], path: str, trials: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {"random-full": "tab:green", "tpe-full": "tab:blue", "tpe-pruned": "tab:red",
              "darts": "black"}
    for method, color in colors.items():
        style = "--" if method == "darts" else "-"
        for ax, key in zip(axes[:2], ("best_val", "test_of_best")):
            points = curve(rows, method, key, trials)
            if points:
                xs, mid, low, high, _ = zip(*points)
                ax.plot(xs, mid, style, color=color, label=method)
                ax.fill_between(xs, low, high, color=color, alpha=0.12)
        points = curve(rows, method, "best_val", trials if method != "darts" else 1)
        if points:
            _, mid, _, _, clock = zip(*points)
            axes[2].plot(clock, mid, style + ("o" if method == "darts" else ""), color=color,
                         label=method, drawstyle="steps-post")
    axes[0].set_title("best validation accuracy so far")
    axes[1].set_title("test accuracy of that pick")
    axes[2].set_title("best validation accuracy vs wall clock")
    for ax in axes[:2]:
        ax.set_xlabel("trials")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_xlabel("seconds, DARTS search included (median over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy: median, band = min-max over seeds")
    axes[2].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5, help="epochs per trial")
    p.add_argument("--search-epochs", type=int, default=8)
    p.add_argument("--startup-trials", type=int, default=5)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "hybrid"))
    p.add_argument("--report", default=os.path.join(ROOT, "benchmarks", "results"))
    args = p.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.report, exist_ok=True)
    storage = f"sqlite:///{os.path.abspath(os.path.join(args.out, 'studies.db'))}"
    started = time.perf_counter()
    rows: List[dict] = []
    for seed in args.seeds:
        search = darts_search(args.out, seed, args.search_epochs)
        tune_data = TuneData.load("digits", 0.2)
        results: Dict[str, object] = {}
        for method in METHODS[:3]:
            print(f"{method} seed {seed}", flush=True)
            results[method] = run_study(method, seed, args, search, tune_data, storage).study
        for method in METHODS[:3]:
            spent = search.seconds if method == "tpe-pruned" else 0.0
            rows += rows_of(method, seed, results[method], spent, args.trials)
        rows += rows_of("darts", seed, results["tpe-pruned"], search.seconds, 1)

    with open(os.path.join(args.report, "hybrid.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    checkpoints = sorted({n for n in (1, 5, 10, args.trials) if n <= args.trials})
    md = table(rows, checkpoints)
    header = (f"digits, seeds {args.seeds}, {args.trials} trials per method, trial = "
              f"{args.epochs} epochs of 3 cells x 8 channels; DARTS search {args.search_epochs} "
              f"epochs of 5 cells x 8 channels; {platform.processor() or platform.machine()}, "
              f"torch {torch.__version__}, 1 thread, {datetime.date.today()}")
    with open(os.path.join(args.report, "hybrid.md"), "w", encoding="utf-8") as f:
        f.write(header + "\n\n" + md + "\n")
    plot(rows, os.path.join(args.report, "hybrid.png"), args.trials)
    print(header)
    print(md)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
