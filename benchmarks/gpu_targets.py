"""Registers and spills of every Triton kernel configuration a DARTS search uses, compiled for
sm_80 and sm_90 without a GPU (the table of benchmarks/RESULTS.md).

    python benchmarks/gpu_targets.py

The configurations are those of ``tests/test_kernels_gpu_targets.py`` (the paper-size search
step run on fake tensors, ``fastnas.supernet.launches``), from the same caches: per kernel,
dtype and architecture, how many configurations, the most registers per thread and the most
spill bytes (stores + loads) any of them needs, as ``ptxas -v`` reports them.
"""
from __future__ import annotations

import os
import sys
from collections import defaultdict

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fastnas.kernels import gpu_targets  # noqa: E402
from fastnas.supernet.launches import METHOD_AXES, search_launches  # noqa: E402


def configurations():
    """The test's configurations (same cache key, so one collection serves both)."""
    def collect():
        return gpu_targets.unique([launch for method in METHOD_AXES
                                   for dtype in (torch.float32, torch.bfloat16)
                                   for launch in search_launches(dtype, method=method)])
    return gpu_targets.cached_configurations("paper-search-methods", collect)


def main() -> None:
    import triton

    configs = configurations()
    reports = gpu_targets.compile_configs(configs, gpu_targets.ARCHS)
    jobs = [(c, a) for c in configs for a in gpu_targets.ARCHS]
    table = defaultdict(list)
    for (config, arch), report in zip(jobs, reports):
        dtype = "bf16" if "*bf16" in config.signature.values() else "fp32"
        table[config.kernel, dtype, arch].append(report)
    print(f"Triton {triton.__version__}, ptxas {gpu_targets.ptxas_path()}; "
          f"{len(configs)} configurations x {len(gpu_targets.ARCHS)} targets.\n")
    print("| kernel | dtype | target | configurations | compile errors | max registers "
          "| max spill bytes |")
    print("|---|---|---|---|---|---|---|")
    for (kernel, dtype, arch), rows in sorted(table.items()):
        ok = [r for r in rows if not isinstance(r, str)]
        print(f"| {kernel} | {dtype} | sm_{arch} | {len(rows)} | {len(rows) - len(ok)} | "
              f"{max(r.registers for r in ok)} | {max(r.spills for r in ok)} |")


if __name__ == "__main__":
    main()
