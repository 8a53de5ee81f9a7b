"""Validated configuration of the ENAS search; defaults are the reference code's CIFAR-10 scripts.

Fields left at ``None`` take the default of the chosen search space (``SPACE_DEFAULTS``), read
from ``scripts/cifar10_{micro,macro}_search.sh`` of the paper's code; ``to_dict()`` reports the
resolved values, so a saved config reloads to the same search.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import LoopConfig, check_int, choice, device, integer, number
from ..limits import MACRO_LAYER_WEIGHTS, SUPERNET_EDGE_WEIGHTS, check_network, supernet_edges

SEARCH_SPACES = ("micro", "macro")

SPACE_DEFAULTS = {
    "micro": dict(num_layers=8, channels=20, num_steps=150, batch_size=160, controller_lr=0.0035,
                  controller_steps=30, tanh_constant=1.10, weight_decay=1e-4),
    "macro": dict(num_layers=12, channels=36, num_steps=310, batch_size=128, controller_lr=0.001,
                  controller_steps=50, tanh_constant=1.5, weight_decay=2.5e-4),
}


@dataclass
class ENASConfig(LoopConfig):
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

    search_space: str = choice("micro", SEARCH_SPACES)
    num_nodes: int = integer(5, low=1, high=16)
    num_layers: Optional[int] = integer(None, low=1)
    channels: Optional[int] = integer(None, low=1)
    num_classes: int = integer(10, low=2)
    in_channels: int = integer(3, low=1)
    batch_size: Optional[int] = integer(None, low=1)
    num_steps: Optional[int] = integer(None, low=1)
    seed: Optional[int] = integer(2, low=0, optional=True)
    device: str = device("auto")
    # controller
    controller_hidden: int = integer(100, low=1)
    controller_lr: Optional[float] = number(None, low=0, low_open=True)
    controller_steps: Optional[int] = integer(None, low=0)
    controller_samples: int = integer(1, low=1)
    tanh_constant: Optional[float] = number(None, low=0, low_open=True)
    op_tanh_reduce: float = number(2.5, low=0, low_open=True)
    temperature: Optional[float] = number(None, low=0, low_open=True, optional=True)
    entropy_weight: float = number(1e-4, low=0)
    baseline_decay: float = number(0.99, low=0, high=1, high_open=True)
    skip_target: float = number(0.4, low=0, high=1, low_open=True, high_open=True)
    skip_weight: float = number(0.8, low=0)
    # shared weights
    shared_lr: float = number(0.05, low=0, low_open=True)
    lr_min: float = number(0.0005, low=0, high="shared_lr")
    lr_t0: Optional[int] = integer(None, low=1, optional=True)
    lr_t_mul: int = integer(2, low=1)
    momentum: float = number(0.9, low=0, high=1, high_open=True)
    weight_decay: Optional[float] = number(None, low=0)
    grad_clip: Optional[float] = number(5.0, low=0, low_open=True, optional=True)
    derive_samples: int = integer(10, low=1)

    def resolve_defaults(self) -> None:
        """Fields left at None take the chosen search space's defaults (``SPACE_DEFAULTS``)."""
        for name, value in SPACE_DEFAULTS.get(self.search_space, {}).items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def validate(self) -> None:
        if self.search_space == "micro":
            check_int("num_layers", self.num_layers, low=3)
            check_network(self.channels, self.num_layers, self.num_nodes,
                          supernet_edges(self.num_nodes), SUPERNET_EDGE_WEIGHTS,
                          "the ENAS micro supernet", self.num_classes, self.in_channels,
                          "num_layers")
            return
        check_network(self.channels, self.num_layers, 1, 1, MACRO_LAYER_WEIGHTS,
                      "the ENAS macro network", self.num_classes, self.in_channels, "num_layers")
        if self.channels % 2:
            raise ValueError(f"channels must be even in the macro space (factorized reductions "
                             f"halve it), got {self.channels}")


__all__ = ["ENASConfig", "SEARCH_SPACES", "SPACE_DEFAULTS"]
