"""Dependencies the reports import only when they need them: matplotlib (installed with fastnas,
but an environment may lack it) and tensorboard (the ``.[tensorboard]`` extra). Without one, the
command that needs it says in one line what to install."""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UserError

# How to install each: matplotlib is a dependency of fastnas itself, tensorboard an extra.
INSTALL = {"matplotlib": 'pip install matplotlib (a dependency of fastnas: pip install -e . '
                         'installs it)',
           "tensorboard": 'pip install -e ".[tensorboard]" (or pip install tensorboard)'}


class MissingExtra(UserError):
    """An optional dependency is not installed; the message says what to install."""

    def __init__(self, package: str, what: str):
        super().__init__(f"{what} needs {package}, which is not installed: {INSTALL[package]}")
        self.package = package


def require(package: str, what: str) -> ModuleType:
    """Import ``package`` or raise :class:`MissingExtra` naming ``what`` needs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingExtra(package, what) from None


__all__ = ["INSTALL", "MissingExtra", "require"]
