"""Profile of a DARTS search step: time, peak memory, and what the activations kept for backward
are, per cell and per op. ``fastnas profile`` prints it (``benchmarks/memory.py`` runs that).

``profile_memory(config, batch_size=None, ...)`` builds a ``DARTSOptimizer`` for ``config`` (a
``DARTSConfig`` or a dict), runs search steps on a synthetic batch and returns a
``MemoryReport``; ``format_report(report)`` renders it as text. ``profile_supernets`` profiles a
config and, to compare, the reference supernet at the same settings; ``format_table`` prints
them as one table (median time per step, steps per second, peak, ratios to the reference);
``trace_search_steps`` writes a ``torch.profiler`` Chrome trace of a few steps.

- Time of a step: wall clock, ``torch.cuda.synchronize`` before and after on CUDA; the table
  shows the median of the timed steps, which follow untimed warm-up steps.

- Peak memory of one step: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated
  before the step; on the CPU the peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the resident size before the step, after returning the
  allocator's free memory to the system (``malloc_trim``). Where the peak cannot be reset (not
  Linux), the process-wide peak is reported, which is only meaningful in a fresh process.
- Breakdown: one forward pass of the training loss is run under ``saved_tensors_hooks``; every
  tensor autograd keeps for backward is attributed to the cell (and op) running when it was
  saved, each storage counted once. Reference cells are attributed per candidate op (``MixedOp``
  column); fused cells (the ``fast`` supernet) per stage of the fused plan.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import statistics
import time
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
import torch.nn.functional as F

from .checkpoint import check_writable, write_file_atomic
from .darts import DARTSConfig, DARTSOptimizer
from .limits import MAX_IMAGE_SIZE, check_at_most
from .ops import PRIMITIVES
from .supernet import stages

MiB = 2.0 ** 20

# -- the report -----------------------------------------------------------------------------------
@dataclasses.dataclass
class MemoryReport:
    """Memory of one DARTS search step (bytes)."""

    device: str
    supernet: str
    kernels: str
    precision: str
    checkpointing: bool
    order: int
    batch_size: int
    image_size: int
    step_peak_bytes: int          # peak growth during the step (see module docstring)
    baseline_bytes: int           # resident (CPU) or allocated (CUDA) memory before the step
    peak_method: str              # how step_peak_bytes was measured
    saved_bytes: int              # activations kept for backward by one training forward
    saved_by_cell: Dict[str, int]
    saved_by_op: Dict[str, int]
    parameter_bytes: int
    step_seconds: float           # median of step_times
    step_times: List[float] = dataclasses.field(default_factory=list)  # each measured step

    @property
    def steps_per_second(self) -> float:
        return 1.0 / self.step_seconds if self.step_seconds > 0 else float("inf")

    def to_dict(self) -> Dict[str, Any]:
        return dict(dataclasses.asdict(self), steps_per_second=self.steps_per_second)


def _rss_bytes(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _trim_malloc() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_step_peak(step, device: torch.device):
    """Run ``step()`` and return ``(peak growth bytes, baseline bytes, method, seconds)``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        step()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return (torch.cuda.max_memory_allocated(device) - before, before,
                "cuda max_memory_allocated", seconds)
    _trim_malloc()
    before = _rss_bytes("VmRSS")
    if before is not None and _reset_peak_rss():
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        return _rss_bytes("VmHWM") - before, before, "peak RSS (VmHWM reset)", seconds
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return peak - before, before, "process peak RSS (not reset)", seconds


# -- saved-activation breakdown -------------------------------------------------------------------
def _op_label(path: str) -> str:
    """Op kind of a module path inside a cell: a primitive, preprocessing, or the cell itself."""
    parts = path.split(".")
    if "ops" in parts:
        i = parts.index("ops")
        if i + 1 < len(parts) and parts[i + 1].isdigit():
            return PRIMITIVES[int(parts[i + 1])]
    for p in parts:
        if p.startswith("preprocess"):
            return "preprocess"
    return ""


