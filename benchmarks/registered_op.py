"""What a registered op costs in the fast supernet: the same op fused (built in) and per edge.

    python benchmarks/registered_op.py                        # small network, CPU, 1 thread
    python benchmarks/registered_op.py --size paper --steps 5 --repeats 5

Three search steps (first order, fp32) on the same network and batch:

- ``builtin``: the fast supernet over ``PRIMITIVES``;
- ``registered``: the same, with ``sep_conv_3x3`` replaced by ``my_sep_conv_3x3``, registered
  with ``fastnas.ops.register`` and built by the same ``SepConv`` factory. The fused plan does
  not know its name, so it runs per edge (``FastSearchCell``'s "other ops"), its output joined
  to the fused node sums; the rest of the plan stays fused;
- ``registered-convs``: all four conv ops (sep and dil, 3x3 and 5x5) replaced by registered
  copies: every conv of the cell per edge, only the pools, skips and node sums fused;
- ``reference``: the reference supernet over ``PRIMITIVES`` (one module per op), for scale.

Both fast variants start from the same state (the same draws: the registered op's shape check
draws nothing), and their logits are compared before timing. Each round times ``--steps``
steps of every variant, interleaved; the figure is the median over ``--repeats`` rounds of the
per-round medians, and the ratios are against ``builtin`` of the same run. On the CPU a step
is timed in process CPU time (at one thread, what the step itself costs, whatever else runs on
the machine), on CUDA in wall-clock time after a synchronize. Then one more step of each
measures the peak memory growth of a step (``fastnas.profiling.measure_step_peak``: the peak
RSS reset before the step on Linux, ``max_memory_allocated`` on CUDA).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

from search_step import make_batch, make_config  # noqa: E402

from fastnas import DARTSOptimizer  # noqa: E402
from fastnas.ops import OPS, PRIMITIVES, register  # noqa: E402
from fastnas.profiling import measure_step_peak  # noqa: E402

SIZES = {"small": dict(channels=8, layers=5), "paper": {}}
CONVS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
for _name in CONVS:  # the built-in factory under another name: the plan does not fuse it
    register("my_" + _name, OPS[_name])
PRIMITIVE_SETS = {
    "builtin": list(PRIMITIVES),
    "registered": [("my_" + op if op == "sep_conv_3x3" else op) for op in PRIMITIVES],
    "registered-convs": [("my_" + op if op in CONVS else op) for op in PRIMITIVES],
}


def build(variant: str, size: str, batch: int, device: str) -> DARTSOptimizer:
    supernet = "reference" if variant == "reference" else "fast"
    cfg = make_config(supernet, 1, "fp32", False, batch, device, **SIZES[size])
    cfg["primitives"] = PRIMITIVE_SETS.get(variant, list(PRIMITIVES))
    return DARTSOptimizer(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 8 on the CPU, 64 on CUDA")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or (64 if args.device.startswith("cuda") else 8)
    variants = [*PRIMITIVE_SETS] + ([] if args.no_reference else ["reference"])
    opts = {v: build(v, args.size, batch, args.device) for v in variants}
    x, y = make_batch(opts["builtin"].config.to_dict(), args.device)
    base = opts["builtin"].model
    initial = {k: v.clone() for k, v in base.state_dict().items()}  # before any forward
    for v in variants[1:]:
        model = opts[v].model
        same = all(torch.equal(initial[k], t) for k, t in model.state_dict().items())
        with torch.no_grad():
            a, b = base(x), model(x)
        diff = ((a - b).abs().max() / a.abs().max()).item()
        print(f"{v}: same initial state as builtin: {same}; logits max relative difference "
              f"{diff:.1e}")

    cuda = args.device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time

    def timed(opt) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        opt.step((x, y), (x, y))
        if cuda:
            torch.cuda.synchronize()
        return clock() - start

    for opt in opts.values():
        timed(opt)  # warm-up
    rounds = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            rounds[v].append(statistics.median(timed(opts[v]) for _ in range(args.steps)))
    medians = {v: statistics.median(r) for v, r in rounds.items()}
    peaks = {}
    for v in variants:  # one more step each: the peak memory growth of a step
        growth, _, method, _ = measure_step_peak(lambda o=opts[v]: o.step((x, y), (x, y)),
                                                 torch.device(args.device))
        peaks[v] = growth / 2**20
    what = "wall clock" if cuda else "process CPU time"
    print(f"{args.size} network, batch {batch}, {args.device}, {torch.get_num_threads()} "
          f"thread(s), {args.repeats} rounds x {args.steps} steps, {what}")
    print(f"| variant | step (s, median) | vs builtin | peak growth of a step ({method}) "
          "| vs builtin |")
    print("|---|---|---|---|---|")
    for v in variants:
        print(f"| {v} | {medians[v]:.3f} | {medians[v] / medians['builtin']:.2f}x "
              f"| {peaks[v]:.0f} MiB | {peaks[v] / peaks['builtin']:.2f}x |")


if __name__ == "__main__":
    main()
