"""Speed and peak memory of a first-order search step per method, against DARTS (issue 18).

    python benchmarks/methods.py               # batch 16 and 64, fast and reference
    python benchmarks/methods.py --batch-sizes 16 --supernets fast --steps 5 --repeats 3

The methods differ in the supernet (``fastnas.supernet``'s method axes) and the relaxation:

- ``darts``: softmax, every op of every edge;
- ``gdas``: ``fastnas.space.Gumbel`` (one sampled op per edge, only those computed);
- ``pc-darts``: ``partial_channels=4`` and ``edge_normalization`` (the ops see C/4 channels);
- ``darts-minus``: ``aux_skip=50`` (an auxiliary skip on every edge).

The other methods of issue 18 (DrNAS, beta-DARTS, SDARTS, FairDARTS) change the relaxation, the
loss or the weight step, not the supernet; their rows belong with the method presets.

Every configuration (method x supernet x batch size) runs in its own subprocess, one thread, on
the paper's search network (C=16, 8 cells, 4 nodes, 10 classes, 32x32 RGB, fp32), a fixed
synthetic batch (train = val). The supernet takes the method's supernet keys from its preset
(``fastnas.darts.methods.PRESETS``) where the presets exist, else the list above. The step is
the first-order DARTS step, built here directly from ``build_supernet``: the architecture step (Adam
3e-4, betas (0.5, 0.999), wd 1e-3; gradients of the architecture parameters only), then the
weight step (SGD 0.025, momentum 0.9, wd 3e-4, gradient norm clipped at 5; gradients of the
weights only), each with its own forward pass (GDAS: its own sample). After one warm-up step, the
peak memory growth of one step is measured (``fastnas.profiling.measure_step_peak``: peak RSS
minus RSS before the step, the peak reset first), then ``--steps`` steps are timed (median of the
wall clock, and of the process CPU time: with one thread on a shared machine, the CPU time leaves
out the time the process waited for a core, so its ratios are the steadier ones).

With ``--repeats R`` the sweep runs R times, configurations interleaved, and each figure is the
median over rounds, so a slow patch of a shared machine hits every configuration alike. Ratios
are against ``darts`` on the same supernet and batch size, from the same run. Prints a markdown
table; ``--csv`` writes the rows with machine and version columns.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fastnas.profiling import measure_step_peak  # noqa: E402
from fastnas.space import ARCHITECTURE, WEIGHTS, Gumbel  # noqa: E402
from fastnas.supernet import build_supernet  # noqa: E402

PAPER = dict(C=16, layers=8, num_classes=10, num_nodes=4)
IMAGE_SIZE = 32

# method -> build_supernet keyword arguments (``relaxation`` a factory).
METHODS: Dict[str, dict] = {
    "darts": {},
    "gdas": {"relaxation": lambda: Gumbel(tau_max=10.0, tau_min=0.1, seed=0)},
    "pc-darts": {"partial_channels": 4, "edge_normalization": True},
    "darts-minus": {"aux_skip": 50},
}
TARGETS = {"gdas": (0.3, 0.4), "pc-darts": (0.4, 0.35), "darts-minus": (1.15, 1.15)}


def supernet_axes(method: str) -> dict:
    """``build_supernet``'s keyword arguments for ``method``: from the method's preset
    (``fastnas.darts.methods.PRESETS``, its supernet keys) where the presets exist, else
    ``METHODS``."""
    try:
        from fastnas.darts.methods import PRESETS
    except ImportError:
        return {k: (v() if k == "relaxation" else v) for k, v in METHODS[method].items()}
    preset = PRESETS[method]
    axes = {k: preset[k] for k in ("partial_channels", "edge_normalization", "aux_skip")
            if k in preset}
    if preset.get("relaxation", "softmax") == "gumbel":
        axes["relaxation"] = Gumbel(preset.get("tau_max", 10.0), preset.get("tau_min", 0.1), 0)
    return axes


def make_step(method: str, supernet: str, batch_size: int):
    """``step()``: one first-order search step of ``method`` (see the module docstring)."""
    kw = supernet_axes(method)
    torch.manual_seed(0)
    model = build_supernet(supernet, **PAPER, **kw)
    model.set_epoch(0, 50)
    model.train()
    alphas = model.alphas()
    weights = list(model.weights())
    arch_opt = torch.optim.Adam(alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    weight_opt = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, PAPER["num_classes"], (batch_size,), generator=g)

    def apply(params, loss):
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, grad in zip(params, grads):
            p.grad = grad          # None for the weights of ops no edge sampled (GDAS)
        return [p for p in params if p.grad is not None]

    def step():
        arch_opt.zero_grad(set_to_none=True)
        with model.arch.phase(ARCHITECTURE):
            loss = F.cross_entropy(model(x), y)
        apply(alphas, loss)
        arch_opt.step()
        weight_opt.zero_grad(set_to_none=True)
        with model.arch.phase(WEIGHTS):
            loss = F.cross_entropy(model(x), y)
        torch.nn.utils.clip_grad_norm_(apply(weights, loss), 5.0)
        weight_opt.step()
    return step


def make_optimizer_step(method: str, supernet: str, batch_size: int):
    """``step()``: one ``DARTSOptimizer.step`` of the preset ``method`` (``--engine
    optimizer``): every axis of the method, the relaxation's noise, its regularizers and
    SDARTS' perturbation included, alphas not frozen (warm-up 0), same batch for both halves."""
    from fastnas import DARTSOptimizer

    opt = DARTSOptimizer(dict(method=method, supernet=supernet, channels=PAPER["C"],
                              layers=PAPER["layers"], num_nodes=PAPER["num_nodes"],
                              num_classes=PAPER["num_classes"], in_channels=3,
                              batch_size=batch_size, warmup_epochs=0, seed=0, device="cpu"))
    opt.model.set_epoch(0, 50)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
             torch.randint(0, PAPER["num_classes"], (batch_size,), generator=g))
    return lambda: opt.step(batch, batch)


