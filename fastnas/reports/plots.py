"""``fastnas plot``: the figures of a finished (or running) stage, from its folder's files alone.

A stage folder holds ``metrics.json`` (its history); a search folder also ``alphas.json`` and
``genotype.json``. ``plot_stage(folder)`` writes into ``folder/plots/``:

- search: ``cell_normal`` and ``cell_reduce`` (PNG, SVG and Graphviz ``.dot``; micro-space
  searches only, a macro architecture is no cell; a NAS-Bench-201 search: ``cell_nb201``),
  ``alphas``, ``curves``, and for ENAS ``controller``;
- train: ``curves``.

``plot_run(folder)`` plots a stage folder, or the ``search/`` and ``train/`` folders of a
``fastnas run`` folder. ``PlotObserver`` does it when a stage ends. The ``.dot`` files need no
matplotlib; without it the figures are skipped with one line saying what to install.

The folder's files are read by ``fastnas.runfiles`` (wrong types are one line naming the value),
sizes are bounded by ``fastnas.limits`` (an alpha history of more than ``MAX_FIGURE_PANELS``
panels gets no figure, and the line says so), and every file is written atomically (temp file,
then rename): a full disk leaves no truncated figure.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ..checkpoint import write_file_atomic, write_text_atomic
from ..console import log
from ..errors import CheckpointWriteError, UserError
from ..genotypes import Genotype
from ..limits import MAX_FIGURE_PANELS
from ..nb201 import NB201Cell
from ..runfiles import read_metrics
from .alphas import AlphaHistory
from .cells import cell_dot, cell_figure
from .extras import MissingExtra, require
from .figures import alphas_figure, controller_figure, curves_figure
from .nb201_cells import nb201_cell_dot, nb201_cell_figure

FORMATS = ("png", "svg")
DPI = 100
# Every figure a stage may have in plots/ (with FORMATS, and .dot for the cells). A stage
# removes those it does not draw itself, so a folder never shows another run's figures (an
# ENAS controller.png under a DARTS search).
FIGURES = ("cell_normal", "cell_reduce", "alphas", "curves", "controller", "cell_nb201")


def _figure_files(out: str) -> List[str]:
    return [os.path.join(out, f"{name}.{fmt}") for name in FIGURES
            for fmt in (*FORMATS, "dot")]


def remove_figures(out: str, keep: Sequence[str] = ()) -> None:
    """Remove fastnas's figures from the folder ``out`` (other files stay), except ``keep``."""
    for path in _figure_files(out):
        if path not in keep and os.path.exists(path):
            os.remove(path)


def _genotype(folder: str, metrics: Dict[str, Any]) -> Union[Genotype, NB201Cell, None]:
    """The stage's cell genotype (``genotype.json``, else the metrics' text; an ``NB201Cell``
    for a NAS-Bench-201 search), or None when the architecture is not a cell (an ENAS macro
    search)."""
    text = str(metrics.get("genotype") or "")
    if text.startswith("MacroArch"):
        return None
    path = os.path.join(folder, "genotype.json")
    try:
        if text.lstrip().startswith("|"):   # issue 19: an NB201 cell
            return NB201Cell.load(path) if os.path.exists(path) else NB201Cell.parse(text)
        return Genotype.load(path) if os.path.exists(path) else Genotype.parse(text)
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
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
    metrics = metrics if metrics is not None else read_metrics(os.path.join(folder,
                                                                            "metrics.json"))
    try:
        return AlphaHistory.from_search(metrics["method"], metrics.get("config", {}),
                                        metrics["history"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{folder} has no alphas.json and its metrics.json holds no alpha "
                        f"history ({e})") from None


def _save(draw: Callable[[], Any], source: str, out: str, name: str,
          written: List[str]) -> None:
    """Draw the figure and write it in each format, atomically. Data that the figure cannot be
    drawn from is one UserError line naming the figure and the file it came from."""
    try:
        fig = draw()
        for fmt in FORMATS:
            path = os.path.join(out, f"{name}.{fmt}")
            write_file_atomic(path, lambda tmp, fmt=fmt: fig.savefig(tmp, dpi=DPI, format=fmt))
            written.append(path)
    except (ArithmeticError, IndexError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot draw {name} from {source}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None


def plot_stage(folder: str, figures: bool = True) -> List[str]:
    """Write the stage's plots into ``folder/plots/`` and return their paths. ``figures=False``
    writes only the DOT files (no matplotlib needed); otherwise a missing matplotlib raises
    :class:`MissingExtra` after the DOT files are written."""
    metrics_path = os.path.join(folder, "metrics.json")
    metrics = read_metrics(metrics_path)
    search = "method" in metrics
    out = os.path.join(folder, "plots")
    os.makedirs(out, exist_ok=True)
    written: List[str] = []
    genotype = _genotype(folder, metrics) if search else None
    nb201 = isinstance(genotype, NB201Cell)
    cells = ("normal", "reduce") if genotype is not None and not nb201 else ()
    genotype_source = os.path.join(folder, "genotype.json")
    for cell in cells:
        path = os.path.join(out, f"cell_{cell}.dot")
        write_text_atomic(cell_dot(genotype, cell), path)
        written.append(path)
    if nb201:
        path = os.path.join(out, "cell_nb201.dot")
        write_text_atomic(nb201_cell_dot(genotype), path)
        written.append(path)
    if not figures:
        remove_figures(out, keep=[*written, *(p for p in _figure_files(out)
                                             if not p.endswith(".dot"))])
        return written
    require("matplotlib", "plotting")
    for cell in cells:
        _save(lambda cell=cell: cell_figure(genotype, cell), genotype_source, out,
              f"cell_{cell}", written)
    if nb201:
        _save(lambda: nb201_cell_figure(genotype), genotype_source, out, "cell_nb201", written)
    history = metrics["history"]
    if search:
        method = metrics["method"]
        alphas = alpha_history(folder, metrics)
        alphas_source = os.path.join(folder, "alphas.json")
        if len(alphas.panels) > MAX_FIGURE_PANELS:
            log(f"alphas figure skipped: {len(alphas.panels)} panels, the figure draws at most "
                f"{MAX_FIGURE_PANELS}")
        elif alphas.epochs:  # a run from before the weights were recorded has none
            _save(lambda: alphas_figure(alphas), alphas_source, out, "alphas", written)
        controlled = method in ("enas", "enas-cells")  # a controller, rewarded on val
        val = "val (controller reward)" if controlled else "val"
        _save(lambda: curves_figure(history, f"{method} search on {metrics.get('dataset')}",
                                    val), metrics_path, out, "curves", written)
        if controlled:
            _save(lambda: controller_figure(history), metrics_path, out, "controller", written)
    else:
        _save(lambda: curves_figure(history, f"training on {metrics.get('dataset')}"),
              metrics_path, out, "curves", written)
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
        except (UserError, CheckpointWriteError) as e:  # one line already
            log(f"plots skipped: {e}")
            return
        except Exception as e:  # a figure must not cost the run its summary
            log(f"plots skipped: {type(e).__name__}: {e}")
            return
        log(f"plots: {len(written)} files in {os.path.join(run.output, 'plots')}")


__all__ = ["FIGURES", "FORMATS", "PlotObserver", "alpha_history", "plot_run", "plot_stage",
           "remove_figures", "stage_folders"]
