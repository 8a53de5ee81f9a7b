"""``RSPSOptimizer``: random search with weight sharing (Li & Talwalkar, UAI 2019), as the
NAS-Bench-201 baseline (xautodl ``RANDOM-NAS.py``, ``TinyNetworkRANDOM``) runs it.

Training: every weight step draws one cell, ``c_e ~ U{ops}`` independently per edge and per cell
type (``fastnas.space.Uniform``, its own seeded CPU generator), and takes an SGD step on the
training batch through that cell alone (exact one-hot mixing weights, Nesterov momentum by
default, the weight gradient norm clipped, the learning rate cosine per epoch as DARTS'). There
is no architecture step: the alphas are never trained (they only hold a cell, see below).

Selection, after the last epoch: ``select_num`` cells drawn uniformly (from a generator of their
own, seeded afresh by ``seed + 1`` at every selection, so they are the same cells whenever the
selection runs, whatever the training drew) are each scored by their accuracy on the
validation data with the shared weights, in eval mode (BatchNorm running statistics where the
supernet tracks them, the batch's where it does not, as NB201's search supernet), each cell
fixed over all of its batches (the first ``select_batches`` batches of the validation loader,
or all of them); the answer is the best one (ties: the first drawn). xautodl's ``valid_func``
re-draws a random cell on every batch, so its "accuracy of arch k" is that of a mixture of
cells and its pick is random; this implementation scores the cell it names.

The supernet holds the chosen cell in its alphas (``fastnas.space.hold_cell``), so
``genotype()`` / ``architecture()`` derive it with the space's rule and the search checkpoint
keeps it. Before the selection the held cell is the argmax of the initial alphas: a
placeholder, not an answer (``ranking`` is empty until then).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import torch

from .. import distributed
from ..checkpoint import check_kind, describe
from ..config import choice, flag, integer
from ..engine import RunningMean, accuracy, cosine_lr, run_epochs
from ..space import WEIGHTS, CellSpace, Uniform, held_cell, hold_cell
from .config import DARTSConfig
from .optimizer import DARTSOptimizer


@dataclass
class RSPSConfig(DARTSConfig):
    """The DARTS search settings for the weights, plus the selection: ``select_num`` uniformly
    drawn cells are scored (xautodl: 100), each on the first ``select_batches`` validation
    batches (None: all of them). ``nesterov``: Nesterov momentum for the weights (xautodl's
    NB201 searches use it). The alpha settings (``learning_rate_alpha``, ``arch_weight_decay``,
    ``order``, ``hessian_r``) do not apply: RSPS has no architecture step."""

    select_num: int = integer(100, low=1)
    select_batches: Optional[int] = integer(None, low=1, optional=True)
    nesterov: bool = flag(True)
    # The method this config is for, as ``config.json`` records it (the DARTS config's own
    # ``method`` key names the DARTS presets of issue 18; none of them applies here).
    method: str = choice("rsps", ("rsps",))

    @classmethod
    def from_dict(cls, values):
        """As ``DARTSConfig.from_dict``; ``method`` may be given, as ``rsps`` only."""
        if isinstance(values, Mapping) and "method" in values:
            if values["method"] != "rsps":
                raise ValueError(f"method must be 'rsps' in an RSPS config, got "
                                 f"{values['method']!r}")
            values = {k: v for k, v in values.items() if k != "method"}
        return super().from_dict(values)


class RSPSOptimizer(DARTSOptimizer):
    """RSPS over a supernet of ``space`` (default the DARTS space): see the module docstring.

    The DARTS interface (``search``, ``evaluate``, ``state_dict``, ...) with ``step`` a weight
    step on a uniform cell, ``rank(loader)`` the selection, ``ranking`` its result (best first:
    ``{"cells": {type: op indices}, "architecture": str, "accuracy": float}``).
    """

    checkpoint_kind = ("search", "rsps")

    def __init__(self, config: Union[Mapping[str, Any], RSPSConfig, None] = None, *,
                 space: Optional[CellSpace] = None,
                 loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None):
        cfg = RSPSConfig.from_dict(config)
        seed = cfg.seed if cfg.seed is not None else int(torch.randint(2 ** 62, ()).item())
        super().__init__(cfg, space=space, relaxation=Uniform(seed), loss=loss)
        self.weight_optimizer = torch.optim.SGD(
            self.model.weights(), lr=self.lr, momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
        self.select_seed = seed + 1  # the selection's cells (module docstring)
        self.ranking: List[Dict[str, Any]] = []

    @property
    def space(self) -> CellSpace:
        return self.model.arch.space

    # -- one step -----------------------------------------------------------------------------
    def step(self, train_batch, val_batch=None) -> Dict[str, Any]:
        """One SGD step of the weights on ``train_batch`` through a uniformly drawn cell
        (``val_batch`` is not used: RSPS has no architecture step). Returns ``train_loss``,
        ``train_acc``, ``lr``, ``skipped`` and the drawn ``cells`` (op indices per type)."""
        x, y = self._batch("train_batch", train_batch)
        self.model.train()
        weights = self.weight_parameters()
        self.weight_optimizer.zero_grad(set_to_none=True)
        with self._autocast(), self._differentiating(weights), self.model.arch.phase(WEIGHTS):
            logits = self.model(x)
        cells = {t: i.tolist() for t, i in self.model.arch.selected.items()}
        loss = self.loss(logits, y)
        applied = self._weight_step(loss, weights)
        if applied:
            self.guard.check_weights([*weights, *self._statistics()], self.epoch,
                                     self.global_step)
            self.guard.applied()
        self.global_step += 1
        return {"train_loss": loss.item(), "train_acc": accuracy(logits, y), "lr": self.lr,
                "skipped": not applied, "cells": cells}

    # -- the search ---------------------------------------------------------------------------
    @staticmethod
    def epoch_summary(record: Mapping[str, Any]) -> str:
        return (f"train loss {record['train_loss']:.3f} acc {record['train_acc']:.3f} (uniform "
                f"cells, epoch means)  lr {record['lr']:.4f}  {record['seconds']:.1f}s")

    def _search(self, train_loader: Iterable, val_loader: Iterable, callback, on_step):
        """Train the weights on uniform cells for the remaining epochs, then ``rank``."""
        space = self.space
        if self.epoch < self.total_epochs:
            self.ranking = []  # more training: the earlier ranking no longer holds
        uniform = [[1.0 / len(space.ops)] * len(space.ops)] * space.num_edges

        def run_epoch(epoch: int) -> Dict[str, Any]:
            self._set_lr(cosine_lr(epoch, self.total_epochs, self.config.learning_rate_w,
                                   self.config.lr_min))
            self.model.set_epoch(epoch, self.total_epochs)
            means = {k: RunningMean() for k in ("train_loss", "train_acc")}
            steps = 0
            for batch in train_loader:
                stats = self.step(batch)
                steps += 1
                if not stats["skipped"]:
                    for k in means:
                        means[k].add(stats[k], len(batch[1]))
                if on_step is not None:
                    on_step(self, stats)
            if steps == 0:
                raise ValueError("train_loader yielded no batches")
            distributed.average_buffers(self.model)
            return {"lr": self.lr, "steps": steps, "skipped_steps": self.guard.skipped,
                    **{k: m.reduced().value for k, m in means.items()},
                    **{f"alphas_{t}": uniform for t in space.cell_types},
                    "alphas_what": "uniform sampling probability of each op (RSPS trains no "
                                   "alphas; its cell is chosen by the final ranking)"}

        run_epochs(self, run_epoch, callback)
        if self.epoch >= self.total_epochs:
            self.rank(val_loader)
        return self.genotype()

    def draw_cells(self, n: int) -> List[Dict[str, List[int]]]:
        """The selection's ``n`` uniform cells ``{cell type: op indices}`` (the first ``n`` of
        one sequence: ``draw_cells(m)[:n] == draw_cells(n)``)."""
        space = self.space
        generator = torch.Generator()
        generator.manual_seed(self.select_seed)
        return [{t: torch.randint(len(space.ops), (space.num_edges,),
                                  generator=generator).tolist()
                 for t in space.cell_types} for _ in range(n)]

    def score(self, cells: Mapping[str, Any], loader: Iterable) -> float:
        """Accuracy of the fixed cell ``cells`` with the shared weights on ``loader`` (its first
        ``select_batches`` batches), in eval mode; leaves the cell held."""
        hold_cell(self.model.arch, cells)
        batches = self.config.select_batches
        data = loader if batches is None else itertools.islice(loader, batches)
        return self.evaluate(data)["accuracy"]

    def rank(self, loader: Iterable, n: Optional[int] = None) -> List[Dict[str, Any]]:
        """The selection (module docstring): score ``n`` (default ``select_num``) uniform
        cells on ``loader`` (the same batches for each: a loader that yields the same batches
        on every pass, as fastnas' loaders within an epoch), hold the best, and return
        ``ranking`` (best first; ties keep the drawing order)."""
        n = self.config.select_num if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        scored = []
        for cells in self.draw_cells(n):
            accuracy_ = self.score(cells, loader)
            scored.append({"cells": cells, "architecture": str(self.genotype()),
                           "accuracy": accuracy_})
        self.ranking = sorted(scored, key=lambda r: -r["accuracy"])  # stable: first drawn wins
        hold_cell(self.model.arch, self.ranking[0]["cells"])
        return self.ranking

    def held(self) -> Dict[str, tuple]:
        """The cell the supernet holds (op indices per cell type)."""
        return held_cell(self.model.arch)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state.update(describe("search", "rsps"))
        state["select_seed"] = self.select_seed
        state["ranking"] = self.ranking
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_kind(state, "search", "rsps")
        if "select_seed" not in state:
            raise ValueError("not an RSPSOptimizer state: missing ['select_seed']")
        super().load_state_dict({**state, **describe("search", "darts")})
        self.select_seed = int(state["select_seed"])
        self.ranking = list(state.get("ranking", []))


__all__ = ["RSPSConfig", "RSPSOptimizer"]
