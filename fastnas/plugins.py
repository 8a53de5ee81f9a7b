"""Plugins: Python modules of the user's that a run imports before anything else (``--plugins``).

A plugin registers its ops (``fastnas.ops.register``) when it is imported; the command line
imports the ``--plugins`` modules in every process (every rank under torchrun) before it reads
any setting, and a stage records them in its checkpoint and ``config.json`` so that a resumed or
repeated run imports them again.

A plugin is code the user chose to run, like any Python import: name only modules you trust
(a ``config.json`` that lists plugins imports them too). The modules are found as ``import``
finds them (installed packages, ``PYTHONPATH``), and in the current folder, which is appended
to ``sys.path`` (last: an installed module of the same name wins).
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Iterable, List, Sequence

from .errors import UserError

_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")


def parse_plugins(text: str) -> List[str]:
    """``"a,b.c"`` -> ``["a", "b.c"]``; a name that is no module path is a UserError."""
    names = [n.strip() for n in text.split(",")]
    check_plugins(names)
    return names


def check_plugins(names: Iterable) -> List[str]:
    """The module names as a list; a UserError names the first that is not a dotted module
    path (relative imports are refused)."""
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise UserError(f"plugins must be a list of module names, got {names!r}")
    for name in names:
        if not isinstance(name, str) or not _MODULE.match(name):
            raise UserError(f"plugin {name!r} is not a module name (such as my_ops or "
                            "package.ops)")
    return list(names)


def import_plugins(names: Sequence[str]) -> List[str]:
    """Import each module of ``names`` (once per process: Python keeps imported modules) and
    return the names; one that is missing or fails to import is a one-line UserError naming
    it."""
    names = check_plugins(names)
    here = os.getcwd()
    if names and here not in sys.path:
        sys.path.append(here)
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                raise UserError(f"plugin module {name!r} not found (install it, put it on "
                                "PYTHONPATH, or run from its folder)") from None
            raise UserError(f"plugin module {name!r} failed to import: {e}") from None
        except Exception as e:  # the user's code: one line, and how to see the traceback
            raise UserError(f"plugin module {name!r} failed to import: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''} (python -c "
                            f"'import {name}' shows the traceback)") from None
    return names


def merge_plugins(*lists: Iterable[str]) -> List[str]:
    """The plugins of several sources (the flag, a config file, a checkpoint), each once, in
    order of first appearance."""
    return list(dict.fromkeys(n for names in lists for n in names))


__all__ = ["check_plugins", "import_plugins", "merge_plugins", "parse_plugins"]
