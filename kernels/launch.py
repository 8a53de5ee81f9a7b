"""Kernel launches as data: what each launcher asks for, run on a device or only recorded.

Every launcher in this package describes a launch as a ``Launch`` (the kernel's name, the grid,
the runtime arguments, the ``constexpr`` values, ``num_warps``) and hands it to ``run``. The
custom ops' fake implementations build the same ``Launch`` from fake tensors and hand it to
``note``, which launches nothing. Inside ``recording()`` both append what they were given, so a
model run on fake CUDA tensors (no GPU needed) lists every launch configuration it would use:
``fastnas.kernels.gpu_targets`` compiles exactly those for real GPU targets.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from . import dispatch

# kernel name -> @triton.jit function; filled by the kernel modules when Triton is installed.
KERNELS: Dict[str, Callable] = {}

_recorders: List[List[Launch]] = []


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``KERNELS[kernel][grid](*args, **constexprs, num_warps=num_warps)``."""

    kernel: str
    grid: Tuple[int, ...]
    args: Tuple[Any, ...]
    constexprs: Dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4


def register(name: str, fn: Callable) -> Callable:
    """Make the jit function ``fn`` launchable (and compilable for GPU targets) as ``name``."""
    KERNELS[name] = fn
    return fn


def run(launch: Launch) -> None:
    """Launch on the device of the arguments (counted in ``dispatch.launch_counts``)."""
    dispatch.record_launch(launch.kernel)
    note(launch)
    KERNELS[launch.kernel][launch.grid](*launch.args, **launch.constexprs,
                                        num_warps=launch.num_warps)


def note(launch: Launch) -> None:
    """Record ``launch`` in every active ``recording()``; launches nothing."""
    for recorder in _recorders:
        recorder.append(launch)


def skip(launch: Launch) -> None:
    """Neither run nor record: the torch path of an op fills the outputs the launcher
    allocated."""


@contextlib.contextmanager
def recording(into: Optional[List[Launch]] = None) -> Iterator[List[Launch]]:
    """``with recording() as launches: ...`` lists every launch run or noted inside."""
    launches = [] if into is None else into
    _recorders.append(launches)
    try:
        yield launches
    finally:
        _recorders.remove(launches)


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints (also symbolic sizes; no Triton needed)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 ``>= n`` (``n >= 1``)."""
    p = 1
    while p < n:
        p *= 2
    return p


__all__ = ["KERNELS", "Launch", "cdiv", "next_power_of_2", "note", "recording",
           "register", "run", "skip"]