def saved_activations(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast=None):
    """``(total, by_cell, by_op)`` bytes of the tensors one training forward keeps for backward."""
    owner: List[str] = []  # the stack of running modules

    def enter(name):
        def hook(module, args):
            owner.append(name)
        return hook

    def leave(module, args, out):
        owner.pop()

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
    seen = set()
    by_cell: Dict[str, int] = defaultdict(int)
    by_op: Dict[str, int] = defaultdict(int)

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):
            return t
        if key in seen or nbytes == 0:
            return t
        seen.add(key)
        path = owner[-1] if owner else ""
        parts = path.split(".")
        # Outside every submodule: the network's own ops (softmax of the alphas, the inputs a
        # checkpointed cell keeps).
        cell = ".".join(parts[:2]) if parts[0] == "cells" else (parts[0] or "network")
        op = _op_label(path) or (stages.current() or "") or (
            "mixed-op sums" if "edges" in parts else "cell (other)" if parts[0] == "cells"
            else parts[0] or "network")
        by_cell[cell] += nbytes
        by_op[op] += nbytes
        return t

    try:
        with stages.collecting(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
    finally:
        for h in handles:
            h.remove()
    del loss, logits
    return sum(by_cell.values()), dict(by_cell), dict(by_op)


# -- the profile ----------------------------------------------------------------------------------
def search_step(config: Union[DARTSConfig, Mapping[str, Any], None] = None,
                batch_size: Optional[int] = None, image_size: int = 32, seed: int = 0):
    """``(optimizer, batch)`` for ``config`` (``batch_size`` overriding its own) and one
    synthetic batch of ``image_size`` square images; ``optimizer.step(batch, batch)`` is one
    search step (train = validation batch)."""
    cfg = DARTSConfig.from_dict(config if config is not None else {})
    check_at_most("image_size", image_size, MAX_IMAGE_SIZE)
    if batch_size is not None:
        cfg = dataclasses.replace(cfg, batch_size=batch_size)
    opt = DARTSOptimizer(cfg)
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.batch_size, cfg.in_channels, image_size, image_size)
    x = torch.randn(shape, generator=g).to(opt.device, opt.dtype)
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g).to(opt.device)
    return opt, (x, y)


def profile_memory(config: Union[DARTSConfig, Mapping[str, Any], None] = None,
                   batch_size: Optional[int] = None, image_size: int = 32, steps: int = 1,
                   breakdown: bool = True, seed: int = 0, repeats: int = 1) -> MemoryReport:
    """Memory (and time) profile of ``config``'s search step (see the module docstring).

    ``batch_size`` overrides ``config.batch_size``; inputs are ``image_size`` square images with
    ``config.in_channels`` channels. ``steps - 1`` warm-up steps run before ``repeats`` measured
    ones (``steps=1`` measures the first step, allocator state included); the report keeps the
    largest peak and the median time. ``breakdown=False`` skips the per-cell and per-op
    attribution.
    """
    opt, batch = search_step(config, batch_size, image_size, seed)
    cfg, device = opt.config, opt.device
    for _ in range(steps - 1):
        opt.step(batch, batch)
    measured = [measure_step_peak(lambda: opt.step(batch, batch), device)
                for _ in range(max(1, repeats))]
    peak = max(m[0] for m in measured)
    before, method = measured[0][1], measured[0][2]
    times = [m[3] for m in measured]
    total, by_cell, by_op = 0, {}, {}
    if breakdown:
        opt.model.train()
        total, by_cell, by_op = saved_activations(opt.model, *batch, opt.precision.autocast)
    model = opt.model
    return MemoryReport(
        device=str(device), supernet=cfg.supernet, kernels=opt.kernels,
        precision=cfg.precision, checkpointing=cfg.checkpointing, order=cfg.order,
        batch_size=cfg.batch_size, image_size=image_size, step_peak_bytes=int(peak),
        baseline_bytes=int(before), peak_method=method, saved_bytes=int(total),
        saved_by_cell=by_cell, saved_by_op=by_op,
        parameter_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        step_seconds=statistics.median(times), step_times=times)


def profile_supernets(config: Mapping[str, Any], batch_size: Optional[int] = None,
                      image_size: int = 32, warmup: int = 1, steps: int = 3,
                      compare: bool = False) -> List[MemoryReport]:
    """``fastnas profile``: the profile of ``config`` (``warmup`` steps, then ``steps`` timed
    ones), and with ``compare`` the reference supernet's at the same settings after it (none
    when ``config`` is the reference already)."""
    supernets = [config.get("supernet", "fast")]
    if compare and supernets[0] != "reference":
        supernets.append("reference")
    return [profile_memory({**config, "supernet": name}, batch_size, image_size,
                           steps=warmup + 1, repeats=steps) for name in supernets]


