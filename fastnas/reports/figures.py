"""Figures of a run's numbers: the alpha history, the learning curves, the ENAS controller.

All are matplotlib ``Figure`` objects made without pyplot (no global state, no GUI backend), from
plain data: an :class:`AlphaHistory` and the per-epoch records of ``metrics.json``.

- ``alphas_figure``: a grid of small plots per cell (a row per node, a column per incoming edge;
  for ENAS a column per decision), each the weights of every option over the epochs. ``none`` is
  drawn dashed grey and ``skip_connect`` thick black, the two that tell a collapsed search.
- ``curves_figure``: loss, accuracy and learning rate per epoch (train, and val or test).
- ``controller_figure``: ENAS reward with its moving-average baseline, and the entropy.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .alphas import AlphaHistory
from .extras import require

# One colour per option, the same in every panel; the two ops that show a collapse stand out.
_STYLE = {"none": {"color": "#999999", "linestyle": "--", "linewidth": 1.2},
          "skip_connect": {"color": "black", "linewidth": 2.2}}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22")


def _figure(width: float, height: float):
    require("matplotlib", "plotting")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def plain(text: Any) -> str:
    """``text`` (from a run's files) as literal matplotlib text: every ``$`` escaped, so no
    mathtext is parsed from user data (a ``$\\frac{$`` in a dataset name stays those
    characters)."""
    return str(text).replace("$", r"\$")


def _display(title: str) -> str:
    """A panel title for matplotlib: literal text (``plain``) but the cell inputs as math
    (``c_{k-2}``), arrows as arrows."""
    return re.sub(r"c_\{k-(\d)\}", r"$c_{k-\1}$", plain(title)).replace(" -> ", " \u2192 ")


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))


def option_styles(options: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """The line style of each option: ``none`` and ``skip_connect`` fixed, the others by place."""
    styles, k = {}, 0
    for name in options:
        if name in _STYLE:
            styles[name] = dict(_STYLE[name])
        else:
            styles[name] = {"color": _PALETTE[k % len(_PALETTE)], "linewidth": 1.3}
            k += 1
    return styles


def alphas_figure(history: AlphaHistory):
    """One small plot per panel, grouped by cell; each line is one option's weight over the
    epochs, its ``gid`` ``"<group>/<panel key>/<option>"`` (so tests and tools can find it)."""
    groups = history.groups()
    shape = {g: (1 + max(p.row for p in history.panels if p.group == g),
                 1 + max(p.col for p in history.panels if p.group == g)) for g in groups}
    cols = max(c for _, c in shape.values())
    rows = sum(r for r, _ in shape.values())
    fig = _figure(2.0 * cols + 0.6, 1.45 * rows + 0.4 * len(groups) + 1.1)
    spec = fig.add_gridspec(rows, cols, hspace=0.75, wspace=0.28, left=0.09, right=0.99,
                            top=1 - 0.95 / (1.45 * rows + 1.5), bottom=0.45 / (1.45 * rows + 1.5))
    epochs = [e + 1 for e in history.epochs]
    common = max((p.options for p in history.panels), key=lambda o: sum(
        q.options == o for q in history.panels))
    first_row, handles = 0, {}
    marker = "o" if len(epochs) <= 12 else None
    for group in groups:
        axes = {}
        for index, panel in enumerate(history.panels):
            if panel.group != group:
                continue
            ax = fig.add_subplot(spec[first_row + panel.row, panel.col],
                                 sharey=axes.get("first"))
            axes.setdefault("first", ax)
            styles = option_styles(panel.options)
            for name, values in zip(panel.options, history.series(index)):
                (line,) = ax.plot(epochs, values, label=_display(name), marker=marker,
                                  markersize=2.5,
                                  **styles[name])
                line.set_gid(f"{group}/{panel.key}/{name}")
                if panel.options == common:
                    handles.setdefault(name, line)
            ax.set_title(_display(panel.title), fontsize=8, pad=3)
            ax.tick_params(labelsize=6, length=2)
            _integer_epochs(ax)
            ax.grid(alpha=0.3, linewidth=0.5)
            if panel.options != common:
                ax.legend(fontsize=5, loc="best", frameon=False, handlelength=1.2)
            if panel.col == 0:
                label = (f"{group}\nnode {panel.row}" if group in ("normal", "reduce")
                         else group)
                ax.set_ylabel(plain(label), fontsize=7)
        first_row += shape[group][0]
    fig.suptitle(plain(f"{history.what}, over {len(epochs)} epoch(s)"), fontsize=10,
                 y=1 - 0.15 / (1.45 * rows + 1.5))
    fig.legend(list(handles.values()), [_display(h) for h in handles], loc="upper center",
               ncol=len(handles), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.45 / (1.45 * rows + 1.5)))
    fig.supxlabel("epoch", fontsize=8)
    return fig


# -- curves ---------------------------------------------------------------------------------------
_SPLITS = (("train", "train"), ("val", "val"), ("test", "test"))


def _series(records: Sequence[Mapping[str, Any]], key: str) -> Optional[List[float]]:
    values = [r.get(key) for r in records]
    if all(v is None for v in values):
        return None
    return [float("nan") if v is None else float(v) for v in values]


def curves_figure(records: Sequence[Mapping[str, Any]], title: str,
                  val_label: str = "val"):
    """Loss, accuracy and learning rate over the epochs of ``records`` (a stage's history)."""
    epochs = [int(r["epoch"]) + 1 for r in records]
    marker = "o" if len(epochs) <= 12 else None
    fig = _figure(11.0, 3.2)
    axes = fig.subplots(1, 3)
    for ax, (what, suffix) in zip(axes[:2], (("loss", "loss"), ("accuracy", "acc"))):
        for split, name in _SPLITS:
            values = _series(records, f"{split}_{suffix}")
            if values is not None:
                label = val_label if split == "val" else name
                ax.plot(epochs, values, marker=marker, markersize=3, label=label)
        ax.set_title(what, fontsize=10)
        ax.legend(fontsize=8, frameon=False)
    lr = _series(records, "lr")
    if lr is not None:
        axes[2].plot(epochs, lr, marker=marker, markersize=3, color="#555555")
    axes[2].set_title("learning rate", fontsize=10)
    return _finish(fig, axes, title)


def controller_figure(records: Sequence[Mapping[str, Any]], title: str = "ENAS controller"):
    """The controller's mean reward per epoch with the baseline, and its mean entropy."""
    epochs = [int(r["epoch"]) + 1 for r in records]
    marker = "o" if len(epochs) <= 12 else None
    fig = _figure(8.0, 3.2)
    left, right = fig.subplots(1, 2)
    for key, label in (("reward", "reward (validation accuracy)"), ("baseline", "baseline")):
        values = _series(records, key)
        if values is not None:
            left.plot(epochs, values, marker=marker, markersize=3, label=label)
    left.set_title("reward and baseline", fontsize=10)
    left.legend(fontsize=8, frameon=False)
    entropy = _series(records, "entropy")
    if entropy is not None:
        right.plot(epochs, entropy, marker=marker, markersize=3, color="#9467bd")
    right.set_title("entropy of the sampled architectures", fontsize=10)
    return _finish(fig, (left, right), title)


def _finish(fig, axes, title: str):
    """Epochs on the x axes, a light grid, the title; laid out tight."""
    for ax in axes:
        _integer_epochs(ax)
        ax.set_xlabel("epoch", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, linewidth=0.5)
    fig.suptitle(plain(title), fontsize=11)
    fig.tight_layout()
    return fig


__all__ = ["alphas_figure", "controller_figure", "curves_figure", "option_styles", "plain"]
