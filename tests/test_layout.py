"""The architecture stays as documented: layer contracts (import-linter), lint (ruff), no private
names imported across modules, one contract per public name.

import-linter reads the package from disk. ``kernels/`` lives at the repository root and is
installed as ``fastnas.kernels``, so the contracts are checked on a staged copy laid out as the
installed package (``fastnas/`` with ``kernels/`` inside it), exactly what ``pip install .``
ships. The same staging runs in ``.ci/run``.
"""
import ast
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASTNAS = os.path.join(REPO, "fastnas")
KERNELS = os.path.join(REPO, "kernels")


def stage(root) -> str:
    """Copy the package to ``root`` as installed: ``fastnas/`` and ``fastnas/kernels/``."""
    root = str(root)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(FASTNAS, os.path.join(root, "fastnas"), ignore=ignore)
    shutil.copytree(KERNELS, os.path.join(root, "fastnas", "kernels"), ignore=ignore)
    shutil.copy(os.path.join(REPO, "pyproject.toml"), root)
    return root


LINT_IMPORTS = shutil.which("lint-imports") or shutil.which(
    "lint-imports", path=os.path.dirname(sys.executable))


def lint_imports(root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


needs_importlinter = pytest.mark.skipif(LINT_IMPORTS is None,
                                        reason="import-linter is in the dev extra")


@needs_importlinter
def test_layer_contracts_hold(tmp_path):
    done = lint_imports(stage(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout, done.stdout


@needs_importlinter
@pytest.mark.parametrize("path,line,contract", [
    # a lower layer importing a higher one
    ("fastnas/ops/primitives.py", "from ..darts import DARTSOptimizer", "fastnas layers"),
    ("fastnas/supernet/fast.py", "from .. import pipeline", "fastnas layers"),
    ("fastnas/engine.py", "from . import genotypes", "fastnas layers"),
    ("fastnas/space/cell.py", "from ..supernet import SearchNetwork", "fastnas layers"),
    ("fastnas/genotypes.py", "from . import space", "fastnas layers"),
    ("fastnas/pipeline.py", "from . import tune", "fastnas layers"),
    # the kernels importing anything else of fastnas
    ("fastnas/kernels/dispatch.py", "from ..errors import UserError", "kernels stand alone"),
    # a cycle inside a layer package
    ("fastnas/supernet/reference.py", "from . import fast", "no cycle"),
])
def test_a_back_import_breaks_a_contract(tmp_path, path, line, contract):
    root = stage(tmp_path)
    with open(os.path.join(root, path), "a") as f:
        f.write(f"\n{line}  # injected by the test\n")
    done = lint_imports(root)
    assert done.returncode != 0
    broken = [text for text in done.stdout.splitlines() if "BROKEN" in text]
    assert any(contract in text for text in broken) or contract in done.stdout, done.stdout


@needs_importlinter
def test_a_module_outside_every_layer_breaks_the_contract(tmp_path):
    root = stage(tmp_path)
    with open(os.path.join(root, "fastnas", "utils.py"), "w") as f:
        f.write('"""A drawer of everything."""\n')
    done = lint_imports(root)
    assert done.returncode != 0 and "utils" in done.stdout


def test_the_contracts_name_every_layer_in_order():
    """Deleting or reordering a layer in pyproject.toml fails here (and the exhaustive contract
    fails for any top-level module left out)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11: the dev extra installs tomli
        import tomli as tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)["tool"]["importlinter"]
    contracts = {c["type"]: c for c in config["contracts"]}
    layers = contracts["layers"]
    assert layers["containers"] == ["fastnas"] and layers["exhaustive"] is True
    assert [layer.split()[0] for layer in layers["layers"]] == [
        "__main__", "cli", "tune", "pipeline", "reports", "darts", "supernet", "nb201", "space",
        "genotypes", "ops", "kernels", "engine"]
    assert contracts["forbidden"]["source_modules"] == ["fastnas.kernels"]
    assert set(contracts["acyclic_siblings"]["ancestors"]) >= {
        "fastnas.ops", "fastnas.space", "fastnas.supernet", "fastnas.reports"}


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is in the dev extra")
    done = subprocess.run([ruff, "check", "--no-cache", REPO], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _python_files(*folders):
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                if name.endswith(".py"):
                    yield os.path.join(dirpath, name)


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for path in _python_files(FASTNAS, KERNELS):
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names]
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                module = node.module or ""
                if private and not module.startswith(("torch", "triton", "importlib")):
                    offenders.append(f"{os.path.relpath(path, REPO)}: from {module} import "
                                     f"{', '.join(private)}")
    assert offenders == []


# A public name exported (``__all__``) by two fastnas modules must be the same object, unless it
# is listed here with the reason the two share one contract.
SAME_CONTRACT = {
    # A kernel and its torch reference: one contract, two implementations.
    "depthwise_conv2d": {"fastnas.kernels", "fastnas.kernels.depthwise_conv",
                         "fastnas.kernels.reference"},
    "weighted_sum": {"fastnas.kernels", "fastnas.kernels.weighted_sum",
                     "fastnas.kernels.reference"},
}


def test_one_public_name_one_contract():
    import importlib
    import pkgutil

    import fastnas

    owners = {}
    modules = [fastnas] + [importlib.import_module(m.name) for m in pkgutil.walk_packages(
        fastnas.__path__, "fastnas.") if not m.name.endswith("__main__")]
    for module in modules:
        for name in getattr(module, "__all__", []):
            owners.setdefault(name, {}).setdefault(id(getattr(module, name)), set()).add(
                module.__name__)
    clashes = {name: sorted(m for ms in objects.values() for m in ms)
               for name, objects in owners.items() if len(objects) > 1}
    for name, modules in list(clashes.items()):
        if set(modules) <= SAME_CONTRACT.get(name, set()):
            del clashes[name]
    assert clashes == {}


def test_the_tree_shows_the_layers():
    """No module of the fused supernet at the top of fastnas/; the layer packages hold them."""
    top = sorted(n[:-3] for n in os.listdir(FASTNAS) if n.endswith(".py"))
    assert top == ["__init__", "__main__", "checkpoint", "choice", "cli", "config", "console",
                   "data", "distributed", "engine", "errors", "genotypes", "image_folder",
                   "interrupts", "limits", "networks", "paper", "pipeline", "plugins",
                   "profiling", "reproducibility", "runfiles", "training"]
    for package, parts in (("ops", {"primitives", "plan", "registry"}),
                           ("ops/functional", {"batch_norm", "conv_blocks", "depthwise",
                                               "grad_edges", "list_op", "node_sum", "pointwise"}),
                           ("supernet", {"reference", "fast", "recompute", "stages",
                                         "compiled", "launches", "nb201_reference",
                                         "nb201_fast"}),
                           ("darts", {"architect", "config", "methods", "model_search", "optimizer",
                                      "perturbation", "precision", "rsps"}),
                           ("reports", {"alphas", "cells", "extras", "figures", "plots",
                                        "tensorboard", "nb201_cells"}),
                           ("tune", {"config", "objective", "space", "stage", "storage", "study",
                                     "tabular"}),
                           ("nb201", {"cell", "network", "space", "table"})):
        names = {n[:-3] for n in os.listdir(os.path.join(FASTNAS, package)) if n.endswith(".py")}
        assert names - {"__init__"} == parts, package