def trace_search_steps(config: Mapping[str, Any], path: str, batch_size: Optional[int] = None,
                       image_size: int = 32, warmup: int = 1, steps: int = 3) -> None:
    """A ``torch.profiler`` Chrome trace of ``steps`` search steps (after ``warmup``), written
    to ``path`` atomically (temp file, then rename); open it in Perfetto (ui.perfetto.dev) or
    chrome://tracing. A ``path`` whose folder does not exist, or that is a folder, is refused
    before the steps run (``CheckpointWriteError``, one line)."""
    check_writable(path)
    opt, batch = search_step(config, batch_size, image_size)
    for _ in range(warmup):
        opt.step(batch, batch)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if opt.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            with torch.profiler.record_function("search step"):
                opt.step(batch, batch)
            if opt.device.type == "cuda":
                torch.cuda.synchronize(opt.device)
    write_file_atomic(path, prof.export_chrome_trace)


def _settings(r: MemoryReport) -> str:
    order = "first-order" if r.order == 1 else "second-order"
    return (f"{r.precision}, checkpointing {'on' if r.checkpointing else 'off'}, {order}, "
            f"batch {r.batch_size}, {r.image_size}x{r.image_size}, {r.device}")


def format_report(report: MemoryReport) -> str:
    """The report as text: the step's peak, then the saved activations per cell and per op."""
    r = report
    lines = [
        f"fastnas memory profile: supernet {r.supernet} ({r.kernels} kernels), {_settings(r)}",
        f"peak memory growth during one search step: {r.step_peak_bytes / MiB:.1f} MiB "
        f"({r.peak_method}; {r.baseline_bytes / MiB:.1f} MiB before the step; "
        f"step took {r.step_seconds:.2f} s)",
        f"parameters: {r.parameter_bytes / MiB:.2f} MiB",
        format_breakdown(r),
    ]
    return "\n".join(line for line in lines if line)


def format_table(reports: List[MemoryReport]) -> str:
    """``fastnas profile``'s table: per supernet the median time per step, steps per second and
    the peak memory growth of a step, with ratios against the reference supernet's row."""
    reference = next((r for r in reports if r.supernet == "reference"), None)
    compared = reference is not None and len(reports) > 1
    head = ("supernet", "kernels", "s/step (median)", "steps/s", "peak MiB")
    head += ("time vs ref", "memory vs ref") if compared else ()
    rows = [head]
    for r in reports:
        row = (r.supernet, r.kernels, f"{r.step_seconds:.4f} (n={len(r.step_times) or 1})",
               f"{r.steps_per_second:.2f}", f"{r.step_peak_bytes / MiB:.1f}")
        if compared and r is not reference:
            row += (f"{r.step_seconds / reference.step_seconds:.2f}x",
                    f"{r.step_peak_bytes / max(reference.step_peak_bytes, 1):.2f}x")
        elif compared:
            row += ("1.00x", "1.00x")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [f"fastnas profile: DARTS search step, {_settings(reports[0])}; peak memory: "
             f"{reports[0].peak_method}"]
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_breakdown(report: MemoryReport) -> str:
    """The activations one training forward keeps for backward, per cell and per op ('' when
    the report has no breakdown)."""
    r = report
    lines: List[str] = []
    if r.saved_by_cell:
        lines.append(f"activations kept for backward by one training forward: "
                     f"{r.saved_bytes / MiB:.1f} MiB")
        width = max(len(k) for k in list(r.saved_by_cell) + list(r.saved_by_op))

        def table(title, items):
            lines.append(f"  {title}:")
            for name, nbytes in items:
                share = 100.0 * nbytes / max(r.saved_bytes, 1)
                lines.append(f"    {name:<{width}}  {nbytes / MiB:9.2f} MiB  {share:5.1f}%")

        def cell_key(item):
            name = item[0]
            parts = name.split(".")
            return (0 if name == "stem" else 1 if parts[0] == "cells" else 2,
                    int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0)

        table("per cell", sorted(r.saved_by_cell.items(), key=cell_key))
        table("per op", sorted(r.saved_by_op.items(), key=lambda kv: -kv[1]))
    return "\n".join(lines)


__all__ = ["MemoryReport", "format_breakdown", "format_report", "format_table",
           "measure_step_peak", "profile_memory", "profile_supernets", "saved_activations",
           "search_step", "trace_search_steps"]
