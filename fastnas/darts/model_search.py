"""DARTS inside the user's own model: the supernet interface over its ``Choice``s.

``DARTSOptimizer(config, model=net)`` searches ``net`` through ``ModelSearch(net, relaxation)``,
which gives the rest of the search what a built-in supernet gives it:

- ``arch`` (``ChoiceParameters``): one alpha vector per choice of ``net`` (``fastnas.choice``;
  module paths in ``named_modules`` order), registered ``arch.alphas_list.<i>`` and drawn
  ``1e-3 * randn(1, K)`` in that order; the phase of the next passes, ``mixing_of(choice)``
  through the relaxation, ``strengths()`` per choice (what ``alphas.json`` and ``export`` read),
  ``penalty()``, ``set_epoch`` and the relaxation's state;
- ``alphas()``, ``weights()`` / ``named_weights()`` (the parameters of ``net`` that require
  grad when the search starts), ``forward`` = ``net.forward`` (each choice asks ``arch`` for its
  weights as it runs, so ``torch.func.functional_call`` with virtual weights works unchanged);
- ``export()``: ``{choice path: chosen candidate name}`` (an ``InputChoice``: the list of the
  ``n_chosen`` strongest input indices, strongest first), and ``fixed_model()``: a deep copy of
  ``net`` with each ``Choice`` replaced by its chosen candidate module and each ``InputChoice``
  by a ``FixedInputChoice``.

Each alpha vector is a ``[1, K]`` matrix, one "edge" of ``K`` ops to the relaxation, so every
relaxation of ``fastnas.space`` (softmax, and the Gumbel, Dirichlet and sigmoid ones) applies
unchanged; a hard relaxation's sampled index makes the choice run only that candidate. The
supernet options that act on a cell's edges do not apply to a user's model and are refused
(``partial_channels > 1``, ``edge_normalization``, ``aux_skip``).

The wrapper holds ``net`` itself, not a copy: the search trains the user's module in place.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..choice import Choice, FixedInputChoice, InputChoice, choice_space, find_choices
from ..errors import UserError
from ..space import EVALUATION, WEIGHTS, Relaxation, Softmax, check_phase


class ChoiceParameters(nn.Module):
    """The alphas of every choice, the relaxation and the current phase (the choices'
    ``ArchitectureParameters``; see the module docstring)."""

    def __init__(self, choices: Dict[str, Union[Choice, InputChoice]],
                 relaxation: Optional[Relaxation] = None):
        super().__init__()
        self.space = choice_space(choices)
        self.relaxation = Softmax() if relaxation is None else relaxation
        self.current_phase = WEIGHTS
        self.alphas_list = nn.ParameterList(
            [nn.Parameter(1e-3 * torch.randn(1, c.n_candidates)) for c in choices.values()])
        # Looked up by identity as each choice runs (choices are not submodules of this one).
        self._index = {id(c): i for i, c in enumerate(choices.values())}
        # {choice path: index or None} of each choice's last pass (``Relaxation.sample``).
        self.selected: Dict[str, Optional[torch.Tensor]] = {n: None for n in self.space.names}

    @property
    def cell_types(self) -> Tuple[str, ...]:
        return self.space.names

    def alphas(self) -> List[nn.Parameter]:
        return list(self.alphas_list)

    def by_type(self) -> Dict[str, torch.Tensor]:
        return dict(zip(self.space.names, self.alphas_list))

    @contextlib.contextmanager
    def phase(self, phase: str) -> Iterator[None]:
        """Passes inside run in ``phase`` (training mode; eval mode is ``EVALUATION``)."""
        before, self.current_phase = self.current_phase, check_phase(phase)
        try:
            yield
        finally:
            self.current_phase = before

    def mixing_of(self, choice: Union[Choice, InputChoice]) -> Tuple[torch.Tensor, Optional[int]]:
        """``(w [K], index or None)`` for one pass of ``choice``: ``relaxation.sample`` of its
        alphas in the current phase (``EVALUATION`` when the choice is in eval mode)."""
        i = self._index.get(id(choice))
        if i is None:
            raise UserError(f"this {type(choice).__name__} is not one the search found (a copy, "
                            f"or added to the model after the search started)")
        phase = self.current_phase if choice.training else EVALUATION
        w, index = self.relaxation.sample(self.alphas_list[i], phase)
        self.selected[self.space.names[i]] = index
        return w[0], (None if index is None else int(index[0]))

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        self.relaxation.set_epoch(epoch, total_epochs)

    def strengths(self) -> Dict[str, torch.Tensor]:
        """``{choice path: relaxation.strengths(alphas)}`` (``[1, K]`` each)."""
        return {n: self.relaxation.strengths(a) for n, a in self.by_type().items()}

    def penalty(self) -> Optional[torch.Tensor]:
        return self.relaxation.penalty(self.by_type())


class ModelSearch(nn.Module):
    """The user's ``model`` as a supernet (see the module docstring)."""

    def __init__(self, model: nn.Module, relaxation: Optional[Relaxation] = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise UserError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        choices = find_choices(model)
        self.model = model
        self.arch = ChoiceParameters(choices, relaxation)
        for c in choices.values():
            c.attach(self.arch)
        self._choices = list(choices.items())   # plain list: not submodules a second time
        self._trainable = {id(p) for p in model.parameters() if p.requires_grad}

    @property
    def space(self):
        """The ``fastnas.choice.ChoiceSpace`` (the alpha history's panels)."""
        return self.arch.space

    @property
    def relaxation(self) -> Relaxation:
        return self.arch.relaxation

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def alphas(self) -> List[nn.Parameter]:
        return self.arch.alphas()

    def named_weights(self) -> Iterator[Tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if n.startswith("model.")
                and id(p) in self._trainable)

    def weights(self) -> Iterator[nn.Parameter]:
        return (p for _, p in self.named_weights())

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        self.arch.set_epoch(epoch, total_epochs)

    # -- the answer -----------------------------------------------------------------------------
    def export(self) -> Dict[str, Any]:
        """``{choice path: chosen}`` from the strengths: a ``Choice``'s strongest candidate name,
        an ``InputChoice``'s ``n_chosen`` strongest input indices (strongest first; ties: the
        lower index)."""
        out: Dict[str, Any] = {}
        for (name, choice), s in zip(self._choices, self.arch.strengths().values()):
            s = s[0].tolist()
            order = sorted(range(len(s)), key=lambda k: (-s[k], k))
            if isinstance(choice, Choice):
                out[name] = choice.names[order[0]]
            else:
                out[name] = order[:choice.n_chosen]
        return out

    def genotype(self) -> Dict[str, Any]:
        """``export()``: what the search found (the supernet's genotype)."""
        return self.export()

    def fixed_model(self, chosen: Optional[Dict[str, Any]] = None) -> nn.Module:
        """A deep copy of the model with every choice fixed to ``chosen`` (default
        ``export()``): a plain ``nn.Module`` holding no fastnas search object, in train mode,
        with the current weights of the chosen candidates."""
        chosen = self.export() if chosen is None else chosen
        fixed = copy.deepcopy(self.model)
        paths = {id(m): name for name, m in fixed.named_modules()}

        def fix(module: nn.Module) -> nn.Module:
            if isinstance(module, Choice):
                return fix(module.candidate(chosen[paths[id(module)]]))
            if isinstance(module, InputChoice):
                return FixedInputChoice(module.n_candidates, chosen[paths[id(module)]])
            for child_name, child in list(module.named_children()):
                new = fix(child)
                if new is not child:
                    setattr(module, child_name, new)
            return module

        fixed = fix(fixed)
        for m in fixed.modules():
            if isinstance(m, (Choice, InputChoice)):   # reachable only by a second path
                raise UserError("a Choice is reachable twice in the model; fixed_model() "
                                "needs each choice at one place")
        return fixed.train()


def search_model(model: nn.Module):
    """The builder ``DARTSOptimizer`` calls instead of ``build_supernet`` for ``model=``: takes
    ``build_supernet``'s arguments, keeps the relaxation, ignores the supernet's shape
    (``channels``, ``layers``, ``num_nodes``, ``in_channels``, ``num_classes``, ...) and refuses
    the options that act on a cell's edges."""

    def build(supernet: str = "fast", *, relaxation: Optional[Relaxation] = None,
              partial_channels: int = 1, edge_normalization: bool = False,
              aux_skip: Optional[int] = None, **ignored) -> ModelSearch:
        for key, value, off in (("partial_channels", partial_channels, 1),
                                ("edge_normalization", edge_normalization, False),
                                ("aux_skip", aux_skip, None)):
            if value != off:
                raise UserError(f"{key}={value!r} acts on the edges of the built-in supernet and "
                                f"does not apply to model=; leave it at {off!r}")
        return ModelSearch(model, relaxation)

    return build


__all__ = ["ChoiceParameters", "ModelSearch", "search_model"]
