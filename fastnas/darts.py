"""``DARTSOptimizer``: the DARTS search (Liu et al., ICLR 2019) as one object.

Each step alternates as the paper: an Adam step on the alphas from a validation batch (first or
second order, see ``fastnas.architect``), then an SGD step on the weights from a training batch
with the weight gradient norm clipped. The weight learning rate follows a per-epoch cosine:

    lr(e) = lr_min + (lr - lr_min) * (1 + cos(pi * e / T)) / 2,   e = 0 .. T - 1.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .architect import Architect
from .config import DARTSConfig
from .fast_supernet import CheckpointedNetwork, FastNetwork, resolve_backend
from .genotypes import Genotype
from .precision import Precision
from .reproducibility import get_rng_state, resolve_device, seed_everything, set_rng_state
from .supernet import Network

Batch = Tuple[torch.Tensor, torch.Tensor]


def build_supernet(config: DARTSConfig, device: Optional[torch.device] = None) -> nn.Module:
    """The supernet for ``config.backend`` on ``device`` (default: ``config.device``).

    Every backend shares the reference's parameters, ``state_dict`` and, for a given seed, its
    initialization: ``reference`` is ``fastnas.supernet.Network`` (cells recomputed in backward
    when ``config.checkpointing``), ``torch`` and ``triton`` the fused ``FastNetwork``, ``auto``
    the fastest available on the device (see ``fastnas.fast_supernet.resolve_backend``).
    """
    device = resolve_device(config.device) if device is None else torch.device(device)
    backend = resolve_backend(config.backend, device)
    kwargs = dict(C=config.channels, num_classes=config.num_classes, layers=config.layers,
                  num_nodes=config.num_nodes, multiplier=config.num_nodes,
                  in_channels=config.in_channels)
    if backend == "reference":
        if config.checkpointing:
            return CheckpointedNetwork(**kwargs, checkpointing=True)
        return Network(**kwargs)
    return FastNetwork(**kwargs, backend=backend, checkpointing=config.checkpointing)


def cosine_lr(epoch: int, total: int, lr_max: float, lr_min: float) -> float:
    """``lr_min + (lr_max - lr_min) * (1 + cos(pi * epoch / total)) / 2``."""
    return lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * epoch / total)) / 2


def paired(train_loader: Iterable, val_loader: Iterable) -> Iterator[Tuple[Any, Any]]:
    """Yield ``(train_batch, val_batch)`` for one pass over ``train_loader``; the validation
    loader is iterated alongside and restarted if it runs out first."""
    val_iter = iter(val_loader)
    for train_batch in train_loader:
        try:
            val_batch = next(val_iter)
        except StopIteration:
            val_iter = iter(val_loader)
            try:
                val_batch = next(val_iter)
            except StopIteration:
                raise ValueError("val_loader yielded no batches") from None
        yield train_batch, val_batch


def _check_batch(name: str, batch) -> Batch:
    try:
        x, y = batch
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an (inputs, targets) pair of tensors") from None
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be an (inputs, targets) pair of tensors")
    if x.dim() != 4:
        raise ValueError(f"{name}: inputs must be [N, C, H, W], got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: targets must be [N] class indices matching the inputs, "
                         f"got shape {tuple(y.shape)} for inputs {tuple(x.shape)}")
    return x, y


class _Mean:
    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, value: float, n: int):
        self.total += value * n
        self.count += n

    @property
    def value(self) -> float:
        return self.total / max(self.count, 1)


class DARTSOptimizer:
    """DARTS search as a drop-in object: ``step``, ``search``, ``genotype``, ``ask``/``tell``.

    ``config`` is a dict with the keys of :class:`DARTSConfig` (or a DARTSConfig).
    """

    def __init__(self, config: Union[Mapping[str, Any], DARTSConfig, None] = None):
        self.config = DARTSConfig.from_dict(config)
        cfg = self.config
        if cfg.seed is not None:
            seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.precision = Precision(cfg.precision, self.device)
        self.model = build_supernet(cfg, self.device).to(self.device)
        self.weight_optimizer = torch.optim.SGD(self.model.weights(), lr=cfg.learning_rate_w,
                                                momentum=cfg.momentum,
                                                weight_decay=cfg.weight_decay)
        self.architect = Architect(self.model, lr=cfg.learning_rate_alpha, betas=(0.5, 0.999),
                                   weight_decay=cfg.arch_weight_decay, order=cfg.order,
                                   momentum=cfg.momentum, network_weight_decay=cfg.weight_decay,
                                   hessian_r=cfg.hessian_r, autocast=self._autocast,
                                   loss_scale=self.precision.loss_scale)
        self.total_epochs = cfg.num_steps
        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.lr = cosine_lr(0, self.total_epochs, cfg.learning_rate_w, cfg.lr_min)
        self._set_lr(self.lr)
        self.history: List[Dict[str, Any]] = []
        self.told: List[Tuple[Genotype, float]] = []

    # -- parameters ---------------------------------------------------------------------------
    def arch_parameters(self) -> List[nn.Parameter]:
        """``[alphas_normal, alphas_reduce]``."""
        return self.model.alphas()

    def weight_parameters(self) -> List[nn.Parameter]:
        return list(self.model.weights())

    def genotype(self) -> Genotype:
        return self.model.genotype()

    def _autocast(self):
        return self.precision.autocast()

    def _set_lr(self, lr: float):
        self.lr = lr
        for group in self.weight_optimizer.param_groups:
            group["lr"] = lr

    def _to_device(self, batch: Batch) -> Batch:
        x, y = batch
        nb = self.device.type == "cuda"
        return x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)

    # -- one step -----------------------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Batch) -> Dict[str, float]:
        """Architecture step on ``val_batch``, then weight step on ``train_batch``.

        Returns ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (of the loss the
        architecture step minimized) and ``lr``.
        """
        train_batch = self._to_device(_check_batch("train_batch", train_batch))
        val_batch = self._to_device(_check_batch("val_batch", val_batch))
        self.model.train()
        val_loss, val_logits = self.architect.step(train_batch, val_batch, self.lr,
                                                   self.weight_optimizer)
        x, y = train_batch
        self.weight_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        weights = self.weight_parameters()
        scaler = self.precision.scaler
        if scaler is None:
            loss.backward(inputs=weights)
            if self.config.grad_clip is not None:
                nn.utils.clip_grad_norm_(weights, self.config.grad_clip)
            self.weight_optimizer.step()
        else:  # fp16: scaled backward, unscale before clipping, skip the step on overflow
            scaler.scale(loss).backward(inputs=weights)
            scaler.unscale_(self.weight_optimizer)
            if self.config.grad_clip is not None:
                nn.utils.clip_grad_norm_(weights, self.config.grad_clip)
            scaler.step(self.weight_optimizer)
            scaler.update()
        self.global_step += 1
        return {
            "train_loss": loss.item(),
            "train_acc": _accuracy(logits, y),
            "val_loss": val_loss.item(),
            "val_acc": _accuracy(val_logits, val_batch[1]),
            "lr": self.lr,
        }

    # -- the search loop ----------------------------------------------------------------------
    def search(self, train_loader: Iterable, val_loader: Iterable, epochs: Optional[int] = None,
               callback: Optional[Callable[["DARTSOptimizer", dict], Optional[bool]]] = None,
               on_step: Optional[Callable[["DARTSOptimizer", dict], None]] = None) -> Genotype:
        """Run the search until ``epochs`` epochs (default ``num_steps``) are complete.

        Continues from ``self.epoch``, so a loaded state resumes where it stopped. After each
        epoch a record (losses, accuracies, lr, genotype, softmax of the alphas, seconds) is
        appended to ``history`` and passed to ``callback(self, record)``; a callback returning
        False stops the search. ``on_step(self, stats)`` is called after every step.
        """
        if epochs is not None:
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
                raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
            self.total_epochs = epochs
        while self.epoch < self.total_epochs:
            self._set_lr(cosine_lr(self.epoch, self.total_epochs, self.config.learning_rate_w,
                                   self.config.lr_min))
            start = time.perf_counter()
            means = {k: _Mean() for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
            steps = 0
            for train_batch, val_batch in paired(train_loader, val_loader):
                stats = self.step(train_batch, val_batch)
                steps += 1
                n_train, n_val = len(train_batch[1]), len(val_batch[1])
                for k in means:
                    means[k].add(stats[k], n_train if k.startswith("train") else n_val)
                if on_step is not None:
                    on_step(self, stats)
            if steps == 0:
                raise ValueError("train_loader yielded no batches")
            record = {"epoch": self.epoch, "lr": self.lr, "steps": steps,
                      **{k: m.value for k, m in means.items()},
                      "genotype": str(self.genotype()),
                      "alphas_normal": F.softmax(self.model.alphas_normal.detach(), -1).cpu(),
                      "alphas_reduce": F.softmax(self.model.alphas_reduce.detach(), -1).cpu(),
                      "seconds": time.perf_counter() - start}
            self.history.append(record)
            self.epoch += 1
            if callback is not None and callback(self, record) is False:
                break
        return self.genotype()

    @torch.no_grad()
    def evaluate(self, loader: Iterable) -> Dict[str, float]:
        """Loss and accuracy of the supernet (current alphas) on ``loader``, in eval mode."""
        self.model.eval()
        loss, acc = _Mean(), _Mean()
        for batch in loader:
            x, y = self._to_device(_check_batch("batch", batch))
            with self._autocast():
                logits = self.model(x)
            loss.add(F.cross_entropy(logits.float(), y).item(), len(y))
            acc.add(_accuracy(logits, y), len(y))
        self.model.train()
        return {"loss": loss.value, "accuracy": acc.value}

    # -- ask / tell ---------------------------------------------------------------------------
    def ask(self) -> Genotype:
        """The architecture derived from the current alphas."""
        return self.genotype()

    def tell(self, genotype: Genotype, score: float) -> None:
        """Record an external score (higher is better) for ``genotype``."""
        if not isinstance(genotype, Genotype):
            raise TypeError(f"genotype must be a fastnas.Genotype, got {type(genotype).__name__}")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
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
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [k for k in ("model", "weight_optimizer", "arch_optimizer", "epoch", "rng")
                   if k not in state]
        if missing:
            raise ValueError(f"not a DARTSOptimizer state: missing {missing}")
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
        set_rng_state(state["rng"])

    def save(self, path: str) -> None:
        """Write ``state_dict()`` atomically (temp file, then rename)."""
        tmp = f"{path}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, map_location=None, **overrides) -> "DARTSOptimizer":
        """Rebuild an optimizer from a file written by ``save`` (loaded with weights_only=True)."""
        state = torch.load(path, map_location=map_location or "cpu", weights_only=True)
        config = dict(state["config"], **overrides)
        opt = cls(config)
        opt.load_state_dict(state)
        return opt


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()
