"""Peak memory of a DARTS search step for one configuration, with a per-cell / per-op breakdown.

    python benchmarks/memory.py                                  # the paper's search, fast path
    python benchmarks/memory.py --supernet reference --order 2 --batch-size 8
    python benchmarks/memory.py --precision bf16 --checkpointing --json out.json

Prints ``fastnas.profiling.format_report(profile_memory(...))``: the peak memory growth of one
step (peak RSS on the CPU, ``max_memory_allocated`` on CUDA) and the activations one training
forward keeps for backward, per cell and per op. ``fastnas profile`` prints the same report.
Run one configuration per process: the CPU peak is that of the process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from fastnas.profiling import format_report, profile_memory  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--supernet", default="fast", choices=["reference", "fast"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "fp64"])
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--order", type=int, default=1, choices=[1, 2])
    p.add_argument("--batch-size", type=int, default=None, help="default 8 on CPU, 64 on CUDA")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=1, help="the last one is measured")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="also write the report as JSON to this path")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    config = dict(supernet=args.supernet, precision=args.precision,
                  checkpointing=args.checkpointing, order=args.order, channels=args.channels,
                  layers=args.layers, device=device, seed=0)
    report = profile_memory(config, batch_size=args.batch_size or (64 if device == "cuda" else 8),
                            image_size=args.image_size, steps=args.steps)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)


if __name__ == "__main__":
    main()
