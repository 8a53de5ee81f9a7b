"""fastnas: gradient-based neural architecture search (DARTS, ENAS) for PyTorch."""
from setuptools import find_packages, setup

setup(
    name="fastnas",
    version="0.2.0",
    description="Gradient-based neural architecture search (DARTS, ENAS) with fused Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # `kernels/` ships as `fastnas.kernels`: a top-level `kernels` would collide with a PyPI
    # package.
    packages=["fastnas", *(f"fastnas.{p}" for p in find_packages("fastnas")), "fastnas.kernels"],
    package_dir={"fastnas": "fastnas", "fastnas.kernels": "kernels"},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy",
        "scikit-learn>=1.0",  # its bundled 8x8 digits are the embedded default dataset
        "tqdm>=4.60",  # progress bars on epochs and batches
    ],
    extras_require={
        "plot": ["matplotlib>=3.5"],  # fastnas plot, and the figures at the end of each stage
        "tensorboard": ["tensorboard>=2.10"],  # --tensorboard
        # fastnas tune: Bayesian optimization over the pruned cell space (Optuna's GP sampler
        # uses torch and scipy).
        "tune": ["optuna>=4.9", "scipy"],
        # ruff and import-linter: the lint and the layer contracts the tests and CI run; the
        # optional dependencies, for their tests; pytest-xdist runs the test files in parallel
        # (on 2 cores the suite takes about 0.6x the serial time); pytest-timeout gives every
        # test a hard time limit, so a hang fails the run rather than stalling it.
        "dev": ["pytest>=7", "pytest-xdist>=3", "pytest-timeout>=2.1", "pytest-benchmark>=4",
                "pytest-cov>=4", "ruff>=0.5", "import-linter>=2.1", "matplotlib>=3.5",
                "tensorboard>=2.10", "optuna>=4.9", "scipy", "tomli; python_version < '3.11'"],
    },
    entry_points={"console_scripts": ["fastnas=fastnas.cli:main"]},
)
