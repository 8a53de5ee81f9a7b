"""The DARTS paper code's checkpoints, loaded into fastnas models (``fastnas convert-paper``).

The paper's modules hold the same tensors, with the same shapes, under other names; the mapping
is a pure rename, one to one. A paper key is renamed by the first rule that fits:

    cells.i._ops.e._ops.k.REST        -> cells.i.edges.e.ops.k.REST     search supernet: MixedOp k
    cells.i.preprocessX.op.N.REST     -> cells.i.preprocessX.N.REST     ReLUConvBN
    auxiliary_head.features.N.REST    -> auxiliary_head.features.(N-2).REST, N in {2, 3, 5, 6}
    stem*, classifier, cells.i.preprocessX.{conv_1,conv_2,bn} (FactorizedReduce) and
    cells.i._ops.e (final networks)   -> the same name

and inside an op (``cells.i._ops.e`` or ``cells.i.edges.e.ops.k``), by the op the fastnas model
has there: SepConv ``op.N`` -> ``(N // 4).(N % 4)`` (two stacked relu-dw-pw-bn blocks), DilConv
``op.N`` -> ``N``; other ops (pools with their BN, FactorizedReduce, ``conv_7x1_1x7``) keep their
names. A key that fits no rule, or lands on no tensor of the model, is an error naming it: a
wrong genotype or size fails loudly instead of leaving weights at their initial values.

Checkpoints written by the paper's ImageNet script (``{"state_dict": ...}`` from a
``DataParallel`` model) are unwrapped first (the ``module.`` prefix is dropped). BatchNorm's
``num_batches_tracked``, which PyTorch 0.3 (the paper's) did not save, is filled in by PyTorch.
The paper never saves its alphas: a search supernet loads everything else, and
:func:`load_paper_state_dict` returns the alphas' names as missing.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Tuple

import torch
import torch.nn as nn

from .checkpoint import load_checkpoint, save_atomic
from .errors import UserError
from .genotypes import Genotype
from .networks import NetworkCIFAR
from .ops import DilConv, ReLUConvBN, SepConv
from .supernet import SearchNetwork
from .training import TrainConfig

_SEARCH_OP = re.compile(r"^(cells\.\d+)\._ops\.(\d+)\._ops\.(\d+)\.(.+)$")
_FINAL_OP = re.compile(r"^(cells\.\d+\._ops\.\d+)\.(.+)$")
_PREPROCESS = re.compile(r"^(cells\.\d+\.preprocess[01])\.(.+)$")
_AUXILIARY = re.compile(r"^auxiliary_head\.features\.(\d+)\.(.+)$")
_KEPT = re.compile(r"^(stem\d?|classifier|auxiliary_head\.classifier)\.")
_AUXILIARY_SHIFT = {2: 0, 3: 1, 5: 3, 6: 4}  # the paper's head starts with ReLU and AvgPool
_FACTORIZED = re.compile(r"^(conv_1|conv_2|bn)\.")


def _inside_op(op: nn.Module, rest: str) -> str:
    """The name of ``rest`` (a key inside a paper op) inside the fastnas op ``op``."""
    match = re.match(r"^op\.(\d+)\.(.+)$", rest)
    if isinstance(op, SepConv):
        if match and int(match.group(1)) < 8:
            n = int(match.group(1))
            return f"{n // 4}.{n % 4}.{match.group(2)}"
        raise KeyError("a SepConv holds op.0 .. op.7")
    if isinstance(op, (DilConv, ReLUConvBN)):
        if match:
            return f"{match.group(1)}.{match.group(2)}"
        raise KeyError(f"a {type(op).__name__} holds op.N")
    if match:
        raise KeyError(f"op.N belongs to a SepConv or DilConv, the model has a "
                       f"{type(op).__name__} here")
    return rest


def fastnas_name(key: str, modules: Mapping[str, nn.Module]) -> str:
    """The fastnas name of the paper's ``key`` in a model whose ``named_modules()`` are
    ``modules`` (see the module docstring); KeyError saying why when no rule fits."""
    m = _SEARCH_OP.match(key)
    if m:
        path = f"{m.group(1)}.edges.{m.group(2)}.ops.{m.group(3)}"
        if path not in modules:
            raise KeyError(f"the model has no op {path}")
        return f"{path}.{_inside_op(modules[path], m.group(4))}"
    m = _FINAL_OP.match(key)
    if m:
        if m.group(1) not in modules:
            raise KeyError(f"the model has no op {m.group(1)}")
        return f"{m.group(1)}.{_inside_op(modules[m.group(1)], m.group(2))}"
    m = _PREPROCESS.match(key)
    if m:
        if m.group(1) not in modules:
            raise KeyError(f"the model has no {m.group(1)}")
        module = modules[m.group(1)]
        if isinstance(module, ReLUConvBN):
            return f"{m.group(1)}.{_inside_op(module, m.group(2))}"
        if _FACTORIZED.match(m.group(2)):
            return key
        raise KeyError(f"{m.group(1)} is a {type(module).__name__}")
    m = _AUXILIARY.match(key)
    if m:
        n = int(m.group(1))
        if n not in _AUXILIARY_SHIFT:
            raise KeyError("the paper's auxiliary head holds tensors in features.2, 3, 5 and 6")
        return f"auxiliary_head.features.{_AUXILIARY_SHIFT[n]}.{m.group(2)}"
    if _KEPT.match(key):
        return key
    raise KeyError("no naming rule of the paper's code fits it")


def unwrap(checkpoint: Any) -> Dict[str, torch.Tensor]:
    """The state_dict inside a paper checkpoint: itself, or its ``state_dict`` entry; the
    ``module.`` prefix of a ``DataParallel`` model dropped."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError("not a state_dict: expected a mapping from names to tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def paper_to_fastnas(model: nn.Module, state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """``state_dict`` (the paper's names) renamed for ``model``; ValueError naming every key that
    fits no rule or no tensor of ``model``, and every shape that differs."""
    state_dict = unwrap(state_dict)
    check_tensors(state_dict)
    modules = dict(model.named_modules())
    own = model.state_dict()
    renamed: Dict[str, torch.Tensor] = {}
    problems: List[str] = []
    for key, tensor in state_dict.items():
        try:
            name = fastnas_name(key, modules)
        except KeyError as e:
            problems.append(f"{key} ({e.args[0]})")
            continue
        if name not in own:
            problems.append(f"{key} (-> {name}, which the model does not have)")
        elif own[name].shape != tensor.shape:
            problems.append(f"{key} (shape {tuple(tensor.shape)}, the model's {name} has "
                            f"{tuple(own[name].shape)})")
        else:
            renamed[name] = tensor
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more"
                                            if len(problems) > 5 else "")
        raise ValueError(f"{len(problems)} key(s) of the paper's state_dict do not fit "
                         f"{type(model).__name__}: {shown}")
    return renamed


