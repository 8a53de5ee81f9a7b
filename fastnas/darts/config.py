"""Validated configuration of the DARTS search; defaults are the paper's CIFAR-10 search
settings."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Tuple, Union

from ..config import LoopConfig, check_float, choice, device, flag, integer, number
from ..limits import MAX_OPTIONS, SUPERNET_EDGE_WEIGHTS, check_network, supernet_edges
from ..ops import OPS, PRIMITIVES, UNKNOWN_OP_HINT
from ..space import CellSpace, darts_space
from ..supernet import SUPERNETS
from .methods import METHODS, apply_preset

PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# The deprecated ``backend`` key: what each value meant, as (supernet, required kernels).
LEGACY_BACKENDS = {"auto": ("fast", None), "reference": ("reference", None),
                   "torch": ("fast", "torch"), "triton": ("fast", "triton")}
# issue 19: the cell search spaces, and the NB201 supernet's size for the limits (3 nodes, 6 edges
# of 10 C^2 weights: a 3x3 and a 1x1 conv).
CELL_SPACES = ("darts", "nb201")
NB201_NODES, NB201_EDGES, NB201_EDGE_WEIGHTS = 3, 6, 10
# xautodl's NB201 DARTS/GDAS search settings (configs/nas-benchmark/algos/DARTS.config,
# GDAS.config): SGD lr 0.025 cosine to 0.001, Nesterov momentum 0.9, weight decay 5e-4,
# batch 64, C=16, N=5; the architecture Adam 3e-4, betas (0.5, 0.999), weight decay 1e-3.
NB201_SEARCH = {"learning_rate_w": 0.025, "lr_min": 0.001, "momentum": 0.9, "nesterov": True,
                "weight_decay": 5e-4, "batch_size": 64, "channels": 16, "layers": 5,
                "learning_rate_alpha": 3e-4, "arch_weight_decay": 1e-3}
RELAXATIONS = ("softmax", "gumbel", "dirichlet", "sigmoid")
PERTURBATIONS = ("none", "random", "adversarial")


def _check_betas(name: str, value: Any, config: Any) -> None:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be a pair of numbers (beta1, beta2), got {value!r}")
    for i, beta in enumerate(value):
        check_float(f"{name}[{i}]", beta, low=0, high=1, high_open=True)


def betas(default: Tuple[float, float]) -> Any:
    """A field holding Adam's ``(beta1, beta2)``, each in [0, 1) (checked as ``Config``'s
    fields are: ``metadata["check"](name, value, config)``)."""
    return dataclasses.field(default=default, metadata={"check": _check_betas})


@dataclass
class DARTSConfig(LoopConfig):
    """DARTS search settings (Liu et al., 2019). ``num_steps`` is the number of search epochs.

    Weights: SGD with ``learning_rate_w`` cosine-annealed per epoch to ``lr_min``, ``momentum``,
    ``weight_decay`` and gradient-norm clipping ``grad_clip`` (weights only; None disables).
    Alphas: Adam with ``learning_rate_alpha``, ``arch_betas`` (0.5, 0.999) and
    ``arch_weight_decay``.
    ``order`` 1 is the first-order approximation, 2 the unrolled (second-order) step whose
    Hessian-vector product uses the finite-difference radius ``hessian_r / ||v||``.

    ``supernet`` picks the implementation (``reference``: the paper code's module per op;
    ``fast``: the fused plan, same parameters); the kernels the fast one runs are picked by the
    kernel backend (``fastnas.kernels.set_backend`` / ``FASTNAS_BACKEND``), not here.
    ``precision``: ``fp32``; ``bf16``/``fp16`` autocast; ``fp64`` runs everything in float64
    (for checks against references). ``backend`` is deprecated (see ``LEGACY_BACKENDS``).
    ``compile``: run the supernet under ``torch.compile`` (``fastnas.supernet.compiled``) in
    ``compile_mode`` (``reduce-overhead``: CUDA graphs on a GPU); off by default.
    ``space``: ``darts`` (the DARTS cell) or ``nb201`` (NAS-Bench-201's: ``channels`` is C,
    ``layers`` N); ``nesterov``: Nesterov momentum for the weights (``NB201_SEARCH``).

    The methods built on DARTS (issue 18; defaults: plain DARTS). ``method`` names a preset
    (``fastnas.darts.methods.PRESETS``) that ``from_dict`` fills the keys not given from.

    - ``relaxation``: the mixing weights from the alphas: ``softmax`` (DARTS), ``gumbel`` (GDAS:
      hard straight-through samples, ``tau`` falling linearly from ``tau_max`` to ``tau_min``),
      ``dirichlet`` (DrNAS: samples of ``Dirichlet(elu(a) + 1)``, plus ``dirichlet_kl`` times
      the summed KL to ``Dirichlet(1)``), ``sigmoid`` (FairDARTS).
    - ``partial_channels`` K (PC-DARTS; 1 = off) and ``edge_normalization``; ``aux_skip`` E
      (DARTS-: ``beta_aux = max(0, 1 - epoch / E)`` times a skip added to every edge).
    - ``beta_lambda`` (beta-DARTS: ``lambda_e * mean(logsumexp(a))``, ``lambda_e = beta_lambda
      * e / E``) and ``zero_one_weight`` w (FairDARTS: ``-w * mean((sigmoid(a) - 0.5)^2)``) on
      the architecture loss.
    - ``perturbation`` of the weight step's mixing weights (SDARTS): ``random`` (uniform in
      ``[-eps, eps]``) or ``adversarial`` (``pgd_steps`` of L-inf PGD); ``eps`` ramps from
      ``epsilon_min`` to ``epsilon_max``.
    - ``warmup_epochs``: the alphas stay frozen for these first epochs; ``early_stop_skips``
      (DARTS+): stop once the derived normal cell holds that many skip_connects;
      ``max_skips`` (P-DARTS) and ``threshold`` (FairDARTS): derivation rules
      (``fastnas.space.derivation``).

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
    layers: int = integer(8, low=1)
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
    # -- issue 19: the search space. ``nb201``: NAS-Bench-201's cell (``fastnas.nb201``), the
    # NB201 search supernet with ``channels`` = C and ``layers`` = N search cells per stage
    # (``num_nodes`` does not apply: the cell has 3). ``nesterov``: Nesterov momentum for the
    # weights, as xautodl's NB201 searches (``NB201_SEARCH``: their settings).
    space: str = choice("darts", CELL_SPACES)
    nesterov: bool = flag(False)
    arch_betas: Tuple[float, float] = betas((0.5, 0.999))
    # -- issue 18: the methods built on DARTS (fastnas.darts.methods; README "Methods") --------
    method: str = choice("darts", METHODS)
    relaxation: str = choice("softmax", RELAXATIONS)
    tau_max: float = number(10.0, low=0, low_open=True)
    tau_min: float = number(0.1, low=0, low_open=True, high="tau_max")
    dirichlet_kl: float = number(0.0, low=0)
    partial_channels: int = integer(1, low=1)
    edge_normalization: bool = flag(False)
    aux_skip: Optional[int] = integer(None, low=1, optional=True)
    beta_lambda: float = number(0.0, low=0)
    zero_one_weight: float = number(0.0, low=0)
    perturbation: str = choice("none", PERTURBATIONS)
    epsilon_min: float = number(0.03, low=0)
    epsilon_max: float = number(0.3, low="epsilon_min")
    pgd_steps: int = integer(7, low=1)
    warmup_epochs: int = integer(0, low=0)
    early_stop_skips: Optional[int] = integer(None, low=1, optional=True)
    max_skips: Optional[int] = integer(None, low=0, optional=True)
    threshold: Optional[float] = number(None, low=0, high=1, optional=True)

    @classmethod
    def from_dict(cls, values: Union[Mapping[str, Any], DARTSConfig, None]) -> DARTSConfig:
        """As ``Config.from_dict``, with every key not in ``values`` taken from the preset that
        ``values["method"]`` names (``fastnas.darts.methods.PRESETS``; ``darts``: the defaults).
        A ``DARTSConfig`` built directly takes its keys as given."""
        if isinstance(values, Mapping):
            values = apply_preset(values)
        return super().from_dict(values)

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
        if self.space == "nb201":
            check_network(self.channels, 3 * self.layers, NB201_NODES, NB201_EDGES,
                          NB201_EDGE_WEIGHTS, "the NB201 supernet", self.num_classes,
                          self.in_channels, layers_name="3 x layers (the NB201 search cells)")
        else:
            if self.layers < 3:
                raise ValueError(f"layers must be >= 3, got {self.layers} (the DARTS "
                                 "supernet's two reduction cells and a normal cell)")
            check_network(self.channels, self.layers, self.num_nodes,
                          supernet_edges(self.num_nodes), SUPERNET_EDGE_WEIGHTS,
                          "the DARTS supernet", self.num_classes, self.in_channels)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0")
        if self.compile and self.checkpointing:
            raise ValueError("compile=True with checkpointing=True is not supported: the "
                             "recomputed cells would break the compiled graph; use one of them")
        if not isinstance(self.arch_betas, tuple):
            self.arch_betas = tuple(self.arch_betas)  # a JSON list reads back as the pair
        self._validate_method()

    def _validate_method(self) -> None:
        """The combinations of the method keys that cannot work, each a one-line reason."""
        if self.relaxation == "gumbel" and self.order == 2:
            raise ValueError("relaxation 'gumbel' with order 2: GDAS has no second-order path "
                             "(the unrolled step would differentiate through a fresh hard "
                             "sample at each of its passes); use order 1")
        if self.perturbation != "none" and self.relaxation in ("gumbel", "sigmoid"):
            raise ValueError(f"perturbation {self.perturbation!r} with relaxation "
                             f"{self.relaxation!r}: SDARTS perturbs mixing weights on the "
                             "simplex (clamped and renormalized), which "
                             + ("a hard one-hot sample computing one op per edge is not"
                                if self.relaxation == "gumbel" else
                                "independent sigmoid weights are not")
                             + "; use relaxation softmax or dirichlet")
        if self.space == "nb201":
            for key, off in (("partial_channels", 1), ("edge_normalization", False),
                             ("aux_skip", None)):
                if getattr(self, key) != off:
                    raise ValueError(f"{key}={getattr(self, key)!r} does not apply to "
                                     f"space='nb201' (the NB201 supernet has no such axis; "
                                     f"method {self.method!r}); set {key}={off!r}")
            if self.primitives is not None:
                raise ValueError("primitives does not apply to space='nb201' (the NB201 "
                                 "supernet runs its own 5 ops); drop it")
        if self.compile and (self.relaxation in ("dirichlet", "gumbel")
                             or self.perturbation != "none"):
            what = (f"relaxation {self.relaxation!r}" if self.relaxation in ("dirichlet", "gumbel")
                    else f"perturbation {self.perturbation!r}")
            raise ValueError(f"compile=True with {what} is not supported: its noise is drawn "
                             "from a CPU generator inside the forward pass, which a full-graph "
                             "compile cannot hold; run without compile")
        if self.dirichlet_kl > 0 and self.relaxation != "dirichlet":
            raise ValueError(f"dirichlet_kl {self.dirichlet_kl} needs relaxation 'dirichlet' "
                             f"(it is the KL term of its samples), got {self.relaxation!r}")
        if (self.early_stop_skips is not None and self.max_skips is not None
                and self.early_stop_skips > self.max_skips):
            raise ValueError(f"early_stop_skips {self.early_stop_skips} can never trigger: "
                             f"max_skips {self.max_skips} caps the skip_connects of the "
                             "derived normal cell below it")

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


__all__ = ["CELL_SPACES", "COMPILE_MODES", "DARTSConfig", "LEGACY_BACKENDS", "NB201_SEARCH",
           "PRECISIONS", "check_primitives", "primitives_of", "space_with_primitives"]
