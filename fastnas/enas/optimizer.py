"""``ENASOptimizer``: the ENAS search (Pham et al., ICML 2018) as one object.

Each epoch alternates as the paper: one pass over the training data, each step training the
shared weights on a freshly sampled child (SGD, Nesterov momentum, gradient-norm clipping), then
``controller_steps`` REINFORCE updates of the controller, each on ``controller_samples`` children
scored on a validation batch.

REINFORCE, for an architecture ``a`` with reward ``R`` (by default the child's accuracy on the
validation batch with the shared weights):

    R' = R + entropy_weight * H(a)                      H: summed decision entropies, no gradient
    b  <- b - (1 - baseline_decay) * (b - R')           the baseline, updated *before* use
    loss = -(R' - b) * sum_t log p(a_t)   [ + skip_weight * skip_penalty(a), macro ]

averaged over the architectures of one update, then one Adam step. The entropy bonus enters
through the reward and the baseline moves before it is subtracted, both as the reference code
(``micro_controller.py``: ``reward += entropy_weight * sample_entropy``, then ``assign_sub``
under a control dependency). The reference starts ``b`` at 0; we start it at the first ``R'``,
which removes the start-up bias of the moving average (so the very first update has zero
advantage). The macro skip penalty is added to the loss with its exact gradient, as the
reference (``loss += skip_weight * skip_penaltys``).

Shared learning rate, per epoch ``e`` (``fastnas.engine.cosine_lr``):
``lr_min + (shared_lr - lr_min) * (1 + cos(pi * e_cur / T)) / 2``, with ``T`` the number of
epochs, or with warm restarts (``lr_t0``) ``T = lr_t0 * lr_t_mul ** k`` and ``e_cur`` the epochs
since the last restart, as the reference's ``lr_cosine``.
"""
from __future__ import annotations

import math
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..checkpoint import Resumable, check_kind, check_tensors_fit, describe
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
from ..genotypes import Genotype
from ..reproducibility import get_rng_state, resolve_device, seed_everything, set_rng_state
from .config import ENASConfig
from .controller import ControllerPass, MacroController, MicroController
from .macro import MACRO_OPS, MacroArch, MacroSupernet
from .micro import MICRO_OPS, MicroSupernet, choices_from_genotype, genotype_from_choices

Arch = Union[Genotype, MacroArch]


