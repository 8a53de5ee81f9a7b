"""TensorBoard logging of a stage (``--tensorboard``), through ``torch.utils.tensorboard``.

Per epoch (the step is the epoch number, 1-based as the console's):

- scalars: ``loss/{train,val,test}``, ``accuracy/{train,val,test}``, ``lr``; for ENAS
  ``controller/{reward,baseline,entropy,loss,advantage,log_prob}``; ``time/epoch_seconds``;
  any other number of the epoch's record under ``other/<key>``;
- the architecture weights of the alpha history (``fastnas.reports.alphas``), one scalar per
  option: ``alphas/<cell>/<edge>/<op>`` for DARTS (e.g. ``alphas/normal/2_from_k-1/skip_connect``),
  ``decisions/<cell>/<decision>/<option>`` for ENAS;
- text: ``genotype`` (per search epoch the architecture the search would return now; the
  trained one at the start of a training); at the end ``result``, the final metrics.

Events go to ``LOG_DIR/<stage>`` (``search`` or ``train``) with ``--log-dir``, else to the
stage folder's ``tensorboard/``. A resumed stage purges the events of epochs after its checkpoint
(``purge_step``), so the curves continue without duplicates.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional

from .alphas import AlphaHistory
from .extras import require

TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test",
        "train_acc": "accuracy/train", "val_acc": "accuracy/val", "test_acc": "accuracy/test",
        "lr": "lr", "drop_path_prob": "drop_path_prob", "reward": "controller/reward",
        "baseline": "controller/baseline", "entropy": "controller/entropy",
        "controller_loss": "controller/loss", "advantage": "controller/advantage",
        "log_prob": "controller/log_prob", "skip_penalty": "controller/skip_penalty",
        "skip_density": "controller/skip_density", "seconds": "time/epoch_seconds"}
SKIP = {"epoch", "steps", "controller_steps"}
RESULT_KEYS = ("val_accuracy", "val_loss", "test_accuracy", "best_test_accuracy", "params",
               "multiply_adds", "epochs", "seconds")


def log_dir(run, root: Optional[str]) -> str:
    """Where a stage's events go: ``root/<stage>``, or ``<stage folder>/tensorboard``."""
    return os.path.join(root, run.kind) if root else os.path.join(run.output, "tensorboard")


def _config(run) -> Dict[str, Any]:
    config = getattr(run.owner, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else {}


class TensorBoardObserver:
    """A stage observer (see ``fastnas.pipeline.StageObserver``) writing TensorBoard events.
    Holds one writer per running stage; needs the ``tensorboard`` package (checked when built,
    so a missing package is an error before any training)."""

    def __init__(self, root: Optional[str] = None):
        require("tensorboard", "--tensorboard")
        self.root = root
        self.writer = None

    def start(self, run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        done = int(getattr(run.owner, "epoch", 0))
        self.writer = SummaryWriter(log_dir(run, self.root), purge_step=done + 1 if done else None)
        if run.kind == "train":  # a training's genotype is fixed: once, at its start
            self.writer.add_text("genotype", str(run.owner.genotype), done)

    def epoch(self, run, record: dict) -> None:
        step = int(record["epoch"]) + 1
        for key, value in record.items():
            if key in SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(TAGS.get(key, f"other/{key}"), value, step)
        if run.kind == "search" and run.method:
            history = AlphaHistory.from_search(run.method, _config(run), [record])
            prefix = "decisions" if run.method == "enas" else "alphas"
            for panel, weights in zip(history.panels, history.weights[0]):
                for option, w in zip(panel.options, weights):
                    self.writer.add_scalar(f"{prefix}/{panel.group}/{panel.key}/{option}", w,
                                           step)
        architecture = record.get("genotype", record.get("arch"))
        if architecture is not None:
            self.writer.add_text("genotype", str(architecture), step)
        self.writer.flush()

    def end(self, run, result: dict) -> None:
        summary = {k: result[k] for k in RESULT_KEYS if result.get(k) is not None}
        self.writer.add_text("result", json.dumps(summary, indent=1), int(result.get("epochs", 0)))
        self.writer.close()
        self.writer = None


__all__ = ["TAGS", "TensorBoardObserver", "log_dir"]
