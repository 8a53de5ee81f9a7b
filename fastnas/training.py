"""Final training (the "augment" stage): a genotype's network trained from scratch, and its cost.

Per epoch ``e`` of ``E``, as the paper's ``train.py``: SGD with momentum and weight decay at

    lr(e) = lr_min + (lr - lr_min) * (1 + cos(pi * e / E)) / 2,
    drop_path_prob(e) = drop_path_prob * e / E,

loss ``CE(logits) + auxiliary_weight * CE(logits_aux)`` and the gradient norm clipped to
``grad_clip``; then the loss and accuracy on the test loader, in eval mode.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_atomic
from .config import _check_float, _check_int, check_device, config_from_dict
from .darts import cosine_lr
from .genotypes import Genotype
from .networks import NetworkCIFAR
from .reproducibility import get_rng_state, resolve_device, seed_everything, set_rng_state


@dataclass
class TrainConfig:
    """Final-training settings; the defaults are the paper's CIFAR-10 evaluation.

    ``cutout`` is the side of the square cut out of each training image (0: none); the data
    side applies it, it is kept here so that a saved model records its whole recipe.
    ``grad_clip`` None disables clipping.
    """

    epochs: int = 600
    batch_size: int = 96
    learning_rate: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: Optional[float] = 5.0
    channels: int = 36
    layers: int = 20
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2
    cutout: int = 16
    in_channels: int = 3
    num_classes: int = 10
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        _check_int("epochs", self.epochs, low=1)
        _check_int("batch_size", self.batch_size, low=1)
        _check_float("learning_rate", self.learning_rate, low=0, low_open=True)
        _check_float("lr_min", self.lr_min, low=0, high=self.learning_rate)
        _check_float("momentum", self.momentum, low=0, high=1, high_open=True)
        _check_float("weight_decay", self.weight_decay, low=0)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, low=0, low_open=True)
        _check_int("channels", self.channels, low=1)
        _check_int("layers", self.layers, low=3)
        if not isinstance(self.auxiliary, bool):
            raise TypeError(f"auxiliary must be True or False, got {self.auxiliary!r}")
        _check_float("auxiliary_weight", self.auxiliary_weight, low=0)
        _check_float("drop_path_prob", self.drop_path_prob, low=0, high=1, high_open=True)
        _check_int("cutout", self.cutout, low=0)
        _check_int("in_channels", self.in_channels, low=1)
        _check_int("num_classes", self.num_classes, low=2)
        _check_int("seed", self.seed, low=0)
        check_device("device", self.device)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        return config_from_dict(cls, values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- cost of a network ----------------------------------------------------------------------------
def count_parameters(model: nn.Module, auxiliary: bool = False) -> int:
    """Trainable parameters; the auxiliary head (used in training only) counts if ``auxiliary``."""
    return sum(p.numel() for name, p in model.named_parameters()
               if p.requires_grad and (auxiliary or "auxiliary" not in name))


@torch.no_grad()
def count_multiply_adds(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass on a single ``input_shape`` (C, H, W) image, in eval
    mode (no auxiliary head, no drop path), counted by hooks on every Conv2d and Linear:

        Conv2d: out.numel() * (C_in / groups) * kH * kW        Linear: out.numel() * in_features

    Poolings, BN and additions are not counted (the convention of the NAS papers).
    """
    total = 0

    def conv_hook(module: nn.Conv2d, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, inputs, output):
        nonlocal total
        total += output.numel() * module.in_features

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total


# -- training -------------------------------------------------------------------------------------
def _logits(output) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    return output if isinstance(output, tuple) else (output, None)