class ENASOptimizer(Resumable):
    """ENAS as a drop-in object: ``ask``/``tell``, ``step``, ``train_controller``, ``search``,
    ``derive``, ``evaluate``, ``state_dict``/``save``/``load``.

    ``config`` is a dict with the keys of :class:`ENASConfig` (or an ENASConfig). Architectures
    are ``fastnas.Genotype`` in the micro space and :class:`MacroArch` in the macro space. As a
    search strategy it answers ``architecture()`` (the derived architecture once ``search`` has
    finished, else the controller's most likely one) and ``evaluate(loader)``, like
    ``DARTSOptimizer``.
    """

    checkpoint_kind = ("search", "enas")

    def __init__(self, config: Union[Mapping[str, Any], ENASConfig, None] = None):
        self.config = ENASConfig.from_dict(config)
        cfg = self.config
        if cfg.seed is not None:
            seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        # The controller samples from its own generator, so data loading or user code that draws
        # from torch's global generator never changes which architectures come next.
        self.generator = torch.Generator()
        if cfg.seed is not None:
            self.generator.manual_seed(cfg.seed)
        else:
            self.generator.seed()
        self.micro = cfg.search_space == "micro"
        if self.micro:
            self.controller = MicroController(cfg.num_nodes, len(MICRO_OPS), cfg.controller_hidden,
                                              cfg.tanh_constant, cfg.op_tanh_reduce,
                                              cfg.temperature)
            self.model = MicroSupernet(cfg.channels, cfg.num_classes, cfg.num_layers,
                                       cfg.num_nodes, cfg.in_channels)
        else:
            self.controller = MacroController(cfg.num_layers, len(MACRO_OPS), cfg.controller_hidden,
                                              cfg.tanh_constant, cfg.temperature, cfg.skip_target)
            self.model = MacroSupernet(cfg.channels, cfg.num_classes, cfg.num_layers,
                                       cfg.in_channels)
        self.model.to(self.device)
        self.shared_optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.shared_lr,
                                                momentum=cfg.momentum,
                                                nesterov=cfg.momentum > 0,
                                                weight_decay=cfg.weight_decay)
        # The reference's Adam for the controller: beta1 = 0, epsilon = 1e-3.
        self.controller_optimizer = torch.optim.Adam(self.controller.parameters(),
                                                     lr=cfg.controller_lr, betas=(0.0, 0.999),
                                                     eps=1e-3)
        self.baseline: Optional[float] = None
        self.total_epochs = cfg.num_steps
        self.epoch = 0  # completed epochs
        self.global_step = 0  # shared-weight steps
        self.controller_step = 0  # controller updates
        self.lr = self.lr_at(0)
        self._set_lr(self.lr)
        self.history: List[Dict[str, Any]] = []
        self.derived: Optional[Arch] = None  # search's final pick
        self.guard = NonFiniteGuard(cfg.on_nonfinite, cfg.max_nonfinite_skips)
        # The controller's validation batches run on across epochs: their position is state.
        self.val_stream: Optional[BatchStream] = None
        self._val_position = (0, 0)

    # -- architectures ------------------------------------------------------------------------
    def choices(self, arch: Arch) -> List[int]:
        """The controller's flat decisions for ``arch``; ValueError or TypeError if ``arch`` is
        outside the search space."""
        if self.micro:
            return choices_from_genotype(arch, self.config.num_nodes)
        if not isinstance(arch, MacroArch):
            raise TypeError(f"a macro architecture is a MacroArch, got {type(arch).__name__}")
        if arch.num_layers != self.config.num_layers:
            raise ValueError(f"the search space has {self.config.num_layers} layers, the "
                             f"architecture {arch.num_layers}")
        return arch.to_choices()

    def architecture(self) -> Arch:
        """The search's current answer: the architecture ``search`` derived, or before that the
        controller's most likely one (``ask(greedy=True)``)."""
        return self.derived if self.derived is not None else self.ask(greedy=True)

    def _arch(self, choices: Sequence[int]) -> Arch:
        if self.micro:
            return genotype_from_choices(choices, self.config.num_nodes)
        return MacroArch.from_choices(choices, self.config.num_layers)

    # -- ask / tell ---------------------------------------------------------------------------
    def ask(self, greedy: bool = False) -> Arch:
        """Sample an architecture from the controller (``greedy``: the most likely decision at
        every step instead, which draws no random numbers)."""
        with torch.no_grad():
            result = self.controller(greedy=greedy, generator=self.generator)
        return self._arch(result.choices)

    def controller_pass(self, arch: Arch) -> ControllerPass:
        """Teacher-force the controller on ``arch``: its log-probability (with graph), entropy
        and skip penalty under the current controller."""
        return self.controller(forced=self.choices(arch))

    def reinforce_loss(self, archs: Sequence[Arch], rewards: Sequence[float]
                       ) -> Tuple[torch.Tensor, float, Dict[str, float]]:
        """The REINFORCE loss of one update (see the module docstring), the baseline after it,
        and statistics. Changes nothing: ``tell`` applies it."""
        cfg = self.config
        baseline = self.baseline
        terms, stats = [], {k: 0.0 for k in ("reward", "entropy", "log_prob", "advantage",
                                             "skip_penalty")}
        for arch, reward in zip(archs, rewards):
            result = self.controller_pass(arch)
            total = reward + cfg.entropy_weight * result.entropy.item()
            baseline = total if baseline is None else (
                baseline - (1 - cfg.baseline_decay) * (baseline - total))
            advantage = total - baseline
            term = -advantage * result.log_prob
            if not self.micro:
                term = term + cfg.skip_weight * result.skip_penalty
            terms.append(term)
            for k, v in (("reward", reward), ("entropy", result.entropy.item()),
                         ("log_prob", result.log_prob.item()), ("advantage", advantage),
                         ("skip_penalty", result.skip_penalty.item())):
                stats[k] += v / len(archs)
        loss = torch.stack(terms).mean()
        stats.update(controller_loss=loss.item(), baseline=baseline)
        return loss, baseline, stats

    def tell(self, arch: Union[Arch, Sequence[Arch]], reward: Union[float, Sequence[float]]
             ) -> Dict[str, float]:
        """One REINFORCE update from ``reward`` (higher is better) for ``arch``, or from a list of
        rewards for a list of architectures (their losses are averaged). Any architecture of the
        search space works, sampled by ``ask`` or not. Returns the update's statistics."""
        archs, rewards = _as_lists(arch, reward)
        for a in archs:
            self.choices(a)  # validate all before changing anything
        loss, baseline, stats = self.reinforce_loss(archs, rewards)
        self.controller_optimizer.zero_grad(set_to_none=True)
        if not self._check("controller loss", loss.detach()):
            stats["skipped"] = True
            return stats
        loss.backward()
        self.controller_optimizer.step()
        self.guard.check_weights(list(self.controller.parameters()), self.epoch,
                                 self.global_step, "controller weights after the update")
        self.baseline = baseline
        self.controller_step += 1
        if not self.micro:
            stats["skip_density"] = sum(a.skip_density for a in archs) / len(archs)
        return stats

    # -- shared weights -----------------------------------------------------------------------
    def step(self, train_batch: Batch, arch: Optional[Arch] = None) -> Dict[str, Any]:
        """One SGD step of the shared weights on ``arch`` (default: a fresh sample); only that
        child's weights run and receive gradients. Returns ``train_loss``, ``train_acc``, ``lr``
        and the child's text ``arch``."""
        x, y = self._batch("train_batch", train_batch)
        arch = self.ask() if arch is None else arch
        self.choices(arch)
        self.model.train()
        self.shared_optimizer.zero_grad(set_to_none=True)
        logits = self.model(x, arch)
        loss = F.cross_entropy(logits, y)
        applied = self._shared_step(loss)
        self.global_step += 1
        return {"train_loss": loss.item(), "train_acc": accuracy(logits, y), "lr": self.lr,
                "arch": str(arch), "skipped": not applied}

    def _shared_step(self, loss: torch.Tensor) -> bool:
        """SGD on the shared weights with the gradient norm clipped; False when skipped."""
        if not self._check("train loss", loss.detach()):
            return False
        loss.backward()
        params = list(self.model.parameters())
        distributed.average_gradients(params)   # the sampled child's, the same on every rank
        clip = self.config.grad_clip
        norm = nn.utils.clip_grad_norm_(params, clip) if clip is not None else grad_norm(params)
        if not self._check("weight gradient norm", norm):
            self.shared_optimizer.zero_grad(set_to_none=True)
            return False
        self.shared_optimizer.step()
        self.guard.check_weights(params, self.epoch, self.global_step)
        self.guard.applied()
        return True

    def _check(self, quantity: str, value) -> bool:
        return self.guard.ok(quantity, value, self.epoch, self.global_step)

    @torch.no_grad()
    def reward(self, arch: Arch, val_batch: Batch) -> float:
        """The default reward: accuracy of ``arch`` on ``val_batch`` with the shared weights."""
        x, y = self._batch("val_batch", val_batch)
        self.choices(arch)
        return accuracy(self.model(x, arch), y)

    def train_controller(self, val_batch: Batch) -> Dict[str, float]:
        """Sample ``controller_samples`` architectures, reward each on ``val_batch``, ``tell``.

        Under torchrun with ``N`` ranks every rank samples the same ``N * controller_samples``
        architectures (one generator, in step), scores its own block of them on its validation
        shard, and all ranks ``tell`` all of them with the gathered rewards: ``N`` times the
        samples per update, and the same update on every rank."""
        n, r = self.config.controller_samples, distributed.rank()
        archs = [self.ask() for _ in range(n * distributed.world_size())]
        mine = [self.reward(a, val_batch) for a in archs[r * n:(r + 1) * n]]
        rewards = [reward for block in distributed.gather(mine) for reward in block]
        return self.tell(archs, rewards)

    # -- the search loop ----------------------------------------------------------------------
    def search(self, train_loader: Iterable, val_loader: Iterable, epochs: Optional[int] = None,
               callback: Optional[Callable[[ENASOptimizer, dict], Optional[bool]]] = None,
               on_step: Optional[Callable[[ENASOptimizer, dict], None]] = None,
               progress: Union[bool, str] = True) -> Arch:
        """Run until ``epochs`` epochs (default ``num_steps``) are complete, then return the best
        of ``derive_samples`` sampled architectures on a validation batch (``derive``).

        Continues from ``self.epoch``, so a loaded state resumes where it stopped. After each
        epoch a record (shared loss/accuracy, controller reward, baseline, entropy, the greedy
        architecture and its per-decision probabilities ``decision_probs``, seconds) is appended
        to ``history`` and passed to ``callback(self, record)``; a callback returning False
        stops the search. ``on_step(self, stats)`` is called after every shared-weight step.
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
        return (f"train loss {record['train_loss']:.3f} acc {record['train_acc']:.3f} (epoch "
                f"mean)  val reward {record['val_acc']:.3f} (sampled children's accuracy; "
                f"BatchNorm on batch statistics)  lr {record['lr']:.4f}  "
                f"{record['seconds']:.1f}s")

    def _search(self, train_loader: Iterable, val_loader: Iterable,
                callback: Optional[Callable[[ENASOptimizer, dict], Optional[bool]]],
                on_step: Optional[Callable[[ENASOptimizer, dict], None]]) -> Arch:
        self.val_stream = val_batches = BatchStream(val_loader, "val_loader")
        val_batches.restore(self._val_position)

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
            ctrl: Dict[str, RunningMean] = {}
            for _ in range(self.config.controller_steps):
                stats = self.train_controller(next(val_batches))
                if stats.pop("skipped", False):
                    continue
                for k, v in stats.items():
                    ctrl.setdefault(k, RunningMean()).add(v, 1)
            distributed.average_buffers(self.model)
            with torch.no_grad():  # greedy: draws no random numbers
                greedy = self.controller(greedy=True, generator=self.generator)
            return {"lr": self.lr, "steps": steps, "skipped_steps": self.guard.skipped,
                    **{k: m.reduced().value for k, m in shared.items()},
                    "controller_steps": self.config.controller_steps,
                    **{k: m.value for k, m in ctrl.items() if k != "baseline"},
                    "val_acc": ctrl["reward"].value if ctrl else float("nan"),
                    "baseline": self.baseline if self.baseline is not None else float("nan"),
                    "arch": str(self._arch(greedy.choices)),
                    "decision_probs": greedy.probabilities}

        run_epochs(self, run_epoch, callback)
        self.derived = self.derive(val_data=next(val_batches))
        return self.derived

    def derive(self, n: Optional[int] = None, val_data=None) -> Arch:
        """Sample ``n`` architectures (default ``derive_samples``) and return the best: by
        accuracy with the shared weights on ``val_data`` (one ``(x, y)`` batch, or an iterable of
        batches), or, without data, by controller log-probability. Ties go to the first sampled.
        """
        n = self.config.derive_samples if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        candidates = [self.ask() for _ in range(n)]
        if val_data is None:
            with torch.no_grad():
                scores = [self.controller_pass(a).log_prob.item() for a in candidates]
        else:
            batches = [val_data] if _is_batch(val_data) else list(val_data)
            if not batches:
                raise ValueError("val_data yielded no batches")
            scores = [self.evaluate(batches, a)["accuracy"] for a in candidates]
        return candidates[max(range(n), key=lambda i: (scores[i], -i))]

    @torch.no_grad()
    def evaluate(self, loader: Iterable, arch: Optional[Arch] = None) -> Dict[str, float]:
        """Loss and accuracy on ``loader`` of ``arch`` (default: ``architecture()``) with the
        shared weights (under torchrun: over every rank's shard)."""
        arch = self.architecture() if arch is None else arch
        self.choices(arch)
        loss, acc = RunningMean(), RunningMean()
        for batch in loader:
            x, y = self._batch("batch", batch)
            logits = self.model(x, arch)
            loss.add(F.cross_entropy(logits, y).item(), len(y))
            acc.add(accuracy(logits, y), len(y))
        loss, acc = loss.reduced(), acc.reduced()
        if acc.count == 0:
            raise ValueError("the evaluation loader yielded no batches")
        return {"loss": loss.value, "accuracy": acc.value}

    # -- learning rate ------------------------------------------------------------------------
    def lr_at(self, epoch: int) -> float:
        """The shared learning rate of ``epoch`` (cosine, or cosine with warm restarts)."""
        cfg = self.config
        if cfg.lr_t0 is None:
            return cosine_lr(epoch, self.total_epochs, cfg.shared_lr, cfg.lr_min)
        start, period = 0, cfg.lr_t0
        while epoch >= start + period:
            start, period = start + period, period * cfg.lr_t_mul
        return cosine_lr(epoch - start, period, cfg.shared_lr, cfg.lr_min)

    def _set_lr(self, lr: float):
        self.lr = lr
        for group in self.shared_optimizer.param_groups:
            group["lr"] = lr

    def _batch(self, name: str, batch) -> Batch:
        cfg = self.config
        return to_device(check_batch(name, batch, cfg.in_channels, cfg.num_classes), self.device)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Controller, shared weights, both optimizers, baseline, counters and every RNG; a
        loaded optimizer samples and updates exactly as this one would. ``weights_only`` safe."""
        return {
            **describe("search", "enas"),
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
            "nonfinite": self.guard.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s output; another kind of state, or tensors that do not fit
        this optimizer's config, raise a ValueError that says which."""
        check_kind(state, "search", "enas")
        missing = [k for k in ("controller", "model", "controller_optimizer", "shared_optimizer",
                               "epoch", "rng", "controller_rng") if k not in state]
        if missing:
            raise ValueError(f"not an ENASOptimizer state: missing {missing}")
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
        set_rng_state(state["rng"])
        self.generator.set_state(state["controller_rng"])
        self._val_position = tuple(state.get("val_position", (0, 0)))
        self.val_stream = None
        self.guard.load_state_dict(state.get("nonfinite", {}))



def _as_lists(arch, reward) -> Tuple[List[Arch], List[float]]:
    if isinstance(arch, (list, tuple)):
        archs = list(arch)
        if not isinstance(reward, (list, tuple)) or len(reward) != len(archs):
            raise ValueError("with a list of architectures, reward must be a list of the same "
                             "length")
        rewards = list(reward)
    else:
        archs, rewards = [arch], [reward]
    if not archs:
        raise ValueError("tell needs at least one architecture")
    for r in rewards:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
            raise ValueError(f"reward must be a finite number, got {r!r}")
    return archs, [float(r) for r in rewards]


def _is_batch(data) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data))



__all__ = ["ENASOptimizer"]
