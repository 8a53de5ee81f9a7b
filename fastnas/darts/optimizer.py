"""``DARTSOptimizer``: the DARTS search (Liu et al., ICLR 2019) as one object.

Each step alternates as the paper: an Adam step on the alphas from a validation batch (first or
second order, see ``fastnas.darts.architect``), then an SGD step on the weights from a training
batch with the weight gradient norm clipped. The weight learning rate follows a per-epoch cosine:

    lr(e) = lr_min + (lr - lr_min) * (1 + cos(pi * e / T)) / 2,   e = 0 .. T - 1.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .. import distributed
from ..checkpoint import Resumable, check_kind, check_tensors_fit, describe
from ..engine import (
    Batch,
    NonFiniteGuard,
    RunningMean,
    accuracy,
    check_batch,
    check_epochs,
    console_progress,
    cosine_lr,
    grad_norm,
    paired,
    run_epochs,
    to_device,
)
from ..genotypes import Genotype
from ..reproducibility import get_rng_state, resolve_device, seed_everything, set_rng_state
from ..space import WEIGHTS, CellSpace, Relaxation
from ..supernet import build_supernet, check_kernels
from ..supernet.compiled import compile_supernet, differentiating
from .architect import Architect, cross_entropy
from .config import DARTSConfig, space_with_primitives
from .precision import Precision


class DARTSOptimizer(Resumable):
    """DARTS search as a drop-in object: ``step``, ``search``, ``genotype``, ``ask``/``tell``.

    ``config`` is a dict with the keys of :class:`DARTSConfig` (or a DARTSConfig). A method
    built on DARTS passes its parts instead of subclassing: ``space`` (a
    ``fastnas.space.CellSpace``, default the DARTS space of ``num_nodes``), ``relaxation``
    (default ``Softmax``) and ``loss(logits, y)`` (default cross-entropy), which both the
    architecture and the weight step minimize (the architecture step adds the relaxation's
    penalty). As a search strategy it answers ``architecture()`` (the genotype derived from
    the current alphas) and ``evaluate(loader)`` (the supernet's loss and accuracy), like
    ``ENASOptimizer``.
    """

    checkpoint_kind = ("search", "darts")

    def __init__(self, config: Union[Mapping[str, Any], DARTSConfig, None] = None, *,
                 space: Optional[CellSpace] = None, relaxation: Optional[Relaxation] = None,
                 loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None):
        self.config = DARTSConfig.from_dict(config)
        cfg = self.config
        if space is not None and space.num_nodes != cfg.num_nodes:
            raise ValueError(f"the space has {space.num_nodes} nodes but num_nodes is "
                             f"{cfg.num_nodes}; set num_nodes={space.num_nodes}")
        if cfg.seed is not None:
            seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.precision = Precision(cfg.precision, self.device)
        self.dtype = self.precision.param_dtype
        self.kernels = check_kernels(cfg.supernet, self.device, self.dtype, cfg.required_kernels)
        space = space_with_primitives(cfg, space)  # the ``primitives`` key (issue 20)
        self.model = build_supernet(
            cfg.supernet, C=cfg.channels, num_classes=cfg.num_classes, layers=cfg.layers,
            num_nodes=cfg.num_nodes, in_channels=cfg.in_channels,
            checkpointing=cfg.checkpointing, space=space,
            relaxation=relaxation).to(self.device, self.dtype)
        self.loss = cross_entropy if loss is None else loss
        if cfg.compile:
            compile_supernet(self.model, cfg.compile_mode)
        self.weight_optimizer = torch.optim.SGD(self.model.weights(), lr=cfg.learning_rate_w,
                                                momentum=cfg.momentum,
                                                weight_decay=cfg.weight_decay)
        self.guard = NonFiniteGuard(cfg.on_nonfinite, cfg.max_nonfinite_skips)
        self.architect = Architect(self.model, lr=cfg.learning_rate_alpha, betas=(0.5, 0.999),
                                   weight_decay=cfg.arch_weight_decay, order=cfg.order,
                                   momentum=cfg.momentum, network_weight_decay=cfg.weight_decay,
                                   hessian_r=cfg.hessian_r, autocast=self._autocast,
                                   loss_scale=self.precision.loss_scale, check=self._check,
                                   loss=self.loss)
        self.total_epochs = cfg.num_steps
        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.lr = cosine_lr(0, self.total_epochs, cfg.learning_rate_w, cfg.lr_min)
        self._set_lr(self.lr)
        self.history: List[Dict[str, Any]] = []
        self.told: List[Tuple[Genotype, float]] = []

    # -- parameters and the architecture ------------------------------------------------------
    def arch_parameters(self) -> List[nn.Parameter]:
        """``[alphas_normal, alphas_reduce]``."""
        return self.model.alphas()

    def weight_parameters(self) -> List[nn.Parameter]:
        return list(self.model.weights())

    def genotype(self) -> Genotype:
        """The genotype derived from the current alphas (the paper's rule)."""
        return self.model.genotype()

    def architecture(self) -> Genotype:
        """The search's current answer: ``genotype()``."""
        return self.genotype()

    def _autocast(self):
        return self.precision.autocast()

    def _differentiating(self, params, applies: bool = True):
        """Compiled: only ``params`` require grad inside (``supernet.compiled``)."""
        if not (self.config.compile and applies):
            return contextlib.nullcontext()
        return differentiating(self.model, params)

    def _check(self, quantity: str, value) -> bool:
        return self.guard.ok(quantity, value, self.epoch, self.global_step)

    def _set_lr(self, lr: float):
        self.lr = lr
        for group in self.weight_optimizer.param_groups:
            group["lr"] = lr

    def _batch(self, name: str, batch) -> Batch:
        cfg = self.config
        return to_device(check_batch(name, batch, cfg.in_channels, cfg.num_classes),
                         self.device, self.dtype)

    # -- one step -----------------------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Batch) -> Dict[str, float]:
        """Architecture step on ``val_batch``, then weight step on ``train_batch``.

        Returns ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (of the loss the
        architecture step minimized), ``lr`` and ``skipped`` (True when a non-finite value made
        ``on_nonfinite='skip'`` drop an update). Raises ``NonFiniteError`` under ``'stop'``.
        """
        train_batch = self._batch("train_batch", train_batch)
        val_batch = self._batch("val_batch", val_batch)
        self.model.train()
        with self._differentiating(self.arch_parameters(), self.config.order == 1):
            val_loss, val_logits, arch_applied = self.architect.step(
                train_batch, val_batch, self.lr, self.weight_optimizer)
        x, y = train_batch
        self.weight_optimizer.zero_grad(set_to_none=True)
        with self._autocast(), self._differentiating(self.weight_parameters()), \
                self.model.arch.phase(WEIGHTS):
            logits = self.model(x)
        loss = self.loss(logits, y)
        weights = self.weight_parameters()
        applied = self._weight_step(loss, weights)
        if applied or arch_applied:
            self.guard.check_weights([*weights, *self.arch_parameters(), *self._statistics()],
                                     self.epoch, self.global_step)
        if applied and arch_applied:
            self.guard.applied()
        self.global_step += 1
        return {
            "train_loss": loss.item(),
            "train_acc": accuracy(logits, y),
            "val_loss": val_loss.item(),
            "val_acc": accuracy(val_logits, val_batch[1]),
            "lr": self.lr,
            "skipped": not (applied and arch_applied),
        }

    def _weight_step(self, loss: torch.Tensor, weights: List[nn.Parameter]) -> bool:
        """SGD on the weights with the gradient norm clipped; False when skipped."""
        clip = self.config.grad_clip
        scaler = self.precision.scaler
        if scaler is not None:  # fp16: scaled backward, unscale before clipping; the scaler
            scaler.scale(loss).backward(inputs=weights)  # skips non-finite gradients itself
            distributed.average_gradients(weights)
            scaler.unscale_(self.weight_optimizer)
            if clip is not None:
                nn.utils.clip_grad_norm_(weights, clip)
            scaler.step(self.weight_optimizer)
            scaler.update()
            return True
        if not self._check("train loss", loss.detach()):
            return False
        loss.backward(inputs=weights)
        distributed.average_gradients(weights)   # under torchrun: the mean over the ranks
        norm = nn.utils.clip_grad_norm_(weights, clip) if clip is not None else grad_norm(weights)
        if not self._check("weight gradient norm", norm):
            self.weight_optimizer.zero_grad(set_to_none=True)
            return False
        self.weight_optimizer.step()
        return True

    def _statistics(self) -> List[torch.Tensor]:
        """The floating-point buffers (BatchNorm running statistics)."""
        return [b for b in self.model.buffers() if b.is_floating_point()]

    # -- the search loop ----------------------------------------------------------------------
    def search(self, train_loader: Iterable, val_loader: Iterable, epochs: Optional[int] = None,
               callback: Optional[Callable[[DARTSOptimizer, dict], Optional[bool]]] = None,
               on_step: Optional[Callable[[DARTSOptimizer, dict], None]] = None,
               progress: Union[bool, str] = True) -> Genotype:
        """Run the search until ``epochs`` epochs (default ``num_steps``) are complete.

        Continues from ``self.epoch``, so a loaded state resumes where it stopped. After each
        epoch a record (losses, accuracies, lr, genotype, the relaxation's strengths of the
        alphas as ``alphas_<cell type>`` and their name as ``alphas_what``, seconds) is
        appended to ``history`` and passed to ``callback(self, record)``; a callback returning
        False stops the search. ``on_step(self, stats)`` is called after every step.
        ``progress``: show the epochs on stderr as ``fastnas search`` does (True: bars on a
        terminal, else one line per epoch, :meth:`epoch_summary`; ``"lines"``: one line per
        epoch, as ``--quiet``; False: silent).
        """
        if epochs is not None:
            self.total_epochs = check_epochs(epochs)
        with console_progress(self, "search", progress, train_loader, callback,
                              on_step) as (callback, on_step):
            return self._search(train_loader, val_loader, callback, on_step)

    @staticmethod
    def epoch_summary(record: Mapping[str, Any]) -> str:
        """An epoch record in one line, each number saying how it was measured."""
        return (f"train loss {record['train_loss']:.3f} acc {record['train_acc']:.3f}  val loss "
                f"{record['val_loss']:.3f} acc {record['val_acc']:.3f} (train mode, epoch "
                f"means)  lr {record['lr']:.4f}  {record['seconds']:.1f}s")

    def _search(self, train_loader: Iterable, val_loader: Iterable,
                callback: Optional[Callable[[DARTSOptimizer, dict], Optional[bool]]],
                on_step: Optional[Callable[[DARTSOptimizer, dict], None]]) -> Genotype:
        def run_epoch(epoch: int) -> Dict[str, Any]:
            self._set_lr(cosine_lr(epoch, self.total_epochs, self.config.learning_rate_w,
                                   self.config.lr_min))
            self.model.set_epoch(epoch, self.total_epochs)  # the method's schedules
            means = {k: RunningMean() for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
            steps = 0
            for train_batch, val_batch in paired(train_loader, val_loader):
                stats = self.step(train_batch, val_batch)
                steps += 1
                n_train, n_val = len(train_batch[1]), len(val_batch[1])
                if not stats["skipped"]:
                    for k in means:
                        means[k].add(stats[k], n_train if k.startswith("train") else n_val)
                if on_step is not None:
                    on_step(self, stats)
            if steps == 0:
                raise ValueError("train_loader yielded no batches")
            distributed.average_buffers(self.model)   # one set of BN statistics for every rank
            return {"lr": self.lr, "steps": steps, "skipped_steps": self.guard.skipped,
                    **{k: m.reduced().value for k, m in means.items()},
                    "genotype": str(self.genotype()),
                    **{f"alphas_{t}": w for t, w in self.model.arch.strengths().items()},
                    "alphas_what": self.model.relaxation.what}

        run_epochs(self, run_epoch, callback)
        return self.genotype()

    @torch.no_grad()
    def evaluate(self, loader: Iterable) -> Dict[str, float]:
        """Loss and accuracy of the supernet (current alphas) on ``loader``, in eval mode
        (under torchrun: over every rank's shard)."""
        distributed.average_buffers(self.model)
        self.model.eval()
        loss, acc = RunningMean(), RunningMean()
        try:
            for batch in loader:
                x, y = self._batch("batch", batch)
                with self._autocast():
                    logits = self.model(x)
                loss.add(self.loss(logits, y).item(), len(y))
                acc.add(accuracy(logits, y), len(y))
        finally:
            self.model.train()
        loss, acc = loss.reduced(), acc.reduced()
        if acc.count == 0:
            raise ValueError("the evaluation loader yielded no batches")
        return {"loss": loss.value, "accuracy": acc.value}

    # -- ask / tell ---------------------------------------------------------------------------
    def ask(self) -> Genotype:
        """The architecture derived from the current alphas."""
        return self.genotype()

    def tell(self, genotype: Genotype, score: float) -> None:
        """Record an external score (higher is better) for ``genotype``."""
        if not isinstance(genotype, Genotype):
            raise TypeError(f"genotype must be a fastnas.Genotype, got {type(genotype).__name__}")
        if (isinstance(score, bool) or not isinstance(score, (int, float))
                or not math.isfinite(score)):
            raise ValueError(f"score must be a finite number, got {score!r}")
        self.told.append((genotype, float(score)))

    def best(self) -> Genotype:
        """The told genotype with the highest score (the first one on ties)."""
        if not self.told:
            raise ValueError("no scores told yet: call tell(genotype, score) first")
        return max(self.told, key=lambda gs: gs[1])[0]

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to take the identical next step; safe for ``weights_only`` loads."""
        return {
            **describe("search", "darts"),
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.architect.state_dict(),
            **({"grad_scaler": self.precision.scaler.state_dict()}
               if self.precision.scaler is not None else {}),
            "epoch": self.epoch,
            "total_epochs": self.total_epochs,
            "global_step": self.global_step,
            "lr": self.lr,
            "rng": get_rng_state(),
            "history": self.history,
            "told": [(str(g), s) for g, s in self.told],
            "nonfinite": self.guard.state_dict(),
            "relaxation": self.model.relaxation.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s output; another kind of state, or tensors that do not fit
        this optimizer's config, raise a ValueError that says which."""
        check_kind(state, "search", "darts")
        missing = [k for k in ("model", "weight_optimizer", "arch_optimizer", "epoch", "rng")
                   if k not in state]
        if missing:
            raise ValueError(f"not a DARTSOptimizer state: missing {missing}")
        check_tensors_fit(self.model, state["model"])
        self.model.load_state_dict(state["model"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.architect.load_state_dict(state["arch_optimizer"])
        if self.precision.scaler is not None and "grad_scaler" in state:
            self.precision.scaler.load_state_dict(state["grad_scaler"])
        self.epoch = int(state["epoch"])
        self.total_epochs = int(state.get("total_epochs", self.total_epochs))
        self.global_step = int(state.get("global_step", 0))
        self._set_lr(float(state.get("lr", self.lr)))
        self.history = list(state.get("history", []))
        self.told = [(Genotype.parse(g), float(s)) for g, s in state.get("told", [])]
        self.guard.load_state_dict(state.get("nonfinite", {}))
        self.model.relaxation.load_state_dict(state.get("relaxation", {}))
        set_rng_state(state["rng"])



__all__ = ["DARTSOptimizer"]
