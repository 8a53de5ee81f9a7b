"""Shared test setup.

Triton reads TRITON_INTERPRET when a kernel is decorated, so it is set here, before any test
module imports ``fastnas.kernels``: on a machine without a GPU the kernels run in Triton's
interpreter (correct, slow); on a GPU machine they run compiled.
"""
import os
import subprocess

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The test networks are tiny: intra-op threads buy nothing there, and OpenMP threads that wait on
# each other slow them down many times over whenever another process shares the cores.
torch.set_num_threads(1)


# --- a crash fails the run at once (issue 23) ----------------------------------------------------
def pytest_configure(config):
    """Under xdist a crashed worker (a test that aborts Python) ends the run: xdist's default
    replaces up to 4 crashed workers per worker, each re-running the crashing test (issue 23
    saw 8 in a row, then two idle workers for 30 minutes). A
    ``--max-worker-restart`` given on the command line still wins. (The per-test limit is
    ``timeout`` in pyproject.toml's pytest settings.)"""
    if getattr(config.option, "maxworkerrestart", "not xdist") is None:
        config.option.maxworkerrestart = "0"


# --- the run leaves the repository as it found it (issue 23) ----------------------------------
# Tests write under their tmp paths only. The process that runs the session (xdist's controller,
# or pytest itself without xdist) lists the checkout's untracked and modified files, with their
# modification times, before the first test and after the last; a file that appeared or changed
# fails the run and is named. Caches that Python and the test tools keep are not counted.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOOL_CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache", ".benchmarks")


def _tool_cache(path: str) -> bool:
    parts = path.split("/")
    return (any(p in _TOOL_CACHES or p.endswith(".egg-info") for p in parts)
            or parts[-1].startswith(".coverage"))


def repo_writes_snapshot():
    """``{path: mtime_ns}`` of the untracked (ignored included) and modified files of the
    checkout, tool caches left out; ``None`` outside a git checkout."""
    try:
        done = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--others", "--modified"],
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    snapshot = {}
    for path in filter(None, done.stdout.decode("utf-8", "replace").split("\0")):
        if not _tool_cache(path):
            try:
                snapshot[path] = os.stat(os.path.join(REPO, path)).st_mtime_ns
            except OSError:  # deleted
                continue
    return snapshot


def _runs_the_session(config) -> bool:
    return not hasattr(config, "workerinput")  # not an xdist worker


def pytest_sessionstart(session):
    if _runs_the_session(session.config):
        session.config._repo_before = repo_writes_snapshot()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    before = getattr(session.config, "_repo_before", None)
    after = repo_writes_snapshot() if before is not None else None
    if after is None:
        return
    written = sorted(p for p, t in after.items() if before.get(p) != t)
    session.config._repo_written = written
    if written:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    written = getattr(config, "_repo_written", None)
    if written:
        terminalreporter.write_sep("=", "tests wrote into the repository", red=True)
        for path in written[:20]:
            terminalreporter.write_line(f"  {path}")
        if len(written) > 20:
            terminalreporter.write_line(f"  ... and {len(written) - 20} more")
        terminalreporter.write_line("a test must write under its tmp_path (issue 23); "
                                    "this fails the run")
# --- end: the run leaves the repository as it found it -----------------------------------------
