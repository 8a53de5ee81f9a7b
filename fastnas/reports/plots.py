"""``fastnas plot``: the figures of a finished (or running) stage, from its folder's files alone.

A stage folder holds ``metrics.json`` (its history); a search folder also ``alphas.json`` and
``genotype.json``. ``plot_stage(folder)`` writes into ``folder/plots/``:

- search: ``cell_normal`` and ``cell_reduce`` (PNG, SVG and Graphviz ``.dot``; micro-space
  searches only, a macro architecture is no cell), ``alphas``, ``curves``, and for ENAS
  ``controller``;
- train: ``curves``.

``plot_run(folder)`` plots a stage folder, or the ``search/`` and ``train/`` folders of a
``fastnas run`` folder. ``PlotObserver`` does it when a stage ends. The ``.dot`` files need no
matplotlib; without it the figures are skipped with one line saying what to install.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

from ..console import log
from ..errors import UserError
from ..genotypes import Genotype
from .alphas import AlphaHistory
from .cells import cell_dot, cell_figure
from .extras import MissingExtra, require
from .figures import alphas_figure, controller_figure, curves_figure

FORMATS = ("png", "svg")
DPI = 100
# Every figure a stage may have in plots/ (with FORMATS, and .dot for the cells). A stage
# removes those it does not draw itself, so a folder never shows another run's figures (an
# ENAS controller.png under a DARTS search).
FIGURES = ("cell_normal", "cell_reduce", "alphas", "curves", "controller")


def _figure_files(out: str) -> List[str]:
    return [os.path.join(out, f"{name}.{fmt}") for name in FIGURES
            for fmt in (*FORMATS, "dot")]


def remove_figures(out: str, keep: Sequence[str] = ()) -> None:
    """Remove fastnas's figures from the folder ``out`` (other files stay), except ``keep``."""
    for path in _figure_files(out):
        if path not in keep and os.path.exists(path):
            os.remove(path)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def _genotype(folder: str, metrics: Dict[str, Any]) -> Optional[Genotype]:
    """The stage's cell genotype (``genotype.json``, else the metrics' text), or None when the
    architecture is not a cell (an ENAS macro search)."""
    text = str(metrics.get("genotype") or "")
    if text.startswith("MacroArch"):
        return None
    path = os.path.join(folder, "genotype.json")
    try:
        return Genotype.load(path) if os.path.exists(path) else Genotype.parse(text)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the genotype of {folder}: {e}") from None


def alpha_history(folder: str, metrics: Optional[Dict[str, Any]] = None) -> AlphaHistory:
    """The search's alpha history: ``alphas.json``, or rebuilt from ``metrics.json`` for runs
    written before the file existed."""
    path = os.path.join(folder, "alphas.json")
    if os.path.exists(path):
        try:
            return AlphaHistory.read(path)
        except ValueError as e:
            raise UserError(str(e)) from None
    metrics = metrics if metrics is not None else _read_json(os.path.join(folder, "metrics.json"))
    try:
        return AlphaHistory.from_search(metrics["method"], metrics.get("config", {}),
                                        metrics["history"])
    except (KeyError, ValueError) as e:
        raise UserError(f"{folder} has no alphas.json and its metrics.json holds no alpha "
                        f"history ({e})") from None


def _save(fig, out: str, name: str, written: List[str]) -> None:
    for fmt in FORMATS:
        path = os.path.join(out, f"{name}.{fmt}")
        fig.savefig(path, dpi=DPI)
        written.append(path)


def plot_stage(folder: str, figures: bool = True) -> List[str]:
    """Write the stage's plots into ``folder/plots/`` and return their paths. ``figures=False``
    writes only the DOT files (no matplotlib needed); otherwise a missing matplotlib raises
    :class:`MissingExtra` after the DOT files are written."""
    metrics = _read_json(os.path.join(folder, "metrics.json"))
    if not isinstance(metrics, dict) or not isinstance(metrics.get("history"), list):
        raise UserError(f"{os.path.join(folder, 'metrics.json')} is not a fastnas metrics file")
    search = "method" in metrics
    out = os.path.join(folder, "plots")
    os.makedirs(out, exist_ok=True)
    written: List[str] = []
    genotype = _genotype(folder, metrics) if search else None
    cells = ("normal", "reduce") if genotype is not None else ()
    for cell in cells:
        path = os.path.join(out, f"cell_{cell}.dot")
        with open(path, "w", encoding="utf-8") as f:
            f.write(cell_dot(genotype, cell))
        written.append(path)
    if not figures:
        remove_figures(out, keep=[*written, *(p for p in _figure_files(out)
                                             if not p.endswith(".dot"))])
        return written
    require("matplotlib", "plotting")
    for cell in cells:
        _save(cell_figure(genotype, cell), out, f"cell_{cell}", written)
    history = metrics["history"]
    if search:
        method = metrics["method"]
        alphas = alpha_history(folder, metrics)
        if alphas.epochs:  # a run from before the weights were recorded has none
            _save(alphas_figure(alphas), out, "alphas", written)
        val = "val (controller reward)" if method == "enas" else "val"
        _save(curves_figure(history, f"{method} search on {metrics.get('dataset')}", val),
              out, "curves", written)
        if method == "enas":
            _save(controller_figure(history), out, "controller", written)
    else:
        _save(curves_figure(history, f"training on {metrics.get('dataset')}"), out, "curves",
              written)
    remove_figures(out, keep=written)
    return written


def stage_folders(folder: str) -> List[str]:
    """``[folder]`` if it is a stage folder, else its ``search`` and ``train`` stage folders."""
    if os.path.exists(os.path.join(folder, "metrics.json")):
        return [folder]
    stages = [os.path.join(folder, s) for s in ("search", "train")
              if os.path.exists(os.path.join(folder, s, "metrics.json"))]
    if not stages:
        raise UserError(f"no metrics.json in {folder} nor in its search/ and train/ folders")
    return stages


def plot_run(folder: str) -> List[str]:
    """Plot every stage of ``folder`` (see :func:`stage_folders`); the paths written."""
    require("matplotlib", "fastnas plot")
    return [path for stage in stage_folders(folder) for path in plot_stage(stage)]


class PlotObserver:
    """A stage observer (see ``fastnas.pipeline.StageObserver``) that plots the stage when it
    ends. Plotting never fails the stage: without matplotlib, or on an error, one line says
    that the plots were skipped and why."""

    def start(self, run) -> None:
        pass

    def epoch(self, run, record: dict) -> None:
        pass

    def end(self, run, result: dict) -> None:
        try:
            written = plot_stage(run.output)
        except MissingExtra as e:  # the .dot files are written by then
            log(f"plots skipped: {e}")
            return
        except Exception as e:  # a figure must not cost the run its summary
            log(f"plots skipped: {type(e).__name__}: {e}")
            return
        log(f"plots: {len(written)} files in {os.path.join(run.output, 'plots')}")


__all__ = ["FIGURES", "FORMATS", "PlotObserver", "alpha_history", "plot_run", "plot_stage",
           "remove_figures", "stage_folders"]
