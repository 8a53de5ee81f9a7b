"""fastnas: gradient-based neural architecture search (DARTS, ENAS) for PyTorch."""
import re

from setuptools import find_packages, setup


def _version() -> str:
    """The one source of the version: ``__version__`` in ``fastnas/__init__.py`` (read as text:
    importing fastnas here would need torch before it is installed)."""
    with open("fastnas/__init__.py", encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)


setup(
    name="fastnas",
    version=_version(),
    description="Gradient-based neural architecture search (DARTS, ENAS) with fused Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # `kernels/` ships as `fastnas.kernels`: a top-level `kernels` would collide with a PyPI
    # package. Every folder of Python files is a regular package (tests/test_layout.py checks
    # it), and .ci/run installs the wheel outside the checkout to prove nothing is left out.
    packages=["fastnas", *(f"fastnas.{p}" for p in find_packages("fastnas")), "fastnas.kernels"],
    package_dir={"fastnas": "fastnas", "fastnas.kernels": "kernels"},
    # Data files inside any package ship in the wheel and the sdist (.ci/run checks that every
    # tracked file under fastnas/ and kernels/ is in the wheel): the NAS-Bench-201 table (bz2
    # CSV) with its provenance and license.
    package_data={"": ["*.bz2", "*.gz", "*.md", "*.txt", "*.json"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy",
        "scikit-learn>=1.0",  # its bundled 8x8 digits are the embedded default dataset
        "tqdm>=4.60",  # progress bars on epochs and batches
        # fastnas plot, and the figures every stage writes at its end (the quick start shows
        # them); small next to torch.
        "matplotlib>=3.5",
        "tomli; python_version < '3.11'",  # --config FILE.toml (tomllib from Python 3.11)
    ],
    extras_require={
        "plot": [],  # matplotlib became a dependency; the extra stays for old instructions
        "tensorboard": ["tensorboard>=2.10"],  # --tensorboard
        # fastnas tune: Bayesian optimization over the pruned cell space (Optuna's GP sampler
        # uses torch and scipy).
        "tune": ["optuna>=4.9", "scipy"],
        # --storage postgresql://...: SQLAlchemy 2.1 reads such URLs with psycopg 3 (the module
        # psycopg), not psycopg2.
        "postgres": ["psycopg[binary]>=3.1"],
        # ruff and import-linter: the lint and the layer contracts the tests and CI run; the
        # optional dependencies, for their tests; pytest-xdist runs the test files in parallel
        # (on 2 cores the suite takes about 0.6x the serial time); pytest-timeout gives every
        # test a hard time limit, so a hang fails the run rather than stalling it; build: the
        # sdist and the wheel that .ci/run installs outside the checkout.
        "dev": ["build>=1", "pytest>=7", "pytest-xdist>=3", "pytest-timeout>=2.1",
                "pytest-benchmark>=4", "pytest-cov>=4", "ruff>=0.5", "import-linter>=2.1",
                "tensorboard>=2.10", "optuna>=4.9", "scipy", "tomli; python_version < '3.11'"],
    },
    entry_points={"console_scripts": ["fastnas=fastnas.cli:main"]},
)
