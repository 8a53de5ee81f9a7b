"""Stage labels inside a supernet forward, read by the memory profiler (``fastnas.profiling``).

``with stage("pools"): ...`` labels the work inside; it costs nothing unless a profile is
collecting (``with collecting(): ...``), in which case ``current()`` names the innermost stage.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional

_active = False
_stack: List[str] = []


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Label the work inside as ``name`` while a profile is collecting (free otherwise)."""
    if not _active:
        yield
        return
    _stack.append(name)
    try:
        yield
    finally:
        _stack.pop()


@contextlib.contextmanager
def collecting() -> Iterator[None]:
    """Turn the labels on for the duration of the block."""
    global _active
    _active = True
    try:
        yield
    finally:
        _active = False
        _stack.clear()


def current() -> Optional[str]:
    """The innermost active stage, or None."""
    return _stack[-1] if _stack else None


__all__ = ["collecting", "current", "stage"]
