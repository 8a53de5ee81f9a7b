"""Your own candidate ops: ``register(name, factory)`` adds an op to ``OPS`` for every layer above.

A registered op is used like a built-in one, by name: in a space's ``ops`` (``darts_space(ops=
...)``, the ``primitives`` config key, ``--primitives``), by both supernets, in genotypes (text
and JSON), the final networks and the plots. ``factory(C, stride, affine)`` returns an
``nn.Module`` that maps ``[N, C, H, W] -> [N, C, ceil(H / stride), ceil(W / stride)]`` (stride 1
or 2; ``affine`` is False in the supernet, True in the final networks, for the op's BatchNorms).

The shape is checked lazily: the first time the factory builds a module for a given
``(C, stride, affine)``, a copy of that module runs in eval mode on a zero input
``[2, C, 8, 8]`` (no gradient, the global random state saved and restored, so the check draws
nothing and changes no statistic: a seeded supernet gets the same initialization with or without
it). A module that fails or returns another shape is a ValueError naming the op.

The search cell adds nothing to a registered op (the built-in pools get a BatchNorm there);
the fast supernet runs it per edge, unfused (``fastnas.supernet.fast``).
"""
from __future__ import annotations

import copy
import re
from typing import Callable, Optional, Set, Tuple

import torch
import torch.nn as nn

from .primitives import OPS

Factory = Callable[[int, int, bool], nn.Module]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
PROBE_SIZE = 8  # the side of the shape check's input


class RegisteredOp:
    """The factory ``OPS[name]`` holds for a registered op: ``factory`` with the shape check of
    the module docstring, once per ``(C, stride, affine)``."""

    def __init__(self, name: str, factory: Factory, replaced: Optional[Factory] = None):
        self.name = name
        self.factory = factory
        self.replaced = replaced  # the op it replaced (``replace=True``), back on unregister
        self._checked: Set[Tuple[int, int, bool]] = set()

    def __call__(self, C: int, stride: int, affine: bool = True) -> nn.Module:
        module = self.factory(C, stride, affine)
        if not isinstance(module, nn.Module):
            raise ValueError(f"operation {self.name!r}: its factory returned "
                             f"{type(module).__name__}, not an nn.Module")
        key = (int(C), int(stride), bool(affine))
        if key not in self._checked:
            check_op_shape(self.name, module, C, stride)
            self._checked.add(key)
        return module

    def __repr__(self) -> str:
        return f"RegisteredOp({self.name!r}, {self.factory!r})"


def check_op_shape(name: str, module: nn.Module, C: int, stride: int) -> None:
    """ValueError naming ``name`` unless ``module`` maps a zero ``[2, C, 8, 8]`` input to
    ``[2, C, 8 // stride, 8 // stride]`` (run on a copy, in eval mode, see the module
    docstring)."""
    probe = copy.deepcopy(module).eval()
    tensors = [*probe.parameters(), *probe.buffers()]
    like = next((t for t in tensors if t.is_floating_point()), None)
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else torch.device("cpu")
    side = PROBE_SIZE
    shape_in = (2, C, side, side)
    expected = (2, C, (side - 1) // stride + 1, (side - 1) // stride + 1)
    where = f"operation {name!r} (C={C}, stride={stride})"
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        try:
            out = probe(torch.zeros(shape_in, dtype=dtype, device=device))
        except Exception as e:  # the user's module: any failure is its own
            raise ValueError(f"{where} fails on a {list(shape_in)} input: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{where} returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != expected:
        raise ValueError(f"{where} maps {list(shape_in)} to {list(out.shape)}; an op must "
                         f"give {list(expected)} ([N, C, H/stride, W/stride])")


def register(name: str, factory: Optional[Factory] = None, *, replace: bool = False):
    """Add the op ``name`` built by ``factory(C, stride, affine) -> nn.Module`` to ``OPS``.

    ``name`` is an identifier (letters, digits, ``_``; not starting with a digit). A name that
    is already an op (built in, or registered with another factory) is refused unless
    ``replace=True``; registering the same factory again is a no-op. Returns the factory, so
    it also works as a decorator: ``@register("gelu_conv")`` above the factory function.
    """
    if factory is None:
        return lambda f: register(name, f, replace=replace)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"an op name is an identifier (letters, digits and _), got {name!r}")
    if not callable(factory):
        raise TypeError(f"register({name!r}, ...): the factory must be callable "
                        f"(C, stride, affine) -> nn.Module, got {type(factory).__name__}")
    current = OPS.get(name)
    if isinstance(current, RegisteredOp) and current.factory is factory:
        return factory
    if current is not None and not replace:
        kind = "a registered" if isinstance(current, RegisteredOp) else "a built-in"
        raise ValueError(f"{name!r} is already {kind} op; pick another name, or "
                         "register(..., replace=True) to replace it")
    if isinstance(current, RegisteredOp):
        current = current.replaced
    OPS[name] = RegisteredOp(name, factory, current)
    return factory


def unregister(name: str) -> None:
    """Remove the registered op ``name``; a built-in op it replaced comes back."""
    current = OPS.get(name)
    if not isinstance(current, RegisteredOp):
        raise ValueError(f"{name!r} is not a registered op"
                         + (" (it is built in)" if current is not None else ""))
    if current.replaced is None:
        del OPS[name]
    else:
        OPS[name] = current.replaced


def registered_ops() -> Tuple[str, ...]:
    """The names of the registered ops, in registration order."""
    return tuple(n for n, f in OPS.items() if isinstance(f, RegisteredOp))


def is_registered(name: str) -> bool:
    return isinstance(OPS.get(name), RegisteredOp)


__all__ = ["RegisteredOp", "check_op_shape", "is_registered", "register", "registered_ops",
           "unregister"]
