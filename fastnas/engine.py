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

import contextlib
import math
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

import torch

from . import distributed
from .console import Progress
from .errors import NonFiniteError

Batch = Tuple[torch.Tensor, torch.Tensor]


def cosine_lr(epoch: int, total: int, lr_max: float, lr_min: float) -> float:
    """``lr_min + (lr_max - lr_min) * (1 + cos(pi * epoch / total)) / 2``."""
    return lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * epoch / total)) / 2


class RunningMean:
    """A weighted mean built one batch at a time: ``add(value, n)``, then ``value``;
    ``reduced()`` is the mean over every rank's batches (the mean of the whole dataset)."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, value: float, n: int = 1) -> None:
        self.total += value * n
        self.count += n

    def reduced(self) -> RunningMean:
        out = RunningMean()
        out.total, out.count = distributed.sum_([self.total, self.count])
        return out

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


def check_pair(name: str, batch: Any) -> Batch:
    """``batch`` as an ``(x, y)`` pair of tensors with the same number ``N >= 1`` of rows, ``x``
    floating-point and finite, or a TypeError/ValueError naming what is wrong: the check of a
    batch for a model of the user's own (any input shape, any targets its loss takes)."""
    try:
        x, y = batch
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an (inputs, targets) pair of tensors") from None
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be an (inputs, targets) pair of tensors, got "
                        f"({type(x).__name__}, {type(y).__name__})")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (inputs of shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"{name}: inputs must be a floating-point tensor, got {x.dtype}")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: targets must have one row per input, got shape "
                         f"{tuple(y.shape)} for inputs {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: inputs hold NaN or Inf values")
    return x, y


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


class BatchStream:
    """An endless stream of batches from ``loader``, pass after pass, whose position can be saved
    and restored exactly: ``position`` is ``(passes done, batches taken in this pass)``.

    Each pass calls ``loader.set_epoch(pass)`` first when the loader has it (a
    ``fastnas.data.EpochLoader``), so its order depends only on the pass; a restored stream skips
    the batches already taken. (A loader without ``set_epoch`` shuffles from the global
    generator, whose state a checkpoint saves, but the restored order then holds only when the
    checkpoint was taken at a pass boundary.)
    """

    def __init__(self, loader: Iterable, name: str = "loader"):
        self.loader, self.name = loader, name
        self.passes, self.taken = 0, 0
        self._iter: Optional[Iterator] = None

    @property
    def position(self) -> Tuple[int, int]:
        return (self.passes, self.taken)

    def restore(self, position: Sequence[int]) -> None:
        self.passes, self.taken = int(position[0]), int(position[1])
        self._iter = None

    def _start_pass(self) -> Iterator:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.passes)
        return iter(self.loader)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self):
        if self._iter is None:  # (re)entering a pass: skip what was already taken
            self._iter = self._start_pass()
            for _ in range(self.taken):
                if next(self._iter, None) is None:
                    break
        for _ in range(2):
            batch = next(self._iter, None)
            if batch is not None:
                self.taken += 1
                return batch
            if self.taken == 0:
                raise ValueError(f"{self.name} yielded no batches")
            self.passes, self.taken = self.passes + 1, 0
            self._iter = self._start_pass()
        raise ValueError(f"{self.name} yielded no batches")


# -- non-finite values ----------------------------------------------------------------------------
NONFINITE_POLICIES = ("stop", "skip")


def max_abs(tensors: Sequence[torch.Tensor]) -> float:
    """``max |t|`` over all ``tensors`` (inf if any is inf, nan if any is nan), in one pass of
    ``torch._foreach_norm(ord=inf)``: no overflow, unlike a 2-norm of huge finite values."""
    groups: Dict[Tuple[torch.dtype, torch.device], list] = {}
    for t in tensors:
        if t is not None and t.numel():
            groups.setdefault((t.dtype, t.device), []).append(t.detach())
    if not groups:
        return 0.0
    peaks = [torch.stack(torch._foreach_norm(group, float("inf"))).max().double().cpu()
             for group in groups.values()]
    return max(p.item() for p in peaks) if len(peaks) > 1 else peaks[0].item()


def grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients (as ``clip_grad_norm_`` computes it), without clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.to(torch.float32) for n in norms]))


