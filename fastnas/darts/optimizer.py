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
    check_pair,
    console_progress,
    cosine_lr,
    grad_norm,
    paired,
    run_epochs,
    to_device,
)
from ..errors import UserError
from ..genotypes import Genotype
from ..nb201 import NB201Cell, is_nb201_space, nb201_space
from ..reproducibility import get_rng_state, resolve_device, seed_everything, set_rng_state
from ..space import WEIGHTS, CellSpace, Relaxation
from ..space.derivation import SKIP
from ..supernet import build_supernet, check_kernels
from ..supernet.compiled import compile_supernet, differentiating
from . import methods
from .architect import Architect, cross_entropy
from .config import DARTSConfig, space_with_primitives
from .model_search import ModelSearch, search_model
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
    ``ENASOptimizer``. With the config key ``space='nb201'`` (issue 19) it searches
    NAS-Bench-201's cell on the NB201 supernet (``fastnas.supernet.build_nb201_supernet``) and
    its architecture is an ``NB201Cell``; ``nesterov`` is the weights' Nesterov momentum (the
    second-order step's virtual step keeps DARTS's plain-momentum formula, as xautodl's).

    ``model``: search the ``fastnas.Choice``/``InputChoice`` modules of your own ``nn.Module``
    instead of the DARTS supernet (``fastnas.darts.model_search``); the supernet's shape keys
    are then ignored, ``genotype()`` is ``export()``, and ``fixed_model()`` gives the result.

    The methods built on DARTS are config keys (``method`` and the keys it presets,
    ``fastnas.darts.methods``): the relaxation, the supernet's partial channels, edge
    normalization and auxiliary skip, the regularizers the architecture step adds
    (``regularizers``), SDARTS' perturbation of the weight step (``perturbation``), the frozen
    warm-up epochs, DARTS+'s early stop (``stopped`` says why the search stopped) and the
    derivation rules; all their state is in ``state_dict``.
    """

    checkpoint_kind = ("search", "darts")

    def __init__(self, config: Union[Mapping[str, Any], DARTSConfig, None] = None, *,
                 space: Optional[CellSpace] = None, relaxation: Optional[Relaxation] = None,
                 loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
                 model: Optional[nn.Module] = None):
        self.config = DARTSConfig.from_dict(config)
        cfg = self.config
        space = self._space(space)
        if space is not None and not is_nb201_space(space) and space.num_nodes != cfg.num_nodes:
            raise ValueError(f"the space has {space.num_nodes} nodes but num_nodes is "
                             f"{cfg.num_nodes}; set num_nodes={space.num_nodes}")
        if cfg.seed is not None:
            seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.precision = Precision(cfg.precision, self.device)
        self.dtype = self.precision.param_dtype
        self.kernels = check_kernels(cfg.supernet, self.device, self.dtype, cfg.required_kernels)
        # the method's parts (fastnas.darts.methods); their noise is seeded from the config
        needs_seed = cfg.perturbation != "none" or (relaxation is None
                                                    and cfg.relaxation != "softmax")
        seed = methods.method_seed(cfg) if needs_seed else 0
        if relaxation is None:
            relaxation = methods.build_relaxation(cfg, seed)
        space = space_with_primitives(cfg, space)  # the ``primitives`` key (issue 20)
        self.user_model = model   # model=: search its Choices (fastnas.darts.model_search)
        if model is not None:
            for key, off in (("perturbation", "none"), ("max_skips", None), ("threshold", None),
                             ("early_stop_skips", None), ("primitives", None)):
                if getattr(cfg, key) != off:
                    raise UserError(f"{key}={getattr(cfg, key)!r} (method {cfg.method!r}) does "
                                    f"not apply to a search inside your model (model=): it reads "
                                    f"the DARTS cell; set {key}={off!r}")
        build = build_supernet if model is None else search_model(model)
        self.model = build(
            cfg.supernet, C=cfg.channels, num_classes=cfg.num_classes, layers=cfg.layers,
            num_nodes=cfg.num_nodes, in_channels=cfg.in_channels,
            checkpointing=cfg.checkpointing, space=space,
            relaxation=relaxation, **methods.supernet_options(cfg)).to(self.device, self.dtype)
        if model is not None:
            distributed.broadcast_(list(self.model.state_dict().values()))  # identical replicas
        self.regularizers = methods.build_regularizers(cfg)
        self.perturbation = methods.build_perturbation(cfg, seed)
        self.model.arch.perturbation = self.perturbation
        derivation = methods.build_derivation(cfg)
        if derivation is not None:
            derivation.check(self.model.space)
        self.model.arch.derivation = derivation
        if cfg.early_stop_skips is not None and SKIP not in self.model.space.ops:
            raise ValueError(f"early_stop_skips counts {SKIP} in the derived normal cell; the "
                             f"space has no such op (its ops: {', '.join(self.model.space.ops)})")
        self.stopped: Optional[str] = None   # why the search stopped early (DARTS+), if it did
        self.loss = cross_entropy if loss is None else loss
        if cfg.compile:
            compile_supernet(self.model, cfg.compile_mode)
        self.weight_optimizer = torch.optim.SGD(self.model.weights(), lr=cfg.learning_rate_w,
                                                momentum=cfg.momentum,
                                                weight_decay=cfg.weight_decay,
                                                nesterov=cfg.nesterov)
        self.guard = NonFiniteGuard(cfg.on_nonfinite, cfg.max_nonfinite_skips)
        self.architect = Architect(self.model, lr=cfg.learning_rate_alpha,
                                   betas=tuple(cfg.arch_betas), regularizers=self.regularizers,
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

    def _space(self, space: Optional[CellSpace]) -> Optional[CellSpace]:
        """The cell space of the config's ``space`` key (issue 19): ``nb201`` is
        ``nb201_space()`` (a space given for it must be that one), ``darts`` the one given."""
        if self.config.space != "nb201":
            if space is not None and is_nb201_space(space):
                raise ValueError("the NB201 space needs the config key space='nb201'")
            return space
        if space is not None and not is_nb201_space(space):
            raise ValueError("space='nb201' searches fastnas.nb201.nb201_space(); the space "
                             "given is another")
        return nb201_space()

    # -- parameters and the architecture ------------------------------------------------------
    def arch_parameters(self) -> List[nn.Parameter]:
        """``[alphas_normal, alphas_reduce]``."""
        return self.model.alphas()

    def weight_parameters(self) -> List[nn.Parameter]:
        return list(self.model.weights())

    def genotype(self) -> Genotype:
        """The genotype derived from the current alphas (the paper's rule); with ``model=``,
        ``export()``."""
        return self.model.genotype()

    def export(self) -> Dict[str, Any]:
        """With ``model=``: ``{choice path: chosen candidate name}`` (an ``InputChoice``: its
        chosen input indices), JSON-able (``fastnas.darts.model_search``)."""
        return self._model_search().export()

    def fixed_model(self) -> nn.Module:
        """With ``model=``: a copy of the model with every choice replaced by its chosen module,
        trainable on its own and ``torch.save``-able."""
        return self._model_search().fixed_model()

    def _check_choices(self, saved) -> None:
        """A ValueError unless a state's choices (None: a supernet search) are this search's."""
        mine = None if self.user_model is None else list(self.model.space.names)
        if saved is None and mine is not None:
            raise ValueError("the state is of a DARTS supernet search, not of a search inside "
                             "your model")
        if saved is not None and mine is None:
            raise ValueError("the state is of a search inside your own model: rebuild it with "
                             "DARTSOptimizer(config, model=net), then load_state_dict(state)")
        if saved is not None and list(saved) != mine:
            raise ValueError(f"the state's choices {list(saved)} are not this model's {mine}")

    def _model_search(self) -> ModelSearch:
        if self.user_model is None:
            raise UserError("export() and fixed_model() answer a search inside your own model "
                            "(DARTSOptimizer(config, model=net)); this one searches the DARTS "
                            "supernet: use genotype()")
        return self.model

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
        if self.user_model is not None:   # the user's model knows its inputs and classes
            return to_device(check_pair(name, batch), self.device, self.dtype)
        return to_device(check_batch(name, batch, cfg.in_channels, cfg.num_classes),
                         self.device, self.dtype)

    # -- one step -----------------------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Batch) -> Dict[str, float]:
        """Architecture step on ``val_batch``, then weight step on ``train_batch``.

        Returns ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (of the loss the
        architecture step minimized; NaN in the ``warmup_epochs``, which skip it: ``frozen``),
        ``lr`` and ``skipped`` (True when a non-finite value made ``on_nonfinite='skip'`` drop
        an update). Raises ``NonFiniteError`` under ``'stop'``. With an SDARTS perturbation the
        weight step mixes with the perturbed weights (``fastnas.darts.perturbation``).
        """
        train_batch = self._batch("train_batch", train_batch)
        val_batch = self._batch("val_batch", val_batch)
        self.model.train()
        frozen = self.frozen
        if frozen:   # warm-up: the alphas stay, the validation batch is not used
            val_loss = val_logits = None
            arch_applied = True
        else:
            with self._differentiating(self.arch_parameters(), self.config.order == 1):
                val_loss, val_logits, arch_applied = self.architect.step(
                    train_batch, val_batch, self.lr, self.weight_optimizer)
        x, y = train_batch
        self.weight_optimizer.zero_grad(set_to_none=True)
        try:
            if self.perturbation is not None and self.perturbation.kind == "adversarial":
                self.perturbation.attack(self.model, train_batch, self.loss, self._autocast)
            with self._autocast(), self._differentiating(self.weight_parameters()), \
                    self.model.arch.phase(WEIGHTS):
                logits = self.model(x)
        finally:
            if self.perturbation is not None:
                self.perturbation.release()
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
            "val_loss": float("nan") if frozen else val_loss.item(),
            "val_acc": float("nan") if frozen else accuracy(val_logits, val_batch[1]),
            "lr": self.lr,
            "skipped": not (applied and arch_applied),
            "frozen": frozen,
        }

    @property
    def frozen(self) -> bool:
        """The alphas are frozen in this epoch (``warmup_epochs``: no architecture step)."""
        return self.epoch < self.config.warmup_epochs

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
        if self.stopped is not None:   # DARTS+ stopped it: it stays stopped
            self.total_epochs = self.epoch
        with console_progress(self, "search", progress, train_loader, callback,
                              on_step) as (callback, on_step):
            return self._search(train_loader, val_loader, callback, on_step)

    @staticmethod
    def epoch_summary(record: Mapping[str, Any]) -> str:
        """An epoch record in one line, each number saying how it was measured."""
        val = ("val: alphas frozen (warm-up)" if record.get("alphas_frozen") else
               f"val loss {record['val_loss']:.3f} acc {record['val_acc']:.3f}")
        return (f"train loss {record['train_loss']:.3f} acc {record['train_acc']:.3f}  {val} "
                f"(train mode, epoch means)  lr {record['lr']:.4f}  {record['seconds']:.1f}s"
                + (f"  {record['stopped']}" if record.get("stopped") else ""))

    def _search(self, train_loader: Iterable, val_loader: Iterable,
                callback: Optional[Callable[[DARTSOptimizer, dict], Optional[bool]]],
                on_step: Optional[Callable[[DARTSOptimizer, dict], None]]) -> Genotype:
        def run_epoch(epoch: int) -> Dict[str, Any]:
            self._set_lr(cosine_lr(epoch, self.total_epochs, self.config.learning_rate_w,
                                   self.config.lr_min))
            self.set_epoch(epoch)  # the method's schedules
            means = {k: RunningMean() for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
            steps = 0
            for train_batch, val_batch in paired(train_loader, val_loader):
                stats = self.step(train_batch, val_batch)
                steps += 1
                n_train, n_val = len(train_batch[1]), len(val_batch[1])
                if not stats["skipped"]:
                    for k in means:
                        if not (stats["frozen"] and k.startswith("val")):
                            means[k].add(stats[k], n_train if k.startswith("train") else n_val)
                if on_step is not None:
                    on_step(self, stats)
            if steps == 0:
                raise ValueError("train_loader yielded no batches")
            distributed.average_buffers(self.model)   # one set of BN statistics for every rank
            frozen = epoch < self.config.warmup_epochs
            genotype = self.genotype()
            record = {"lr": self.lr, "steps": steps, "skipped_steps": self.guard.skipped,
                      **{k: float("nan") if frozen and k.startswith("val")
                         else m.reduced().value for k, m in means.items()},
                      "genotype": str(genotype),
                      **{f"alphas_{t}": w for t, w in self.model.arch.strengths().items()},
                      "alphas_what": self.model.relaxation.what}
            if self.config.warmup_epochs:
                record["alphas_frozen"] = frozen
            stop = self._early_stop(genotype)
            if stop is not None:   # the record and the checkpoint written after it say so
                record["stopped"] = self.stopped = stop
                self.total_epochs = epoch + 1
            return record

        run_epochs(self, run_epoch, callback)
        return self.genotype()

    def set_epoch(self, epoch: int) -> None:
        """The method's schedules at the start of epoch ``epoch`` (0-based): the supernet's
        (relaxation, auxiliary skip), the regularizers' and the perturbation's."""
        self.model.set_epoch(epoch, self.total_epochs)
        for part in [*self.regularizers, self.perturbation]:
            if part is not None:
                part.set_epoch(epoch, self.total_epochs)

    def _early_stop(self, genotype) -> Optional[str]:
        """DARTS+ (Liang et al., 2019): why the search stops after this epoch, or None: the
        derived normal cell holds ``early_stop_skips`` or more skip_connects."""
        limit = self.config.early_stop_skips
        if limit is None:
            return None
        if isinstance(genotype, NB201Cell):   # NB201: its one cell
            cell = [(op, 0) for op in genotype.ops]
        elif isinstance(genotype, Genotype):
            cell = genotype.normal
        else:
            cell = [edge for node in genotype.cells["normal"].nodes for edge in node]
        skips = sum(op == SKIP for op, _ in cell)
        if skips < limit:
            return None
        return (f"DARTS+ early stop after epoch {self.epoch + 1}: the derived normal cell holds "
                f"{skips} {SKIP} (early_stop_skips {limit})")

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
        if not isinstance(genotype, (Genotype, NB201Cell)):
            raise TypeError(f"genotype must be a fastnas.Genotype (or, space='nb201', an "
                            f"NB201Cell), got {type(genotype).__name__}")
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
            **({"choices": list(self.model.space.names)} if self.user_model is not None else {}),
            "regularizers": [r.state_dict() for r in self.regularizers],
            **({"perturbation": self.perturbation.state_dict()}
               if self.perturbation is not None else {}),
            **({"stopped": self.stopped} if self.stopped is not None else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s output; another kind of state, or tensors that do not fit
        this optimizer's config, raise a ValueError that says which."""
        check_kind(state, "search", "darts")
        missing = [k for k in ("model", "weight_optimizer", "arch_optimizer", "epoch", "rng")
                   if k not in state]
        if missing:
            raise ValueError(f"not a DARTSOptimizer state: missing {missing}")
        self._check_choices(state.get("choices"))
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
        self.told = [(NB201Cell.parse(g) if g.lstrip().startswith("|") else Genotype.parse(g),
                      float(s)) for g, s in state.get("told", [])]
        self.guard.load_state_dict(state.get("nonfinite", {}))
        self.model.relaxation.load_state_dict(state.get("relaxation", {}))
        for r, saved in zip(self.regularizers, state.get("regularizers", [])):
            r.load_state_dict(saved)
        if self.perturbation is not None:
            self.perturbation.load_state_dict(state.get("perturbation", {}))
        self.stopped = state.get("stopped")
        set_rng_state(state["rng"])



__all__ = ["DARTSOptimizer"]
