"""Validated configuration of the ENAS search; defaults are the reference code's CIFAR-10 scripts.

Fields left at ``None`` take the default of the chosen search space (``SPACE_DEFAULTS``), read
from ``scripts/cifar10_{micro,macro}_search.sh`` of the paper's code; ``to_dict()`` reports the
resolved values, so a saved config reloads to the same search.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..config import _check_choice, _check_float, _check_int, check_device, config_from_dict

SEARCH_SPACES = ("micro", "macro")

SPACE_DEFAULTS = {
    "micro": dict(num_layers=8, channels=20, num_steps=150, batch_size=160, controller_lr=0.0035,
                  controller_steps=30, tanh_constant=1.10, weight_decay=1e-4),
    "macro": dict(num_layers=12, channels=36, num_steps=310, batch_size=128, controller_lr=0.001,
                  controller_steps=50, tanh_constant=1.5, weight_decay=2.5e-4),
}


@dataclass
class ENASConfig:
    """ENAS search settings (Pham et al., ICML 2018). ``num_steps`` is the number of epochs.

    Search space: ``micro`` searches a normal and a reduction cell of ``num_nodes`` nodes stacked
    ``num_layers`` times (reductions at ``num_layers // 3`` and ``2 * num_layers // 3``, as
    ``NetworkCIFAR``); ``macro`` searches ``num_layers`` layers (an op each, plus skip connections).

    Controller: an LSTM with ``controller_hidden`` units; each logit ``l`` is shaped as
    ``c * tanh(l / temperature)`` with ``c = tanh_constant`` (micro op logits use
    ``tanh_constant / op_tanh_reduce``; ``temperature=None`` divides by nothing). Adam at
    ``controller_lr`` (beta1 0, eps 1e-3, as the reference); ``controller_steps`` updates per epoch,
    each averaging ``controller_samples`` sampled architectures; baseline decay ``baseline_decay``;
    ``entropy_weight`` scales the entropy bonus added to the reward; macro only: ``skip_weight``
    scales the KL penalty pulling the skip density toward ``skip_target``.

    Shared weights: SGD at ``shared_lr`` with Nesterov momentum ``momentum``, ``weight_decay`` and
    gradient-norm clipping ``grad_clip``; cosine annealing per epoch to ``lr_min`` over the whole
    run, or, with ``lr_t0`` set, warm restarts (SGDR) with periods ``lr_t0 * lr_t_mul ** k``
    (the reference: 10 and 2).

    ``derive_samples`` architectures are sampled at the end of ``search``; the best on a validation
    batch is returned.
    """

    search_space: str = "micro"
    num_nodes: int = 5
    num_layers: Optional[int] = None
    channels: Optional[int] = None
    num_classes: int = 10
    in_channels: int = 3
    batch_size: Optional[int] = None
    num_steps: Optional[int] = None
    seed: Optional[int] = 2
    device: str = "auto"
    # controller
    controller_hidden: int = 100
    controller_lr: Optional[float] = None
    controller_steps: Optional[int] = None
    controller_samples: int = 1
    tanh_constant: Optional[float] = None
    op_tanh_reduce: float = 2.5
    temperature: Optional[float] = None
    entropy_weight: float = 1e-4
    baseline_decay: float = 0.99
    skip_target: float = 0.4
    skip_weight: float = 0.8
    # shared weights
    shared_lr: float = 0.05
    lr_min: float = 0.0005
    lr_t0: Optional[int] = None
    lr_t_mul: int = 2
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    grad_clip: Optional[float] = 5.0
    derive_samples: int = 10

    def __post_init__(self):
        _check_choice("search_space", self.search_space, SEARCH_SPACES)
        for name, value in SPACE_DEFAULTS[self.search_space].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        _check_int("num_nodes", self.num_nodes, low=1, high=16)
        _check_int("num_layers", self.num_layers, low=3 if self.search_space == "micro" else 1)
        _check_int("channels", self.channels, low=1)
        if self.search_space == "macro" and self.channels % 2:
            raise ValueError(f"channels must be even in the macro space (factorized reductions "
                             f"halve it), got {self.channels}")
        _check_int("num_classes", self.num_classes, low=2)
        _check_int("in_channels", self.in_channels, low=1)
        _check_int("batch_size", self.batch_size, low=1)
        _check_int("num_steps", self.num_steps, low=1)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0)
        check_device("device", self.device)
        _check_int("controller_hidden", self.controller_hidden, low=1)
        _check_float("controller_lr", self.controller_lr, low=0, low_open=True)
        _check_int("controller_steps", self.controller_steps, low=0)
        _check_int("controller_samples", self.controller_samples, low=1)
        _check_float("tanh_constant", self.tanh_constant, low=0, low_open=True)
        _check_float("op_tanh_reduce", self.op_tanh_reduce, low=0, low_open=True)
        if self.temperature is not None:
            _check_float("temperature", self.temperature, low=0, low_open=True)
        _check_float("entropy_weight", self.entropy_weight, low=0)
        _check_float("baseline_decay", self.baseline_decay, low=0, high=1, high_open=True)
        _check_float("skip_target", self.skip_target, low=0, high=1, low_open=True, high_open=True)
        _check_float("skip_weight", self.skip_weight, low=0)
        _check_float("shared_lr", self.shared_lr, low=0, low_open=True)
        _check_float("lr_min", self.lr_min, low=0, high=self.shared_lr)
        if self.lr_t0 is not None:
            _check_int("lr_t0", self.lr_t0, low=1)
        _check_int("lr_t_mul", self.lr_t_mul, low=1)
        _check_float("momentum", self.momentum, low=0, high=1, high_open=True)
        _check_float("weight_decay", self.weight_decay, low=0)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, low=0, low_open=True)
        _check_int("derive_samples", self.derive_samples, low=1)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ENASConfig":
        """Build from a dict; unknown keys raise a ValueError naming them."""
        return config_from_dict(cls, values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


__all__ = ["ENASConfig", "SEARCH_SPACES", "SPACE_DEFAULTS"]
