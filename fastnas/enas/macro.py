"""The ENAS macro search space: whole networks of ``num_layers`` layers with skip connections.

States: ``0`` is the stem's output, ``k + 1`` the output of layer ``k``. Layer ``l`` applies its op
(one of ``MACRO_OPS``) to state ``l`` (the layer before it) and adds the states ``j < l`` whose
skip bit ``skips[l][j]`` is 1, as the reference code (``general_child.py``) indexes them. Layer 0
has no skip bits, so an architecture has ``L`` ops and ``L (L - 1) / 2`` bits; its skip density
is the share of bits set.

After the layers ``pool_layers(L) = (L // 3 - 1, 2 * L // 3 - 1)`` every state is halved in
resolution by its own factorized reduction, so later skips still match in shape.

``MacroSupernet`` holds the shared weights (one branch per (layer, op), ``channels`` throughout, the
skip sum followed by BN); a forward pass runs the sampled child only, reducing a state at a pool
only if a later layer reads it. ``MacroNetwork`` is the final network of one architecture (the
reference's fixed-arc child): channels double at each pool and a layer concatenates its skips
with its op's output, then ``ReLU -> 1x1 conv -> BN``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import write_json_atomic
from ..genotypes import parse_json, read_architecture_file
from ..ops import FactorizedReduce
from .micro import batch_statistics_only

# The reference's branch order (``general_child.py``: branch_0 .. branch_5).
MACRO_OPS = ("conv_3x3", "sep_conv_3x3", "conv_5x5", "sep_conv_5x5", "avg_pool_3x3",
             "max_pool_3x3")


def pool_layers(num_layers: int) -> Tuple[int, ...]:
    """Layers after which every state is reduced: ``(L // 3 - 1, 2 * L // 3 - 1)``, those >= 0."""
    d = num_layers // 3
    return tuple(p for p in (d - 1, 2 * d - 1) if p >= 0)


@dataclass(frozen=True)
class MacroArch:
    """A macro architecture: ``ops[l]`` for each layer and ``skips[l]``, ``l`` bits (0 or 1)."""

    ops: Tuple[str, ...]
    skips: Tuple[Tuple[int, ...], ...]

    def __post_init__(self):
        try:
            ops = tuple(self.ops)
            skips = tuple(tuple(row) for row in self.skips)
        except TypeError:
            raise ValueError("MacroArch: ops is a list of names, skips a list of lists of "
                             "bits") from None
        if not ops:
            raise ValueError("MacroArch: at least one layer is needed")
        for l, op in enumerate(ops):
            if op not in MACRO_OPS:
                raise ValueError(f"MacroArch: layer {l} has unknown op {op!r}; "
                                 f"known: {list(MACRO_OPS)}")
        if len(skips) != len(ops):
            raise ValueError(f"MacroArch: {len(ops)} ops but {len(skips)} rows of skips")
        for l, row in enumerate(skips):
            if len(row) != l:
                raise ValueError(f"MacroArch: layer {l} needs {l} skip bits, got {len(row)}")
            for bit in row:
                if isinstance(bit, bool) or bit not in (0, 1):
                    raise ValueError(f"MacroArch: skip bits are 0 or 1, layer {l} has {bit!r}")
        object.__setattr__(self, "ops", ops)
        object.__setattr__(self, "skips", skips)

    @property
    def num_layers(self) -> int:
        return len(self.ops)

    @property
    def skip_density(self) -> float:
        """Share of the ``L (L - 1) / 2`` skip bits that are set (0 for a single layer)."""
        total = self.num_layers * (self.num_layers - 1) // 2
        return sum(map(sum, self.skips)) / total if total else 0.0

    # -- choices of the controller ------------------------------------------------------------
    def to_choices(self) -> List[int]:
        """Flat controller choices: per layer ``[op, skip_0, ..., skip_{l-1}]``."""
        out = []
        for op, row in zip(self.ops, self.skips):
            out += [MACRO_OPS.index(op), *row]
        return out

    @classmethod
    def from_choices(cls, choices: Sequence[int], num_layers: int) -> MacroArch:
        ops, skips, pos = [], [], 0
        for l in range(num_layers):
            ops.append(MACRO_OPS[choices[pos]])
            skips.append(tuple(int(b) for b in choices[pos + 1: pos + 1 + l]))
            pos += 1 + l
        return cls(tuple(ops), tuple(skips))

    # -- text and JSON ------------------------------------------------------------------------
    def __str__(self) -> str:
        return (f"MacroArch(ops={json.dumps(list(self.ops))}, "
                f"skips={json.dumps([list(r) for r in self.skips])})")

    __repr__ = __str__

    _TEXT = re.compile(r"^\s*MacroArch\(\s*ops\s*=\s*(\[[^\]]*\])\s*,"
                       r"\s*skips\s*=\s*(\[.*\])\s*\)\s*$", re.S)

    @classmethod
    def parse(cls, text: str) -> MacroArch:
        """Parse ``str(arch)`` (single or double quotes); never evaluates the text."""
        m = cls._TEXT.match(text) if isinstance(text, str) else None
        if not m:
            raise ValueError("macro architecture text must look like "
                             "MacroArch(ops=[...], skips=[[...], ...])")
        ops = parse_json(m.group(1).replace("'", '"'), "macro architecture text")
        skips = parse_json(m.group(2), "macro architecture text")
        return cls(ops, skips)

    def to_dict(self) -> dict:
        return {"search_space": "macro", "ops": list(self.ops),
                "skips": [list(r) for r in self.skips]}

    @classmethod
    def from_dict(cls, data: dict) -> MacroArch:
        if not isinstance(data, dict):
            raise ValueError(f"macro architecture JSON must be an object, "
                             f"got {type(data).__name__}")
        extra = sorted(set(data) - {"search_space", "ops", "skips"})
        missing = [k for k in ("ops", "skips") if k not in data]
        if missing or extra:
            raise ValueError(f"macro architecture JSON: missing fields {missing}, "
                             f"unknown fields {extra}")
        if data.get("search_space", "macro") != "macro":
            raise ValueError(f"not a macro architecture: search_space={data['search_space']!r}")
        return cls(data["ops"], data["skips"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> MacroArch:
        return cls.from_dict(parse_json(text, "macro architecture JSON"))

    def save(self, path: str) -> None:
        """Write JSON atomically (temp file, then rename)."""
        write_json_atomic(self.to_dict(), path)

    @classmethod
    def load(cls, path: str) -> MacroArch:
        """Read a file written by ``save`` (JSON) or holding ``str(arch)``."""
        text = read_architecture_file(path, "macro architecture")
        return cls.from_json(text) if text.lstrip().startswith("{") else cls.parse(text)


class MacroBranch(nn.Sequential):
    """One macro op: ``1x1 conv -> BN -> ReLU``, then the op (convs: ``conv -> BN -> ReLU``;
    separable convs are one depthwise and one pointwise conv; pools are 3x3 at stride 1)."""

    def __init__(self, op: str, C_in: int, C: int):
        layers = [nn.Conv2d(C_in, C, 1, bias=False), nn.BatchNorm2d(C), nn.ReLU(inplace=False)]
        if op.startswith("conv_") or op.startswith("sep_conv_"):
            k = int(op[-1])
            if op.startswith("sep_conv_"):
                layers += [nn.Conv2d(C, C, k, padding=k // 2, groups=C, bias=False),
                           nn.Conv2d(C, C, 1, bias=False)]
            else:
                layers += [nn.Conv2d(C, C, k, padding=k // 2, bias=False)]
            layers += [nn.BatchNorm2d(C), nn.ReLU(inplace=False)]
        elif op == "avg_pool_3x3":
            layers.append(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))
        elif op == "max_pool_3x3":
            layers.append(nn.MaxPool2d(3, stride=1, padding=1))
        else:
            raise ValueError(f"unknown macro op {op!r}; known: {list(MACRO_OPS)}")
        super().__init__(*layers)


def factorized_reduction(C_in: int, C_out: int) -> FactorizedReduce:
    """``fastnas.ops.FactorizedReduce`` without its leading ReLU: the reference's macro child
    reduces the (BN-normalized, signed) layer outputs as they are."""
    reduce = FactorizedReduce(C_in, C_out)
    reduce.relu = nn.Identity()
    return reduce


def _stem(in_channels: int, C: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))


class MacroSupernet(nn.Module):
    """The shared weights of every macro child; ``forward(x, arch)`` runs that child.

    ``branches[l][k]`` is op ``MACRO_OPS[k]`` of layer ``l``; ``skip_bn[l]`` normalizes layer
    ``l``'s sum ``op(state_l) + sum_j skip_j * state_j``; ``reductions[p][j]`` reduces state ``j``
    at pool ``p``. BatchNorm uses batch statistics always (see ``MicroSupernet``).
    """

    def __init__(self, C: int, num_classes: int, num_layers: int, in_channels: int = 3):
        super().__init__()
        self.num_layers = num_layers
        self.pools = pool_layers(num_layers)
        self.stem = _stem(in_channels, C)
        self.branches = nn.ModuleList(
            nn.ModuleList(MacroBranch(op, C, C) for op in MACRO_OPS) for _ in range(num_layers))
        self.skip_bn = nn.ModuleList(nn.BatchNorm2d(C) for _ in range(num_layers))
        self.reductions = nn.ModuleList(
            nn.ModuleList(factorized_reduction(C, C) for _ in range(p + 2)) for p in self.pools)
        self.classifier = nn.Linear(C, num_classes)
        batch_statistics_only(self)

    def forward(self, x: torch.Tensor, arch: MacroArch) -> torch.Tensor:
        if arch.num_layers != self.num_layers:
            raise ValueError(f"the supernet has {self.num_layers} layers, the architecture "
                             f"{arch.num_layers}")
        # born[j]: the stage (pools passed) at which state j was made; cache[(j, stage)]: tensors
        cache: Dict[Tuple[int, int], torch.Tensor] = {(0, 0): self.stem(x)}
        born, stage = [0], 0

        def fetch(j: int) -> torch.Tensor:
            for s in range(born[j], stage):
                if (j, s + 1) not in cache:
                    cache[(j, s + 1)] = self.reductions[s][j](cache[(j, s)])
            return cache[(j, stage)]

        out = cache[(0, 0)]
        for l, (op, row) in enumerate(zip(arch.ops, arch.skips)):
            out = self.branches[l][MACRO_OPS.index(op)](fetch(l))
            if l > 0:
                for j, bit in enumerate(row):
                    if bit:
                        out = out + fetch(j)
                out = self.skip_bn[l](out)
            cache[(l + 1, stage)] = out
            born.append(stage)
            if l in self.pools:
                stage += 1
        return self.classifier(F.adaptive_avg_pool2d(fetch(self.num_layers), 1).flatten(1))


class MacroNetwork(nn.Module):
    """The final network of one macro architecture, laid out as the reference's fixed-arc child.

    Channels start at ``C`` and double at each pool, where every state is factorized-reduced.
    Each layer runs its op as the search did (``MacroBranch``); layer ``l > 0`` concatenates its
    skips with the op's output and applies ``ReLU -> 1x1 conv -> BN``. ``forward`` returns
    logits, with dropout ``dropout`` before the classifier (the reference's ``1 - keep_prob``).
    """

    def __init__(self, arch: MacroArch, C: int, num_classes: int, in_channels: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        if not isinstance(arch, MacroArch):
            raise TypeError(f"arch must be a MacroArch, got {type(arch).__name__}")
        if C % 2:
            raise ValueError(f"C must be even (factorized reductions halve it), got {C}")
        self.arch = arch
        self.pools = pool_layers(arch.num_layers)
        self.stem = _stem(in_channels, C)
        self.layers = nn.ModuleList()
        self.combine = nn.ModuleList()
        self.reductions = nn.ModuleList()
        C_curr = C
        for l, (op, row) in enumerate(zip(arch.ops, arch.skips)):
            self.layers.append(MacroBranch(op, C_curr, C_curr))
            n_in = 1 + sum(row)
            self.combine.append(nn.Sequential(nn.ReLU(inplace=False),
                                              nn.Conv2d(n_in * C_curr, C_curr, 1, bias=False),
                                              nn.BatchNorm2d(C_curr))
                                if l > 0 else nn.Identity())
            if l in self.pools:
                self.reductions.append(nn.ModuleList(factorized_reduction(C_curr, 2 * C_curr)
                                                     for _ in range(l + 2)))
                C_curr *= 2
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(C_curr, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [self.stem(x)]
        pool = 0
        for l, row in enumerate(self.arch.skips):
            out = self.layers[l](states[-1])
            if l > 0:
                out = self.combine[l](torch.cat([s for s, b in zip(states, row) if b] + [out], 1))
            states.append(out)
            if l in self.pools:
                states = [r(s) for r, s in zip(self.reductions[pool], states)]
                pool += 1
        pooled = F.adaptive_avg_pool2d(states[-1], 1).flatten(1)
        return self.classifier(self.dropout(pooled))


__all__ = ["MACRO_OPS", "MacroArch", "MacroBranch", "MacroNetwork", "MacroSupernet",
           "factorized_reduction", "pool_layers"]
