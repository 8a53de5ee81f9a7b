"""Validated configuration of the DARTS search; defaults are the paper's CIFAR-10 search settings."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

BACKENDS = ("auto", "reference", "torch", "triton")
PRECISIONS = ("fp32", "bf16", "fp16")


def _check_int(name, value, low=None, high=None, choices=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")


def _check_float(name, value, low=None, high=None, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")


def _check_choice(name, value, choices):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_device(name, value):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string such as 'auto', 'cpu' or 'cuda', got {value!r}")
    if value != "auto":
        import torch

        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            raise ValueError(f"{name} must be 'auto' or a torch device such as 'cpu' or 'cuda:0', "
                             f"got {value!r}") from None


@dataclass
class DARTSConfig:
    """DARTS search settings (Liu et al., 2019). ``num_steps`` is the number of search epochs.

    Weights: SGD with ``learning_rate_w`` cosine-annealed per epoch to ``lr_min``, ``momentum``,
    ``weight_decay`` and gradient-norm clipping ``grad_clip`` (weights only; None disables).
    Alphas: Adam with ``learning_rate_alpha``, betas (0.5, 0.999), ``arch_weight_decay``.
    ``order`` 1 is the first-order approximation, 2 the unrolled (second-order) step whose
    Hessian-vector product uses the finite-difference radius ``hessian_r / ||v||``.
    """

    learning_rate_w: float = 0.025
    learning_rate_alpha: float = 3e-4
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: Optional[float] = 5.0
    num_nodes: int = 4
    num_steps: int = 50
    channels: int = 16
    num_classes: int = 10
    layers: int = 8
    batch_size: int = 64
    order: int = 1
    arch_weight_decay: float = 1e-3
    lr_min: float = 0.001
    in_channels: int = 3
    seed: Optional[int] = 2
    precision: str = "fp32"
    checkpointing: bool = False
    backend: str = "auto"
    device: str = "auto"
    hessian_r: float = 0.01

    def __post_init__(self):
        _check_float("learning_rate_w", self.learning_rate_w, low=0, low_open=True)
        _check_float("learning_rate_alpha", self.learning_rate_alpha, low=0, low_open=True)
        _check_float("momentum", self.momentum, low=0, high=1, high_open=True)
        _check_float("weight_decay", self.weight_decay, low=0)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, low=0, low_open=True)
        _check_int("num_nodes", self.num_nodes, low=1, high=16)
        _check_int("num_steps", self.num_steps, low=1)
        _check_int("channels", self.channels, low=1)
        _check_int("num_classes", self.num_classes, low=2)
        _check_int("layers", self.layers, low=1)
        _check_int("batch_size", self.batch_size, low=1)
        _check_int("order", self.order, choices=(1, 2))
        _check_float("arch_weight_decay", self.arch_weight_decay, low=0)
        _check_float("lr_min", self.lr_min, low=0, high=self.learning_rate_w)
        _check_int("in_channels", self.in_channels, low=1)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0)
        _check_choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.checkpointing, bool):
            raise TypeError(f"checkpointing must be True or False, got {self.checkpointing!r}")
        _check_choice("backend", self.backend, BACKENDS)
        check_device("device", self.device)
        _check_float("hessian_r", self.hessian_r, low=0, low_open=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DARTSConfig":
        return config_from_dict(cls, values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_from_dict(cls, values: Union[Mapping[str, Any], Any]):
    """Build the dataclass ``cls`` from a mapping; unknown keys raise ValueError naming them."""
    if isinstance(values, cls):
        return values
    if values is None:
        return cls()
    if not isinstance(values, Mapping):
        raise TypeError(f"config must be a dict or {cls.__name__}, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**values)


__all__ = ["DARTSConfig", "BACKENDS", "PRECISIONS", "config_from_dict", "check_device"]
