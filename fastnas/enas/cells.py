"""ENAS over a cell space: one controller decision per edge, the op of that edge, as the
NAS-Bench-201 paper's ENAS baseline (xautodl ``search_model_enas.py``, ``ENAS.py``,
``ENAS.config``).

The search space is a ``fastnas.space.CellSpace`` (NB201: one cell type, 6 edges, 5 ops; the
DARTS space: two cell types of 14 edges each, every edge kept). A *cell* is ``{cell type: op
index per edge}``; the architecture is the space's derivation of its one-hot strengths
(``CellSpace.derive``: NB201 gives the benchmark cell; the DARTS space keeps its usual top-2
edges per node). The shared weights are a supernet of the space whose relaxation is
``fastnas.space.Fixed``: it runs the cell its alphas hold, with exact one-hot weights (the alphas
are never trained; they hold the cell of the next forward pass).

Controller (``CellController``, xautodl's ``Controller``): a ``controller_layers``-layer LSTM of
``controller_hidden`` units, a learned start input, per decision ``t`` (cell types in order, then
edges in row order)

    l_t = tanh_constant * tanh((W h_t + b) / temperature),   a_t ~ softmax(l_t),

and the next input is the embedding of ``a_t``. xautodl: 2 layers, 32 units, tanh constant 2.5,
temperature 5; the start input, the first layer's LSTM weights, the embedding and ``W`` start
uniform in [-0.1, 0.1], the rest at PyTorch's defaults, as there.

Each epoch: one pass over the training data, each step an SGD step (Nesterov, weight gradient
norm clipped) of the shared weights on a cell the controller samples, in train mode; then
``controller_steps`` controller updates, each from ``controller_aggregate`` sampled cells, each
scored on the next validation batch with the shared weights in eval mode (xautodl:
``shared_cnn.eval()``; BatchNorm then uses running statistics where the supernet tracks them, as
the DARTS supernet does, and the batch's where it does not, as NB201's search supernet).
REINFORCE with reward ``R`` (the accuracy, a fraction) and the sampled cell's summed decision
entropy ``H`` (detached):

    R' = R + entropy_weight * H
    b  <- b - (1 - baseline_decay) * (b - R')     per sample, before use; b starts at the first R'
    loss = (1 / aggregate) * sum_i -(R'_i - b_i) * sum_t log p(a_t)

then the controller gradient norm clipped at ``controller_grad_clip`` and one Adam step (lr
``controller_lr``, betas (0, 0.999), eps 1e-3). This is the ENAS paper's moving average, as
``fastnas.enas.ENASOptimizer``. xautodl's ``ENAS.py`` differs: (1) its baseline moves once per
epoch: every sample ``i`` of an epoch uses ``b_i = b_e - (1 - d) (b_e - R'_i)`` from the last
value ``b_e`` of the previous epoch, so its advantage is ``d (R'_i - b_e)``, and in the first
epoch ``b_i = R_i``, which leaves only the entropy bonus as the advantage; (2) its entropy term
keeps its gradient (through ``R'`` and ``b``).

The shared learning rate per epoch ``e``: ``lr_min + (shared_lr - lr_min) * (1 + cos(pi * e /
T)) / 2`` with ``T = lr_period`` (xautodl's ``T_max=10``: the cosine runs on past ``T``, a
period of ``2T`` epochs), or ``T`` = the number of epochs when ``lr_period`` is None.

At the end, ``derive_samples`` cells are sampled and each scored on the same validation batches
(the next ``derive_batches``); the best is the answer (ties: the first sampled). xautodl scores
each candidate on a different batch; one set of batches compares them on the same data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..checkpoint import Resumable, check_kind, check_tensors_fit, describe
from ..config import LoopConfig, choice, device, flag, integer, number
from ..engine import (
    Batch,
    BatchStream,
    NonFiniteGuard,
    RunningMean,
    accuracy,
    check_batch,
    check_epochs,
    console_progress,
    cosine_lr,
    grad_norm,
    run_epochs,
    to_device,
)
from ..limits import SUPERNET_EDGE_WEIGHTS, check_network, supernet_edges
from ..reproducibility import get_rng_state, resolve_device, seed_everything, set_rng_state
from ..space import WEIGHTS, CellSpace, Fixed, darts_space, held_cell, hold_cell
from ..supernet import SUPERNETS, build_supernet, check_kernels
from .controller import ControllerPass, Decisions

CELL_ENAS_SPACES = ("darts", "nb201")
Cells = Dict[str, List[int]]


@dataclass
class CellENASConfig(LoopConfig):
    """ENAS over a cell space (module docstring); defaults are xautodl's NB201 ENAS settings
    (``ENAS.config``: 310 epochs, batch 128, shared lr 0.05 to 0.0005 with ``T_max`` 10, weight
    decay 2.5e-4, Nesterov momentum 0.9, clip 5; controller Adam 1e-3, entropy weight 1e-4,
    baseline decay 0.99, 50 updates of 20 samples per epoch, 100 final samples).

    ``space``: ``darts`` (the DARTS cell space of ``num_nodes``) or ``nb201`` (needs
    ``fastnas.nb201.nb201_space``); ``supernet``, ``channels``, ``layers``: the supernet
    (``layers``: the DARTS supernet's cells, default 8; NB201: ``N``, the search cells per
    stage, default 5). ``nesterov``: Nesterov momentum for the shared weights.
    """

    space: str = choice("darts", CELL_ENAS_SPACES)
    supernet: str = choice("fast", SUPERNETS)
    channels: int = integer(16, low=1)
    layers: Optional[int] = integer(None, low=1)
    num_nodes: int = integer(4, low=1, high=16)
    num_classes: int = integer(10, low=2)
    in_channels: int = integer(3, low=1)
    batch_size: int = integer(128, low=1)
    num_steps: int = integer(310, low=1)
    seed: Optional[int] = integer(2, low=0, optional=True)
    device: str = device("auto")
    # controller
    controller_hidden: int = integer(32, low=1)
    controller_layers: int = integer(2, low=1, high=8)
    tanh_constant: float = number(2.5, low=0, low_open=True)
    temperature: Optional[float] = number(5.0, low=0, low_open=True, optional=True)
    controller_lr: float = number(1e-3, low=0, low_open=True)
    controller_steps: int = integer(50, low=0)
    controller_aggregate: int = integer(20, low=1)
    controller_grad_clip: Optional[float] = number(5.0, low=0, low_open=True, optional=True)
    entropy_weight: float = number(1e-4, low=0)
    baseline_decay: float = number(0.99, low=0, high=1, high_open=True)
    # shared weights
    shared_lr: float = number(0.05, low=0, low_open=True)
    lr_min: float = number(0.0005, low=0, high="shared_lr")
    lr_period: Optional[int] = integer(10, low=1, optional=True)
    momentum: float = number(0.9, low=0, high=1, high_open=True)
    nesterov: bool = flag(True)
    weight_decay: float = number(2.5e-4, low=0)
    grad_clip: Optional[float] = number(5.0, low=0, low_open=True, optional=True)
    derive_samples: int = integer(100, low=1)
    derive_batches: int = integer(1, low=1)

    def resolve_defaults(self) -> None:
        if self.layers is None:
            self.layers = 5 if self.space == "nb201" else 8

    def validate(self) -> None:
        if self.space == "nb201":  # 3 x N cells of 3 nodes, 6 edges of 10 C^2 weights each
            check_network(self.channels, 3 * self.layers, 3, 6, 10, "the NB201 supernet",
                          self.num_classes, self.in_channels,
                          layers_name="3 x layers (the NB201 search cells)")
        else:
            if self.layers < 3:
                raise ValueError(f"layers must be >= 3, got {self.layers} (the DARTS "
                                 "supernet's two reduction cells and a normal cell)")
            check_network(self.channels, self.layers, self.num_nodes,
                          supernet_edges(self.num_nodes), SUPERNET_EDGE_WEIGHTS,
                          "the DARTS supernet", self.num_classes, self.in_channels)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0")


def cell_space(config: CellENASConfig) -> CellSpace:
    """The config's space: the DARTS space of ``num_nodes``, or NB201's."""
    if config.space == "darts":
        return darts_space(config.num_nodes)
    from .. import nb201

    factory = getattr(nb201, "nb201_space", None)
    if factory is None:
        raise ValueError("space='nb201' needs fastnas.nb201.nb201_space, which this fastnas "
                         "does not have")
    return factory()


def cell_supernet(config: CellENASConfig, space: CellSpace) -> nn.Module:
    """The shared weights: the supernet of ``space`` running the cell its alphas hold."""
    return build_supernet(config.supernet, C=config.channels, num_classes=config.num_classes,
                          layers=config.layers, num_nodes=space.num_nodes,
                          in_channels=config.in_channels, space=space, relaxation=Fixed())


class CellController(nn.Module):
    """xautodl's NB201 ENAS controller (module docstring): ``num_decisions`` decisions of
    ``num_ops`` options each, from a stacked LSTM. ``forward(forced=None, greedy=False,
    generator=None)`` returns a ``ControllerPass`` (sampled, greedy or teacher-forced)."""

    def __init__(self, num_decisions: int, num_ops: int, hidden: int = 32, layers: int = 2,
                 tanh_constant: float = 2.5, temperature: Optional[float] = 5.0):
        super().__init__()
        self.num_decisions, self.num_ops = num_decisions, num_ops
        self.tanh_constant, self.temperature = tanh_constant, temperature
        self.input_vars = nn.Parameter(torch.empty(1, 1, hidden))
        self.lstm = nn.LSTM(input_size=hidden, hidden_size=hidden, num_layers=layers)
        self.w_embd = nn.Embedding(num_ops, hidden)
        self.w_pred = nn.Linear(hidden, num_ops)
        for p in (self.input_vars, self.lstm.weight_hh_l0, self.lstm.weight_ih_l0,
                  self.w_embd.weight, self.w_pred.weight):
            nn.init.uniform_(p, -0.1, 0.1)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """``tanh_constant * tanh(w_pred(out) / temperature)``, ``[1, num_ops]``."""
        logits = self.w_pred(out.view(1, -1))
        if self.temperature is not None:
            logits = logits / self.temperature
        return self.tanh_constant * torch.tanh(logits)

    def forward(self, forced: Optional[Sequence[int]] = None, greedy: bool = False,
                generator: Optional[torch.Generator] = None) -> ControllerPass:
        decisions = Decisions(forced, greedy, generator)
        inputs, state = self.input_vars, None
        for _ in range(self.num_decisions):
            out, state = self.lstm(inputs, state)
            op = decisions.take(self.logits(out))
            inputs = self.w_embd(op).view(1, 1, -1)
        return decisions.finish(torch.zeros((), dtype=self.input_vars.dtype))


class CellENASOptimizer(Resumable):
    """ENAS over a cell space as one object (module docstring): ``ask``/``tell``, ``step``,
    ``train_controller``, ``search``, ``derive``, ``evaluate``, ``architecture``,
    ``state_dict``/``load_state_dict``. Cells are ``{cell type: [op index per edge]}``;
    ``architecture_of(cells)`` is the space's architecture. ``space`` overrides the config's.
    """

    checkpoint_kind = ("search", "enas-cells")

    def __init__(self, config: Union[Mapping[str, Any], CellENASConfig, None] = None, *,
                 space: Optional[CellSpace] = None):
        self.config = CellENASConfig.from_dict(config)
        cfg = self.config
        if cfg.seed is not None:
            seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.generator = torch.Generator()  # the controller's samples, on every rank the same
        if cfg.seed is not None:
            self.generator.manual_seed(cfg.seed)
        else:
            self.generator.seed()
        self.space = cell_space(cfg) if space is None else space
        self.kernels = check_kernels(cfg.supernet, self.device)
        self.model = cell_supernet(cfg, self.space).to(self.device)
        self.controller = CellController(len(self.space.cell_types) * self.space.num_edges,
                                         len(self.space.ops), cfg.controller_hidden,
                                         cfg.controller_layers, cfg.tanh_constant,
                                         cfg.temperature)
        self.shared_optimizer = torch.optim.SGD(self.model.weights(), lr=cfg.shared_lr,
                                                momentum=cfg.momentum,
                                                nesterov=cfg.nesterov,
                                                weight_decay=cfg.weight_decay)
        self.controller_optimizer = torch.optim.Adam(self.controller.parameters(),
                                                     lr=cfg.controller_lr, betas=(0.0, 0.999),
                                                     eps=1e-3)
        self.baseline: Optional[float] = None
        self.total_epochs = cfg.num_steps
        self.epoch = 0
        self.global_step = 0
        self.controller_step = 0
        self.lr = self.lr_at(0)
        self._set_lr(self.lr)
        self.history: List[Dict[str, Any]] = []
        self.derived: Optional[Cells] = None
        self.guard = NonFiniteGuard(cfg.on_nonfinite, cfg.max_nonfinite_skips)
        self.val_stream: Optional[BatchStream] = None
        self._val_position = (0, 0)

    # -- cells ----------------------------------------------------------------------------------
    def choices(self, cells: Mapping[str, Sequence[int]]) -> List[int]:
        """The controller's flat decisions for ``cells``; a ValueError if they do not fit."""
        space = self.space
        if not isinstance(cells, Mapping) or set(cells) != set(space.cell_types):
            raise ValueError(f"a cell is {{cell type: op indices}} for the cell types "
                             f"{list(space.cell_types)}, got {cells!r}")
        flat = []
        for t in space.cell_types:
            index = [int(i) for i in cells[t]]
            if len(index) != space.num_edges or not all(0 <= i < len(space.ops) for i in index):
                raise ValueError(f"a {t} cell is {space.num_edges} op indices in "
                                 f"0..{len(space.ops) - 1}, got {list(cells[t])}")
            flat += index
        return flat

    def _cells(self, choices: Sequence[int]) -> Cells:
        n = self.space.num_edges
        return {t: list(choices[k * n:(k + 1) * n]) for k, t in enumerate(self.space.cell_types)}

    def architecture_of(self, cells: Mapping[str, Sequence[int]]):
        """The space's architecture of ``cells`` (its derivation of their one-hot strengths)."""
        self.choices(cells)
        n = len(self.space.ops)
        return self.space.derive({t: F.one_hot(torch.tensor(list(i)), n).float()
                                  for t, i in cells.items()})

    def architecture(self):
        """The search's answer once ``search`` has derived it, else the controller's greedy
        cell (``ask(greedy=True)``)."""
        return self.architecture_of(self.cells())

    def cells(self) -> Cells:
        """The cells of ``architecture()``."""
        return self.derived if self.derived is not None else self.ask(greedy=True)

    def genotype(self):
        return self.architecture()

    # -- ask / tell -----------------------------------------------------------------------------
    def ask(self, greedy: bool = False) -> Cells:
        """A cell sampled from the controller (``greedy``: the likeliest decision each time)."""
        with torch.no_grad():
            result = self.controller(greedy=greedy, generator=self.generator)
        return self._cells(result.choices)

    def controller_pass(self, cells: Mapping[str, Sequence[int]]) -> ControllerPass:
        """Teacher-force the controller on ``cells``: log-probability (with graph), entropy."""
        return self.controller(forced=self.choices(cells))

    def reinforce_loss(self, cells: Sequence[Mapping[str, Sequence[int]]],
                       rewards: Sequence[float]) -> Tuple[torch.Tensor, float, Dict[str, float]]:
        """The loss of one update (module docstring), the baseline after it and statistics;
        changes nothing (``tell`` applies it)."""
        cfg = self.config
        baseline, terms = self.baseline, []
        stats = {k: 0.0 for k in ("reward", "entropy", "log_prob", "advantage")}
        for cell, reward in zip(cells, rewards):
            result = self.controller_pass(cell)
            total = reward + cfg.entropy_weight * result.entropy.item()
            baseline = total if baseline is None else (
                baseline - (1 - cfg.baseline_decay) * (baseline - total))
            advantage = total - baseline
            terms.append(-advantage * result.log_prob)
            for k, v in (("reward", reward), ("entropy", result.entropy.item()),
                         ("log_prob", result.log_prob.item()), ("advantage", advantage)):
                stats[k] += v / len(cells)
        loss = torch.stack(terms).mean()
        stats.update(controller_loss=loss.item(), baseline=baseline)
        return loss, baseline, stats

    def tell(self, cells, reward) -> Dict[str, float]:
        """One controller update from ``reward`` for ``cells``, or from a list of rewards for a
        list of cells (their losses averaged): REINFORCE, gradient clipping, one Adam step."""
        many = isinstance(cells, (list, tuple))
        cells, rewards = (list(cells), list(reward)) if many else ([cells], [reward])
        if not cells or len(cells) != len(rewards):
            raise ValueError("tell needs as many rewards as cells, at least one")
        for r in rewards:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
                raise ValueError(f"reward must be a finite number, got {r!r}")
        for c in cells:
            self.choices(c)
        loss, baseline, stats = self.reinforce_loss(cells, [float(r) for r in rewards])
        self.controller_optimizer.zero_grad(set_to_none=True)
        if not self._check("controller loss", loss.detach()):
            stats["skipped"] = True
            return stats
        loss.backward()
        params = list(self.controller.parameters())
        clip = self.config.controller_grad_clip
        stats["controller_grad_norm"] = float(
            nn.utils.clip_grad_norm_(params, clip) if clip is not None else grad_norm(params))
        self.controller_optimizer.step()
        self.guard.check_weights(params, self.epoch, self.global_step,
                                 "controller weights after the update")
        self.baseline = baseline
        self.controller_step += 1
        return stats

    # -- shared weights -------------------------------------------------------------------------
    def step(self, train_batch: Batch, cells: Optional[Mapping[str, Sequence[int]]] = None
             ) -> Dict[str, Any]:
        """One SGD step of the shared weights on ``cells`` (default: a fresh sample), in train
        mode. Returns ``train_loss``, ``train_acc``, ``lr``, ``skipped`` and ``cells``."""
        x, y = self._batch("train_batch", train_batch)
        cells = self.ask() if cells is None else {t: list(i) for t, i in cells.items()}
        self.choices(cells)
        hold_cell(self.model.arch, cells)
        self.model.train()
        weights = list(self.model.weights())
        self.shared_optimizer.zero_grad(set_to_none=True)
        with self.model.arch.phase(WEIGHTS):
            logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        applied = self._shared_step(loss, weights)
        self.global_step += 1
        return {"train_loss": loss.item(), "train_acc": accuracy(logits, y), "lr": self.lr,
                "skipped": not applied, "cells": cells}

    def _shared_step(self, loss: torch.Tensor, weights: List[nn.Parameter]) -> bool:
        if not self._check("train loss", loss.detach()):
            return False
        loss.backward(inputs=weights)
        distributed.average_gradients(weights)
        clip = self.config.grad_clip
        norm = nn.utils.clip_grad_norm_(weights, clip) if clip is not None else grad_norm(weights)
        if not self._check("weight gradient norm", norm):
            self.shared_optimizer.zero_grad(set_to_none=True)
            return False
        self.shared_optimizer.step()
        self.guard.check_weights(weights, self.epoch, self.global_step)
        self.guard.applied()
        return True

    def _check(self, quantity: str, value) -> bool:
        return self.guard.ok(quantity, value, self.epoch, self.global_step)

    def reward(self, cells: Mapping[str, Sequence[int]], val_batch: Batch) -> float:
        """Accuracy of ``cells`` on ``val_batch`` with the shared weights, in eval mode (under
        torchrun: over every rank's shard, so every rank gets the same reward)."""
        return self.evaluate([val_batch], cells)["accuracy"]

    def train_controller(self, val_batches: Iterable[Batch]) -> Dict[str, float]:
        """One controller update: ``controller_aggregate`` sampled cells, each rewarded on the
        next batch of ``val_batches``, then ``tell``."""
        batches = iter(val_batches)
        cells = [self.ask() for _ in range(self.config.controller_aggregate)]
        rewards = [self.reward(c, next(batches)) for c in cells]
        return self.tell(cells, rewards)

    # -- the search -----------------------------------------------------------------------------
    def lr_at(self, epoch: int) -> float:
        """The shared learning rate of ``epoch`` (module docstring)."""
        cfg = self.config
        period = self.total_epochs if cfg.lr_period is None else cfg.lr_period
        return cosine_lr(epoch, period, cfg.shared_lr, cfg.lr_min)

    def _set_lr(self, lr: float) -> None:
        self.lr = lr
        for group in self.shared_optimizer.param_groups:
            group["lr"] = lr

    def _batch(self, name: str, batch) -> Batch:
        cfg = self.config
        return to_device(check_batch(name, batch, cfg.in_channels, cfg.num_classes), self.device)

    @staticmethod
    def epoch_summary(record: Mapping[str, Any]) -> str:
        return (f"train loss {record['train_loss']:.3f} acc {record['train_acc']:.3f} (epoch "
                f"mean)  val reward {record['val_acc']:.3f} (sampled cells' accuracy, eval "
                f"mode)  lr {record['lr']:.4f}  {record['seconds']:.1f}s")

    def search(self, train_loader: Iterable, val_loader: Iterable, epochs: Optional[int] = None,
               callback: Optional[Callable[[Any, dict], Optional[bool]]] = None,
               on_step: Optional[Callable[[Any, dict], None]] = None,
               progress: Union[bool, str] = True):
        """Run until ``epochs`` epochs (default ``num_steps``) are complete, then ``derive`` and
        return the answer's architecture. Continues from ``self.epoch``. Each epoch's record
        (shared loss and accuracy, controller reward, baseline, entropy, the greedy cell, its
        per-edge probabilities as ``alphas_<cell type>``, seconds) goes to ``history`` and
        ``callback`` (False stops); ``on_step`` after every shared step; ``progress`` as
        ``DARTSOptimizer.search``."""
        if epochs is not None:
            self.total_epochs = check_epochs(epochs)
        with console_progress(self, "search", progress, train_loader, callback,
                              on_step) as (callback, on_step):
            return self._search(train_loader, val_loader, callback, on_step)

    def _search(self, train_loader, val_loader, callback, on_step):
        self.val_stream = val_batches = BatchStream(val_loader, "val_loader")
        val_batches.restore(self._val_position)
        space = self.space
        if self.epoch < self.total_epochs:
            self.derived = None  # more training: the earlier answer no longer holds

        def run_epoch(epoch: int) -> Dict[str, Any]:
            self._set_lr(self.lr_at(epoch))
            shared = {k: RunningMean() for k in ("train_loss", "train_acc")}
            steps = 0
            for batch in train_loader:
                stats = self.step(batch)
                steps += 1
                if not stats["skipped"]:
                    for k, m in shared.items():
                        m.add(stats[k], len(batch[1]))
                if on_step is not None:
                    on_step(self, stats)
            if steps == 0:
                raise ValueError("train_loader yielded no batches")
            distributed.average_buffers(self.model)
            ctrl: Dict[str, RunningMean] = {}
            for _ in range(self.config.controller_steps):
                stats = self.train_controller(val_batches)
                if stats.pop("skipped", False):
                    continue
                for k, v in stats.items():
                    ctrl.setdefault(k, RunningMean()).add(v, 1)
            with torch.no_grad():  # greedy: draws no random numbers
                greedy = self.controller(greedy=True, generator=self.generator)
            probs = greedy.probabilities
            n = space.num_edges
            return {"lr": self.lr, "steps": steps, "skipped_steps": self.guard.skipped,
                    **{k: m.reduced().value for k, m in shared.items()},
                    "controller_steps": self.config.controller_steps,
                    **{k: m.value for k, m in ctrl.items() if k != "baseline"},
                    "val_acc": ctrl["reward"].value if ctrl else float("nan"),
                    "baseline": self.baseline if self.baseline is not None else float("nan"),
                    "arch": str(self.architecture_of(self._cells(greedy.choices))),
                    "cells": self._cells(greedy.choices),
                    **{f"alphas_{t}": probs[k * n:(k + 1) * n]
                       for k, t in enumerate(space.cell_types)},
                    "alphas_what": "controller probability of each op per edge (greedy pass)"}

        run_epochs(self, run_epoch, callback)
        if self.epoch >= self.total_epochs:
            self.derived = self.derive(val_data=[next(val_batches)
                                                 for _ in range(self.config.derive_batches)])
        return self.architecture()

    def derive(self, n: Optional[int] = None, val_data=None) -> Cells:
        """Sample ``n`` cells (default ``derive_samples``) and return the best: by accuracy with
        the shared weights on ``val_data`` (a list of batches, the same for every cell), or,
        without data, by controller log-probability. Ties go to the first sampled."""
        n = self.config.derive_samples if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        candidates = [self.ask() for _ in range(n)]
        if val_data is None:
            with torch.no_grad():
                scores = [self.controller_pass(c).log_prob.item() for c in candidates]
        else:
            batches = list(val_data)
            if not batches:
                raise ValueError("val_data yielded no batches")
            scores = [self.evaluate(batches, c)["accuracy"] for c in candidates]
        return candidates[max(range(n), key=lambda i: (scores[i], -i))]

    @torch.no_grad()
    def evaluate(self, loader: Iterable, cells: Optional[Mapping[str, Sequence[int]]] = None
                 ) -> Dict[str, float]:
        """Loss and accuracy on ``loader`` of ``cells`` (default: ``cells()``, the answer) with
        the shared weights, in eval mode (under torchrun: over every rank's shard)."""
        cells = self.cells() if cells is None else cells
        self.choices(cells)
        hold_cell(self.model.arch, cells)
        self.model.eval()
        loss, acc = RunningMean(), RunningMean()
        try:
            for batch in loader:
                x, y = self._batch("batch", batch)
                logits = self.model(x)
                loss.add(F.cross_entropy(logits, y).item(), len(y))
                acc.add(accuracy(logits, y), len(y))
        finally:
            self.model.train()
        loss, acc = loss.reduced(), acc.reduced()
        if acc.count == 0:
            raise ValueError("the evaluation loader yielded no batches")
        return {"loss": loss.value, "accuracy": acc.value}

    def held(self) -> Dict[str, tuple]:
        """The cell the supernet holds now."""
        return held_cell(self.model.arch)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Controller, shared weights, both optimizers, baseline, counters, the validation
        stream's position and every RNG: a loaded optimizer continues exactly."""
        return {
            **describe("search", "enas-cells"),
            "config": self.config.to_dict(),
            "controller": self.controller.state_dict(),
            "model": self.model.state_dict(),
            "controller_optimizer": self.controller_optimizer.state_dict(),
            "shared_optimizer": self.shared_optimizer.state_dict(),
            "baseline": self.baseline,
            "epoch": self.epoch,
            "total_epochs": self.total_epochs,
            "global_step": self.global_step,
            "controller_step": self.controller_step,
            "lr": self.lr,
            "rng": get_rng_state(),
            "controller_rng": self.generator.get_state(),
            "val_position": list(self.val_stream.position if self.val_stream is not None
                                 else self._val_position),
            "derived": self.derived,
            "nonfinite": self.guard.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s output; another kind of state, or tensors that do not fit,
        raise a ValueError that says which."""
        check_kind(state, "search", "enas-cells")
        missing = [k for k in ("controller", "model", "controller_optimizer", "shared_optimizer",
                               "epoch", "rng", "controller_rng") if k not in state]
        if missing:
            raise ValueError(f"not a CellENASOptimizer state: missing {missing}")
        check_tensors_fit(self.controller, state["controller"], "the checkpoint's controller")
        check_tensors_fit(self.model, state["model"])
        self.controller.load_state_dict(state["controller"])
        self.model.load_state_dict(state["model"])
        self.controller_optimizer.load_state_dict(state["controller_optimizer"])
        self.shared_optimizer.load_state_dict(state["shared_optimizer"])
        baseline = state.get("baseline")
        self.baseline = None if baseline is None else float(baseline)
        self.epoch = int(state["epoch"])
        self.total_epochs = int(state.get("total_epochs", self.total_epochs))
        self.global_step = int(state.get("global_step", 0))
        self.controller_step = int(state.get("controller_step", 0))
        self._set_lr(float(state.get("lr", self.lr)))
        self.history = list(state.get("history", []))
        derived = state.get("derived")
        self.derived = None if derived is None else {t: list(i) for t, i in derived.items()}
        set_rng_state(state["rng"])
        self.generator.set_state(state["controller_rng"])
        self._val_position = tuple(state.get("val_position", (0, 0)))
        self.val_stream = None
        self.guard.load_state_dict(state.get("nonfinite", {}))


__all__ = ["CELL_ENAS_SPACES", "CellController", "CellENASConfig", "CellENASOptimizer",
           "cell_space", "cell_supernet"]
