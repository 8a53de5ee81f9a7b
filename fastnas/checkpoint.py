"""Files that survive a crash: atomic writes, two checkpoint generations, ``weights_only`` loads,
and checkpoints that say what they are.

- ``save_atomic`` writes through ``path.tmp`` and ``os.replace`` (atomic on POSIX and Windows):
  a process killed mid-write leaves the previous file intact. A write that fails (disk full,
  permissions) removes the temporary file and raises ``CheckpointWriteError`` naming the path
  and the cause; a full disk is named "disk full". ``torch.save`` writes into a file object
  opened here, so the operating system's ENOSPC reaches us (given a path, torch's own writer
  reports it as "unexpected pos"). ``write_file_atomic`` does the same for any writer (figures,
  traces, CSV).
- ``save_checkpoint`` keeps two generations: the new state becomes ``checkpoint.pt`` and the one
  it replaces ``checkpoint.prev.pt``. ``load_latest`` reads the newest readable one: a corrupt
  latest falls back to the previous with a one-line warning.
- Every state a strategy or trainer saves carries ``describe(kind, method)``: the kind
  (``search``/``train``), the search method and the format version. ``check_kind`` refuses the
  wrong kind or a newer format with one line; ``check_tensors_fit`` refuses tensors that do not
  fit the model their config builds, naming the first that differs.
"""
from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
import warnings
from typing import Any, Callable, Mapping, Optional, Tuple

import torch

from .console import log
from .errors import CheckpointWriteError, UserError

FORMAT_VERSION = 2  # 1: the unmarked checkpoints of fastnas 0.1
MARKER = "fastnas_checkpoint"


# -- writing --------------------------------------------------------------------------------------
def _cause(error: BaseException) -> str:
    """A short cause: the OS's words, or the first line of torch's without its source location."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full ({error.strerror or 'no space left on device'})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text) or type(error).__name__


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _write(path: str, write: Callable[[str], None], replace: Callable[[str], None]) -> None:
    tmp = f"{path}.tmp"
    try:
        write(tmp)
        replace(tmp)
    except (OSError, RuntimeError) as e:
        _remove(tmp)
        raise CheckpointWriteError(f"cannot write {path}: {_cause(e)}") from None
    except BaseException:  # Ctrl-C or a signal mid-write: no half-written file stays behind
        _remove(tmp)
        raise


def _torch_save(obj: Any, tmp: str) -> None:
    with open(tmp, "wb") as f:  # a file object: the OS's error (ENOSPC) is what torch raises
        torch.save(obj, f)


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through ``path.tmp``."""
    _write(path, lambda tmp: _torch_save(obj, tmp), lambda tmp: os.replace(tmp, path))


def check_writable(path: str) -> None:
    """CheckpointWriteError (one line) if ``path`` cannot be a file we write: it is a folder,
    or its folder does not exist. For writes that come after minutes of work."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CheckpointWriteError(f"cannot write {path}: it is a folder")
    if not os.path.isdir(folder):
        raise CheckpointWriteError(f"cannot write {path}: the folder {folder} does not exist")


def write_file_atomic(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` writes the whole file at ``tmp``; it becomes ``path`` by one rename, or
    ``CheckpointWriteError`` (one line, "disk full" for ENOSPC) with no file left behind. A
    ``path`` that is an existing folder is refused before anything is written."""
    check_writable(path)
    _write(path, write, lambda tmp: os.replace(tmp, path))


def write_text_atomic(text: str, path: str) -> None:
    """``text`` into ``path`` (UTF-8) through ``write_file_atomic``."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_file_atomic(path, write)


def previous_path(path: str) -> str:
    """``checkpoint.pt`` -> ``checkpoint.prev.pt``: where the previous generation is kept."""
    root, ext = os.path.splitext(path)
    return f"{root}.prev{ext}"


def save_checkpoint(obj: Any, path: str) -> None:
    """Write ``obj`` as the latest generation at ``path``; the file it replaces becomes
    ``previous_path(path)``. Between the two renames the previous generation is complete."""
    def replace(tmp: str) -> None:
        if os.path.exists(path):
            os.replace(path, previous_path(path))
        os.replace(tmp, path)

    _write(path, lambda tmp: _torch_save(obj, tmp), replace)


def write_json_atomic(data: Any, path: str) -> None:
    """JSON with tensors turned into (nested) lists and non-finite floats into null."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(to_jsonable(data), f, indent=2)
            f.write("\n")

    _write(path, write, lambda tmp: os.replace(tmp, path))


def to_jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- reading --------------------------------------------------------------------------------------
def _unreadable(path: str, error: BaseException) -> str:
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:  # a pickled object that is not a tensor or plain value: refused, never run
        return (f"checkpoint {path} holds a {found.group(1)} object, which fastnas never writes; "
                "it was refused (loaded with weights_only=True)")
    if isinstance(error, pickle.UnpicklingError) or "Weights only load" in text:
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        cause = detail.group(1).strip() if detail else "not a torch checkpoint"
        return f"checkpoint {path} is unreadable (corrupt or not a checkpoint): {cause}"
    return f"checkpoint {path} is unreadable (corrupt or truncated): {_cause(error).split('. ')[0]}"


