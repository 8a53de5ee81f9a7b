"""What the wheel holds: every folder of Python files is a regular package (``find_packages``
would silently leave a folder without ``__init__.py`` out of the wheel), and the version has one
source. ``.ci/installed`` then builds the wheel and checks it outside the checkout."""
import os
import re
import subprocess
import sys

import fastnas

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_folders(top):
    for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if any(f.endswith(".py") for f in files):
            yield os.path.relpath(folder, ROOT)


def test_every_folder_of_modules_is_a_package():
    folders = list(python_folders("fastnas")) + list(python_folders("kernels"))
    assert "fastnas/ops/functional" in folders
    missing = [f for f in folders if not os.path.isfile(os.path.join(ROOT, f, "__init__.py"))]
    assert missing == []


def test_setup_finds_every_package():
    out = subprocess.run([sys.executable, "-c", (
        "import setuptools, sys; captured = {};"
        "setuptools.setup = lambda **kw: captured.update(kw);"
        "sys.argv = ['setup.py']; exec(open('setup.py').read());"
        "print(captured['version']); print(*sorted(captured['packages']))")],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    version, packages = out[0], set(out[1].split())
    assert version == fastnas.__version__
    expected = {f.replace(os.sep, ".") for f in python_folders("fastnas")}
    expected |= {"fastnas.kernels"}
    assert packages == expected


def test_version_on_the_command_line(capsys):
    from fastnas.cli import main
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"fastnas {fastnas.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", fastnas.__version__)
