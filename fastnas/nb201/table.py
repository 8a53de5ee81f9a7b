"""The NAS-Bench-201 table: the test accuracy (%) of every cell after the benchmark's 200-epoch
training, on CIFAR-10, CIFAR-100 and ImageNet16-120.

The shipped table, ``test-accuracy-200-epochs.csv.bz2`` next to this module, is the CSV of
``TABLE.md`` (its provenance and license: NATS-Bench / NAS-Bench-201, MIT, (c) Xuanyi Dong)
compressed with bz2, byte for byte: ``lookup`` returns the CSV's values exactly (each decimal
string read as the float64 it denotes). A user's own table (``--table FILE``, or
``Table.from_csv``) is a CSV with the same columns, plain or ``.gz``/``.bz2``; it replaces the
shipped one. Malformed files and unknown cells are one-line ``UserError``s.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import math
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple, Union

from ..errors import UserError
from .cell import NB201_CELLS, NB201Cell

TABLE_DATASETS: Tuple[str, ...] = ("cifar10", "cifar100", "imagenet16_120")
TABLE_DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                 "imagenet16_120": "ImageNet16-120"}
COLUMNS = ("arch", *TABLE_DATASETS)
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "test-accuracy-200-epochs.csv.bz2")
MAX_ROWS = 2 * NB201_CELLS  # any more rows must repeat cells: refuse before reading on


@dataclass(frozen=True)
class Accuracies:
    """The table's three test accuracies (%) of ``cell``; ``accuracy`` is ``dataset``'s."""

    cell: NB201Cell
    cifar10: float
    cifar100: float
    imagenet16_120: float
    dataset: str = "cifar10"

    @property
    def accuracy(self) -> float:
        return getattr(self, self.dataset)

    def as_dict(self) -> Dict[str, float]:
        return {d: getattr(self, d) for d in TABLE_DATASETS}

    def summary(self) -> str:
        """``NB201 table: CIFAR-10 93.76, CIFAR-100 70.71, ImageNet16-120 44.10``."""
        return "NB201 table: " + ", ".join(f"{TABLE_DATASET_TITLES[d]} {getattr(self, d):.2f}"
                                           for d in TABLE_DATASETS)


def check_dataset(dataset: str) -> str:
    if dataset not in TABLE_DATASETS:
        raise UserError(f"unknown NB201 table dataset {dataset!r}; use {', '.join(TABLE_DATASETS)}")
    return dataset


def _open_text(path: str):
    if path.endswith(".bz2"):
        return io.TextIOWrapper(bz2.open(path, "rb"), encoding="utf-8", newline="")
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _accuracy(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise UserError(f"{where}: {column} {text!r} is not an accuracy in [0, 100] (%)")
    return value


class Table:
    """Cells and their three accuracies, in the file's row order (the shipped table: the
    benchmark's own index order)."""

    def __init__(self, rows: Dict[NB201Cell, Tuple[float, float, float]], source: str):
        self.rows = rows
        self.source = source

    @classmethod
    def from_csv(cls, path: str) -> Table:
        """Read a table CSV (header ``arch,cifar10,cifar100,imagenet16_120``, in any column
        order); every failure is a one-line UserError naming the file and line."""
        rows: Dict[NB201Cell, Tuple[float, float, float]] = {}
        try:
            with _open_text(path) as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    raise UserError(f"NB201 table {path} is empty")
                header = [h.strip() for h in header]
                if sorted(header) != sorted(COLUMNS):
                    raise UserError(f"NB201 table {path}: columns must be "
                                    f"{','.join(COLUMNS)}, got {','.join(header)[:200]}")
                where_col = {name: header.index(name) for name in COLUMNS}
                for line, fields in enumerate(reader, start=2):
                    where = f"NB201 table {path}, line {line}"
                    if not fields:
                        continue
                    if len(fields) != len(COLUMNS):
                        raise UserError(f"{where}: {len(fields)} fields, expected "
                                        f"{len(COLUMNS)}")
                    if len(rows) >= MAX_ROWS:
                        raise UserError(f"NB201 table {path} has more than {MAX_ROWS} rows")
                    try:
                        cell = NB201Cell.parse(fields[where_col["arch"]])
                    except ValueError as e:
                        raise UserError(f"{where}: {e}") from None
                    if cell in rows:
                        raise UserError(f"{where}: cell {cell} appears twice")
                    rows[cell] = tuple(_accuracy(fields[where_col[d]], where, d)
                                       for d in TABLE_DATASETS)
        except UserError:
            raise
        except FileNotFoundError:
            raise UserError(f"NB201 table {path} does not exist") from None
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise UserError(f"cannot read NB201 table {path}: {reason}") from None
        if not rows:
            raise UserError(f"NB201 table {path} has no rows")
        return cls(rows, path)

    @classmethod
    def load(cls, path: Optional[str] = None) -> Table:
        """``path``'s table, or the shipped one (read once per process)."""
        if path is not None:
            return cls.from_csv(path)
        global _SHIPPED_TABLE
        if _SHIPPED_TABLE is None:
            _SHIPPED_TABLE = cls.from_csv(SHIPPED)
        return _SHIPPED_TABLE

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, cell: NB201Cell) -> bool:
        return cell in self.rows

    @property
    def complete(self) -> bool:
        """Whether every cell of the space has a row."""
        return len(self.rows) == NB201_CELLS

    def cells(self) -> Iterator[NB201Cell]:
        return iter(self.rows)

    def lookup(self, cell: Union[NB201Cell, str], dataset: str = "cifar10") -> Accuracies:
        """The three accuracies of ``cell`` (a ``NB201Cell`` or its benchmark string)."""
        check_dataset(dataset)
        if not isinstance(cell, NB201Cell):
            try:
                cell = NB201Cell.parse(cell)
            except ValueError as e:
                raise UserError(str(e)) from None
        values = self.rows.get(cell)
        if values is None:
            raise UserError(f"cell {cell} is not in the NB201 table {self.source}")
        return Accuracies(cell, *values, dataset=dataset)

    def accuracy(self, cell: NB201Cell, dataset: str) -> float:
        """``dataset``'s accuracy of ``cell`` (a KeyError if it has no row)."""
        return self.rows[cell][TABLE_DATASETS.index(dataset)]

    def best(self, dataset: str = "cifar10") -> Accuracies:
        """The row with the highest ``dataset`` accuracy (the first such, in row order)."""
        column = TABLE_DATASETS.index(check_dataset(dataset))
        cell = max(self.rows, key=lambda c: self.rows[c][column])
        return self.lookup(cell, dataset)

    def column(self, dataset: str) -> List[float]:
        column = TABLE_DATASETS.index(check_dataset(dataset))
        return [values[column] for values in self.rows.values()]


_SHIPPED_TABLE: Optional[Table] = None


def lookup(cell: Union[NB201Cell, str], dataset: str = "cifar10",
           table: Union[Table, str, None] = None) -> Accuracies:
    """The three test accuracies (%) of ``cell`` in the shipped NB201 table (or ``table``: a
    ``Table`` or a CSV path); ``.accuracy`` is ``dataset``'s."""
    if not isinstance(table, Table):
        table = Table.load(table)
    return table.lookup(cell, dataset)


__all__ = ["Accuracies", "COLUMNS", "TABLE_DATASET_TITLES", "SHIPPED", "TABLE_DATASETS", "Table",
           "check_dataset", "lookup"]