def load_checkpoint(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; an unreadable file is a UserError
    (never a suggestion to load it with ``weights_only=False``)."""
    try:
        with warnings.catch_warnings():  # torch's warnings about a foreign pickle: the one
            warnings.simplefilter("ignore")  # line below says what matters
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # truncated or foreign files raise many types; all mean "unreadable"
        raise UserError(_unreadable(path, e)) from None


def load_latest(path: str, warn: Optional[Callable[[str], None]] = None) -> Tuple[Any, str]:
    """``(state, file)`` of the newest readable generation of ``path`` (see ``save_checkpoint``);
    a corrupt latest falls back to the previous one, with ``warn(one line)``."""
    warn = warn or log
    previous = previous_path(path)
    if not os.path.exists(path) and not os.path.exists(previous):
        raise UserError(f"checkpoint {path} does not exist")
    if os.path.exists(path):
        try:
            return load_checkpoint(path), path
        except UserError as e:
            if not os.path.exists(previous):
                raise
            warn(f"fastnas: warning: {e}; resuming from the previous checkpoint {previous}")
    return load_checkpoint(previous), previous


# -- what a checkpoint is -------------------------------------------------------------------------
def describe(kind: str, method: Optional[str] = None) -> dict:
    """The marker a saved state carries: ``{MARKER: {"format", "kind", "method"}}``."""
    return {MARKER: {"format": FORMAT_VERSION, "kind": kind, "method": method}}


def _inferred(state: Mapping[str, Any]) -> Tuple[Optional[str], Optional[str]]:
    """Kind and method of an unmarked (format 1) state, from its keys."""
    if "controller" in state:
        return "search", "enas"
    if "arch_optimizer" in state:
        return "search", "darts"
    if "genotype" in state and "optimizer" in state:
        return "train", None
    return None, None


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def check_kind(state: Any, kind: str, method: Optional[str] = None,
               source: str = "the state") -> None:
    """A ValueError with one line unless ``state`` is a ``kind`` (and ``method``) state of a
    format this fastnas reads."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{source} is not a fastnas checkpoint (a {type(state).__name__})")
    marker = state.get(MARKER)
    if isinstance(marker, Mapping):
        version = marker.get("format")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"{source} was written by a newer fastnas (checkpoint format "
                             f"{version}; this one reads up to {FORMAT_VERSION}): upgrade fastnas")
        found_kind, found_method = marker.get("kind"), marker.get("method")
    else:
        found_kind, found_method = _inferred(state)
    if found_kind is None:
        raise ValueError(f"{source} is not a fastnas checkpoint")
    if found_kind != kind:
        command = "fastnas train" if found_kind == "train" else "fastnas search"
        raise ValueError(f"{source} is {_a(found_kind)} checkpoint, not {_a(kind)} checkpoint: "
                         f"resume it with {command} --resume")
    if method is not None and found_method is not None and found_method != method:
        raise ValueError(f"{source} is {_a(found_method)} search, not {_a(method)} search: "
                         f"resume it with --method {found_method}")


def check_tensors_fit(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor],
                      source: str = "the checkpoint") -> None:
    """A ValueError with one line unless ``tensors`` has exactly ``module``'s state_dict names
    and shapes (the config that built ``module`` fits the tensors)."""
    expected = module.state_dict()
    if not isinstance(tensors, Mapping):
        raise ValueError(f"{source} holds no model tensors")
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [k for k in expected if k in tensors
             and tuple(getattr(tensors[k], "shape", ())) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return
    if wrong:
        k = wrong[0]
        example = (f"{k} is {list(tensors[k].shape)} in the file but "
                   f"{list(expected[k].shape)} for the config")
    elif missing:
        example = f"{missing[0]} is missing"
    else:
        example = f"{unexpected[0]} is not in the model"
    count = len(missing) + len(unexpected) + len(wrong)
    raise ValueError(f"{source} does not fit the model its config builds: {count} tensor(s) "
                     f"differ, e.g. {example}")


class Resumable:
    """``save`` / ``load`` for an object whose ``state_dict()`` holds its ``config`` and which
    is rebuilt by ``cls(config)`` then ``load_state_dict(state)`` (the search optimizers).
    ``checkpoint_kind`` is the ``(kind, method)`` its files carry (``describe``)."""

    checkpoint_kind: Tuple[str, Optional[str]] = ("search", None)

    def save(self, path: str) -> None:
        """Write ``state_dict()`` atomically (temp file, then rename)."""
        save_atomic(self.state_dict(), path)

    @classmethod
    def load(cls, path: str, **overrides):
        """Rebuild from a file written by ``save`` (a ``weights_only`` load); ``overrides``
        replace config keys (e.g. ``device``). A file of another kind, whose config is not
        valid, whose tensors do not fit its config, or whose values have the wrong types raises
        a ValueError naming the file (one line)."""
        state = load_checkpoint(path)
        check_kind(state, *cls.checkpoint_kind, source=path)  # the command line's words
        if not isinstance(state, Mapping) or not isinstance(state.get("config"), Mapping):
            raise ValueError(f"{path} is not a fastnas checkpoint")
        try:
            obj = cls(dict(state["config"], **overrides))
        except (TypeError, ValueError) as e:  # the config's own checks: one line each
            raise ValueError(f"{path}: {e}") from None
        try:
            obj.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        except (TypeError, KeyError, IndexError, AttributeError, RuntimeError) as e:
            # a value of the wrong type inside a state of the right kind: a damaged file
            first = str(e).splitlines()[0] if str(e) else ""
            raise ValueError(f"{path} holds a damaged {cls.__name__} state "
                             f"({type(e).__name__}: {first})") from None
        return obj


__all__ = ["FORMAT_VERSION", "Resumable", "check_kind", "check_tensors_fit", "check_writable",
           "describe", "load_checkpoint", "load_latest", "previous_path", "save_atomic",
           "save_checkpoint", "to_jsonable", "write_file_atomic", "write_json_atomic",
           "write_text_atomic"]