def load_paper_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> List[str]:
    """Load a checkpoint of the DARTS paper's code into ``model`` (``NetworkCIFAR``,
    ``NetworkImageNet``, or a search supernet) and return the names the checkpoint did not hold:
    ``[]`` for a final network (loaded with ``strict=True``), the alphas for a supernet (the
    paper does not save them; they keep their values). ValueError for any other mismatch."""
    renamed = paper_to_fastnas(model, state_dict)
    allowed = ({"alphas_normal", "alphas_reduce"} if isinstance(model, SearchNetwork)
               else set())
    # BatchNorm fills in a missing num_batches_tracked itself (a plain dict has no version).
    missing = [k for k in model.state_dict() if k not in renamed
               and not k.endswith("num_batches_tracked")]
    unexpected = sorted(set(missing) - allowed)
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more"
                                             if len(unexpected) > 5 else "")
        raise ValueError(f"the paper's state_dict lacks {len(unexpected)} tensor(s) of "
                         f"{type(model).__name__}: {shown}")
    model.load_state_dict(renamed, strict=not missing)
    return missing


# -- the converter --------------------------------------------------------------------------------
_CELL = re.compile(r"^cells\.(\d{1,9})\.")


def check_tensors(state: Mapping[str, torch.Tensor]) -> None:
    """ValueError naming the first tensor that no real checkpoint holds: one whose shape claims
    more values than its storage has (an expanded, stride-0 or overlapping view: the shape is
    what sizes the network, so it must be backed by the file), or one with a NaN or Inf."""
    for key, tensor in state.items():
        needed = tensor.numel() * tensor.element_size()
        stored = tensor.untyped_storage().nbytes() - tensor.storage_offset() * tensor.element_size()
        if tensor.numel() and (stored < needed or any(
                stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape))):
            raise ValueError(f"{key} claims shape {tuple(tensor.shape)} but its storage holds "
                             f"{max(stored, 0) // tensor.element_size()} values (an expanded or "
                             "overlapping view, which no checkpoint of the paper holds)")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{key} holds NaN or Inf values")


