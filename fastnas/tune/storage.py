"""Storage URLs of a tune study: checked before use, redacted in every message, and every storage
failure turned into one line that names its cause (``storage_errors``).

This module imports neither Optuna nor SQLAlchemy: it recognises their exceptions by name, so the
command line can use it before (and without) them.

- ``redact(url)``: the password replaced by ``***`` in every form a URL carries one:
  ``scheme://user:PASSWORD@host`` (the password may hold ``/``, ``:``, ``?`` or ``@``: all up to
  the last ``@`` is hidden; the user may be empty) and ``?password=`` / ``&passwd=`` /
  ``&pwd=`` query parameters.
- ``check_url(url)``: a UserError for a URL tune cannot use: not a storage URL, an in-memory
  SQLite database (``sqlite://``, ``sqlite:///``, ``:memory:``: nothing would be kept), a journal
  whose folder is missing or whose file is not an Optuna journal (binary, or not JSON lines).
- ``DRIVERS``: the Python module SQLAlchemy imports for each database URL and the package that
  installs it (SQLAlchemy 2.1 reads ``postgresql://`` with psycopg 3, the module ``psycopg``).
- ``storage_errors(url)``: a context manager around the study's use; a missing driver, a corrupt
  SQLite file or journal, a full disk and an unreachable database each become one line (full
  disk and unreachable database: ``CheckpointWriteError``/``OSError``, exit 1; the others:
  ``UserError``, exit 2).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from typing import Iterator, Optional

from ..errors import CheckpointWriteError, UserError

# module SQLAlchemy imports -> what installs it
DRIVERS = {
    "psycopg": 'pip install "psycopg[binary]" (or pip install -e ".[postgres]")',
    "psycopg2": "pip install psycopg2-binary",
    "MySQLdb": "pip install mysqlclient, or use mysql+pymysql:// with pip install PyMySQL",
    "pymysql": "pip install PyMySQL",
    "asyncpg": "pip install asyncpg",
    "pg8000": "pip install pg8000",
}
_USERINFO = re.compile(r"^([\w+.-]*://)([^:/@]*):(.*)@")  # greedy: to the last "@"
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|secret|token)=)([^&#]*)", re.I)
_MEMORY = re.compile(r"^sqlite(\+\w+)?://(/(:memory:)?)?(\?.*)?$|^sqlite.*[?&]mode=memory")
_JOURNAL_PROBE = 1 << 16


def redact(url: str) -> str:
    """``url`` with every password replaced by ``***`` (for logs, errors and metrics)."""
    url = _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:***@", url)
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}***", url)


def journal_path(url: str) -> str:
    path = url[len("journal:"):]
    return path[2:] if path.startswith("//") else path


def _check_journal(url: str) -> None:
    path = journal_path(url)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"--storage {redact(url)}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise UserError(f"--storage {redact(url)}: {path} is a folder, not a journal file")
    try:
        with open(path, "rb") as f:
            head = f.read(_JOURNAL_PROBE)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"--storage {redact(url)}: cannot read {path}: {e.strerror or e}") from None
    if not head:
        return
    first = head.split(b"\n", 1)[0]
    try:
        text = first.decode("utf-8")
        ok = isinstance(json.loads(text), dict) if b"\n" in head else True
    except (UnicodeDecodeError, ValueError, RecursionError):
        ok = False
    if not ok or b"\x00" in head:
        raise UserError(f"--storage {redact(url)}: {path} is not an Optuna journal (its first "
                        "line is not a JSON object); name a new file or the journal of the study")


def check_url(url: str) -> None:
    """A UserError (one line, password redacted) unless tune can keep a study at ``url``."""
    if url.startswith("journal:"):
        _check_journal(url)
        return
    if "://" not in url:
        raise UserError(f"--storage {redact(url)!r} is not a storage URL (sqlite:///PATH, "
                        "postgresql://..., mysql://..., or journal:PATH)")
    if _MEMORY.match(url):
        raise UserError(f"--storage {redact(url)}: an in-memory SQLite database keeps nothing "
                        "after the run; name a file: sqlite:///PATH")
    if url.startswith("sqlite"):
        path = url.split("://", 1)[1][1:].split("?", 1)[0]
        if path and os.path.isdir(path):
            raise UserError(f"--storage {redact(url)}: {path} is a folder, not a database file")
        folder = os.path.dirname(os.path.abspath(path)) if path else ""
        if path and not os.path.isdir(folder):
            raise UserError(f"--storage {redact(url)}: folder {folder} does not exist")


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    text = re.sub(r"^\([\w.]+\)\s*", "", text)  # SQLAlchemy's "(sqlite3.OperationalError) "
    return text.splitlines()[0] if text else type(error).__name__


def missing_driver(error: BaseException) -> Optional[str]:
    """The module a failed storage import lacks (from the ImportError's cause), or None."""
    for cause in _causes(error):
        if isinstance(cause, ModuleNotFoundError) and cause.name:
            return cause.name.split(".")[0]
    return None


def explain(error: BaseException, url: str) -> Optional[BaseException]:
    """The one-line error that ``error`` (raised while the study at ``url`` was used) stands
    for, or None if it is no storage failure."""
    shown = redact(url)
    chain = list(_causes(error))
    names = {type(c).__name__ for c in chain}
    text = " | ".join(_first_line(c) for c in chain).lower()
    if isinstance(error, ImportError):
        module = missing_driver(error)
        if module is None:
            return UserError(f"--storage {shown}: {_first_line(error)}")
        advice = DRIVERS.get(module, f"pip install {module}")
        return UserError(f"--storage {shown}: SQLAlchemy needs the Python module {module} for "
                         f"this URL, which is not installed: {advice}")
    if any(isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT) for c in chain) \
            or "disk is full" in text or "no space left" in text:
        return CheckpointWriteError(f"cannot write the study at --storage {shown}: disk full")
    if "malformed" in text or "not a database" in text or "file is encrypted" in text:
        return UserError(f"--storage {shown}: the SQLite database is corrupt "
                         f"({_first_line(chain[-1])}); restore it from a copy, or start a new "
                         "study with another --storage or --output")
    if url.startswith("journal:") and names & {"UnicodeDecodeError", "JSONDecodeError"}:
        return UserError(f"--storage {shown}: the journal {journal_path(url)} is corrupt "
                         f"({_first_line(chain[-1])}); restore it from a copy or name a new file")
    if names & {"OperationalError", "InterfaceError", "DisconnectionError"}:
        return OSError(f"cannot use the database at --storage {shown}: "
                       f"{_first_line(chain[-1])}")
    if names & {"ArgumentError", "NoSuchModuleError"}:
        return UserError(f"--storage {shown} is not a database URL SQLAlchemy knows: "
                         f"{_first_line(chain[-1])}")
    if names & {"StorageInternalError", "DatabaseError", "IntegrityError", "ProgrammingError"}:
        return UserError(f"--storage {shown}: the storage failed: {_first_line(chain[-1])}")
    return None


def permanent(error: BaseException) -> bool:
    """Whether retrying cannot help: a corrupt file, a full disk, a URL SQLAlchemy refuses."""
    text = " | ".join(_first_line(c) for c in _causes(error)).lower()
    names = {type(c).__name__ for c in _causes(error)}
    return (any(word in text for word in ("malformed", "not a database", "disk is full",
                                          "no space left", "file is encrypted"))
            or bool(names & {"ArgumentError", "NoSuchModuleError", "UnicodeDecodeError"}))


@contextlib.contextmanager
def storage_errors(url: str):
    """Re-raise a storage failure inside the block as its one-line error (``explain``)."""
    try:
        yield
    except (UserError, CheckpointWriteError, KeyboardInterrupt):
        raise
    except Exception as e:
        better = explain(e, url)
        if better is None:
            raise
        raise better from None


__all__ = ["DRIVERS", "check_url", "explain", "journal_path", "missing_driver", "permanent",
           "redact", "storage_errors"]
