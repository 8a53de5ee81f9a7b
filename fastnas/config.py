"""The validated-config base shared by ``DARTSConfig``, ``ENASConfig`` and ``TrainConfig``.

A config is a dataclass whose fields declare their own check::

    @dataclass
    class MyConfig(Config):
        lr: float = number(0.025, low=0, low_open=True)
        lr_min: float = number(0.0, low=0, high="lr")      # a bound may name another field
        epochs: int = integer(600, low=1)
        clip: Optional[float] = number(5.0, low=0, low_open=True, optional=True)
        mode: str = choice("fp32", ("fp32", "bf16"))

``Config.__post_init__`` runs every check, in field order, and raises a ``TypeError`` (wrong
type) or ``ValueError`` (out of range) whose message names the key, the value and what was
expected. ``from_dict`` refuses unknown keys by name; ``to_dict`` gives plain values that
``from_dict`` reads back to an equal config.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

C = TypeVar("C", bound="Config")
Bound = Union[None, int, float, str]


def check_int(name: str, value: Any, low: Optional[int] = None, high: Optional[int] = None,
              choices: Optional[Sequence[int]] = None) -> None:
    """``value`` is an int (not a bool) in ``[low, high]`` and in ``choices`` if given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")


def check_float(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """``value`` is a finite real number (int or float, not a bool) within the bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """``value`` is one of the strings ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_device(name: str, value: Any) -> None:
    """``'auto'`` or a string ``torch.device`` accepts (whether it exists is checked on use)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string such as 'auto', 'cpu' or 'cuda', got {value!r}")
    if value != "auto":
        import torch

        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            raise ValueError(f"{name} must be 'auto' or a torch device such as 'cpu' or 'cuda:0', "
                             f"got {value!r}") from None


# -- field declarations ---------------------------------------------------------------------------
def _field(default: Any, check: Callable[[str, Any, Config], None], optional: bool) -> Any:
    def run(name: str, value: Any, config: Config) -> None:
        if value is None and optional:
            return
        check(name, value, config)

    return dataclasses.field(default=default, metadata={"check": run})


def _resolve(bound: Bound, config: Config) -> Optional[float]:
    return getattr(config, bound) if isinstance(bound, str) else bound


def integer(default: Optional[int], low: Bound = None, high: Bound = None,
            choices: Optional[Sequence[int]] = None, optional: bool = False) -> Any:
    """A field checked by ``check_int``; a bound given as a string is another field's value."""
    return _field(default, lambda n, v, c: check_int(n, v, _resolve(low, c), _resolve(high, c),
                                                      choices), optional)


def number(default: Optional[float], low: Bound = None, high: Bound = None,
           low_open: bool = False, high_open: bool = False, optional: bool = False) -> Any:
    """A field checked by ``check_float``; a bound given as a string is another field's value."""
    return _field(default, lambda n, v, c: check_float(n, v, _resolve(low, c), _resolve(high, c),
                                                        low_open, high_open), optional)


def choice(default: Optional[str], choices: Sequence[str], optional: bool = False) -> Any:
    """A field holding one of ``choices``."""
    return _field(default, lambda n, v, c: check_choice(n, v, choices), optional)


def flag(default: bool) -> Any:
    """A True/False field."""
    return _field(default, lambda n, v, c: check_bool(n, v), False)


def device(default: str = "auto") -> Any:
    """A device field: ``'auto'`` or a torch device string."""
    return _field(default, lambda n, v, c: check_device(n, v), False)


class Config:
    """Base of fastnas's configs (see the module docstring). Subclasses are dataclasses."""

    def __post_init__(self) -> None:
        self.resolve_defaults()
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                check(f.name, getattr(self, f.name), self)
        self.validate()

    def resolve_defaults(self) -> None:
        """Fill fields whose default depends on other fields (before the checks)."""

    def validate(self) -> None:
        """Checks that involve several fields (after the per-field checks)."""

    @classmethod
    def from_dict(cls: type[C], values: Union[Mapping[str, Any], C, None]) -> C:
        """Build from a mapping (or return a config of this class as is); unknown keys raise a
        ValueError naming them and listing the known keys."""
        if isinstance(values, cls):
            return values
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise TypeError(f"config must be a dict or {cls.__name__}, got "
                            f"{type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class LoopConfig(Config):
    """Settings every training loop shares (DARTS, ENAS, final training): what a NaN or Inf
    loss, gradient norm or weight does. ``stop`` (default) stops with ``NonFiniteError``;
    ``skip`` drops that step's update and stops after ``max_nonfinite_skips`` in a row."""

    on_nonfinite: str = choice("stop", ("stop", "skip"))
    max_nonfinite_skips: int = integer(10, low=1)


# -- config files -----------------------------------------------------------------------------
STAGES = ("search", "train")
# Keys a stage sets itself: from the data (``in_channels``, ``num_classes``) and from ``--device``.
RUNTIME_KEYS = ("in_channels", "num_classes", "device")


def read_config_file(path: str, stage: Optional[str] = None) -> dict:
    """The stage tables of a JSON (``.json``) or TOML (any other name) config file, as
    ``{"search": {...}, "train": {...}}``.

    A file holds a ``search`` and/or a ``train`` table of config keys (``fastnas run`` reads both;
    a run folder's ``config.json`` has this form), or, for a one-stage command (``stage``), the
    keys of that stage at the top level. The keys themselves are checked by the stage's config;
    here only the shape is, and every problem is a ``ValueError`` naming the file."""
    import json

    try:
        with open(path, "rb") as f:
            raw = f.read((1 << 20) + 1)
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e.strerror or e}") from None
    if len(raw) > 1 << 20:
        raise ValueError(f"config file {path} is larger than 1 MiB")
    try:
        text = raw.decode("utf-8")
        if path.endswith(".json"):
            values = json.loads(text)
        else:
            values = _toml_loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        kind = "JSON" if path.endswith(".json") else "TOML"
        raise ValueError(f"config file {path} is not valid {kind}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a table of keys, got "
                         f"{type(values).__name__}")
    tables = {k: v for k, v in values.items() if k in STAGES}
    if not tables:
        if stage is None:
            raise ValueError(f"config file {path} must hold a [search] and/or a [train] table "
                             "for fastnas run")
        tables = {stage: values}
    elif len(tables) != len(values):
        raise ValueError(f"config file {path}: keys {sorted(set(values) - set(tables))} stand "
                         "outside the [search] and [train] tables")
    elif stage is not None and stage not in tables:
        raise ValueError(f"config file {path} has no [{stage}] table (it holds "
                         f"{' and '.join(f'[{t}]' for t in tables)})")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ValueError(f"config file {path}: {name} must be a table of keys, got "
                             f"{type(table).__name__}")
        if "device" in table:
            raise ValueError(f"config file {path}: the device is chosen with --device, not "
                             f"in the file ({name}.device)")
    return tables


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("TOML needs Python 3.11+ or `pip install tomli`; a .json file "
                             "works everywhere") from None
    return tomllib.loads(text)


__all__ = ["Config", "LoopConfig", "RUNTIME_KEYS", "STAGES", "check_bool", "check_choice",
           "check_device", "check_float", "check_int", "choice", "device", "flag", "integer",
           "number", "read_config_file"]
