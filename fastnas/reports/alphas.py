"""The alpha history: how a search's architecture weights moved, epoch by epoch (``alphas.json``).

- DARTS: per edge (normal and reduce cell), the strengths of the search's relaxation over the
  space's ops (``fastnas.space``; DARTS: ``softmax(alpha_e)`` over ``PRIMITIVES``, the weights
  ``w_e,k`` of ``sum_k w_e,k op_k(x)``), as the search's history records hold them after each
  epoch; ``what`` is the relaxation's name for them (``alphas_what`` in the records).
- DARTS inside the user's model (``fastnas.Choice``): per choice, the strengths over its
  candidates (``space`` is the search's ``ChoiceSpace``, ``choice_panels``).
- ENAS: per controller decision, the probabilities ``softmax(l_t)`` of its options in the
  controller's greedy pass after each epoch (micro: per cell and node, two inputs and two ops;
  macro: per layer an op and one skip bit per earlier layer).

Each distribution is a *panel* (one small plot in the ``alphas`` figure, one scalar group in
TensorBoard): its cell or group, its place in the grid (``row``: the node or layer, ``col``: the
incoming edge or decision), a title, a tag-safe ``key`` and the names of its options.

``alphas.json`` holds the panels, then one line per epoch (``weights[epoch][panel][option]``)::

    {"format": 1, "method": "darts", "what": "softmax of the alphas per edge",
     "panels": [{"group": "normal", "row": 0, "col": 0, "title": "c_{k-2} -> 0", ...}, ...],
     "epochs": [0, 1, ...],
     "weights": [
      [[0.125, ...], ...],
      ...]}

The search stage rewrites it after every epoch from the optimizer's history, which the checkpoint
holds, so a resumed search leaves the same file as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from ..checkpoint import write_text_atomic
from ..choice import ChoiceSpace
from ..enas.macro import MACRO_OPS
from ..enas.micro import MICRO_OPS
from ..limits import MAX_LAYERS, MAX_NODES, MAX_OPTIONS, MAX_PANELS, check_at_most
from ..nb201 import nb201_space
from ..ops import PRIMITIVES
from ..runfiles import read_alphas
from ..space import CellSpace, darts_space

FORMAT = 1


@dataclass(frozen=True)
class Panel:
    """One distribution: ``options`` of the edge or decision at (``group``, ``row``, ``col``)."""

    group: str
    row: int
    col: int
    title: str
    key: str
    options: Tuple[str, ...]


@dataclass
class AlphaHistory:
    """``weights[e][p][k]``: after epoch ``epochs[e]``, the weight of option ``k`` of panel
    ``p``."""

    method: str
    what: str
    panels: List[Panel]
    epochs: List[int]
    weights: List[List[List[float]]]

    def series(self, panel: int) -> List[List[float]]:
        """The panel's weights over the epochs: ``[option][epoch]``."""
        return [[w[panel][k] for w in self.weights]
                for k in range(len(self.panels[panel].options))]

    def groups(self) -> List[str]:
        return list(dict.fromkeys(p.group for p in self.panels))

    # -- from a search ----------------------------------------------------------------------------
    @classmethod
    def from_search(cls, method: str, config: Mapping[str, Any],
                    history: Sequence[Mapping[str, Any]],
                    space: Optional[CellSpace] = None) -> AlphaHistory:
        """From a search's history records (tensors or lists) and its config (a dict); a DARTS
        search over another space than the config's DARTS space passes its ``space``. Records
        written before the weights were recorded (none of their keys) are left out."""
        for key, limit in (("num_nodes", MAX_NODES), ("num_layers", MAX_LAYERS)):
            check_at_most(f"config {key}", config.get(key), limit)
        if method in ("darts", "rsps", "enas-cells"):  # alphas_<cell type> per edge
            if space is None and config.get("space") == "nb201":  # issue 19
                space = nb201_space()
            if space is None:
                ops = config.get("primitives")  # None: the paper's eight (issue 20)
                space = darts_space(int(config.get("num_nodes", 4)),
                                    ops=PRIMITIVES if ops is None else ops)
            panels = (choice_panels(space) if isinstance(space, ChoiceSpace)
                      else space_panels(space))
            keys = tuple(f"alphas_{t}" for t in space.cell_types)
            what = next((str(r["alphas_what"]) for r in reversed(history) if "alphas_what" in r),
                        "softmax of the alphas per edge")
        elif method == "enas":
            if config.get("search_space", "micro") == "micro":
                panels = micro_panels(int(config.get("num_nodes", 5)))
            else:
                panels = macro_panels(int(config.get("num_layers", 12)))
            keys, what = ("decision_probs",), "controller decision probabilities (greedy pass)"
        else:
            raise ValueError(f"no alpha history for search method {method!r}")
        records = [r for r in history if any(k in r for k in keys)]
        rows = [[row for k in keys for row in _rows(r, k)] for r in records]
        out = cls(method, what, panels, [int(r["epoch"]) for r in records], rows)
        out.check()
        return out

    def check(self) -> None:
        """ValueError unless every epoch has one distribution per panel, of its options' size,
        and the panels fit their grid: at most ``MAX_PANELS`` of at most ``MAX_OPTIONS``
        options; in each group, rows and columns below the group's panel count and at most
        twice as many grid places as panels (so the figure is sized by the panels, not by a
        row number)."""
        if not 1 <= len(self.panels) <= MAX_PANELS:
            raise ValueError(f"{len(self.panels)} panels, expected 1 to {MAX_PANELS}")
        for group in self.groups():
            panels = [p for p in self.panels if p.group == group]
            rows = 1 + max(p.row for p in panels)
            cols = 1 + max(p.col for p in panels)
            if min(min(p.row, p.col) for p in panels) < 0 or rows * cols > 2 * len(panels):
                raise ValueError(f"group {group!r}: {len(panels)} panels on a {rows} x {cols} "
                                 f"grid; rows and columns are 0-based and the grid has at most "
                                 f"twice as many places as panels")
        for panel in self.panels:
            if not 1 <= len(panel.options) <= MAX_OPTIONS:
                raise ValueError(f"{panel.group} {panel.title}: {len(panel.options)} options, "
                                 f"expected 1 to {MAX_OPTIONS}")
        if len(self.weights) != len(self.epochs):
            raise ValueError(f"{len(self.epochs)} epochs but {len(self.weights)} weight rows")
        for epoch, row in zip(self.epochs, self.weights):
            if len(row) != len(self.panels):
                raise ValueError(f"epoch {epoch}: {len(row)} distributions for "
                                 f"{len(self.panels)} panels")
            for panel, w in zip(self.panels, row):
                if len(w) != len(panel.options) or not all(
                        isinstance(v, (int, float)) and math.isfinite(v) for v in w):
                    raise ValueError(f"epoch {epoch}, {panel.group} {panel.title}: expected "
                                     f"{len(panel.options)} finite weights, got {w!r}")

    # -- the file ---------------------------------------------------------------------------------
    def write(self, path: str) -> None:
        """``alphas.json``, atomically (temp file, then rename); one line per epoch."""
        head = {"format": FORMAT, "method": self.method, "what": self.what,
                "panels": [asdict(p) for p in self.panels], "epochs": self.epochs}
        lines = ",\n ".join(json.dumps(w, separators=(",", ":")) for w in self.weights)
        write_text_atomic(json.dumps(head)[:-1] + ',\n "weights": [\n ' + lines + "]}\n", path)

    @classmethod
    def read(cls, path: str) -> AlphaHistory:
        """Read ``alphas.json``: a UserError naming the file if it is no JSON of the right types
        (``fastnas.runfiles.ALPHAS``), a ValueError naming it if its sizes do not agree."""
        data = read_alphas(path)
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            panels = [Panel(str(p["group"]), int(p["row"]), int(p["col"]), str(p["title"]),
                            str(p["key"]), tuple(str(o) for o in p["options"]))
                      for p in data["panels"]]
            out = cls(str(data["method"]), str(data["what"]), panels,
                      [int(e) for e in data["epochs"]], data["weights"])
            out.check()
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path} is not an alpha history: {e}") from None
        return out


