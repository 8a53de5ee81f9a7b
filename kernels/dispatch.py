"""Which implementation a kernel call runs: the Triton kernel or the plain-torch reference.

The backend comes from ``set_backend`` / ``use_backend`` when one is set, else from the
``FASTNAS_BACKEND`` environment variable (read on every call), else ``"auto"``:

- ``auto``: Triton for CUDA tensors of a supported dtype, the torch reference otherwise (CPU
  tensors, float64). Without Triton installed (e.g. macOS) CUDA tensors take the torch path with a
  one-time warning.
- ``triton``: always the kernel. A call that cannot run it raises; it never falls back to torch.
  CPU tensors need Triton's interpreter (``TRITON_INTERPRET=1`` before ``fastnas.kernels`` is
  imported, because ``@triton.jit`` reads it when the kernels are defined).
- ``torch``: always the reference.

Every kernel launch is counted in ``launch_counts()``, so a caller (a test) can see which path ran.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from collections.abc import Iterator

import torch

try:
    import triton

    HAS_TRITON, TRITON_VERSION = True, triton.__version__
except ImportError:  # e.g. macOS wheels of torch ship without Triton
    HAS_TRITON, TRITON_VERSION = False, None

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "FASTNAS_BACKEND"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GPU_DEVICE_TYPES = ("cuda",)  # torch calls ROCm devices "cuda" too

# Triton decides interpreted-or-compiled when a kernel is decorated, i.e. when the kernel modules
# are imported right after this one; this flag records that decision for the dispatcher.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_override: str | None = None
_launches: Counter = Counter()
_warned_no_triton = False


def _validate(name: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def get_backend() -> str:
    """The backend in force: the ``set_backend`` override, else ``$FASTNAS_BACKEND``, else auto."""
    if _override is not None:
        return _override
    return _validate(os.environ.get(ENV_VAR, "auto") or "auto")


def set_backend(name: str | None) -> None:
    """Force ``"auto"``, ``"triton"`` or ``"torch"`` in this process; ``None`` defers to the env."""
    global _override
    _override = None if name is None else _validate(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with use_backend("triton"): ...`` runs the block under that backend, then restores."""
    global _override
    previous = _override
    set_backend(name)
    try:
        yield
    finally:
        _override = previous


def use_triton(op: str, *tensors: torch.Tensor) -> bool:
    """True when ``op`` on ``tensors`` must run its Triton kernel, False for the torch reference.

    Raises when the backend is ``triton`` and the kernel cannot run on these tensors.
    """
    global _warned_no_triton
    backend = get_backend()
    if backend == "torch":
        return False
    devices = {t.device for t in tensors}
    dtypes = {t.dtype for t in tensors}
    small = all(_max_offset(t) < 2**31 for t in tensors)
    if backend == "auto":
        if (not all(d.type in GPU_DEVICE_TYPES for d in devices)
                or not dtypes <= set(SUPPORTED_DTYPES) or not small or INTERPRET):
            return False
        if not HAS_TRITON:
            if not _warned_no_triton:
                warnings.warn("fastnas.kernels: Triton is not installed; CUDA tensors use the "
                              "slower torch ops", RuntimeWarning, stacklevel=3)
                _warned_no_triton = True
            return False
        return len(devices) == 1
    return require_triton(op, *tensors)


def require_triton(op: str, *tensors: torch.Tensor) -> bool:
    """True when the Triton kernel of ``op`` can run on ``tensors``; raises saying why not
    otherwise (the rules of the ``triton`` backend)."""
    devices = {t.device for t in tensors}
    dtypes = {t.dtype for t in tensors}
    small = all(_max_offset(t) < 2**31 for t in tensors)
    if not HAS_TRITON:
        raise RuntimeError(f"{op}: {ENV_VAR}=triton but Triton is not installed")
    if len(devices) != 1:
        raise RuntimeError(f"{op}: all tensors must be on one device, got "
                           f"{sorted(map(str, devices))}")
    device = next(iter(devices))
    if device.type == "cpu" and not INTERPRET:
        raise RuntimeError(
            f"{op}: {ENV_VAR}=triton with CPU tensors needs Triton's interpreter: set "
            "TRITON_INTERPRET=1 before importing fastnas.kernels, move the tensors to CUDA, or "
            f"use {ENV_VAR}=auto")
    if device.type == "cuda" and INTERPRET:
        raise RuntimeError(f"{op}: TRITON_INTERPRET=1 runs the kernels on CPU tensors only; "
                           "unset it to run them compiled on CUDA")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"{op}: the Triton kernels run on CUDA (or the CPU interpreter), "
                           f"not on {device.type}")
    if not small:
        raise RuntimeError(f"{op}: the kernels index with 32-bit offsets; a tensor spans 2**31 "
                           "elements or more")
    unsupported = dtypes - set(SUPPORTED_DTYPES)
    if unsupported:
        raise TypeError(f"{op}: the Triton kernels take float32, float16 and bfloat16, got "
                        f"{sorted(map(str, unsupported))}; use {ENV_VAR}=torch (or auto) for "
                        "other dtypes")
    return True


def _max_offset(t: torch.Tensor) -> int:
    """Largest element offset ``t`` addresses from its first element."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if size)


def record_launch(kernel: str) -> None:
    """Called by every launcher just before it launches ``kernel``."""
    _launches[kernel] += 1


def launch_counts() -> dict[str, int]:
    """Kernel name -> launches since the last ``reset_launch_counts()``."""
    return dict(_launches)


def reset_launch_counts() -> None:
    _launches.clear()
