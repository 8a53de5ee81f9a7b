"""The README's Python examples run as written: every ```python block, in order, in one
namespace (later blocks use what earlier ones defined), in a scratch folder."""
import os
import re

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 4


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    from fastnas import kernels
    from fastnas.ops import OPS

    monkeypatch.chdir(tmp_path)
    ops = dict(OPS)  # the ops the README registers are gone afterwards
    namespace = {"__name__": "readme"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for number, block in enumerate(python_blocks(), 1):
            try:
                exec(compile(block, f"README.md python block {number}", "exec"), namespace)
            except Exception as e:  # name the block that failed
                pytest.fail(f"README python block {number} raised {type(e).__name__}: {e}\n"
                            f"{block}")
    finally:
        torch.set_num_threads(threads)
        kernels.set_backend(None)
        OPS.clear()
        OPS.update(ops)
    out = capsys.readouterr().out
    assert "Genotype(normal=" in out


def _install_requires():
    """The requirement names of setup.py's ``install_requires`` (read with ast, not run)."""
    import ast

    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return {re.split(r"[<>=!~;\[ ]", ast.literal_eval(e))[0].lower()
                    for e in node.value.elts}
    raise AssertionError("setup.py has no install_requires")


def test_the_quick_start_install_brings_what_its_figures_need():
    """The quick start promises figures in each stage's plots/ from `pip install -e .` alone:
    what draws them must be a dependency, not an extra the quick start never names."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        quick_start = f.read().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "pip install -e . && fastnas run" in quick_start
    assert "plots/" in quick_start
    assert "matplotlib" in _install_requires()