def network_shape(state: Mapping[str, torch.Tensor]) -> Tuple[int, int, int, int, bool]:
    """``(C, num_classes, layers, in_channels, auxiliary)`` of a paper ``NetworkCIFAR``
    state_dict (its stem has ``3 C`` channels). Every size is checked against the tensors that
    carry it before anything is built: the stem is a ``[3 C, in, k, k]`` convolution, the
    classifier a ``[classes, features]`` matrix, and the cells are numbered ``0 .. layers - 1``
    with tensors for each (a key ``cells.100000000.*`` does not make 10^8 cells). ValueError
    naming the first that is not so."""
    stem, classifier = state["stem.0.weight"], state["classifier.weight"]
    if stem.dim() != 4 or stem.shape[0] == 0 or stem.shape[0] % 3 or stem.shape[1] == 0:
        raise ValueError(f"stem.0.weight has shape {tuple(stem.shape)}; the paper's stem is a "
                         "[3 C, in_channels, 3, 3] convolution")
    if classifier.dim() != 2 or classifier.shape[0] < 2:
        raise ValueError(f"classifier.weight has shape {tuple(classifier.shape)}; expected "
                         "[classes >= 2, features]")
    cells = set()
    for key in state:
        m = _CELL.match(key)
        if key.startswith("cells.") and m is None:
            raise ValueError(f"{key} is no tensor of a numbered cell (cells.N.*)")
        if m is not None:
            cells.add(int(m.group(1)))
    if not cells:
        raise ValueError("it holds no cells.* tensors")
    layers = max(cells) + 1
    if len(cells) != layers:
        missing = next(i for i in range(layers) if i not in cells)  # at most len(cells) steps
        raise ValueError(f"it holds tensors for {len(cells)} cells numbered up to {layers - 1}; "
                         f"cell {missing} has none")
    return (stem.shape[0] // 3, classifier.shape[0], layers, stem.shape[1],
            any(k.startswith("auxiliary_head.") for k in state))


def convert_paper_checkpoint(source: str, target: str, genotype: Genotype) -> Dict[str, Any]:
    """Convert the paper's ``NetworkCIFAR`` checkpoint ``source`` (trained with ``genotype``)
    into a fastnas model file ``target`` that :func:`fastnas.load_model` reads; returns the
    network's settings. Errors are :class:`UserError` naming the problem."""
    try:
        state = unwrap(load_checkpoint(source))
    except ValueError as e:
        raise UserError(f"{source}: {e}") from None
    if any(k.startswith("stem0.") for k in state):
        raise UserError(f"{source} is a NetworkImageNet checkpoint; load it from Python: "
                        "fastnas.load_paper_state_dict(fastnas.NetworkImageNet(...), state)")
    if any(_SEARCH_OP.match(k) for k in state):
        raise UserError(f"{source} is a search supernet checkpoint; load it from Python: "
                        "fastnas.load_paper_state_dict(fastnas.SearchNetwork(...), state)")
    if "stem.0.weight" not in state or "classifier.weight" not in state:
        raise UserError(f"{source} is not a checkpoint of the paper's NetworkCIFAR "
                        "(no stem.0.weight or classifier.weight)")
    try:  # every claimed size is checked before the network is built
        check_tensors(state)
        C, num_classes, layers, in_channels, auxiliary = network_shape(state)
        config = TrainConfig(channels=C, num_classes=num_classes, layers=layers,
                             in_channels=in_channels, auxiliary=auxiliary, device="cpu")
        config.check_network(genotype)
    except (TypeError, ValueError) as e:
        raise UserError(f"{source} is not a checkpoint fastnas can convert: {e}") from None
    model = NetworkCIFAR(C, num_classes, layers, auxiliary, genotype, in_channels=in_channels)
    try:
        load_paper_state_dict(model, state)
    except ValueError as e:
        raise UserError(f"{source} does not fit NetworkCIFAR(C={C}, layers={layers}, "
                        f"auxiliary={auxiliary}) with genotype {genotype}: {e}") from None
    save_atomic({"model": model.state_dict(), "genotype": str(genotype),
                 "config": config.to_dict(), "source": f"DARTS paper checkpoint {source}"},
                target)
    return {"channels": C, "layers": layers, "num_classes": num_classes,
            "in_channels": in_channels, "auxiliary": auxiliary}


__all__ = ["check_tensors", "convert_paper_checkpoint", "fastnas_name", "load_paper_state_dict",
           "network_shape", "paper_to_fastnas", "unwrap"]
