"""Optional dependencies of the reports: matplotlib (``.[plot]``) and tensorboard
(``.[tensorboard]``). Without one, the command that needs it says in one line what to install."""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UserError

EXTRAS = {"matplotlib": "plot", "tensorboard": "tensorboard"}


class MissingExtra(UserError):
    """An optional dependency is not installed; the message says what to install."""

    def __init__(self, package: str, what: str):
        super().__init__(f"{what} needs {package}, which is not installed: "
                         f"pip install -e \".[{EXTRAS[package]}]\" (or pip install {package})")
        self.package = package


def require(package: str, what: str) -> ModuleType:
    """Import ``package`` or raise :class:`MissingExtra` naming ``what`` needs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingExtra(package, what) from None


__all__ = ["EXTRAS", "MissingExtra", "require"]
