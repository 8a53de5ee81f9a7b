"""Shared test setup.

Triton reads TRITON_INTERPRET when a kernel is decorated, so it is set here, before any test
module imports ``fastnas.kernels``: on a machine without a GPU the kernels run in Triton's
interpreter (correct, slow); on a GPU machine they run compiled.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
