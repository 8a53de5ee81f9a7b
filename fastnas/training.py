"""Final training (the "augment" stage): a genotype's network trained from scratch, and its cost.

Per epoch ``e`` of ``E``, as the paper's ``train.py``: SGD with momentum and weight decay at

    lr(e) = lr_min + (lr - lr_min) * (1 + cos(pi * e / E)) / 2,
    drop_path_prob(e) = drop_path_prob * e / E,

loss ``CE(logits) + auxiliary_weight * CE(logits_aux)`` and the gradient norm clipped to
``grad_clip``; then the loss and accuracy on the test loader, in eval mode.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .checkpoint import check_kind, check_tensors_fit, describe, load_checkpoint, save_atomic
from .config import LoopConfig, device, flag, integer, number
from .engine import (
    Batch,
    NonFiniteGuard,
    check_batch,
    console_progress,
    cosine_lr,
    grad_norm,
    run_epochs,
    to_device,
)
from .errors import UserError
from .genotypes import Genotype
from .limits import check_network, check_sizes
from .nb201 import NB201_EDGES, NB201Cell, NB201Network
from .networks import NetworkCIFAR
from .reproducibility import get_rng_state, resolve_device, seed_everything, set_rng_state


@dataclass
class TrainConfig(LoopConfig):
    """Final-training settings; the defaults are the paper's CIFAR-10 evaluation.

    ``cutout`` is the side of the square cut out of each training image (0: none); the data
    side applies it, it is kept here so that a saved model records its whole recipe.
    ``grad_clip`` None disables clipping. For an NB201 cell (``NB201Network``), ``channels`` is
    the stem's C and ``layers`` the cells per stage N; it has no auxiliary head nor drop path.
    """

    epochs: int = integer(600, low=1)
    batch_size: int = integer(96, low=1)
    learning_rate: float = number(0.025, low=0, low_open=True)
    lr_min: float = number(0.0, low=0, high="learning_rate")
    momentum: float = number(0.9, low=0, high=1, high_open=True)
    nesterov: bool = flag(False)
    weight_decay: float = number(3e-4, low=0)
    grad_clip: Optional[float] = number(5.0, low=0, low_open=True, optional=True)
    channels: int = integer(36, low=1)
    layers: int = integer(20, low=3)
    auxiliary: bool = flag(True)
    auxiliary_weight: float = number(0.4, low=0)
    drop_path_prob: float = number(0.2, low=0, high=1, high_open=True)
    cutout: int = integer(16, low=0)
    in_channels: int = integer(3, low=1)
    num_classes: int = integer(10, low=2)
    seed: int = integer(0, low=0)
    device: str = device("auto")
    sync_bn: bool = flag(False)

    def validate(self) -> None:
        check_sizes(self.layers, self.channels, 0, self.num_classes, self.in_channels)

    def check_network(self, architecture: Union[Genotype, NB201Cell]) -> None:
        """ValueError unless the network of ``architecture`` at these settings is within
        ``fastnas.limits`` (before it is built): a DARTS genotype's cells keep two edges per
        node; an NB201 network has three stages of ``layers`` cells of 6 edges (3 nodes)."""
        if isinstance(architecture, NB201Cell):
            nodes = len({target for target, _ in NB201_EDGES})
            check_network(self.channels, self.layers, nodes, len(NB201_EDGES),
                          num_classes=self.num_classes, in_channels=self.in_channels)
            check_network(self.channels, 3 * self.layers, nodes, len(NB201_EDGES),
                          num_classes=self.num_classes, in_channels=self.in_channels,
                          layers_name="3 x layers (the NB201 network's cells)")
            return
        check_network(self.channels, self.layers, architecture.num_nodes,
                      2 * architecture.num_nodes, num_classes=self.num_classes,
                      in_channels=self.in_channels)


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


# -- the network of an architecture ---------------------------------------------------------------
def build_network(architecture: Union[Genotype, NB201Cell], cfg: TrainConfig) -> nn.Module:
    """``NetworkCIFAR`` of a DARTS genotype, or ``NB201Network`` (C = ``channels``, N =
    ``layers``) of an NB201 cell; a ValueError for settings the network does not have or sizes
    past ``fastnas.limits`` (checked before anything is built)."""
    cfg.check_network(architecture)
    if isinstance(architecture, NB201Cell):
        if cfg.auxiliary or cfg.drop_path_prob:
            raise ValueError("the NB201 network has no auxiliary head and no drop path; set "
                             "auxiliary False and drop_path_prob 0")
        return NB201Network(architecture, cfg.channels, cfg.layers, cfg.num_classes,
                            cfg.in_channels)
    return NetworkCIFAR(cfg.channels, cfg.num_classes, cfg.layers, cfg.auxiliary, architecture,
                        in_channels=cfg.in_channels)


def parse_architecture(text: str) -> Union[Genotype, NB201Cell]:
    """The architecture of a saved string: an NB201 cell (``|op~0|+...``) or a genotype."""
    if isinstance(text, str) and text.lstrip().startswith("|"):
        return NB201Cell.parse(text)
    return Genotype.parse(text)


# -- training -------------------------------------------------------------------------------------
def _logits(output) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    return output if isinstance(output, tuple) else (output, None)


class FinalTrainer:
    """Train ``NetworkCIFAR(genotype)`` from scratch: ``fit``, ``evaluate``, atomic ``save`` and
    exact resumption through ``state_dict`` (weights, optimizer, epoch, history, RNG state)."""

    def __init__(self, genotype: Union[Genotype, NB201Cell],
                 config: Union[Mapping[str, Any], TrainConfig, None] = None):
        if not isinstance(genotype, (Genotype, NB201Cell)):
            raise TypeError("genotype must be a fastnas.Genotype or an NB201Cell, got "
                            f"{type(genotype).__name__}")
        self.config = TrainConfig.from_dict(config)
        cfg = self.config
        self.genotype = genotype
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        if cfg.sync_bn and self.device.type != "cuda":
            raise ValueError("sync_bn (SyncBatchNorm) runs on CUDA devices only, not on "
                             f"{self.device}")
        self.model = build_network(genotype, cfg).to(self.device)
        # Under torchrun: DistributedDataParallel averages the gradients (bucketed, overlapped
        # with backward); each rank then draws its own drop-path and cutout randomness.
        self.ddp: Optional[nn.Module] = None
        if distributed.active():
            if cfg.sync_bn:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            from torch.nn.parallel import DistributedDataParallel

            # BN statistics stay per rank (averaged before evaluation); the newer keyword is
            # preferred where torch has it (it still syncs at init, where all ranks agree).
            keep_buffers = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                            inspect.signature(DistributedDataParallel).parameters
                            else {"broadcast_buffers": False})
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **keep_buffers)
            seed_everything(cfg.seed + 100_003 * distributed.rank())
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.learning_rate,
                                         momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                         nesterov=cfg.nesterov)
        self.guard = NonFiniteGuard(cfg.on_nonfinite, cfg.max_nonfinite_skips)
        self.global_step = 0
        self.epoch = 0  # completed epochs
        self.history: List[Dict[str, Any]] = []
        self.input_shape: Optional[Tuple[int, ...]] = None  # one image's, seen in training

    def _batch(self, name: str, batch) -> Batch:
        cfg = self.config
        return to_device(check_batch(name, batch, cfg.in_channels, cfg.num_classes), self.device)

    def _schedule(self, epoch: int) -> float:
        cfg = self.config
        lr = cosine_lr(epoch, cfg.epochs, cfg.learning_rate, cfg.lr_min)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        return lr

    def train_epoch(self, loader: Iterable,
                    on_step: Optional[Callable[[FinalTrainer, dict], None]] = None,
                    ) -> Dict[str, float]:
        """One pass over ``loader`` at the current schedule; mean loss and accuracy."""
        cfg = self.config
        self.model.train()
        loss_sum = correct = count = 0.0
        for batch in loader:
            x, y = self._batch("train batch", batch)
            self.input_shape = tuple(x.shape[1:])
            self.optimizer.zero_grad(set_to_none=True)
            logits, logits_aux = _logits((self.ddp or self.model)(x))
            loss = F.cross_entropy(logits, y)
            if logits_aux is not None:
                loss = loss + cfg.auxiliary_weight * F.cross_entropy(logits_aux, y)
            applied = self._update(loss)
            self.global_step += 1
            if not applied:
                continue
            n, batch_loss = len(y), loss.item()
            batch_correct = (logits.argmax(1) == y).sum().item()
            loss_sum += batch_loss * n
            correct += batch_correct
            count += n
            if on_step is not None:
                on_step(self, {"loss": batch_loss, "acc": batch_correct / n})
        if count == 0 and self.guard.skipped == 0:
            raise ValueError("train loader yielded no batches")
        loss_sum, correct, count = distributed.sum_([loss_sum, correct, count])
        if count == 0:  # every step of the epoch was skipped
            return {"loss": float("nan"), "acc": float("nan")}
        return {"loss": loss_sum / count, "acc": correct / count}

    def _update(self, loss: torch.Tensor) -> bool:
        """One SGD step with the gradient norm clipped; False when a non-finite loss or gradient
        made ``on_nonfinite='skip'`` drop it (``NonFiniteError`` under ``'stop'``)."""
        epoch, step = self.epoch, self.global_step
        # DDP expects a backward after every forward: with it, check the loss after backward.
        if self.ddp is None and not self.guard.ok("train loss", loss.detach(), epoch, step):
            return False
        loss.backward()
        if self.ddp is not None and not self.guard.ok("train loss", loss.detach(), epoch, step):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        params = list(self.model.parameters())
        clip = self.config.grad_clip
        norm = nn.utils.clip_grad_norm_(params, clip) if clip is not None else grad_norm(params)
        if not self.guard.ok("weight gradient norm", norm, epoch, step):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.optimizer.step()
        self.guard.check_weights(params + [b for b in self.model.buffers()
                                           if b.is_floating_point()], epoch, step)
        self.guard.applied()
        return True

    @torch.no_grad()
    def evaluate(self, loader: Iterable) -> Dict[str, float]:
        """Loss and accuracy on ``loader`` in eval mode (under torchrun: over every rank's
        shard, with the BatchNorm statistics averaged over the ranks first)."""
        distributed.average_buffers(self.model)
        self.model.eval()
        loss_sum = correct = count = 0.0
        for batch in loader:
            x, y = self._batch("evaluation batch", batch)
            logits, _ = _logits(self.model(x))
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
        self.model.train()
        loss_sum, correct, count = distributed.sum_([loss_sum, correct, count])
        if count == 0:
            raise ValueError("evaluation loader yielded no batches")
        return {"loss": loss_sum / count, "accuracy": correct / count}

    @torch.no_grad()
    def recalibrate_batch_norm(self, loader: Iterable) -> int:
        """Recompute every BatchNorm's running statistics for the current weights from
        ``loader`` (train mode, no drop path, no gradients); returns the batches used.

        Training keeps ``running = (1 - m) * running + m * batch_stat`` with ``m = 0.1`` from
        ``(mean 0, var 1)``: after ``n`` steps the start still weighs ``0.9 ** n`` (0.31 after
        the 11 steps of a digits epoch), and the earlier weights' statistics linger, so a short
        training's eval mode normalizes with statistics of no network that exists (digits after
        one epoch: 0.68 train accuracy, 0.10 in eval mode, 0.95 after this). Here each
        statistic becomes the plain mean over the ``B`` batches (PyTorch's cumulative average,
        ``momentum=None``): ``running_mean = (1/B) sum_b mean_b(x)``, ``running_var = (1/B)
        sum_b var_b(x)`` with the unbiased per-batch variance. Under torchrun each rank
        averages its shard and the ranks then average their statistics."""
        layers = [m for m in self.model.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        momenta = [m.momentum for m in layers]
        drop_path, training = self.model.drop_path_prob, self.model.training
        batches = 0
        try:
            for m in layers:
                m.reset_running_stats()
                m.momentum = None
            self.model.drop_path_prob = 0.0
            self.model.train()
            for batch in loader:
                x, _ = self._batch("batch", batch)
                self.model(x)
                batches += 1
        finally:
            for m, momentum in zip(layers, momenta):
                m.momentum = momentum
            self.model.drop_path_prob = drop_path
            self.model.train(training)
        if batches == 0:
            raise ValueError("the recalibration loader yielded no batches")
        distributed.average_buffers(self.model)
        return batches

    def fit(self, train_loader: Iterable, test_loader: Iterable,
            callback: Optional[Callable[[FinalTrainer, dict], Optional[bool]]] = None,
            on_step: Optional[Callable[[FinalTrainer, dict], None]] = None,
            progress: Union[bool, str] = True) -> Dict[str, Any]:
        """Train from ``self.epoch`` to ``config.epochs``; after each epoch a record is appended
        to ``history`` and passed to ``callback(self, record)`` (returning False stops).
        A train loader with ``set_epoch`` (``fastnas.data.EpochLoader``) is told each epoch, so
        its shuffle follows the epoch. ``progress``: show the epochs on stderr as ``fastnas
        train`` does (True: bars on a terminal, else one line per epoch,
        :meth:`epoch_summary`; ``"lines"``: one line per epoch, as ``--quiet``; False:
        silent). Returns :meth:`metrics`."""
        with console_progress(self, "train", progress, train_loader, callback, on_step,
                              step_keys=("loss", "acc")) as (callback, on_step):
            return self._fit(train_loader, test_loader, callback, on_step)

    @staticmethod
    def epoch_summary(record: Mapping[str, Any]) -> str:
        """An epoch record in one line, each number saying how it was measured."""
        return (f"train loss {record['train_loss']:.3f} acc {record['train_acc']:.3f} (train "
                f"mode, epoch mean)  test loss {record['test_loss']:.3f} acc "
                f"{record['test_acc']:.3f} (eval mode, running BN statistics)  lr "
                f"{record['lr']:.4f}  {record['seconds']:.1f}s")

    def _fit(self, train_loader: Iterable, test_loader: Iterable,
             callback: Optional[Callable[[FinalTrainer, dict], Optional[bool]]],
             on_step: Optional[Callable[[FinalTrainer, dict], None]]) -> Dict[str, Any]:
        def run_epoch(epoch: int) -> Dict[str, Any]:
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            lr = self._schedule(epoch)
            train = self.train_epoch(train_loader, on_step)
            test = self.evaluate(test_loader)
            return {"lr": lr, "drop_path_prob": self.model.drop_path_prob,
                    "train_loss": train["loss"], "train_acc": train["acc"],
                    "skipped_steps": self.guard.skipped,
                    "test_loss": test["loss"], "test_acc": test["accuracy"]}

        run_epochs(self, run_epoch, callback)
        return self.metrics()

    @property
    def total_epochs(self) -> int:
        return self.config.epochs

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
        return {**describe("train"), "config": self.config.to_dict(),
                "genotype": str(self.genotype),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "history": self.history, "rng": get_rng_state(),
                "global_step": self.global_step, "nonfinite": self.guard.state_dict(),
                "input_shape": list(self.input_shape) if self.input_shape else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s output; another kind of state, or tensors that do not fit
        this trainer's config, raise a ValueError that says which."""
        check_kind(state, "train")
        missing = [k for k in ("model", "optimizer", "epoch", "rng") if k not in state]
        if missing:
            raise ValueError(f"not a FinalTrainer state: missing {missing}")
        check_tensors_fit(self.model, state["model"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state.get("global_step", 0))
        self.guard.load_state_dict(state.get("nonfinite", {}))
        self.history = list(state.get("history", []))
        shape = state.get("input_shape")
        self.input_shape = tuple(shape) if shape else None
        set_rng_state(state["rng"])

    def save(self, path: str) -> None:
        """Write ``state_dict()`` atomically (temp file, then rename)."""
        save_atomic(self.state_dict(), path)

    @classmethod
    def load(cls, path: str, **overrides) -> FinalTrainer:
        """Rebuild a trainer from ``save``'s file; ``overrides`` replace config keys (e.g. device,
        or a larger ``epochs`` to train on)."""
        state = load_checkpoint(path)
        try:
            check_kind(state, "train", source=path)
            trainer = cls(parse_architecture(state["genotype"]),
                          dict(state["config"], **overrides))
            trainer.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{path}: {e}" if path not in str(e) else str(e)) from None
        return trainer

    def save_model(self, path: str, **extra) -> None:
        """The trained network for inference: its state_dict, genotype string and config (plus
        ``extra`` plain values), loadable with ``weights_only=True`` by :func:`load_model`."""
        save_atomic({"model": self.model.state_dict(), "genotype": str(self.genotype),
                     "config": self.config.to_dict(), **extra}, path)


def load_model(path: str, device: str = "cpu") -> Tuple[NetworkCIFAR, Genotype, TrainConfig]:
    """Rebuild the network written by :meth:`FinalTrainer.save_model`, in eval mode."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not all(k in state for k in ("model", "genotype", "config")):
        raise UserError(f"{path} is not a model written by fastnas train (model.pt)")
    try:
        genotype = parse_architecture(state["genotype"])
        config = TrainConfig.from_dict(dict(state["config"], device=device))
        model = build_network(genotype, config)
        check_tensors_fit(model, state["model"], path)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: {e}" if path not in str(e) else str(e)) from None
    model.load_state_dict(state["model"])
    return model.to(resolve_device(device)).eval(), genotype, config


def train_genotype(genotype: Genotype, train_loader: Iterable, test_loader: Iterable,
                   config: Union[Mapping[str, Any], TrainConfig, None] = None,
                   callback: Optional[Callable[[FinalTrainer, dict], Optional[bool]]] = None,
                   on_step: Optional[Callable[[FinalTrainer, dict], None]] = None,
                   progress: Union[bool, str] = True) -> Tuple[FinalTrainer, Dict[str, Any]]:
    """Train ``genotype`` from scratch on ``train_loader``, testing every epoch on
    ``test_loader``; returns the trainer (its ``.model`` is the network) and its metrics.
    ``progress`` as in :meth:`FinalTrainer.fit`."""
    trainer = FinalTrainer(genotype, config)
    return trainer, trainer.fit(train_loader, test_loader, callback=callback, on_step=on_step,
                                progress=progress)


__all__ = ["FinalTrainer", "TrainConfig", "build_network", "count_multiply_adds",
           "count_parameters", "load_model", "parse_architecture", "train_genotype"]
