"""Files that survive a crash: atomic writes (temp file, then rename) and ``weights_only`` loads.

A process killed mid-write leaves the previous file intact (``os.replace`` is atomic on POSIX
and Windows), so a run loses at most the epoch in progress.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

from .errors import UserError


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through ``path.tmp``."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json_atomic(data: Any, path: str) -> None:
    """JSON with tensors turned into (nested) lists and non-finite floats into null."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(to_jsonable(data), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load_checkpoint(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; an unreadable file is a UserError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # truncated or foreign files raise many types; all mean "unreadable"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"checkpoint {path} is unreadable: {reason}") from None


class Resumable:
    """``save`` / ``load`` for an object whose ``state_dict()`` holds its ``config`` and which
    is rebuilt by ``cls(config)`` then ``load_state_dict(state)`` (the search optimizers)."""

    def save(self, path: str) -> None:
        """Write ``state_dict()`` atomically (temp file, then rename)."""
        save_atomic(self.state_dict(), path)

    @classmethod
    def load(cls, path: str, **overrides):
        """Rebuild from a file written by ``save`` (a ``weights_only`` load); ``overrides``
        replace config keys (e.g. ``device``)."""
        state = load_checkpoint(path)
        obj = cls(dict(state["config"], **overrides))
        obj.load_state_dict(state)
        return obj


__all__ = ["Resumable", "load_checkpoint", "save_atomic", "to_jsonable", "write_json_atomic"]