def _rows(record: Mapping[str, Any], key: str) -> List[List[float]]:
    value = record.get(key)
    if value is None:
        raise ValueError(f"epoch {record.get('epoch')}: the history record has no {key!r}")
    return value.tolist() if hasattr(value, "tolist") else [list(v) for v in value]


# -- the panels of each search space --------------------------------------------------------------
def state_name(j: int) -> str:
    """State ``j`` of a cell: the two cell inputs ``c_{k-2}``, ``c_{k-1}``, then nodes 0, 1, ..."""
    return ("c_{k-2}", "c_{k-1}")[j] if j < 2 else str(j - 2)


def _state_key(j: int) -> str:
    return ("k-2", "k-1")[j] if j < 2 else str(j - 2)


def darts_panels(num_nodes: int) -> List[Panel]:
    """Edge ``(j -> i)`` of each cell of the DARTS space, as its alpha rows (``space_panels``)."""
    return space_panels(darts_space(num_nodes))


def space_panels(space: CellSpace) -> List[Panel]:
    """Edge ``(j -> i)`` of each cell type of ``space``, in the order of its alpha rows
    (``CellSpace.edges``), over the space's ops. A one-input cell (NAS-Bench-201's) numbers
    its states as nodes, the input node 0: edge ``j -> i + 1`` into node ``i``."""
    if space.num_inputs == 1:
        return [Panel(cell, e.node, e.state, f"{e.state} -> {e.node + 1}",
                      f"{e.node + 1}_from_{e.state}", tuple(space.ops))
                for cell in space.cell_types for e in space.edges]
    return [Panel(cell, e.node, e.state, f"{state_name(e.state)} -> {e.node}",
                  f"{e.node}_from_{_state_key(e.state)}", tuple(space.ops))
            for cell in space.cell_types for e in space.edges]


