"""Seeding and the capture/restore of every random number generator a search touches.

States are stored as tensors, lists and ints only, so checkpoints load with
``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from . import distributed


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Every generator's state; under torchrun every rank's (``{"per_rank": [...]}``, a
    collective: all ranks must call it)."""
    state = _local_rng_state()
    if distributed.active():
        return {"per_rank": distributed.gather(state)}
    return state


def _local_rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore ``get_rng_state()``'s output: each rank its own state (a run resumed on another
    number of ranks takes ``rank % saved ranks``'s, so it is no longer an exact continuation)."""
    if "per_rank" in state:
        states = state["per_rank"]
        state = states[distributed.rank() % len(states)]
    _set_local_rng_state(state)


def _set_local_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA where available, else the CPU; anything else must name a device this
    machine has (``cpu``, ``cuda``, ``cuda:N`` with ``N`` < the GPU count, ``mps`` where torch
    has it), or a ValueError says what is available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device {name!r} is not a device: use auto, cpu, cuda or "
                         "cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r} was asked for but CUDA is not available")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r} does not exist: this machine has {count} CUDA "
                             f"device(s), cuda:0..cuda:{count - 1}")
        return device
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {name!r} is not available in this torch build or machine")
        return device
    raise ValueError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
