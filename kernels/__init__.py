"""Fused Triton kernels for fastnas, each with a plain-torch reference and a backend switch.

- ``weighted_sum(xs, w)``: ``sum_k w[k] * xs[k]`` (a whole DARTS node in one launch).
- ``depthwise_conv2d(x, weight, stride, padding, dilation)``: ``M`` depthwise convs of ``x``
  [N, C, H, W] in one launch, ``weight`` [M*C, 1, kh, kw], output channel ``m*C + c`` reading
  input channel ``c``: ``F.conv2d(torch.cat([x] * M, 1), weight, groups=M*C)`` without the copy
  (``M = 1``: the plain depthwise conv).

All are differentiable (Triton forward and backward, deterministic weight gradients) in fp32,
bf16 and fp16 with any strides. Which implementation runs is decided per call by
``dispatch`` from ``FASTNAS_BACKEND`` / ``set_backend`` / ``use_backend``: ``auto`` (Triton for
CUDA tensors, torch otherwise), ``triton`` (the kernel or an error, never a silent fallback) or
``torch``. ``launch_counts()`` tells which kernels ran.
"""
from . import dispatch, reference
from .depthwise_conv import depthwise_conv2d
from .dispatch import (
                       BACKENDS,
                       HAS_TRITON,
                       get_backend,
                       launch_counts,
                       reset_launch_counts,
                       set_backend,
                       use_backend,
)
from .weighted_sum import weighted_sum

__all__ = [
    "BACKENDS",
    "HAS_TRITON",
    "depthwise_conv2d",
    "dispatch",
    "get_backend",
    "launch_counts",
    "reference",
    "reset_launch_counts",
    "set_backend",
    "use_backend",
    "weighted_sum",
]
