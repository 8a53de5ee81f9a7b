"""What a run shows on the console: progress on stderr, a summary block on stdout.

``Progress``: tqdm bars on a terminal, plain lines in logs. With bars, an epoch bar stays on
screen and a batch bar below it shows the running loss and accuracy of the epoch in progress.
Without (``--quiet``, or stderr redirected to a file), each finished epoch prints one line that
a log keeps readable. ``log`` writes one line to stderr; ``print_block`` the indented summary
that ends every command. Under torchrun only rank 0 shows any of it.
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional, TextIO, Tuple

from tqdm import tqdm

from . import distributed


class Progress:
    """``step(loss, acc)`` after every batch, ``epoch(number, summary)`` after every epoch."""

    def __init__(self, stage: str, total_epochs: int, done_epochs: int = 0,
                 steps_per_epoch: Optional[int] = None, bars: Optional[bool] = None,
                 stream: Optional[TextIO] = None):
        self.stage, self.total = stage, total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.silent = not distributed.is_main()
        bars = False if self.silent else bars
        self.stream = stream if stream is not None else sys.stderr
        if bars is None:
            bars = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bars = bars
        self._epochs = (tqdm(total=total_epochs, initial=done_epochs, desc=stage, unit="epoch",
                             file=self.stream, dynamic_ncols=True) if bars else None)
        self._batches = None
        self._loss = self._acc = 0.0
        self._count = 0

    def step(self, loss: float, acc: float) -> None:
        if not self.bars:
            return
        if self._batches is None:
            self._batches = tqdm(total=self.steps_per_epoch, leave=False, unit="batch",
                                 file=self.stream, dynamic_ncols=True,
                                 desc=f"epoch {self._epochs.n + 1}")
            self._loss = self._acc = 0.0
            self._count = 0
        self._count += 1
        self._loss += (loss - self._loss) / self._count
        self._acc += (acc - self._acc) / self._count
        self._batches.set_postfix({"loss": f"{self._loss:.3f}", "acc": f"{self._acc:.3f}"},
                                  refresh=False)
        self._batches.update()

    def epoch(self, number: int, summary: str) -> None:
        """Epoch ``number`` (0-based) finished; ``summary`` is its one-line result."""
        if self.bars:
            if self._batches is not None:
                self._batches.close()
                self._batches = None
            self._epochs.set_postfix_str(summary, refresh=False)
            self._epochs.update()
        elif not self.silent:
            print(f"{self.stage} epoch {number + 1}/{self.total}  {summary}", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None
        if self._epochs is not None:
            self._epochs.close()
            self._epochs = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def log(message: str) -> None:
    """One line on stderr (the progress stream), flushed (rank 0 only under torchrun)."""
    if distributed.is_main():
        print(message, file=sys.stderr, flush=True)


def print_block(title: str, rows: List[Tuple[str, Any]]) -> None:
    """``title``, then ``label  value`` rows aligned; a list value spans several lines."""
    if not distributed.is_main():
        return
    width = max(len(label) for label, _ in rows)
    print(title)
    for label, value in rows:
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            print(f"  {(label if i == 0 else ''):<{width}}  {v}")
    sys.stdout.flush()


def duration(seconds: float) -> str:
    """``1h 02m 03s`` or ``2m 03s``."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def epochs(n: int) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f"{n} epoch" + ("" if n == 1 else "s")


__all__ = ["Progress", "duration", "epochs", "log", "print_block"]
