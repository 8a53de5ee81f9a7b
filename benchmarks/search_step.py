"""Speed and peak memory of a DARTS search step: the reference supernet against the fast one.

    python benchmarks/search_step.py                      # the full table on the device at hand
    python benchmarks/search_step.py --orders 1 --precisions fp32 --checkpointing off --repeats 5

Every configuration (supernet x order x precision x checkpointing) runs in its own subprocess, so
that peak memory is not contaminated by an earlier configuration: the subprocess builds a
``DARTSOptimizer`` for the paper's search network (C=16, 8 cells, 10 classes) on a synthetic
batch of 32x32 RGB images, measures the peak memory growth of its first step (peak RSS minus RSS
before the step on the CPU, ``max_memory_allocated`` growth on CUDA; see
``fastnas.profiling.measure_step_peak``), then times ``--steps`` more steps (wall clock and, on
the CPU, process CPU time). With ``--repeats R`` the whole sweep runs R times, configurations
interleaved, and each figure is the median over rounds of the per-round medians, so a slow
patch on a shared machine hits every configuration alike. Speed-ups and memory ratios are
against the reference supernet of the same order, precision and checkpointing setting.

Before timing, the fast supernet's logits are checked against the reference's on the benchmark
batch (same initial state; max relative difference printed). Prints a markdown table and writes
the rows to CSV (``--csv``, default ``benchmarks/out/search_step.csv``) with machine and version
columns. The pytest-benchmark suite ``benchmarks/bench_search_step.py`` times the same steps.
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

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fastnas import DARTSOptimizer  # noqa: E402
from fastnas.profiling import measure_step_peak  # noqa: E402

PAPER = dict(channels=16, layers=8, num_classes=10, in_channels=3, num_nodes=4)
IMAGE_SIZE = 32


# -- shared setup (also used by bench_search_step.py) ---------------------------------------------
def make_config(supernet: str, order: int, precision: str, checkpointing: bool, batch_size: int,
                device: str, **overrides) -> dict:
    """The DARTS config of one benchmark row (``supernet``: ``reference`` or ``fast``)."""
    return dict(PAPER, supernet=supernet, order=order,
                precision=precision, checkpointing=checkpointing, batch_size=batch_size,
                device=device, seed=0, num_steps=1, **overrides)


def make_batch(cfg: dict, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg["batch_size"], cfg["in_channels"], IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, cfg["num_classes"], (cfg["batch_size"],), generator=g)
    return x.to(device), y.to(device)


def make_step(cfg: dict):
    """``(optimizer, step)``: ``step()`` runs one search step on a fixed batch (train = val)."""
    opt = DARTSOptimizer(cfg)
    batch = make_batch(cfg, opt.device)

    def step():
        opt.step(batch, batch)
        if opt.device.type == "cuda":
            torch.cuda.synchronize(opt.device)
    return opt, step


def machine() -> Dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                   if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "torch": torch.__version__,
            "python": platform.python_version(), "date": datetime.date.today().isoformat(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "none"
    return info


# -- one configuration, in a subprocess -----------------------------------------------------------
def run_worker(spec: dict) -> dict:
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cfg = make_config(spec["supernet"], spec["order"], spec["precision"], spec["checkpointing"],
                      spec["batch_size"], spec["device"])
    opt, step = make_step(cfg)
    peak, before, method, first = measure_step_peak(step, opt.device)
    wall, cpu = [], []
    for _ in range(spec["steps"]):
        t, c = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"peak_bytes": peak, "baseline_bytes": before, "peak_method": method,
            "first_step_s": first, "wall_s": statistics.median(wall),
            "cpu_s": statistics.median(cpu), "model": type(opt.model).__name__,
            "kernels": opt.kernels,
            "threads": torch.get_num_threads()}


def check_logits(device: str, batch_size: int) -> float:
    """Max relative logit difference of the fast supernet vs the reference, same state."""
    ref = DARTSOptimizer(make_config("reference", 1, "fp32", False, batch_size, device))
    fast = DARTSOptimizer(make_config("fast", 1, "fp32", False, batch_size, device))
    fast.model.load_state_dict(ref.model.state_dict())
    x, _ = make_batch(ref.config.to_dict(), ref.device)
    with torch.no_grad():
        a, b = ref.model(x), fast.model(x)
    return ((b - a).abs().max() / a.abs().max()).item()


def spawn(spec: dict) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"configuration {spec} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the sweep ------------------------------------------------------------------------------------
def sweep(args) -> List[dict]:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch_size = args.batch_size or (64 if device == "cuda" else 8)
    specs = [dict(supernet=b, order=o, precision=p, checkpointing=c == "on", device=device,
                  batch_size=batch_size, steps=args.steps, threads=args.threads)
             for o in args.orders for p in args.precisions for c in args.checkpointing
             for b in args.supernets]
    results: Dict[int, List[dict]] = {i: [] for i in range(len(specs))}
    for r in range(args.repeats):
        for i, spec in enumerate(specs):
            res = spawn(spec)
            results[i].append(res)
            print(f"round {r + 1}/{args.repeats} {spec['supernet']:9s} order {spec['order']} "
                  f"{spec['precision']} ckpt {'on ' if spec['checkpointing'] else 'off'}: "
                  f"{res['wall_s']:.2f} s/step, peak +{res['peak_bytes'] / 2**20:.0f} MiB",
                  file=sys.stderr, flush=True)
    rows = []
    for i, spec in enumerate(specs):
        runs = results[i]
        med = lambda key, runs=runs: statistics.median(r[key] for r in runs)  # noqa: E731
        rows.append(dict(spec, wall_s=med("wall_s"), cpu_s=med("cpu_s"),
                         peak_mib=med("peak_bytes") / 2**20, model=runs[0]["model"],
                         kernels=runs[0]["kernels"],
                         threads=runs[0]["threads"], peak_method=runs[0]["peak_method"],
                         rounds=len(runs)))
    for row in rows:
        ref = next(r for r in rows if r["supernet"] == "reference" and r["order"] == row["order"]
                   and r["precision"] == row["precision"]
                   and r["checkpointing"] == row["checkpointing"]) \
            if "reference" in args.supernets else None
        row["speedup"] = ref["wall_s"] / row["wall_s"] if ref else float("nan")
        row["cpu_speedup"] = ref["cpu_s"] / row["cpu_s"] if ref else float("nan")
        row["memory_ratio"] = row["peak_mib"] / ref["peak_mib"] if ref else float("nan")
    return rows


def markdown(rows: List[dict], info: Dict[str, str], logit_diff: float) -> str:
    r0 = rows[0]
    lines = [
        f"Device: {r0['device']} ({info['cpu'] if r0['device'] == 'cpu' else info['gpu']}, "
        f"{info['cores']} cores, torch {r0['threads']} thread(s)); torch {info['torch']}, "
        f"triton {info['triton']}, Python {info['python']}; {info['date']}.",
        f"Paper search network (C=16, 8 cells, 32x32 RGB, 10 classes), batch "
        f"{r0['batch_size']}; median of {r0['rounds']} round(s) x {r0['steps']} step(s). "
        f"Fast vs reference logits (fp32, same state): max relative difference "
        f"{logit_diff:.1e}.",
        "",
        "| supernet | order | precision | checkpointing | s/step | it/s | speed vs reference "
        "| CPU s/step | peak memory growth (MiB) | memory vs reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        supernet = r["supernet"] if r["supernet"] == "reference" else f"fast ({r['kernels']})"
        cpu = f"{r['cpu_s']:.2f}" if r["device"] == "cpu" else "-"
        lines.append(
            f"| {supernet} | {r['order']} | {r['precision']} | "
            f"{'on' if r['checkpointing'] else 'off'} | {r['wall_s']:.2f} | {1 / r['wall_s']:.2f} "
            f"| {r['speedup']:.2f}x | {cpu} | {r['peak_mib']:.0f} | {r['memory_ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 on CPU, 64 on CUDA")
    p.add_argument("--supernets", nargs="+", default=["reference", "fast"],
                   choices=["reference", "fast", "torch", "triton"])
    p.add_argument("--orders", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                   choices=["fp32", "bf16", "fp16"])
    p.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--steps", type=int, default=2, help="timed steps after the first")
    p.add_argument("--repeats", type=int, default=1, help="rounds over all configurations")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--csv", default=os.path.join(ROOT, "benchmarks", "out", "search_step.csv"))
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    diff = check_logits(device, args.batch_size or (64 if device == "cuda" else 8))
    rows = sweep(args)
    print(markdown(rows, info, diff))
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        fields = list(rows[0]) + list(info) + ["logit_rel_diff"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **info, "logit_rel_diff": diff})
    print(f"\nwrote {args.csv}", file=sys.stderr)


if __name__ == "__main__":
    main()