def run_worker(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    make = make_optimizer_step if spec.get("engine") == "optimizer" else make_step
    step = make(spec["method"], spec["supernet"], spec["batch_size"])
    step()                                            # warm-up
    peak, before, how, _ = measure_step_peak(step, torch.device("cpu"))
    times, cpu = [], []
    for _ in range(spec["steps"]):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"step_s": statistics.median(times), "cpu_s": statistics.median(cpu),
            "peak_bytes": peak, "peak_method": how}


def spawn(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                          json.dumps(spec)], capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"configuration {spec} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def sweep(args) -> List[dict]:
    specs = [dict(method=m, supernet=s, batch_size=b, steps=args.steps, threads=args.threads,
                  engine=args.engine)
             for b in args.batch_sizes for s in args.supernets for m in args.methods]
    rounds: List[List[dict]] = []
    for r in range(args.repeats):
        results = []
        for spec in specs:
            res = spawn(spec)
            print(f"round {r + 1}: {spec['method']:12s} {spec['supernet']:9s} batch "
                  f"{spec['batch_size']:3d}: {res['step_s']:.3f} s/step, {res['cpu_s']:.3f} "
                  "CPU s/step, "
                  f"{res['peak_bytes'] / 2**20:.1f} MiB", file=sys.stderr, flush=True)
            results.append(res)
        rounds.append(results)
    rows = []
    for i, spec in enumerate(specs):
        per_round = [rnd[i] for rnd in rounds]
        rows.append({**spec,
                     "step_s": statistics.median(r["step_s"] for r in per_round),
                     "cpu_s": statistics.median(r["cpu_s"] for r in per_round),
                     "peak_mib": statistics.median(r["peak_bytes"] for r in per_round) / 2**20,
                     "peak_method": per_round[0]["peak_method"]})
    for row in rows:
        base = next(r for r in rows if r["method"] == "darts" and r["supernet"] == row["supernet"]
                    and r["batch_size"] == row["batch_size"])
        row["time_vs_darts"] = row["step_s"] / base["step_s"]
        row["cpu_vs_darts"] = row["cpu_s"] / base["cpu_s"]
        row["memory_vs_darts"] = row["peak_mib"] / max(base["peak_mib"], 1e-9)
    return rows


def markdown(rows: List[dict]) -> str:
    lines = ["| method | supernet | batch | s/step (wall) | wall vs darts | CPU s/step | "
             "CPU vs darts | peak MiB | memory vs darts | CPU target (time, memory) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = TARGETS.get(r["method"])
        target = "-" if target is None else f"<= {target[0]}x, <= {target[1]}x"
        lines.append(f"| {r['method']} | {r['supernet']} | {r['batch_size']} | "
                     f"{r['step_s']:.3f} | {r['time_vs_darts']:.2f}x | {r['cpu_s']:.3f} | "
                     f"{r['cpu_vs_darts']:.2f}x | {r['peak_mib']:.1f} | "
                     f"{r['memory_vs_darts']:.2f}x | {target} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default {list(METHODS)}; with --engine optimizer any preset")
    p.add_argument("--engine", choices=["supernet", "optimizer"], default="supernet",
                   help="supernet: the minimal step of the supernet axes (default); optimizer: "
                        "DARTSOptimizer.step of each preset (every axis of the method)")
    p.add_argument("--supernets", nargs="+", default=["fast", "reference"],
                   choices=["fast", "reference"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 64])
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--repeats", type=int, default=1, help="rounds over all configurations")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--csv", help="write the rows here (with machine and version columns)")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    from fastnas.darts.methods import METHODS as PRESET_NAMES

    known = PRESET_NAMES if args.engine == "optimizer" else tuple(METHODS)
    args.methods = list(known) if args.methods is None else args.methods
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        p.error(f"unknown methods {unknown} for --engine {args.engine}; known: {list(known)}")
    if "darts" not in args.methods:
        args.methods = ["darts", *args.methods]
    rows = sweep(args)
    print(f"First-order search step, paper supernet (C=16, 8 cells), fp32, {args.threads} "
          f"thread(s), CPU; peak: {rows[0]['peak_method']}; medians of {args.steps} steps"
          f" x {args.repeats} round(s).")
    print(markdown(rows))
    if args.csv:
        from search_step import machine  # benchmarks/ is on sys.path when run as a script

        info = machine()
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[*rows[0], *info])
            w.writeheader()
            for r in rows:
                w.writerow({**r, **info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
