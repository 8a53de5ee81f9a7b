"""The supernets under ``torch.compile``.

``compile_supernet(model, mode)`` compiles a supernet in place (``nn.Module.compile``: the
module, its ``state_dict`` names and ``torch.func.functional_call`` stay as they are) as one
graph per call, ``fullgraph=True``: a graph break is an error, not a silent slowdown. The fast
supernet's kernels (the CPU ones of ``fastnas.ops.functional``, the Triton ones on CUDA) are
``torch.library`` custom ops and stay single nodes of the graph; inductor generates the code
around them (pools and their BatchNorm, skip connections, preprocessing, node inputs, running
statistics) and fuses what it can there.

``differentiating(model, params)``: inside, only ``params`` of ``model`` require grad. A
compiled graph computes the gradient of every input that requires grad; the eager fast path
asks the autograd engine which ones a backward will use, which a compiled graph cannot. A
first-order DARTS step differentiates the alphas only (architecture step), then the weights
only (weight step): frozen around each forward, the two steps get two graphs that each compute
only their own gradients. Changing ``requires_grad`` is a guard of the compiled graphs, so the
two alternate without recompiling.

Compiled code is cached on disk by inductor (``TORCHINDUCTOR_CACHE_DIR``, by default under the
system's temporary folder): a second process with the same shapes loads it instead of
compiling again. The first step of each kind (and each new batch shape) pays the compilation;
``dynamic=False`` keeps one graph per shape, so keep the last partial batch out of a search
(``drop_last``) or expect one more compilation for it.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Optional

import torch
import torch.nn as nn

# The torch.compile backend; tests swap in "aot_eager" (same graphs, no code generation).
BACKEND = "inductor"


def compile_supernet(model: nn.Module, mode: Optional[str] = None,
                     backend=None) -> nn.Module:
    """``model.compile(fullgraph=True, dynamic=False, mode=mode, backend=backend)``, in place;
    returns ``model``. ``mode``: ``None``/``"default"``, ``"reduce-overhead"`` (CUDA graphs)
    or ``"max-autotune"``; ``backend``: default ``BACKEND``. Only inductor takes a mode."""
    backend = BACKEND if backend is None else backend
    mode = None if mode in (None, "default") or backend != "inductor" else mode
    model.compile(fullgraph=True, dynamic=False, mode=mode, backend=backend)
    return model


@contextlib.contextmanager
def differentiating(model: nn.Module, params: Iterable[torch.Tensor]) -> Iterator[None]:
    """Inside, ``params`` keep requiring grad and every other parameter of ``model`` does not
    (see the module docstring); restored on exit."""
    keep = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


__all__ = ["BACKEND", "compile_supernet", "differentiating"]