def choice_panels(space: ChoiceSpace) -> List[Panel]:
    """The choices of a search inside the user's model (``DARTSOptimizer(config, model=net)``),
    one panel per choice (module path) over its candidates, one column."""
    return [Panel("choices", i, 0, f"{name} ({kind})", re.sub(r"[^A-Za-z0-9_]", "_", name),
                  tuple(options))
            for i, (name, options, kind) in enumerate(zip(space.names, space.options,
                                                          space.kinds))]


def micro_panels(num_nodes: int) -> List[Panel]:
    """The micro controller's decisions: per cell, per node ``[input a, input b, op a, op b]``."""
    panels = []
    for cell in ("normal", "reduce"):
        for i in range(num_nodes):
            inputs = tuple(state_name(j) for j in range(i + 2))
            for col, (kind, side, options) in enumerate((("input", "a", inputs),
                                                         ("input", "b", inputs),
                                                         ("op", "a", MICRO_OPS),
                                                         ("op", "b", MICRO_OPS))):
                panels.append(Panel(cell, i, col, f"node {i} {kind} {side}",
                                    f"{i}_{kind}_{side}", tuple(options)))
    return panels


def macro_panels(num_layers: int) -> List[Panel]:
    """The macro controller's decisions: per layer ``[op, skip_0, ..., skip_{l-1}]``."""
    panels = []
    for l in range(num_layers):
        panels.append(Panel("layers", l, 0, f"layer {l} op", f"{l}_op", tuple(MACRO_OPS)))
        panels += [Panel("layers", l, j + 1, f"layer {l} skip from {j}", f"{l}_skip_{j}",
                         ("off", "on")) for j in range(l)]
    return panels


def write_alpha_history(path: str, method: str, config: Mapping[str, Any],
                        history: Sequence[Mapping[str, Any]],
                        space: Optional[CellSpace] = None) -> None:
    """``AlphaHistory.from_search(method, config, history, space).write(path)``."""
    AlphaHistory.from_search(method, config, history, space).write(path)


__all__ = ["AlphaHistory", "Panel", "choice_panels", "darts_panels", "macro_panels", "micro_panels",
           "space_panels", "state_name", "write_alpha_history"]
