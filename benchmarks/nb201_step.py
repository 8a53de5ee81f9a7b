"""Speed of a DARTS search step on NAS-Bench-201's space: the reference supernet against the
fast one, in one process, steps interleaved.

    python benchmarks/nb201_step.py                       # batch 64, first order, fp32, 1 thread
    python benchmarks/nb201_step.py --steps 7 --batch-size 64 --order 2 --threads 2
    python benchmarks/nb201_step.py --gumbel              # GDAS (needs fastnas.space.Gumbel)

Both optimizers are ``DARTSOptimizer``s with ``space='nb201'`` and xautodl's search network
(C=16, N=5, 10 classes) built from the same seed, on one synthetic batch of 32x32 RGB images
(the same batch for the weight and the architecture step). Before timing, the two supernets'
logits are compared on that batch (max relative difference printed). Then each round runs one
reference step and one fast step; the first ``--warmup`` rounds are not counted. Reported per
supernet: the median wall-clock and process-CPU seconds of a step and the speed-up of the fast
one (reference median / fast median). On a machine that other processes share, the CPU time is
the steadier figure (with one thread it is the time the step computed); both are printed. GPU
figures need a GPU: this script runs on whatever ``--device`` names.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fastnas import DARTSOptimizer  # noqa: E402

NB201_SEARCH_NET = dict(space="nb201", channels=16, layers=5, num_classes=10, in_channels=3)
IMAGE_SIZE = 32
SUPERNETS = ("reference", "fast")


def make_optimizer(supernet: str, batch_size: int, order: int, precision: str, device: str,
                   gumbel: bool = False):
    relaxation = None
    if gumbel:  # GDAS's hard sample: only the sampled op of each edge runs
        try:
            from fastnas.space import Gumbel
        except ImportError:
            raise SystemExit("--gumbel needs fastnas.space.Gumbel (the methods issue)") from None
        relaxation = Gumbel(seed=0)
    return DARTSOptimizer(dict(NB201_SEARCH_NET, supernet=supernet, batch_size=batch_size,
                               order=order, precision=precision, device=device, seed=0,
                               num_steps=1, nesterov=True, weight_decay=5e-4),
                          relaxation=relaxation)


def make_batch(batch_size: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, 10, (batch_size,), generator=g)
    return x.to(device), y.to(device)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_step(opt: DARTSOptimizer, batch) -> tuple:
    _sync(opt.device)
    wall, cpu = time.perf_counter(), time.process_time()
    opt.step(batch, batch)
    _sync(opt.device)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--order", type=int, choices=(1, 2), default=1)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "fp64"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=5, help="timed steps per supernet")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--gumbel", action="store_true",
                   help="GDAS: the Gumbel relaxation (one sampled op per edge) instead of softmax")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    opts = {s: make_optimizer(s, args.batch_size, args.order, args.precision, args.device,
                              args.gumbel) for s in SUPERNETS}
    batch = make_batch(args.batch_size, args.device)
    with torch.no_grad():
        ref, fast = (opts[s].model(batch[0].to(opts[s].dtype)) for s in SUPERNETS)
        diff = ((fast - ref).abs().max() / ref.abs().max()).item()
    print(f"fast vs reference logits: max relative difference {diff:.2e}")
    times = {s: [] for s in SUPERNETS}
    for round_ in range(args.warmup + args.steps):
        for s in SUPERNETS:
            t = timed_step(opts[s], batch)
            if round_ >= args.warmup:
                times[s].append(t)
    method = "GDAS" if args.gumbel else "DARTS"
    print(f"\nNB201 {method} step: batch {args.batch_size}, order {args.order}, {args.precision}, "
          f"{args.threads} thread(s), {args.device} ({platform.processor() or platform.machine()}"
          f", torch {torch.__version__}); medians of {args.steps} steps\n")
    print("| supernet | wall s/step | CPU s/step | speed-up (wall) | speed-up (CPU) |")
    print("|---|---|---|---|---|")
    med = {s: [statistics.median(t[i] for t in times[s]) for i in (0, 1)] for s in SUPERNETS}
    for s in SUPERNETS:
        up = [med["reference"][i] / med[s][i] for i in (0, 1)]
        print(f"| {s} | {med[s][0]:.3f} | {med[s][1]:.3f} | {up[0]:.2f}x | {up[1]:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
