"""Data-parallel training over ``torch.distributed`` (launched by ``torchrun``).

Every rank holds the whole model and a distinct shard of each batch; what makes N ranks one
optimization is that everything a rank derives from its shard is averaged before it is used:

- ``average_(tensors)``: the mean over ranks, in place, as one coalesced all-reduce per dtype
  (``sum / N``): every rank ends with the bitwise same values;
- ``average_gradients(params)``: the gradients of the parameters that have one;
- ``average_buffers(module)``: the floating-point buffers (BatchNorm running statistics), before
  an evaluation or a checkpoint;
- ``all_finite(value)``: whether a value is finite on every rank (one all-reduce of a scalar), so
  all ranks take the same non-finite decision;
- ``gather(obj)``: every rank's ``obj``, in rank order.

Outside a process group (one process) every function is the identity, costs nothing, and needs
no ``torch.distributed`` support. ``init()`` starts the group from torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL on CUDA, gloo on
the CPU, with a timeout on every collective so that a failed rank never hangs the others.
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 300.0
BACKENDS = ("nccl", "gloo")


@dataclass(frozen=True)
class Launch:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its
    node (the CUDA device it takes)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def launched() -> Optional[Launch]:
    """The torchrun environment of this process, or None when it was not launched by torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        return Launch(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                      int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                         f"{os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}, "
                         f"{os.environ.get('LOCAL_RANK')!r}") from None


def active() -> bool:
    """True inside an initialized process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def init(backend: Optional[str] = None, timeout_s: float = DEFAULT_TIMEOUT_S,
         device: str = "auto") -> Tuple[Launch, str]:
    """Start the process group from torchrun's environment; returns ``(launch, device)`` with
    the device this rank uses: ``cuda:LOCAL_RANK`` where there are GPUs (unless ``device`` is
    ``cpu``), else ``cpu``. Backend: ``backend``, else NCCL for CUDA and gloo for the CPU."""
    launch = launched()
    if launch is None:
        return Launch(), device
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"--dist-backend must be one of {list(BACKENDS)}, got {backend!r}")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available")
    if use_cuda:
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise ValueError(f"LOCAL_RANK {launch.local_rank} has no GPU: this node has {count}; "
                             f"start at most {count} processes per node")
        torch.cuda.set_device(launch.local_rank)
        device = f"cuda:{launch.local_rank}"
    else:
        device = "cpu"
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend == "nccl" and not use_cuda:
        raise ValueError("--dist-backend nccl needs CUDA devices; use gloo on the CPU")
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend, store=_attempt_store(timeout), rank=launch.rank,
                                world_size=launch.world_size, timeout=timeout)
    return launch, device


def _attempt_store(timeout: datetime.timedelta) -> dist.Store:
    """torchrun's store (``env://``), its keys prefixed by the restart attempt.

    Under torchrun's default static rendezvous the agent keeps one store for every restart, and
    ``env://`` adds no per-attempt prefix: after an elastic restart a rank can read the listening
    address that a peer of the *previous* attempt published (now closed), and gloo's connect
    fails with "Connection refused". The prefix ``TORCHELASTIC_RESTART_COUNT`` makes each attempt
    see only its own keys (harmless under the c10d rendezvous, which builds a new store)."""
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"fastnas/attempt_{attempt}", store)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -- collectives ----------------------------------------------------------------------------------
def _groups(tensors: Iterable[torch.Tensor]) -> Dict[Tuple[torch.dtype, torch.device], list]:
    groups: Dict[Tuple[torch.dtype, torch.device], list] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return groups


def average_(tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    """Replace each tensor by its mean over ranks (in place); one all-reduce per dtype."""
    if not active() or not tensors:
        return tensors
    n = dist.get_world_size()
    for group in _groups(tensors).values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat.div_(n)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
    return tensors


def broadcast_(tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    """Replace each tensor by rank 0's, in place (one broadcast per tensor): replicas built
    from different random draws start identical."""
    if active():
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t, src=0)
    return tensors


def averaged(tensors: Sequence[Optional[torch.Tensor]]) -> List[Optional[torch.Tensor]]:
    """The mean over ranks of each tensor (new tensors; ``None`` entries stay ``None``)."""
    if not active():
        return list(tensors)
    out = [None if t is None else t.detach().clone() for t in tensors]
    average_([t for t in out if t is not None])
    return out


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the ``.grad`` of every parameter that has one (the same set on every rank)."""
    if active():
        average_([p.grad for p in params if p.grad is not None])


def average_buffers(module: torch.nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over ranks."""
    if active():
        with torch.no_grad():
            average_([b for b in module.buffers() if b.is_floating_point()])


def all_finite(value: Any) -> bool:
    """True when ``value`` (a number or tensor) is finite on every rank."""
    if torch.is_tensor(value):
        number = float(value.detach().double().abs().sum()) if value.numel() else 0.0
    else:
        number = abs(float(value))
    return math.isfinite(sum_([number])[0])   # a sum of |values| is finite iff every one is


def sum_(values: Sequence[float]) -> List[float]:
    """The sums over ranks of a few numbers (metric totals)."""
    if not active():
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that timed out or lost a peer (the sign that another
    rank stopped), as opposed to a bug of this rank."""
    distributed_error = getattr(dist, "DistError", None)
    if distributed_error is not None and isinstance(error, distributed_error):
        return True
    text = str(error)
    return active() and isinstance(error, RuntimeError) and any(
        word in text for word in ("Timed out", "timed out", "Connection closed", "Broken pipe",
                                  "Connection reset"))


def barrier() -> None:
    if active():
        dist.barrier()


__all__ = ["BACKENDS", "DEFAULT_TIMEOUT_S", "Launch", "active", "all_finite", "average_",
           "average_buffers", "average_gradients", "averaged", "barrier", "broadcast",
           "broadcast_",
           "collective_failure", "gather",
           "init", "is_main", "launched", "rank", "shutdown", "sum_", "world_size"]
