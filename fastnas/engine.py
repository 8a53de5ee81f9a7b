"""The training-loop pieces every strategy shares: batches, running means, the cosine schedule,
and the epoch loop with its history and stop callback.

``run_epochs`` is the one epoch loop of fastnas (DARTS search, ENAS search, final training):

    while owner.epoch < owner.total_epochs:
        record = {"epoch": e, **run_epoch(e), "seconds": ...}
        owner.history.append(record); owner.epoch += 1
        if callback(owner, record) is False: stop

The learning-rate schedule of all three is the per-epoch cosine of the DARTS paper,

    lr(e) = lr_min + (lr_max - lr_min) * (1 + cos(pi * e / T)) / 2,   e = 0 .. T - 1.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch

Batch = Tuple[torch.Tensor, torch.Tensor]


def cosine_lr(epoch: int, total: int, lr_max: float, lr_min: float) -> float:
    """``lr_min + (lr_max - lr_min) * (1 + cos(pi * epoch / total)) / 2``."""
    return lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * epoch / total)) / 2


class RunningMean:
    """A weighted mean built one batch at a time: ``add(value, n)``, then ``value``."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, value: float, n: int = 1) -> None:
        self.total += value * n
        self.count += n

    @property
    def value(self) -> float:
        return self.total / max(self.count, 1)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``logits: [N, K]`` against class indices ``y: [N]``."""
    return (logits.argmax(dim=1) == y).float().mean().item()


def to_device(batch: Batch, device: torch.device, dtype: Optional[torch.dtype] = None) -> Batch:
    """``(x, y)`` on ``device`` (asynchronous copies on CUDA); ``x`` cast to ``dtype`` if given."""
    x, y = batch
    non_blocking = device.type == "cuda"
    x = x.to(device, non_blocking=non_blocking)
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return x, y.to(device, non_blocking=non_blocking)


def check_batch(name: str, batch: Any, in_channels: Optional[int] = None,
                num_classes: Optional[int] = None) -> Batch:
    """``batch`` as an ``(x, y)`` pair, or a TypeError/ValueError that names what is wrong:

    - ``x`` a floating-point ``[N, C, H, W]`` tensor with ``N >= 1`` (and ``C = in_channels``);
    - ``y`` an integer (int64) ``[N]`` tensor of class indices in ``0 .. num_classes - 1``;
    - every value of ``x`` finite.

    The value checks cost one reduction over ``x`` and two over ``y`` per batch (``isfinite``,
    ``min``, ``max``); the fused ``aminmax`` keeps the label check to one pass.
    """
    try:
        x, y = batch
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an (inputs, targets) pair of tensors") from None
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be an (inputs, targets) pair of tensors, got "
                        f"({type(x).__name__}, {type(y).__name__})")
    if x.dim() != 4:
        raise ValueError(f"{name}: inputs must be [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (inputs of shape {tuple(x.shape)})")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(f"{name}: inputs have {x.shape[1]} channels, the network expects "
                         f"{in_channels} (config in_channels)")
    if not x.is_floating_point():
        raise TypeError(f"{name}: inputs must be a floating-point tensor, got {x.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: targets must be [N] class indices matching the inputs, "
                         f"got shape {tuple(y.shape)} for inputs {tuple(x.shape)}")
    if y.dtype != torch.int64:
        raise TypeError(f"{name}: targets must be int64 class indices, got {y.dtype}")
    if num_classes is not None:
        low, high = (int(v) for v in torch.aminmax(y))
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"{name}: target {bad} is outside the classes 0..{num_classes - 1}"
                             " (config num_classes)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: inputs hold NaN or Inf values")
    return x, y


def paired(train_loader: Iterable, val_loader: Iterable) -> Iterator[Tuple[Any, Any]]:
    """Yield ``(train_batch, val_batch)`` for one pass over ``train_loader``; the validation
    loader is iterated alongside and restarted if it runs out first."""
    val_iter = iter(val_loader)
    for train_batch in train_loader:
        try:
            val_batch = next(val_iter)
        except StopIteration:
            val_iter = iter(val_loader)
            try:
                val_batch = next(val_iter)
            except StopIteration:
                raise ValueError("val_loader yielded no batches") from None
        yield train_batch, val_batch


def check_epochs(epochs: Any) -> int:
    """A positive integer number of epochs, or a ValueError naming the value."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    return epochs


def run_epochs(owner: Any, run_epoch: Callable[[int], Dict[str, Any]],
               callback: Optional[Callable[[Any, dict], Optional[bool]]] = None) -> None:
    """Run ``run_epoch(e)`` for ``e = owner.epoch .. owner.total_epochs - 1``.

    Each epoch's record is ``{"epoch": e, **run_epoch(e), "seconds": wall time}``; it is appended
    to ``owner.history``, ``owner.epoch`` is advanced, then ``callback(owner, record)`` runs (a
    checkpoint written there holds the finished epoch); a callback returning False stops.
    """
    while owner.epoch < owner.total_epochs:
        start = time.perf_counter()
        record = {"epoch": owner.epoch, **run_epoch(owner.epoch)}
        record["seconds"] = time.perf_counter() - start
        owner.history.append(record)
        owner.epoch += 1
        if callback is not None and callback(owner, record) is False:
            break


__all__ = ["Batch", "RunningMean", "accuracy", "check_batch", "check_epochs", "cosine_lr", "paired",
           "run_epochs", "to_device"]
