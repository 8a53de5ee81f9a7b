"""Mixed precision for the search: which autocast dtype, and a loss scaler for fp16.

``Precision(name, device)`` with ``name`` one of ``DARTSConfig.precision``:

- ``fp32``: no autocast;
- ``fp64``: no autocast; parameters, inputs and every computation in float64 (for checks against
  references where float32 rounding would hide a bug);
- ``bf16``: ``torch.autocast(device.type, torch.bfloat16)`` around the supernet's forward passes,
  no loss scaling (bf16 has fp32's exponent range);
- ``fp16``: ``torch.autocast(device.type, torch.float16)`` and a ``torch.amp.GradScaler``: the
  weight step scales its loss, unscales the gradients before clipping and skips the step on
  overflow; the architect scales its losses by the same factor and divides it out of every
  gradient before any finite-difference or Hessian-vector arithmetic, which stays in fp32.

Autocast covers the forward passes only: losses are taken on ``logits.float()``, parameters,
gradients and optimizer states stay fp32. On the CPU, fp16 autocast needs a torch whose CPU
autocast accepts float16 (2.3 and later); otherwise ``Precision`` raises a ValueError naming
``bf16`` as the CPU's mixed precision.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

_DTYPES = {"fp32": None, "fp64": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast_supports(device_type: str, dtype: torch.dtype) -> bool:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # older torch warns and disables instead of raising
        try:
            with torch.autocast(device_type, dtype=dtype):
                return torch.get_autocast_dtype(device_type) == dtype and \
                    torch.is_autocast_enabled(device_type)
        except (RuntimeError, ValueError, AttributeError, TypeError):
            return False


class Precision:
    """The mixed-precision policy of one search on one device (see the module docstring)."""

    def __init__(self, name: str, device: torch.device):
        if name not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {name!r}")
        self.name = name
        self.device = torch.device(device)
        self.dtype: Optional[torch.dtype] = _DTYPES[name]
        if self.dtype is not None and not _autocast_supports(self.device.type, self.dtype):
            raise ValueError(
                f"precision={name!r} is not supported by torch {torch.__version__} on device "
                f"{self.device.type!r}" + ("; use 'bf16' on the CPU" if name == "fp16" else ""))
        # The dtype of the parameters and of the inputs the supernet is given.
        self.param_dtype = torch.float64 if name == "fp64" else torch.float32
        self.scaler: Optional[torch.amp.GradScaler] = None
        if name == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)

    def autocast(self):
        """The context the supernet's forward passes run in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def loss_scale(self) -> Optional[Callable[[], float]]:
        """``None``, or a callable giving the current loss scale (fp16)."""
        if self.scaler is None:
            return None
        return self.scaler.get_scale


__all__ = ["Precision"]
