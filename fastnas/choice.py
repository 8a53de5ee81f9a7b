"""Mixed ops a user places inside their own ``nn.Module``: ``Choice`` and ``InputChoice``.

``Choice(candidates)`` holds ``K`` candidate modules (a list, named ``"0"``, ``"1"``, ... or a
dict, named by its keys) that map the same inputs to outputs of one shape. ``InputChoice(
n_candidates, n_chosen)`` is called with a list of ``n_candidates`` tensors of one shape. In a
search (``DARTSOptimizer(config, model=net)``, ``fastnas.darts.model_search``) each choice has an
alpha vector ``a`` of ``K`` entries, owned by the search, and computes

    y = sum_k w_k y_k,    w = relaxation.sample(a, phase)

with ``y_k`` the output of candidate ``k`` (``Choice``) or input ``k`` (``InputChoice``), summed by
``fastnas.kernels.weighted_sum`` (Triton on CUDA, the plain torch sum otherwise, as the kernel
backend picks). When the relaxation samples one candidate (a hard relaxation, GDAS' Gumbel) with
straight-through weights ``w``, only that candidate ``s`` runs:

    y = w_s y_s + sum_{k != s} w_k      (the other weights are 0 in value: they pass gradient only)

Outside a search (no owner) a choice raises a ``UserError``: it has no weights to mix with,
and a silent uniform mix would train something nobody searched. After the search,
``fixed_model()`` replaces every ``Choice`` by its chosen candidate module and every
``InputChoice`` by a ``FixedInputChoice`` summing the ``n_chosen`` chosen inputs.

An ``InputChoice`` in a search mixes all its inputs (DARTS' relaxation, as NNI's DARTS does);
``n_chosen`` says how many of them the export keeps: the ``n_chosen`` strongest.

``ChoiceSpace`` is the searched space as data: the choice names (module paths in the user's
model, ``named_modules`` order) and each one's option names; the alpha history and its plots
read it (``fastnas.reports.alphas``).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from . import kernels
from .errors import UserError


class _Owned(nn.Module):
    """What ``Choice`` and ``InputChoice`` share: a weak link to the search that owns their
    mixing weights (not a submodule: it is neither in the state_dict nor deep-copied)."""

    n_candidates: int

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "_owner", None)

    def __getstate__(self):
        """Pickled (``torch.save`` of a whole model) without the link to its search."""
        state = dict(self.__dict__)
        state["_owner"] = None
        return state

    def attach(self, owner: Any) -> None:
        """Mix with ``owner.mixing_of(self) -> (w [K], index or None)`` from now on."""
        object.__setattr__(self, "_owner", weakref.ref(owner))

    def detach_owner(self) -> None:
        object.__setattr__(self, "_owner", None)

    def _mixing(self) -> Tuple[torch.Tensor, Optional[int]]:
        owner = self._owner() if self._owner is not None else None
        if owner is None:
            raise UserError(f"{type(self).__name__} has no mixing weights outside a search: run "
                            f"the model through DARTSOptimizer(config, model=net), or train "
                            f"optimizer.fixed_model() after it")
        return owner.mixing_of(self)

    def _mix(self, ys: List[torch.Tensor], w: torch.Tensor, index: Optional[int],
             what: str) -> torch.Tensor:
        shapes = {tuple(y.shape) for y in ys}
        if len(shapes) > 1:
            raise UserError(f"{type(self).__name__}: the {what} must have one shape, got "
                            f"{sorted(shapes)}")
        dtype = ys[0].dtype
        for y in ys[1:]:
            dtype = torch.promote_types(dtype, y.dtype)
        ys = [y if y.dtype == dtype else y.to(dtype) for y in ys]
        if index is None:
            return kernels.weighted_sum(ys, w)
        (y,) = ys
        out = kernels.weighted_sum([y], w[index:index + 1])
        return out + (w.sum() - w[index])   # the zero-valued weights of the others


class Choice(_Owned):
    """One of ``candidates`` (a list or a dict of modules with one output shape); see the module
    docstring. ``names`` are the dict's keys or ``"0"``, ``"1"``, ...; ``candidates`` holds the
    modules in that order (an ``nn.ModuleList``: state_dict keys ``candidates.<position>``)."""

    def __init__(self, candidates: Union[Sequence[nn.Module], Mapping[str, nn.Module]]):
        super().__init__()
        if isinstance(candidates, (Mapping, nn.ModuleDict)):
            items = list(candidates.items())
        elif isinstance(candidates, (list, tuple, nn.ModuleList)):
            items = [(str(k), m) for k, m in enumerate(candidates)]
        else:
            raise UserError(f"Choice takes a list or a dict of modules, got "
                            f"{type(candidates).__name__}")
        if len(items) < 1:
            raise UserError("Choice needs at least one candidate")
        for name, module in items:
            if not isinstance(name, str) or not name:
                raise UserError(f"Choice: candidate names must be non-empty strings, got "
                                f"{name!r}")
            if not isinstance(module, nn.Module):
                raise UserError(f"Choice: candidate {name!r} is a {type(module).__name__}, "
                                f"not an nn.Module")
        # A list, named apart: a ModuleDict refuses names such as "half" or "train" (attributes
        # of every module), which are fine names for a candidate.
        self.candidates = nn.ModuleList(m for _, m in items)
        self.names: List[str] = [name for name, _ in items]

    def candidate(self, name: str) -> nn.Module:
        """The candidate called ``name``; a UserError naming the others if there is none."""
        if name not in self.names:
            raise UserError(f"no candidate {name!r}: the candidates are {self.names}")
        return self.candidates[self.names.index(name)]

    @property
    def n_candidates(self) -> int:
        return len(self.candidates)

    def forward(self, *args, **kwargs):
        w, index = self._mixing()
        modules = list(self.candidates)
        if index is None:
            return self._mix([m(*args, **kwargs) for m in modules], w, None,
                             "candidates' outputs")
        return self._mix([modules[index](*args, **kwargs)], w, index, "candidates' outputs")

    def extra_repr(self) -> str:
        return f"candidates={self.names}"


class InputChoice(_Owned):
    """Picks ``n_chosen`` of the ``n_candidates`` tensors it is called with; see the module
    docstring."""

    def __init__(self, n_candidates: int, n_chosen: int = 1):
        super().__init__()
        for name, value, low in (("n_candidates", n_candidates, 1), ("n_chosen", n_chosen, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"InputChoice {name} must be an integer >= {low}, got {value!r}")
        if n_chosen > n_candidates:
            raise UserError(f"InputChoice: n_chosen {n_chosen} exceeds n_candidates "
                            f"{n_candidates}")
        self.n_candidates, self.n_chosen = n_candidates, n_chosen

    @property
    def names(self) -> List[str]:
        return [str(k) for k in range(self.n_candidates)]

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        inputs = _check_inputs(self, inputs, self.n_candidates)
        w, index = self._mixing()
        if index is None:
            return self._mix(inputs, w, None, "inputs")
        return self._mix([inputs[index]], w, index, "inputs")

    def extra_repr(self) -> str:
        return f"n_candidates={self.n_candidates}, n_chosen={self.n_chosen}"


class FixedInputChoice(nn.Module):
    """An ``InputChoice`` after the search: the sum of the inputs at ``chosen``."""

    def __init__(self, n_candidates: int, chosen: Sequence[int]):
        super().__init__()
        self.n_candidates, self.chosen = n_candidates, [int(i) for i in chosen]

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        inputs = _check_inputs(self, inputs, self.n_candidates)
        out = inputs[self.chosen[0]]
        for i in self.chosen[1:]:
            out = out + inputs[i]
        return out

    def extra_repr(self) -> str:
        return f"n_candidates={self.n_candidates}, chosen={self.chosen}"


def _check_inputs(module: nn.Module, inputs, n: int) -> List[torch.Tensor]:
    if not isinstance(inputs, (list, tuple)) or len(inputs) != n:
        got = len(inputs) if isinstance(inputs, (list, tuple)) else type(inputs).__name__
        raise UserError(f"{type(module).__name__} takes a list of {n} tensors, got {got}")
    return list(inputs)


@dataclass(frozen=True)
class ChoiceSpace:
    """The choices of a model as data: ``names`` (module paths), per choice its ``options``
    (candidate names, or input indices as strings) and ``kinds`` (``"choice"`` or ``"input"``).
    ``cell_types`` is ``names``: the history records hold ``alphas_<name>`` as a supernet's hold
    ``alphas_<cell type>``."""

    names: Tuple[str, ...]
    options: Tuple[Tuple[str, ...], ...]
    kinds: Tuple[str, ...]

    @property
    def cell_types(self) -> Tuple[str, ...]:
        return self.names


def find_choices(model: nn.Module) -> Dict[str, Union[Choice, InputChoice]]:
    """``{module path: choice}`` of every ``Choice`` and ``InputChoice`` in ``model``, in
    ``named_modules`` order; a UserError if there is none."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, (Choice, InputChoice))}
    if not found:
        raise UserError(f"the model ({type(model).__name__}) holds no fastnas.Choice or "
                        f"fastnas.InputChoice: nothing to search")
    if "" in found:
        raise UserError("the model itself is a Choice: wrap it in a module of your own")
    return found


def choice_space(choices: Mapping[str, Union[Choice, InputChoice]]) -> ChoiceSpace:
    return ChoiceSpace(tuple(choices), tuple(tuple(c.names) for c in choices.values()),
                       tuple("choice" if isinstance(c, Choice) else "input"
                             for c in choices.values()))


__all__ = ["Choice", "ChoiceSpace", "FixedInputChoice", "InputChoice", "choice_space",
           "find_choices"]
