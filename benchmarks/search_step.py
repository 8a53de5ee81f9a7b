"""Speed, peak memory and dispatches of a DARTS search step: the reference supernet, the fast
one eager, and the fast one under ``torch.compile``.

    python benchmarks/search_step.py                      # the full table on the device at hand
    python benchmarks/search_step.py --orders 1 --precisions fp32 --checkpointing off \
        --batch-sizes 8 32 --threads 1 0 --repeats 3      # the compile table of RESULTS.md

Every configuration (variant x order x precision x checkpointing x batch size x threads) runs in
its own subprocess, so that peak memory is not contaminated by an earlier configuration. The
subprocess builds a ``DARTSOptimizer`` for the paper's search network (C=16, 8 cells, 10
classes) on a synthetic batch of 32x32 RGB images and

- runs a first step, timed: for ``fast-compiled`` (``compile=True``) it compiles the graphs
  (inductor, a fresh cache folder unless ``--warm-cache``), so *compile time* is its time minus
  the median step time;
- measures the peak memory growth of the next step (peak RSS minus RSS before the step on the
  CPU, ``max_memory_allocated`` growth on CUDA; ``fastnas.profiling.measure_step_peak``);
- times ``--steps`` more steps (wall clock and, on the CPU, process CPU time);
- counts the operator dispatches of one more step (``count_dispatches``): on CUDA the GPU
  kernels the profiler saw; on the CPU the outermost compute operators (aten ops other than
  views and allocations, and inductor's generated kernels) - the launches the same step would
  make on a GPU, where a DARTS step at these sizes is bound by launches.

With ``--repeats R`` the whole sweep runs R times, configurations interleaved, and each figure is
the median over rounds of the per-round medians, so a slow patch on a shared machine hits every
configuration alike. Speed-ups and memory ratios are against the reference supernet of the same
order, precision, checkpointing, batch size and threads.

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
import tempfile
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
VARIANTS = ("reference", "fast", "fast-compiled")


def make_config(supernet: str, order: int, precision: str, checkpointing: bool, batch_size: int,
                device: str, **overrides) -> dict:
    """The DARTS config of one benchmark row (``supernet``: ``reference``, ``fast`` or
    ``fast-compiled``, the fast supernet with ``compile=True``)."""
    compiled = supernet == "fast-compiled"
    return dict(PAPER, supernet="fast" if compiled else supernet, compile=compiled, order=order,
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


# Operators that launch no kernel: views, metadata, allocations. Counting descends into them
# (a reshape that copies counts its copy).
NO_KERNEL = frozenset("""
    empty empty_strided empty_like new_empty new_empty_strided as_strided view _unsafe_view
    reshape _reshape_alias slice select permute transpose t expand expand_as unsqueeze squeeze
    alias detach detach_ lift_fresh unbind split split_with_sizes chunk narrow unflatten flatten
    view_as resolve_conj resolve_neg contiguous to _to_copy diagonal unfold result_type
    is_nonzero item _local_scalar_dense set_ resize_ size stride numpy_T movedim
    """.split())


def _is_dispatch(name: str) -> bool:
    if name.startswith("aten::"):
        return name[6:] not in NO_KERNEL
    return "cpp_fused" in name or name.startswith("triton_")


def count_dispatches(step, device: torch.device) -> int:
    """Kernel launches of one ``step()``: on CUDA the GPU kernels the profiler records; on the
    CPU the outermost compute operators (see ``NO_KERNEL``) and inductor's generated kernels
    (with ``TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE=1`` set before compiling)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        step()
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.device_type == DeviceType.CUDA)

    def count(e) -> int:
        if _is_dispatch(e.name):
            return 1
        return sum(count(c) for c in e.cpu_children)

    return sum(count(e) for e in events if e.cpu_parent is None)


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
    if spec.get("compile_mode"):
        cfg["compile_mode"] = spec["compile_mode"]
    opt, step = make_step(cfg)
    start = time.perf_counter()
    step()                      # compiles the graphs for fast-compiled
    first = time.perf_counter() - start
    peak, before, method, _ = measure_step_peak(step, opt.device)
    wall, cpu = [], []
    for _ in range(spec["steps"]):
        t, c = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    dispatches = count_dispatches(step, opt.device)
    graphs = None
    if cfg["compile"]:
        from torch._dynamo.utils import counters

        graphs = int(counters["stats"]["unique_graphs"])
    return {"peak_bytes": peak, "baseline_bytes": before, "peak_method": method,
            "first_step_s": first, "compile_s": max(0.0, first - statistics.median(wall)),
            "wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
            "dispatches": dispatches, "graphs": graphs, "model": type(opt.model).__name__,
            "kernels": opt.kernels, "threads": torch.get_num_threads()}


def check_logits(device: str, batch_size: int) -> float:
    """Max relative logit difference of the fast supernet vs the reference, same state."""
    ref = DARTSOptimizer(make_config("reference", 1, "fp32", False, batch_size, device))
    fast = DARTSOptimizer(make_config("fast", 1, "fp32", False, batch_size, device))
    fast.model.load_state_dict(ref.model.state_dict())
    x, _ = make_batch(ref.config.to_dict(), ref.device)
    with torch.no_grad():
        a, b = ref.model(x), fast.model(x)
    return ((b - a).abs().max() / a.abs().max()).item()


