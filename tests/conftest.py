"""Shared test setup.

Triton reads TRITON_INTERPRET when a kernel is decorated, so it is set here, before any test
module imports ``fastnas.kernels``: on a machine without a GPU the kernels run in Triton's
interpreter (correct, slow); on a GPU machine they run compiled.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The test networks are tiny: intra-op threads buy nothing there, and OpenMP threads that wait on
# each other slow them down many times over whenever another process shares the cores.
torch.set_num_threads(1)
