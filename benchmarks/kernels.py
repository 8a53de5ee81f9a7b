"""Benchmarks of fastnas.kernels against their torch equivalents on DARTS search shapes.

    python benchmarks/kernels.py [--out DIR] [--batch N] [--dtypes fp32,bf16] [--quick]

On a GPU: each kernel (Triton) and its torch equivalent (native depthwise conv / cuDNN, the
elementwise MixedOp sum), forward and backward, fp32 and bf16, timed with
``triton.testing.do_bench`` (median; it flushes L2 before every run). Reported: milliseconds, the
achieved bandwidth of the minimum memory traffic (``bytes / time``) and its ratio to the measured
copy bandwidth (a 1 GiB device-to-device copy), and the speedup over torch. Before timing, every
output and gradient of both providers is checked against a float64 reference at the same shape.
The depthwise conv runs once per DARTS conv shape with channel multiplier 1 and with
``DARTS_MULTIPLIER`` (the convs of all edges reading one cell state in one call).

On a CPU there is no meaningful Triton timing (the interpreter runs kernels in numpy): the script
says so and times only the torch references (``time.perf_counter`` medians, small batch).

Writes ``DIR/kernels.csv`` (one row per op, shape, dtype, pass and provider, with machine and
version columns) and ``DIR/kernels.md`` (a table and the issue's goals, met or not).
DIR defaults to ``$OUT/kernels`` when ``OUT`` is set, else ``benchmarks/out``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from fastnas import kernels
from fastnas.kernels import reference
from fastnas.kernels.testing import (
    DARTS_BATCH,
    DARTS_CONVS,
    DARTS_MULTIPLIER,
    DARTS_NODE_TENSORS,
    DARTS_SHAPES,
    make_tensor,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Largest error of a provider at benchmark shapes, as a fraction of the reference's max |value|.
CHECK_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}


@dataclass
class Case:
    """One op at one shape and dtype: a forward per provider, the tensors it differentiates, and
    the minimum bytes a forward and a backward must move."""

    op: str
    variant: str
    shape: Sequence[int]
    dtype: torch.dtype
    forward: Dict[str, Callable[[], torch.Tensor]]
    inputs: List[torch.Tensor]
    bytes_fwd: int
    bytes_bwd: int
    reference64: Callable[[List[torch.Tensor]], torch.Tensor] = field(repr=False, default=None)


def _triton(fn, *args):
    def run():
        with kernels.use_backend("triton"):
            return fn(*args)
    return run


def build_cases(batch: int, dtypes: Sequence[torch.dtype], device: torch.device,
                quick: bool = False) -> List[Case]:
    cases = []
    shapes = DARTS_SHAPES[:1] if quick else DARTS_SHAPES
    convs = DARTS_CONVS[:2] if quick else DARTS_CONVS
    for dtype in dtypes:
        b = torch.tensor([], dtype=dtype).element_size()
        for C, H, W in shapes:
            shape = (batch, C, H, W)
            n = batch * C * H * W
            K = DARTS_NODE_TENSORS
            xs = [make_tensor(shape, dtype, device=device, seed=100 + k, requires_grad=True)
                  for k in range(K)]
            w = torch.softmax(make_tensor((K,), torch.float32, device=device, seed=7), 0)
            w.requires_grad_(True)
            cases.append(Case(
                "weighted_sum", f"K={K}", shape, dtype,
                {"triton": _triton(kernels.weighted_sum, xs, w),
                 "torch": lambda xs=xs, w=w: reference.weighted_sum(xs, w)},
                [w, *xs], (K + 1) * n * b, (2 * K + 1) * n * b,
                lambda t: reference.weighted_sum(t[1:], t[0])))
            # The same sum over views of one stacked [N, K, C, H, W] tensor, as a supernet that
            # stacks a node's op outputs hands them over (not dense: the strided kernel path).
            stacked = make_tensor((batch, K, C, H, W), dtype, device=device, seed=99,
                                  requires_grad=True)
            cases.append(Case(
                "weighted_sum", f"K={K} views", shape, dtype,
                {"triton": lambda s=stacked, w=w: _triton(kernels.weighted_sum, s.unbind(1), w)(),
                 "torch": lambda s=stacked, w=w: reference.weighted_sum(s.unbind(1), w)},
                [w, stacked], (K + 1) * n * b, (2 * K + 1) * n * b,
                lambda t: reference.weighted_sum(t[1].unbind(1), t[0])))
            x = make_tensor(shape, dtype, device=device, seed=1, requires_grad=True)
            for (k, pad, dil), M in itertools.product(convs, (1, DARTS_MULTIPLIER)):
                name = f"{'sep' if dil == 1 else 'dil'}_conv_{k}x{k}{f' M={M}' if M > 1 else ''}"
                v = make_tensor((M * C, 1, k, k), dtype, device=device, scale=1 / k, seed=2,
                                requires_grad=True)
                args = (1, pad, dil)
                # Forward reads x and writes M outputs; backward reads M output gradients and x
                # and writes dx (the weight gradient is tiny).
                cases.append(Case(
                    "depthwise_conv2d", name, shape, dtype,
                    {"triton": _triton(kernels.depthwise_conv2d, x, v, *args),
                     "torch": lambda x=x, v=v, args=args: reference.depthwise_conv2d(x, v, *args)},
                    [x, v], (1 + M) * n * b, (M + 2) * n * b,
                    lambda t, args=args: reference.depthwise_conv2d(*t, *args)))
    return cases


def outputs_and_grads(forward: Callable[[], torch.Tensor], inputs: List[torch.Tensor],
                      seed: int = 9) -> List[torch.Tensor]:
    y = forward()
    g = make_tensor(y.shape, y.dtype, device=y.device, seed=seed)
    return [y, *torch.autograd.grad(y, inputs, g)]


def max_error(case: Case, provider: str, want: List[torch.Tensor]) -> float:
    """Largest error of ``provider`` over the output and every gradient, each relative to the
    largest magnitude of its float64 reference ``want``."""
    got = outputs_and_grads(case.forward[provider], case.inputs)
    return max(((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
               for a, b in zip(got, want))


def reference64(case: Case) -> List[torch.Tensor]:
    inputs64 = [t.detach().double().requires_grad_(True) for t in case.inputs]
    return [t.detach() for t in outputs_and_grads(lambda: case.reference64(inputs64), inputs64)]


def copy_bandwidth_gbs(device: torch.device) -> float:
    """GB/s of a 1 GiB device-to-device copy (reads and writes counted)."""
    import triton.testing
    src = torch.randn(256 * 2**20, device=device)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def machine_info(device: torch.device) -> Dict[str, str]:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {"device": name or platform.machine(), "torch": torch.__version__,
            "triton": triton_version, "cuda": str(torch.version.cuda),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def run(cases: List[Case], device: torch.device, providers: Sequence[str],
        copy_gbs: Optional[float]) -> List[dict]:
    rows = []
    for case in cases:
        want = reference64(case) if device.type == "cuda" else None
        for provider in providers:
            err = max_error(case, provider, want) if want else float("nan")
            fwd = case.forward[provider]
            y = fwd()
            g = make_tensor(y.shape, case.dtype, device=device, seed=9)
            timings = {
                "fwd": time_ms(fwd, device),
                "bwd": time_ms(lambda y=y, case=case, g=g: torch.autograd.grad(
                    y, case.inputs, g, retain_graph=True),
                               device),
            }
            for pass_, ms in timings.items():
                nbytes = case.bytes_fwd if pass_ == "fwd" else case.bytes_bwd
                gbs = nbytes / (ms * 1e-3) / 1e9
                rows.append({
                    "op": case.op, "variant": case.variant,
                    "shape": "x".join(map(str, case.shape)), "dtype": str(case.dtype)[6:],
                    "pass": pass_, "provider": provider, "ms": round(ms, 4),
                    "min_bytes": nbytes, "gbs": round(gbs, 1),
                    "frac_copy_bw": round(gbs / copy_gbs, 3) if copy_gbs else "",
                    "max_rel_err": f"{err:.2e}",
                    "ok": "" if err != err else str(err <= CHECK_TOLERANCE[case.dtype]),
                })
        timed = "  ".join(f"{r['provider']} {r['pass']} {r['ms']:.3f} ms"
                          for r in rows[-2 * len(providers):])
        print(f"  {case.op:17s} {case.variant:16s} {'x'.join(map(str, case.shape)):14s} "
              f"{str(case.dtype)[6:]:9s} {timed}", flush=True)
    return rows


def markdown(rows: List[dict], info: Dict[str, str], copy_gbs: Optional[float]) -> str:
    lines = [f"Device: {info['device']}; torch {info['torch']}, triton {info['triton']}, "
             f"CUDA {info['cuda']}; {info['date']}."]
    if copy_gbs:
        lines.append(f"Measured copy bandwidth (1 GiB device-to-device): {copy_gbs:.0f} GB/s.")
    else:
        lines.append("No GPU: torch references only, timed on the CPU; Triton not timed.")
    lines += ["", "GB/s = minimum bytes / time; '% copy' = that over the copy bandwidth.", "",
              "| op | variant | shape | dtype | pass | torch ms | triton ms | speedup | "
              "triton GB/s | % copy | max rel err (triton) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    index = {(r["op"], r["variant"], r["shape"], r["dtype"], r["pass"], r["provider"]): r
             for r in rows}
    goals = {"weighted_sum >= 85% of copy bandwidth": [],
             "depthwise_conv2d fp32 >= 2x torch": []}
    for key in dict.fromkeys(k[:5] for k in index):
        t, tr = index.get(key + ("torch",)), index.get(key + ("triton",))
        speed = t["ms"] / tr["ms"] if t and tr else None
        lines.append("| " + " | ".join(map(str, [
            *key, t["ms"] if t else "", tr["ms"] if tr else "",
            f"{speed:.2f}x" if speed else "", tr["gbs"] if tr else "",
            f"{100 * tr['frac_copy_bw']:.0f}%" if tr and tr["frac_copy_bw"] != "" else "",
            tr["max_rel_err"] if tr else ""])) + " |")
        if tr is None or speed is None:
            continue
        if key[0] == "weighted_sum" and tr["frac_copy_bw"] != "":
            goals["weighted_sum >= 85% of copy bandwidth"].append(tr["frac_copy_bw"] >= 0.85)
        if key[0] == "depthwise_conv2d" and key[3] == "float32":
            goals["depthwise_conv2d fp32 >= 2x torch"].append(speed >= 2.0)
    lines += ["", "Goals (rows meeting each):", ""]
    for goal, met in goals.items():
        lines.append(f"- {goal}: {sum(met)} of {len(met)} rows" if met else
                     f"- {goal}: not measured")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = (os.path.join(os.environ["OUT"], "kernels") if os.environ.get("OUT")
                   else os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--batch", type=int, default=None,
                        help=f"default {DARTS_BATCH} on a GPU, 2 on a CPU")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--quick", action="store_true", help="one shape, two convs")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda" and kernels.HAS_TRITON
    batch = args.batch or (DARTS_BATCH if on_gpu else 2)
    info = machine_info(device)
    print(f"fastnas kernel benchmarks on {info['device']} (torch {info['torch']}, "
          f"triton {info['triton']}), batch {batch}")
    if not on_gpu:
        print("No CUDA GPU (or no Triton): Triton timings need a GPU; the interpreter's would "
              "be meaningless. Timing only the torch references on the CPU.")
    copy_gbs = copy_bandwidth_gbs(device) if on_gpu else None
    if copy_gbs:
        print(f"copy bandwidth: {copy_gbs:.0f} GB/s")
    dtypes = [DTYPES[d.strip()] for d in args.dtypes.split(",")]
    cases = build_cases(batch, dtypes, device, quick=args.quick)
    rows = run(cases, device, ("torch", "triton") if on_gpu else ("torch",), copy_gbs)

    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "kernels.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) + list(info))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **info})
    md_path = os.path.join(args.out, "kernels.md")
    with open(md_path, "w") as f:
        f.write(markdown(rows, info, copy_gbs))
    print(f"wrote {csv_path} and {md_path}")
    failed = [r for r in rows if r["ok"] == "False"]
    for r in failed:
        print(f"ACCURACY CHECK FAILED: {r['provider']} {r['op']} {r['variant']} {r['shape']} "
              f"{r['dtype']}: max rel err {r['max_rel_err']}", file=sys.stderr)
    return 1 if any(r["provider"] == "triton" for r in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