def spawn(spec: dict, warm_cache: bool) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE="1")
    with tempfile.TemporaryDirectory(prefix="fastnas-inductor-") as cache:
        if not warm_cache:   # compile time from scratch, not a load from an earlier run
            env["TORCHINDUCTOR_CACHE_DIR"] = cache
            env["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                              json.dumps(spec)], capture_output=True, text=True, cwd=ROOT,
                             env=env)
    if out.returncode != 0:
        raise RuntimeError(f"configuration {spec} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the sweep ------------------------------------------------------------------------------------
def _specs(args, device: str) -> List[dict]:
    specs = []
    for o in args.orders:
        for p in args.precisions:
            for c in args.checkpointing:
                for b in args.batch_sizes or [64 if device == "cuda" else 8]:
                    for t in args.threads:
                        for v in args.supernets:
                            if v == "fast-compiled" and c == "on":
                                continue   # compile=True excludes checkpointing
                            specs.append(dict(supernet=v, order=o, precision=p,
                                              checkpointing=c == "on", device=device,
                                              batch_size=b, steps=args.steps, threads=t,
                                              compile_mode=args.compile_mode))
    return specs


def _same_setting(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("order", "precision", "checkpointing", "batch_size",
                                      "threads"))


def sweep(args, device: str) -> List[dict]:
    specs = _specs(args, device)
    results: Dict[int, List[dict]] = {i: [] for i in range(len(specs))}
    for r in range(args.repeats):
        for i, spec in enumerate(specs):
            res = spawn(spec, args.warm_cache)
            results[i].append(res)
            print(f"round {r + 1}/{args.repeats} {spec['supernet']:13s} order {spec['order']} "
                  f"{spec['precision']} ckpt {'on ' if spec['checkpointing'] else 'off'} "
                  f"batch {spec['batch_size']} threads {res['threads']}: "
                  f"{res['wall_s']:.2f} s/step, peak +{res['peak_bytes'] / 2**20:.0f} MiB, "
                  f"{res['dispatches']} dispatches, compile {res['compile_s']:.0f} s",
                  file=sys.stderr, flush=True)
    rows = []
    for i, spec in enumerate(specs):
        runs = results[i]
        med = lambda key, runs=runs: statistics.median(r[key] for r in runs)  # noqa: E731
        rows.append(dict(spec, wall_s=med("wall_s"), cpu_s=med("cpu_s"),
                         peak_mib=med("peak_bytes") / 2**20, compile_s=med("compile_s"),
                         dispatches=int(med("dispatches")), graphs=runs[0]["graphs"],
                         model=runs[0]["model"], kernels=runs[0]["kernels"],
                         threads=runs[0]["threads"], peak_method=runs[0]["peak_method"],
                         rounds=len(runs)))
    for row in rows:
        ref = next((r for r in rows if r["supernet"] == "reference" and _same_setting(r, row)),
                   None)
        row["speedup"] = ref["wall_s"] / row["wall_s"] if ref else float("nan")
        row["cpu_speedup"] = ref["cpu_s"] / row["cpu_s"] if ref else float("nan")
        row["memory_ratio"] = row["peak_mib"] / ref["peak_mib"] if ref else float("nan")
        row["dispatch_ratio"] = row["dispatches"] / ref["dispatches"] if ref else float("nan")
    return rows


def _label(r: dict) -> str:
    if r["supernet"] == "reference":
        return "reference"
    return f"fast ({r['kernels']}){', compiled' if r['supernet'] == 'fast-compiled' else ''}"


def markdown(rows: List[dict], info: Dict[str, str], logit_diff: float) -> str:
    r0 = rows[0]
    lines = [
        f"Device: {r0['device']} ({info['cpu'] if r0['device'] == 'cpu' else info['gpu']}, "
        f"{info['cores']} cores); torch {info['torch']}, triton {info['triton']}, Python "
        f"{info['python']}; {info['date']}.",
        f"Paper search network (C=16, 8 cells, 32x32 RGB, 10 classes); median of "
        f"{r0['rounds']} round(s) x {r0['steps']} step(s). Fast vs reference logits (fp32, same "
        f"state): max relative difference {logit_diff:.1e}.",
        "",
        "| supernet | order | precision | ckpt | batch | threads | s/step | speed vs reference "
        "| CPU s/step | peak memory growth (MiB) | memory vs reference | dispatches/step "
        "| compile (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = f"{r['cpu_s']:.2f}" if r["device"] == "cpu" else "-"
        compile_s = f"{r['compile_s']:.0f}" if r["supernet"] == "fast-compiled" else "-"
        lines.append(
            f"| {_label(r)} | {r['order']} | {r['precision']} | "
            f"{'on' if r['checkpointing'] else 'off'} | {r['batch_size']} | {r['threads']} | "
            f"{r['wall_s']:.2f} | {r['speedup']:.2f}x | {cpu} | {r['peak_mib']:.0f} | "
            f"{r['memory_ratio']:.2f}x | {r['dispatches']} | {compile_s} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                   help="default 8 on CPU, 64 on CUDA")
    p.add_argument("--supernets", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--orders", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                   choices=["fp32", "bf16", "fp16"])
    p.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--steps", type=int, default=2, help="timed steps after the first two")
    p.add_argument("--repeats", type=int, default=1, help="rounds over all configurations")
    p.add_argument("--threads", nargs="+", type=int, default=[0],
                   help="torch threads per configuration (0: torch's default, all cores)")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode of fast-compiled (reduce-overhead: CUDA graphs)")
    p.add_argument("--warm-cache", action="store_true",
                   help="let fast-compiled load inductor's on-disk cache (default: compile from "
                        "scratch in a fresh cache folder)")
    p.add_argument("--csv", default=os.path.join(ROOT, "benchmarks", "out", "search_step.csv"))
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    info = machine()
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    diff = check_logits(device, (args.batch_sizes or [64 if device == "cuda" else 8])[0])
    rows = sweep(args, device)
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