class NonFiniteGuard:
    """What a training loop does when a loss, gradient norm or weight is NaN or Inf.

    ``policy='stop'`` raises ``NonFiniteError`` (the step is not applied, or for weights, the
    stage stops before the next checkpoint); ``'skip'`` drops the step's update instead, counts
    it (``skipped``), and raises once ``max_skips`` steps in a row were skipped. Weights that
    are non-finite *after* a step cannot be skipped (the update is done): they always stop.
    """

    def __init__(self, policy: str = "stop", max_skips: int = 10):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {list(NONFINITE_POLICIES)}, "
                             f"got {policy!r}")
        self.policy, self.max_skips = policy, max_skips
        self.skipped = 0        # steps skipped in total
        self.in_a_row = 0

    def ok(self, quantity: str, value: Any, epoch: int, step: int) -> bool:
        """True when ``value`` (a number or a tensor) is finite; else False for a step to skip,
        or ``NonFiniteError``."""
        number = float(value.detach().float().max() if torch.is_tensor(value) and value.numel()
                       else value)
        # Under torchrun every rank takes the same decision: finite only if finite everywhere.
        if distributed.all_finite(number if math.isfinite(number) else float("nan")):
            return True
        if math.isfinite(number):  # this rank's value was finite, another rank's was not
            quantity, number = f"{quantity} (on another rank)", None
        if self.policy == "skip":
            self.skipped += 1
            self.in_a_row += 1
            if self.in_a_row <= self.max_skips:
                return False
            quantity = f"{quantity} ({self.in_a_row} steps in a row, over max_skips)"
        raise NonFiniteError(quantity, epoch, step, number)

    def applied(self) -> None:
        """A step's update went through: the run of skipped steps is over."""
        self.in_a_row = 0

    def check_weights(self, tensors: Sequence[torch.Tensor], epoch: int, step: int,
                      quantity: str = "weights after the step") -> None:
        value = max_abs(tensors)
        if not distributed.all_finite(value):
            raise NonFiniteError(quantity, epoch, step, value)

    def state_dict(self) -> Dict[str, int]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.in_a_row = int(state.get("in_a_row", 0))


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


EpochCallback = Callable[[Any, dict], Optional[bool]]
StepCallback = Callable[[Any, dict], None]


@contextlib.contextmanager
def console_progress(owner: Any, stage: str, show: Union[bool, str], loader: Iterable,
                     callback: Optional[EpochCallback], on_step: Optional[StepCallback],
                     step_keys: Tuple[str, str] = ("train_loss", "train_acc"),
                     ) -> Iterator[Tuple[Optional[EpochCallback], Optional[StepCallback]]]:
    """``(callback, on_step)`` for :func:`run_epochs` that also show ``owner``'s progress as
    the command line does (``fastnas.console.Progress``, ``owner.epoch_summary(record)``):
    ``show`` True: bars on a terminal, else one line per epoch; ``"lines"``: one line per epoch
    (``--quiet``); False: nothing, the given ones unchanged. A step's running loss and accuracy
    are its stats' ``step_keys``."""
    if show not in (True, False, "lines"):
        raise ValueError(f"progress must be True, False or 'lines', got {show!r}")
    if show is False:
        yield callback, on_step
        return
    try:
        steps: Optional[int] = len(loader)  # type: ignore[arg-type]
    except TypeError:
        steps = None
    with Progress(stage, owner.total_epochs, owner.epoch, steps,
                  bars=False if show == "lines" else None) as progress:
        def shown_epoch(o: Any, record: dict) -> Optional[bool]:
            progress.epoch(record["epoch"], o.epoch_summary(record))
            return callback(o, record) if callback is not None else None

        def shown_step(o: Any, stats: dict) -> None:
            if not stats.get("skipped"):
                progress.step(stats[step_keys[0]], stats[step_keys[1]])
            if on_step is not None:
                on_step(o, stats)

        yield shown_epoch, shown_step


__all__ = ["Batch", "BatchStream", "NONFINITE_POLICIES", "NonFiniteGuard", "RunningMean",
           "accuracy", "check_batch", "check_epochs", "check_pair", "console_progress",
           "grad_norm", "max_abs", "cosine_lr", "paired",
           "run_epochs", "to_device"]
