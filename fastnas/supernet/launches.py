"""The Triton kernel launches a DARTS search step makes, listed without a GPU.

``search_launches(dtype)`` runs the fast supernet at the paper's search shapes (C=16, batch 64,
32x32 RGB, 10 classes) forward and backward on fake tensors (``torch._subclasses.FakeTensorMode``:
shapes, dtypes and strides, no data) with the kernel dispatcher told that these CPU tensors are
GPU tensors, and returns every ``fastnas.kernels.launch.Launch`` the Triton kernel set asked for:
what ``fastnas.kernels.gpu_targets`` compiles for real GPU targets.

- Three backward passes, as a search runs them: every gradient; the alphas only (the first-order
  architecture step, ``supernet.compiled.differentiating``); the weights only (the weight step).
- ``dtype=torch.bfloat16``: the network in bf16 with the alphas in fp32, which is how CUDA
  autocast hands the kernels their arguments (bf16 activations, fp32 softmax weights).
- Five cells instead of eight: the same kinds of cells at the same shapes (normal cells at 16, 32
  and 64 channels, after a normal cell and after a reduction cell; reduction cells at 32 and 64
  channels), hence the same launch configurations (checked once against eight cells).
- Strides are those of the CPU kernels on fake CPU tensors; like CUDA's, they keep channels_last.
- ``method`` (``METHOD_AXES``): the supernet of a method of issue 18. ``pc-darts`` runs the plan
  on C/4 channels (smaller tiles); ``gdas`` runs the sampled plan with a fixed sample (noise is
  data, which fake tensors have none of) in which edge ``r`` takes op ``r mod len(ops)``: conv
  ops sampled by one edge of a state (channel multiplier 1, the 16-channel tiles) as well as the
  full plan's multipliers of the ``darts`` run.
"""
from __future__ import annotations

import contextlib
from typing import List
from unittest import mock

import torch
import torch.nn.functional as F

from .. import kernels
from ..kernels import dispatch
from ..kernels.launch import Launch, recording
from ..space import Relaxation, darts_space
from .compiled import differentiating
from .fast import FastSearchNetwork

PAPER_SEARCH = dict(C=16, num_classes=10, layers=5, num_nodes=4)
BATCH, IMAGE_SIZE = 64, 32
# The supernet axes of each method whose launches differ from DARTS's (see the docstring).
METHOD_AXES = {
    "darts": {},
    "gdas": {"sampled": True},
    "pc-darts": {"partial_channels": 4, "edge_normalization": True},
    "darts-minus": {"aux_skip": 50},
}


class _FixedSample(Relaxation):
    """Softmax weights, and edge ``r`` sampling op ``r mod len(ops)`` (a real CPU tensor, so the
    supernet can read it under fake tensors)."""

    name = "fixed sample"

    def __init__(self, num_edges: int, num_ops: int):
        self.index = torch.arange(num_edges) % num_ops

    def weights(self, alphas, phase):
        return F.softmax(alphas, dim=-1)

    def sample(self, alphas, phase):
        return self.weights(alphas, phase), self.index


@contextlib.contextmanager
def _cpu_as_gpu():
    """The dispatcher treats CPU tensors as GPU tensors (Triton path, GPU tile sizes)."""
    with mock.patch.object(dispatch, "INTERPRET", False), \
            mock.patch.object(dispatch, "GPU_DEVICE_TYPES", ("cpu",)), \
            kernels.use_backend("auto"):
        yield


def search_launches(dtype: torch.dtype = torch.float32, batch: int = BATCH,
                    method: str = "darts") -> List[Launch]:
    """Every Triton launch of the paper-size search steps (see the module docstring)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    axes = dict(METHOD_AXES[method])
    if axes.pop("sampled", False):
        space = darts_space(PAPER_SEARCH["num_nodes"])
        axes["relaxation"] = _FixedSample(space.num_edges, len(space.ops))
    default = torch.get_default_dtype()
    with _cpu_as_gpu(), recording() as launches, FakeTensorMode():
        torch.set_default_dtype(dtype)   # (`.to(dtype)` cannot swap fake parameters)
        try:
            net = FastSearchNetwork(**PAPER_SEARCH, **axes)
        finally:
            torch.set_default_dtype(default)
        for a in net.alphas():
            a.data = a.data.float()
        x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=dtype)
        y = torch.randint(0, 10, (batch,))
        for params in (list(net.parameters()), net.alphas(), list(net.weights())):
            with differentiating(net, params):
                loss = F.cross_entropy(net(x).float(), y)
            loss.backward()
    return launches


__all__ = ["BATCH", "IMAGE_SIZE", "METHOD_AXES", "PAPER_SEARCH", "search_launches"]
