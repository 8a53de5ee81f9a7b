"""fastnas's exceptions. Each message is one line that names what is wrong and, where it helps,
what to do instead; the command line prints it without a traceback.

- ``FastNASError``: the base of them all.
- ``UserError``: bad user input (a missing file, a corrupt dataset, a bad setting). Exit 2.
- ``NonFiniteError``: a training quantity (loss, gradient norm, weights) became NaN or Inf; the
  step was not applied. Exit 3.
- ``CheckpointWriteError``: a file could not be written (disk full, permissions); no temporary
  file is left behind. Exit 1. (An unreadable checkpoint is a ``UserError``.)
"""
from __future__ import annotations

from typing import Optional


class FastNASError(Exception):
    """Base of fastnas's own exceptions."""


class UserError(FastNASError):
    """Bad user input, reported as one line."""


class CheckpointWriteError(FastNASError, OSError):
    """A file could not be written; nothing half-written is left behind."""


class NonFiniteError(FastNASError, ArithmeticError):
    """A training quantity became NaN or Inf.

    ``quantity`` names it ("train loss", "weight gradient norm", "weights after the step", ...);
    ``epoch`` (0-based, the epoch in progress) and ``step`` (the optimizer's global step) say
    where; ``value`` is the offending value when it is one number. ``stage`` ("search",
    "train") is filled in by the pipeline.
    """

    def __init__(self, quantity: str, epoch: int, step: int, value: Optional[float] = None,
                 stage: Optional[str] = None, detail: Optional[str] = None):
        self.quantity, self.epoch, self.step, self.value = quantity, epoch, step, value
        self.stage, self.detail = stage, detail
        super().__init__(self._message())

    def _message(self) -> str:
        value = f" ({self.value})" if self.value is not None else ""
        where = f"{self.stage} stopped: " if self.stage else ""
        detail = f"; {self.detail}" if self.detail else ""
        return (f"{where}non-finite {self.quantity}{value} in epoch {self.epoch + 1}, "
                f"step {self.step + 1}{detail}")

    def in_stage(self, stage: str, detail: Optional[str] = None) -> NonFiniteError:
        """The same error, naming the stage (and what was kept)."""
        return NonFiniteError(self.quantity, self.epoch, self.step, self.value, stage, detail)


__all__ = ["CheckpointWriteError", "FastNASError", "NonFiniteError", "UserError"]
