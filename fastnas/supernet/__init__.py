"""The supernets, each in two implementations of one module tree (the DARTS space's here; the
NAS-Bench-201 space's in ``nb201_reference`` and ``nb201_fast``, ``build_nb201_supernet``):

- ``reference`` (``SearchNetwork``, ``reference.py``): one module per candidate op, the paper
  code's semantics; the oracle of the tests and the baseline of the benchmarks;
- ``fast`` (``FastSearchNetwork``, ``fast.py``): the same parameters and ``state_dict``, run as a
  fused plan with the kernels the kernel backend picks (``fastnas.kernels``: Triton on CUDA,
  the CPU autograd Functions of ``fastnas.ops.functional`` otherwise).

``build_supernet`` builds either and checks, before any step, that the kernel backend can serve
it on the device; ``recompute.py`` holds the gradient checkpointing both use.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..kernels import dispatch
from ..nb201 import is_nb201_space
from ..space import CellSpace, Relaxation
from .fast import FastSearchCell, FastSearchNetwork, kernel_set_for
from .nb201_fast import FastNB201SearchNetwork
from .nb201_reference import NB201SearchNetwork
from .reference import MixedOp, SearchCell, SearchNetwork, derive_genotype, num_edges

SUPERNETS = ("reference", "fast")


def check_kernels(supernet: str, device: torch.device, dtype: torch.dtype = torch.float32,
                  required: Optional[str] = None) -> str:
    """The kernels (``'torch'`` or ``'triton'``) that ``supernet`` will run on ``device`` under the
    kernel backend in force, or a ValueError naming both settings when they contradict each
    other or cannot be honoured:

    - ``supernet='reference'`` runs no kernels, so a backend forced to ``triton`` is refused;
    - ``supernet='fast'`` with a backend forced to ``triton`` needs Triton for this device and
      dtype (CUDA, or the CPU under ``TRITON_INTERPRET=1``; float32/bf16/fp16);
    - ``required`` (from the deprecated ``backend='torch'|'triton'`` config key) must be what the
      backend picks.
    """
    backend = dispatch.get_backend()
    setting = (f"the kernel backend {backend!r} ({dispatch.ENV_VAR} or "
               "fastnas.kernels.set_backend)")
    if supernet == "reference":
        if backend == "triton" or required == "triton":
            raise ValueError(f"supernet='reference' runs no Triton kernels, but {setting} asks "
                             "for them; use supernet='fast' or the kernel backend 'auto'/'torch'")
        return "torch"
    try:
        chosen = kernel_set_for(torch.empty(0, device=device, dtype=dtype)).name
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"supernet='fast' with {setting} on {device} ({dtype}): {e}") from None
    if required is not None and required != chosen:
        raise ValueError(f"the deprecated backend={required!r} asks for the {required} kernels, "
                         f"but {setting} picks {chosen} on {device}; drop backend= and set the "
                         f"kernel backend to {required!r}")
    return chosen


def build_supernet(supernet: str = "fast", *, C: int = 16, num_classes: int = 10,
                   layers: int = 8, num_nodes: int = 4, multiplier: Optional[int] = None,
                   in_channels: int = 3, checkpointing: bool = False,
                   space: Optional[CellSpace] = None, relaxation: Optional[Relaxation] = None,
                   partial_channels: int = 1, edge_normalization: bool = False,
                   aux_skip: Optional[int] = None):
    """``SearchNetwork`` (``supernet='reference'``) or ``FastSearchNetwork`` (``'fast'``), on the
    CPU in float32; both built from the same random draws, so one seed gives one state.
    ``space`` and ``relaxation``: see ``SearchNetwork`` (default the DARTS space, softmax);
    ``partial_channels`` (PC-DARTS's K, 1: off), ``edge_normalization`` (PC-DARTS's betas) and
    ``aux_skip`` (DARTS-'s decay epochs, None: off): the methods' supernet axes, ditto."""
    if supernet not in SUPERNETS:
        raise ValueError(f"supernet must be one of {list(SUPERNETS)}, got {supernet!r}")
    if space is not None and is_nb201_space(space):  # issue 19: NAS-Bench-201's supernet
        return build_nb201_supernet(supernet, C=C, N=layers, num_classes=num_classes,
                                    in_channels=in_channels, checkpointing=checkpointing,
                                    relaxation=relaxation, partial_channels=partial_channels,
                                    edge_normalization=edge_normalization, aux_skip=aux_skip)
    cls = SearchNetwork if supernet == "reference" else FastSearchNetwork
    return cls(C=C, num_classes=num_classes, layers=layers, num_nodes=num_nodes,
               multiplier=multiplier, in_channels=in_channels, checkpointing=checkpointing,
               space=space, relaxation=relaxation, partial_channels=partial_channels,
               edge_normalization=edge_normalization, aux_skip=aux_skip)


def build_nb201_supernet(supernet: str = "fast", *, C: int = 16, N: int = 5,
                         num_classes: int = 10, in_channels: int = 3,
                         checkpointing: bool = False, relaxation: Optional[Relaxation] = None,
                         track_running_stats: bool = False, partial_channels: int = 1,
                         edge_normalization: bool = False, aux_skip: Optional[int] = None):
    """``NB201SearchNetwork`` (``supernet='reference'``) or ``FastNB201SearchNetwork``
    (``'fast'``): NAS-Bench-201's search supernet, ``N`` search cells per stage; both built from
    the same random draws. ``build_supernet(..., space=nb201_space())`` calls it with
    ``N=layers``. Partial channels, edge normalization and the auxiliary skip (PC-DARTS,
    DARTS-) are not built into the NB201 supernet: asking for them is a ValueError."""
    if supernet not in SUPERNETS:
        raise ValueError(f"supernet must be one of {list(SUPERNETS)}, got {supernet!r}")
    for name, value, off in (("partial_channels", partial_channels, 1),
                             ("edge_normalization", edge_normalization, False),
                             ("aux_skip", aux_skip, None)):
        if value != off:
            raise ValueError(f"{name}={value!r} is not supported by the NB201 supernet "
                             f"(use {name}={off!r} with space='nb201')")
    cls = NB201SearchNetwork if supernet == "reference" else FastNB201SearchNetwork
    return cls(C=C, N=N, num_classes=num_classes, in_channels=in_channels, relaxation=relaxation,
               track_running_stats=track_running_stats, checkpointing=checkpointing)


def __getattr__(name: str):
    if name == "Network":
        warnings.warn("fastnas.supernet.Network is deprecated: it is the reference supernet, "
                      "now fastnas.SearchNetwork", DeprecationWarning, stacklevel=2)
        return SearchNetwork
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FastNB201SearchNetwork", "FastSearchCell", "FastSearchNetwork", "MixedOp",
           "NB201SearchNetwork", "SUPERNETS", "SearchCell", "SearchNetwork", "build_nb201_supernet",
           "build_supernet", "check_kernels", "derive_genotype", "num_edges"]