class FinalTrainer:
    """Train ``NetworkCIFAR(genotype)`` from scratch: ``fit``, ``evaluate``, atomic ``save`` and
    exact resumption through ``state_dict`` (weights, optimizer, epoch, history, RNG state)."""

    def __init__(self, genotype: Genotype,
                 config: Union[Mapping[str, Any], TrainConfig, None] = None):
        if not isinstance(genotype, Genotype):
            raise TypeError(f"genotype must be a fastnas.Genotype, got {type(genotype).__name__}")
        self.config = TrainConfig.from_dict(config)
        cfg = self.config
        self.genotype = genotype
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.model = NetworkCIFAR(cfg.channels, cfg.num_classes, cfg.layers, cfg.auxiliary,
                                  genotype, in_channels=cfg.in_channels).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.learning_rate,
                                         momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.epoch = 0  # completed epochs
        self.history: List[Dict[str, Any]] = []
        self.input_shape: Optional[Tuple[int, ...]] = None  # one image's, seen in training

    def _to_device(self, batch):
        x, y = batch
        nb = self.device.type == "cuda"
        return x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)

    def _schedule(self, epoch: int) -> float:
        cfg = self.config
        lr = cosine_lr(epoch, cfg.epochs, cfg.learning_rate, cfg.lr_min)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        return lr

    def train_epoch(self, loader: Iterable,
                    on_step: Optional[Callable[["FinalTrainer", dict], None]] = None,
                    ) -> Dict[str, float]:
        """One pass over ``loader`` at the current schedule; mean loss and accuracy."""
        cfg = self.config
        self.model.train()
        loss_sum = correct = count = 0.0
        for batch in loader:
            x, y = self._to_device(batch)
            self.input_shape = tuple(x.shape[1:])
            self.optimizer.zero_grad(set_to_none=True)
            logits, logits_aux = _logits(self.model(x))
            loss = F.cross_entropy(logits, y)
            if logits_aux is not None:
                loss = loss + cfg.auxiliary_weight * F.cross_entropy(logits_aux, y)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            n, batch_loss = len(y), loss.item()
            batch_correct = (logits.argmax(1) == y).sum().item()
            loss_sum += batch_loss * n
            correct += batch_correct
            count += n
            if on_step is not None:
                on_step(self, {"loss": batch_loss, "acc": batch_correct / n})
        if count == 0:
            raise ValueError("train loader yielded no batches")
        return {"loss": loss_sum / count, "acc": correct / count}

    @torch.no_grad()
    def evaluate(self, loader: Iterable) -> Dict[str, float]:
        """Loss and accuracy on ``loader`` in eval mode."""
        self.model.eval()
        loss_sum = correct = count = 0.0
        for batch in loader:
            x, y = self._to_device(batch)
            logits, _ = _logits(self.model(x))
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
        self.model.train()
        if count == 0:
            raise ValueError("evaluation loader yielded no batches")
        return {"loss": loss_sum / count, "accuracy": correct / count}

    def fit(self, train_loader: Iterable, test_loader: Iterable,
            callback: Optional[Callable[["FinalTrainer", dict], Optional[bool]]] = None,
            on_step: Optional[Callable[["FinalTrainer", dict], None]] = None) -> Dict[str, Any]:
        """Train from ``self.epoch`` to ``config.epochs``; after each epoch a record is appended
        to ``history`` and passed to ``callback(self, record)`` (returning False stops).
        A train loader with ``set_epoch`` (``fastnas.data.EpochLoader``) is told each epoch, so
        its shuffle follows the epoch. Returns :meth:`metrics`."""
        while self.epoch < self.config.epochs:
            start = time.perf_counter()
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(self.epoch)
            lr = self._schedule(self.epoch)
            train = self.train_epoch(train_loader, on_step)
            test = self.evaluate(test_loader)
            record = {"epoch": self.epoch, "lr": lr, "drop_path_prob": self.model.drop_path_prob,
                      "train_loss": train["loss"], "train_acc": train["acc"],
                      "test_loss": test["loss"], "test_acc": test["accuracy"],
                      "seconds": time.perf_counter() - start}
            self.history.append(record)
            self.epoch += 1
            if callback is not None and callback(self, record) is False:
                break
        return self.metrics()

    def metrics(self) -> Dict[str, Any]:
        """Final and best test accuracy, cost of the network, time, and the history."""
        cfg = self.config
        best = max(self.history, key=lambda r: r["test_acc"], default=None)
        last = self.history[-1] if self.history else None
        return {
            "test_accuracy": last["test_acc"] if last else None,
            "test_loss": last["test_loss"] if last else None,
            "best_test_accuracy": best["test_acc"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "epochs": self.epoch,
            "complete": self.epoch >= cfg.epochs,
            "params": count_parameters(self.model),
            "params_with_auxiliary": count_parameters(self.model, auxiliary=True),
            "multiply_adds": (count_multiply_adds(self.model, self.input_shape)
                              if self.input_shape else None),
            "seconds": sum(r["seconds"] for r in self.history),
            "genotype": str(self.genotype),
            "config": cfg.to_dict(),
            "history": self.history,
        }

    # -- files ----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly; safe for ``weights_only`` loads."""
        return {"config": self.config.to_dict(), "genotype": str(self.genotype),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "history": self.history, "rng": get_rng_state(),
                "input_shape": list(self.input_shape) if self.input_shape else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [k for k in ("model", "optimizer", "epoch", "rng") if k not in state]
        if missing:
            raise ValueError(f"not a FinalTrainer state: missing {missing}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        shape = state.get("input_shape")
        self.input_shape = tuple(shape) if shape else None
        set_rng_state(state["rng"])

    def save(self, path: str) -> None:
        """Write ``state_dict()`` atomically (temp file, then rename)."""
        save_atomic(self.state_dict(), path)

    @classmethod
    def load(cls, path: str, **overrides) -> "FinalTrainer":
        """Rebuild a trainer from ``save``'s file; ``overrides`` replace config keys (e.g. device,
        or a larger ``epochs`` to train on)."""
        state = load_checkpoint(path)
        trainer = cls(Genotype.parse(state["genotype"]), dict(state["config"], **overrides))
        trainer.load_state_dict(state)
        return trainer

    def save_model(self, path: str, **extra) -> None:
        """The trained network for inference: its state_dict, genotype string and config (plus
        ``extra`` plain values), loadable with ``weights_only=True`` by :func:`load_model`."""
        save_atomic({"model": self.model.state_dict(), "genotype": str(self.genotype),
                     "config": self.config.to_dict(), **extra}, path)


def load_model(path: str, device: str = "cpu") -> Tuple[NetworkCIFAR, Genotype, TrainConfig]:
    """Rebuild the network written by :meth:`FinalTrainer.save_model`, in eval mode."""
    state = load_checkpoint(path)
    genotype = Genotype.parse(state["genotype"])
    config = TrainConfig.from_dict(dict(state["config"], device=device))
    model = NetworkCIFAR(config.channels, config.num_classes, config.layers, config.auxiliary,
                         genotype, in_channels=config.in_channels)
    model.load_state_dict(state["model"])
    return model.to(resolve_device(device)).eval(), genotype, config


def train_genotype(genotype: Genotype, train_loader: Iterable, test_loader: Iterable,
                   config: Union[Mapping[str, Any], TrainConfig, None] = None,
                   callback: Optional[Callable[[FinalTrainer, dict], Optional[bool]]] = None,
                   on_step: Optional[Callable[[FinalTrainer, dict], None]] = None,
                   ) -> Tuple[FinalTrainer, Dict[str, Any]]:
    """Train ``genotype`` from scratch on ``train_loader``, testing every epoch on
    ``test_loader``; returns the trainer (its ``.model`` is the network) and its metrics."""
    trainer = FinalTrainer(genotype, config)
    return trainer, trainer.fit(train_loader, test_loader, callback=callback, on_step=on_step)


__all__ = ["FinalTrainer", "TrainConfig", "count_multiply_adds", "count_parameters",
           "load_model", "train_genotype"]
