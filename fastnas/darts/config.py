"""Validated configuration of the DARTS search; defaults are the paper's CIFAR-10 search
settings."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, List, Optional

from ..config import LoopConfig, choice, device, flag, integer, number
from ..limits import MAX_OPTIONS, SUPERNET_EDGE_WEIGHTS, check_network, supernet_edges
from ..ops import OPS, PRIMITIVES, UNKNOWN_OP_HINT
from ..space import CellSpace, darts_space
from ..supernet import SUPERNETS

PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# The deprecated ``backend`` key: what each value meant, as (supernet, required kernels).
LEGACY_BACKENDS = {"auto": ("fast", None), "reference": ("reference", None),
                   "torch": ("fast", "torch"), "triton": ("fast", "triton")}


@dataclass
class DARTSConfig(LoopConfig):
    """DARTS search settings (Liu et al., 2019). ``num_steps`` is the number of search epochs.

    Weights: SGD with ``learning_rate_w`` cosine-annealed per epoch to ``lr_min``, ``momentum``,
    ``weight_decay`` and gradient-norm clipping ``grad_clip`` (weights only; None disables).
    Alphas: Adam with ``learning_rate_alpha``, betas (0.5, 0.999), ``arch_weight_decay``.
    ``order`` 1 is the first-order approximation, 2 the unrolled (second-order) step whose
    Hessian-vector product uses the finite-difference radius ``hessian_r / ||v||``.

    ``supernet`` picks the implementation (``reference``: the paper code's module per op;
    ``fast``: the fused plan, same parameters); the kernels the fast one runs are picked by the
    kernel backend (``fastnas.kernels.set_backend`` / ``FASTNAS_BACKEND``), not here.
    ``precision``: ``fp32``; ``bf16``/``fp16`` autocast; ``fp64`` runs everything in float64
    (for checks against references). ``backend`` is deprecated (see ``LEGACY_BACKENDS``).
    ``compile``: run the supernet under ``torch.compile`` (``fastnas.supernet.compiled``) in
    ``compile_mode`` (``reduce-overhead``: CUDA graphs on a GPU); off by default.
    ``primitives``: the cell's candidate ops, in alpha-column order (``check_primitives``);
    None is ``PRIMITIVES``, the paper's eight. Set, they are also the ops of a ``space`` given
    to ``DARTSOptimizer`` (``space_with_primitives``).
    """

    learning_rate_w: float = number(0.025, low=0, low_open=True)
    learning_rate_alpha: float = number(3e-4, low=0, low_open=True)
    momentum: float = number(0.9, low=0, high=1, high_open=True)
    weight_decay: float = number(3e-4, low=0)
    grad_clip: Optional[float] = number(5.0, low=0, low_open=True, optional=True)
    num_nodes: int = integer(4, low=1, high=16)
    num_steps: int = integer(50, low=1)
    channels: int = integer(16, low=1)
    num_classes: int = integer(10, low=2)
    layers: int = integer(8, low=3)
    batch_size: int = integer(64, low=1)
    order: int = integer(1, choices=(1, 2))
    arch_weight_decay: float = number(1e-3, low=0)
    lr_min: float = number(0.001, low=0, high="learning_rate_w")
    in_channels: int = integer(3, low=1)
    seed: Optional[int] = integer(2, low=0, optional=True)
    precision: str = choice("fp32", PRECISIONS)
    checkpointing: bool = flag(False)
    supernet: str = choice("fast", SUPERNETS)
    device: str = device("auto")
    hessian_r: float = number(0.01, low=0, low_open=True)
    backend: Optional[str] = choice(None, tuple(LEGACY_BACKENDS), optional=True)
    compile: bool = flag(False)
    compile_mode: str = choice("default", COMPILE_MODES)

    # -- issue 20: the op set of the cell (built-in and registered ops) --------------------------
    primitives: Optional[List[str]] = field(default=None, metadata={
        "check": lambda name, value, config: check_primitives(name, value, config)})

    def resolve_defaults(self) -> None:
        if self.backend is not None and self.backend in LEGACY_BACKENDS:
            warnings.warn(f"DARTSConfig backend={self.backend!r} is deprecated: the supernet is "
                          f"picked by supernet='reference'|'fast' and its kernels by "
                          f"fastnas.kernels.set_backend / FASTNAS_BACKEND",
                          DeprecationWarning, stacklevel=4)
            self.supernet = LEGACY_BACKENDS[self.backend][0]

    def validate(self) -> None:
        check_network(self.channels, self.layers, self.num_nodes, supernet_edges(self.num_nodes),
                      SUPERNET_EDGE_WEIGHTS, "the DARTS supernet", self.num_classes,
                      self.in_channels)
        if self.compile and self.checkpointing:
            raise ValueError("compile=True with checkpointing=True is not supported: the "
                             "recomputed cells would break the compiled graph; use one of them")

    @property
    def required_kernels(self) -> Optional[str]:
        """The kernels the deprecated ``backend`` key insists on, if any."""
        return LEGACY_BACKENDS[self.backend][1] if self.backend in LEGACY_BACKENDS else None


def check_primitives(name: str, value: Any, config: Any = None) -> None:
    """``value`` is None (``PRIMITIVES``) or a list of distinct op names of ``OPS`` (built in
    or registered with ``fastnas.ops.register``; ``none`` allowed), at most ``MAX_OPTIONS``,
    one of them other than ``none``. A tuple is stored on ``config`` as a list (what JSON and
    the checkpoint keep)."""
    if value is None:
        return
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of op names, got {type(value).__name__} "
                        f"{value!r}")
    for op in value:
        if not isinstance(op, str):
            raise TypeError(f"{name}: op names are strings, got {op!r}")
        if op not in OPS:
            raise ValueError(f"{name}: unknown operation {op!r}; known: "
                             f"{', '.join(sorted(OPS))}; {UNKNOWN_OP_HINT}")
    repeated = sorted({op for op in value if list(value).count(op) > 1})
    if repeated:
        raise ValueError(f"{name}: {', '.join(repeated)} given more than once")
    if not [op for op in value if op != "none"]:
        raise ValueError(f"{name} needs at least one op other than none, got {list(value)}")
    if len(value) > MAX_OPTIONS:
        raise ValueError(f"{name}: {len(value)} ops; at most {MAX_OPTIONS}")
    if config is not None and isinstance(value, tuple):
        setattr(config, name, list(value))


def primitives_of(config: DARTSConfig) -> tuple:
    """The op names of ``config``'s cell: its ``primitives``, or ``PRIMITIVES``."""
    return tuple(PRIMITIVES if config.primitives is None else config.primitives)


def space_with_primitives(config: DARTSConfig, space: Optional[CellSpace]
                          ) -> Optional[CellSpace]:
    """The space the search runs: ``space`` (None: the DARTS space of ``num_nodes``) with the
    config's ``primitives`` as its ops when they are set, else ``space`` unchanged."""
    if config.primitives is None:
        return space
    if space is None:
        return darts_space(config.num_nodes, ops=config.primitives)
    return dataclasses.replace(space, ops=tuple(config.primitives))


__all__ = ["COMPILE_MODES", "DARTSConfig", "LEGACY_BACKENDS", "PRECISIONS", "check_primitives",
           "primitives_of", "space_with_primitives"]
