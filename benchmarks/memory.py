"""Peak memory of a DARTS search step for one configuration, with a per-cell / per-op breakdown:
``fastnas profile`` (see ``fastnas profile --help``), kept under its old name.

    python benchmarks/memory.py                                  # the paper's search, fast path
    python benchmarks/memory.py --supernet reference --order 2 --batch-size 8
    python benchmarks/memory.py --precision bf16 --checkpointing --compare --json out.json

The CPU peak is that of the process after the allocator returned its free memory; run one
configuration per process where the numbers matter.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fastnas.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["profile", *sys.argv[1:]]))
