"""Ctrl-C and SIGTERM as exceptions, held back while a stage writes its files.

``handle_termination()`` (the command line installs it) turns SIGTERM, what a scheduler sends
on preemption, into ``Terminated``, a ``KeyboardInterrupt``: a stage treats both alike, abandons
the step in progress (nothing of it is written) and reports its last checkpoint.

``deferred()`` wraps the writing of an epoch's files (checkpoint, metrics): a Ctrl-C or SIGTERM
arriving inside is raised when the block ends, so the files of one epoch are written together
and never half of them.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a scheduler preempting the job)."""


_deferring = 0
_pending: Optional[BaseException] = None


def _raise_or_defer(error: BaseException) -> None:
    global _pending
    if _deferring:
        _pending = _pending or error
        return
    raise error


def _on_sigterm(signum, frame) -> None:
    _raise_or_defer(Terminated())


def _on_sigint(signum, frame) -> None:
    _raise_or_defer(KeyboardInterrupt())


@contextlib.contextmanager
def handle_termination() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` and SIGINT ``KeyboardInterrupt`` (both deferrable) inside
    the block; the previous handlers come back afterwards. Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler)
                for sig, handler in ((signal.SIGTERM, _on_sigterm), (signal.SIGINT, _on_sigint))}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold back Ctrl-C and SIGTERM (when ``handle_termination`` is active) until the block ends."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            error, _pending = _pending, None
            raise error


__all__ = ["Terminated", "deferred", "handle_termination"]
