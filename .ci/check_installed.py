"""Check an installed fastnas wheel from outside the checkout (run by ``.ci/installed``).

Usage: ``python check_installed.py REPO WHEEL``. Fails (exit 1, one line per problem) when:
- ``fastnas`` is imported from the checkout instead of the installed wheel;
- a file that git tracks under ``fastnas/`` or ``kernels/`` (shipped as ``fastnas/kernels/``)
  is missing from the wheel: a module, a package marker or a data file;
- a module of the installed package does not import (a module that needs an optional extra
  that is not installed is listed, not failed);
- the shipped package data does not load: the NAS-Bench-201 table must hold all 15,625 cells.
"""
import importlib
import importlib.util
import os
import pkgutil
import subprocess
import sys
import zipfile

OPTIONAL = {"optuna", "tensorboard", "scipy", "sqlalchemy", "psycopg"}


def shipped_files(repo: str) -> set:
    """The paths the wheel must hold, from the files git tracks in the checkout."""
    tracked = subprocess.run(["git", "-C", repo, "ls-files", "fastnas", "kernels"],
                             check=True, capture_output=True, text=True).stdout.split()
    return {("fastnas/" + p) if p.startswith("kernels/") else p for p in tracked}


def main(repo: str, wheel: str) -> int:
    problems = []
    with zipfile.ZipFile(wheel) as z:
        in_wheel = set(z.namelist())
    for path in sorted(shipped_files(repo) - in_wheel):
        problems.append(f"missing from the wheel: {path}")
    try:
        import fastnas
    except Exception as e:  # noqa: BLE001 - the finding
        return report(problems + [f"fastnas does not import: {e!r}"])
    where = os.path.realpath(fastnas.__file__)
    if where.startswith(os.path.realpath(repo) + os.sep):
        problems.append(f"fastnas was imported from the checkout ({where}), not the wheel")

    skipped = []
    names = ["fastnas"] + [m.name for m in pkgutil.walk_packages(
        fastnas.__path__, "fastnas.", onerror=lambda name: problems.append(
            f"cannot walk {name}: {sys.exc_info()[1]!r}"))]
    for name in names:
        try:
            if name.endswith(".__main__"):  # importing it would run the command line
                if importlib.util.find_spec(name) is None:
                    problems.append(f"{name} is not installed")
                continue
            importlib.import_module(name)
        except ImportError as e:
            if (e.name or "").split(".")[0] in OPTIONAL:
                skipped.append(f"{name} (needs {e.name})")
            else:
                problems.append(f"{name} does not import: {e!r}")
        except Exception as e:  # noqa: BLE001 - any failure to import is the finding
            problems.append(f"{name} does not import: {e!r}")
    try:
        from fastnas.nb201 import Table
        rows = len(Table.load(None))
        if rows != 15625:
            problems.append(f"the shipped NAS-Bench-201 table has {rows} cells, not 15625")
    except Exception as e:  # noqa: BLE001 - the finding
        problems.append(f"the shipped NAS-Bench-201 table does not load: {e!r}")
    print(f"installed fastnas {fastnas.__version__} at {os.path.dirname(where)}: "
          f"{len(names)} modules walked, {len(in_wheel)} files in the wheel")
    for s in skipped:
        print(f"  optional extra not installed, skipped: {s}")
    return report(problems)


def report(problems: list) -> int:
    for p in problems:
        print(f"check_installed: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
