"""The JSON files of a run folder, read at the edge: every failure is one ``UserError`` line.

A run folder holds ``metrics.json`` (every stage), ``alphas.json`` (a search) and
``genotype.json``; a file that is missing, too large (``MAX_RUN_JSON_BYTES``), not UTF-8, not
JSON, nested absurdly deep, or whose values have the wrong types is refused with one line naming
the file and the first value that is wrong (``metrics.json is not a fastnas metrics file:
history[0].train_loss: expected a finite number, got 'abc'``). Inner code then trusts the
shapes declared here.

A schema is built from a few parts, each a callable ``check(value, where)`` that raises
``SchemaError``: ``NUMBER``, ``INT``, ``STR``, ``BOOL``, ``ANY``, ``nullable(s)``,
``list_of(s)``, ``obj(required, optional)`` (other keys are allowed: newer fastnas versions add
keys, older readers ignore them).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, Mapping, Optional

from .errors import UserError
from .limits import MAX_RUN_JSON_BYTES

Schema = Callable[[Any, str], None]


class SchemaError(ValueError):
    """A value of the wrong type or out of range; the message names where it is."""


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _expect(ok: bool, where: str, what: str, value: Any) -> None:
    if not ok:
        raise SchemaError(f"{where or 'the top level'}: expected {what}, got {_show(value)}")


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def NUMBER(value: Any, where: str) -> None:  # noqa: N802 (schema constants read as types)
    """A finite int or float (not a bool)."""
    _expect(isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value), where, "a finite number", value)


def INT(value: Any, where: str) -> None:  # noqa: N802
    """A non-negative int (not a bool)."""
    _expect(isinstance(value, int) and not isinstance(value, bool) and value >= 0, where,
            "a non-negative integer", value)


def STR(value: Any, where: str) -> None:  # noqa: N802
    _expect(isinstance(value, str), where, "a string", value)


def BOOL(value: Any, where: str) -> None:  # noqa: N802
    _expect(isinstance(value, bool), where, "true or false", value)


def ANY(value: Any, where: str) -> None:  # noqa: N802
    pass


def nullable(schema: Schema) -> Schema:
    """``schema`` or null (JSON's null is how fastnas writes a NaN or a value not measured)."""
    def check(value: Any, where: str) -> None:
        if value is not None:
            schema(value, where)
    return check


def list_of(schema: Schema, max_len: Optional[int] = None) -> Schema:
    def check(value: Any, where: str) -> None:
        _expect(isinstance(value, list), where, "a list", value)
        if max_len is not None and len(value) > max_len:
            raise SchemaError(f"{where}: {len(value)} items, at most {max_len}")
        for i, item in enumerate(value):
            schema(item, f"{where}[{i}]")
    return check


def obj(required: Mapping[str, Schema], optional: Mapping[str, Schema] = None) -> Schema:
    """An object with the ``required`` keys, and ``optional`` ones checked when present."""
    optional = optional or {}

    def check(value: Any, where: str) -> None:
        _expect(isinstance(value, dict), where, "an object", value)
        for key, schema in required.items():
            if key not in value:
                raise SchemaError(f"{where or 'the top level'}: the key {key!r} is missing")
            schema(value[key], _key(where, key))
        for key, schema in optional.items():
            if key in value:
                schema(value[key], _key(where, key))
    return check


# -- the files ------------------------------------------------------------------------------------
_MEASURE = nullable(NUMBER)
RECORD = obj({"epoch": INT}, {k: _MEASURE for k in (
    "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds",
    "reward", "baseline", "entropy", "drop_path_prob")} | {
    "steps": INT, "skipped_steps": INT, "genotype": STR, "arch": STR})
METRICS = obj({"history": list_of(RECORD)},
              {"method": STR, "dataset": nullable(STR), "genotype": nullable(STR),
               "config": obj({}), "complete": BOOL, "epochs": INT, "seconds": _MEASURE})
PANEL = obj({"group": STR, "row": INT, "col": INT, "title": STR, "key": STR,
             "options": list_of(STR)})
ALPHAS = obj({"format": INT, "method": STR, "what": STR, "panels": list_of(PANEL),
              "epochs": list_of(INT), "weights": list_of(list_of(list_of(NUMBER)))})


def read_json(path: str, what: str = "JSON file", max_bytes: int = MAX_RUN_JSON_BYTES) -> Any:
    """The parsed JSON of ``path``; a UserError line for every way it can fail to be JSON."""
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise UserError(f"{path} is {size} bytes; a {what} is at most {max_bytes}")
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a {what}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a {what} (not UTF-8 text; a binary file?)") from None
    except json.JSONDecodeError as e:
        cut = " (truncated?)" if e.pos >= len(raw.rstrip()) else ""
        raise UserError(f"{path} is not a {what}: invalid JSON at line {e.lineno} column "
                        f"{e.colno}{cut}") from None
    except RecursionError:
        raise UserError(f"{path} is not a {what}: nested too deeply") from None


def read_checked(path: str, schema: Schema, what: str) -> Any:
    """``read_json(path)`` validated by ``schema``; one UserError line naming the bad value."""
    data = read_json(path, what)
    try:
        schema(data, "")
    except SchemaError as e:
        raise UserError(f"{path} is not a {what}: {e}") from None
    except RecursionError:
        raise UserError(f"{path} is not a {what}: nested too deeply") from None
    return data


def read_metrics(path: str) -> Dict[str, Any]:
    """A stage's ``metrics.json`` (see ``METRICS``)."""
    return read_checked(path, METRICS, "fastnas metrics file")


def read_alphas(path: str) -> Dict[str, Any]:
    """A search's ``alphas.json`` (see ``ALPHAS``)."""
    return read_checked(path, ALPHAS, "fastnas alpha history")


__all__ = ["ALPHAS", "ANY", "BOOL", "INT", "METRICS", "NUMBER", "PANEL", "RECORD", "STR",
           "SchemaError", "list_of", "nullable", "obj", "read_alphas", "read_checked",
           "read_json", "read_metrics"]
