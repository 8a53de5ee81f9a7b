"""Search-step throughput and peak memory per rank with torch.distributed, for world sizes 1 and 2
(or more) at the same global batch.

    python benchmarks/distributed.py                         # world 1 and 2 on this machine
    python benchmarks/distributed.py --worlds 1 2 4 --global-batch 32 --steps 5

Each world size runs under ``torchrun --nproc_per_node W`` (gloo and one thread per rank on the
CPU, NCCL on GPUs): every rank builds the DARTS optimizer (paper search network by default),
takes one warm-up step whose peak memory growth is measured (``fastnas.profiling``), then times
``--steps`` first-order search steps on its shard of the global batch (``global / W`` images).
Throughput is ``global batch / median step time``; scaling efficiency is
``throughput(W) / (W * throughput(1))``. Prints a markdown table, writes a CSV.

On a CPU, W ranks share the machine's cores with each other: with W x 1 thread on a 2-core
machine this checks the plumbing (the collectives, the sharding, the memory per rank), it is not
a scaling claim. On GPUs (``bash benchmarks/gpu_check.sh`` runs the multi-GPU case when there
are several) the numbers are the real scaling.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from fastnas import DARTSOptimizer, distributed  # noqa: E402
from fastnas.profiling import measure_step_peak  # noqa: E402


def worker(args) -> None:
    torch.set_num_threads(1)
    _, device = distributed.init(timeout_s=600)
    world, rank = distributed.world_size(), distributed.rank()
    opt = DARTSOptimizer(dict(channels=args.channels, layers=args.layers, num_classes=10,
                              in_channels=3, device=device, seed=0, batch_size=args.global_batch))
    per_rank = args.global_batch // world
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(per_rank, 3, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, 10, (per_rank,), generator=g)

    def step():
        opt.step((x, y), (x, y))
        if opt.device.type == "cuda":
            torch.cuda.synchronize(opt.device)

    peak, _, method, _ = measure_step_peak(step, opt.device)
    times = []
    for _ in range(args.steps):
        distributed.barrier()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    results = distributed.gather({"rank": rank, "peak_bytes": peak, "method": method,
                                  "step_s": statistics.median(times)})
    if rank == 0:
        with open(args.worker, "w") as f:
            json.dump({"world": world, "device": str(opt.device), "ranks": results}, f)
    distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                   os.path.abspath(__file__), "--worker", out, "--global-batch",
                   str(args.global_batch), "--steps", str(args.steps), "--channels",
                   str(args.channels), "--layers", str(args.layers), "--image-size",
                   str(args.image_size)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0:
            if not os.path.exists(out):
                raise RuntimeError(f"world {world}: torchrun exited {done.returncode}")
            # Seen here about 1 run in 10 (torch 2.14.1, gloo, CPU): a worker aborts at exit,
            # after destroy_process_group ("terminate called without an active exception"),
            # when its results are written. Reported, not hidden.
            print(f"world {world}: torchrun exited {done.returncode} after rank 0 wrote its "
                  "results (an abort at process exit); the results are used", file=sys.stderr)
        with open(out) as f:
            return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1, help="rounds of the whole sweep (medians)")
    p.add_argument("--csv", default=os.path.join(ROOT, "benchmarks", "out", "distributed.csv"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    for world in args.worlds:
        if args.global_batch % world:
            p.error(f"--global-batch {args.global_batch} does not split over {world} ranks")
    rounds = [{w: run(w, args) for w in args.worlds} for _ in range(args.repeats)]
    rows = []
    for world in args.worlds:
        runs = [r[world] for r in rounds]
        step_s = statistics.median(max(rank["step_s"] for rank in run["ranks"]) for run in runs)
        peak = statistics.median(max(rank["peak_bytes"] for rank in run["ranks"]) for run in runs)
        rows.append({"world": world, "device": runs[0]["device"],
                     "global_batch": args.global_batch,
                     "per_rank_batch": args.global_batch // world, "step_s": step_s,
                     "images_per_s": args.global_batch / step_s,
                     "peak_mib_per_rank": peak / 2**20})
    base = next(r for r in rows if r["world"] == args.worlds[0])
    for r in rows:
        r["efficiency"] = r["images_per_s"] / (r["world"] / base["world"] * base["images_per_s"])
    os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"DARTS first-order search step, C={args.channels}, {args.layers} cells, "
          f"{args.image_size}x{args.image_size}, global batch {args.global_batch}, "
          f"{args.repeats} round(s) x {args.steps} steps, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs")
    print("| ranks | device | batch per rank | s/step | images/s | scaling efficiency "
          "| peak memory growth per rank |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['world']} | {r['device']} | {r['per_rank_batch']} | {r['step_s']:.2f} | "
              f"{r['images_per_s']:.2f} | {r['efficiency']:.2f} | "
              f"{r['peak_mib_per_rank']:.0f} MiB |")


if __name__ == "__main__":
    main()
