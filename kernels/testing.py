"""Inputs, tolerances and comparisons shared by the kernel tests and benchmarks.

Inputs are drawn in float64, then rounded to the dtype under test; the reference is computed in
float64 from those same rounded values, so a comparison measures only the kernel's own error.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LAYOUTS = ("contiguous", "channels_last", "sliced")

# The kernels accumulate in fp32 and round once to the output dtype, so the error is about one
# rounding of that dtype (bf16 2**-8 ~ 4e-3, fp16 2**-11 ~ 5e-4 relative; fp32 sums in another
# order ~1e-6) plus cancellation near zero, which the atol covers. These are the bounds Triton
# kernel test suites commonly use (fp32 ~1e-5..1e-4, fp16 atol 1e-2, bf16 rtol 2e-2 / atol
# 5e-2): a few ulps of slack. Triton's interpreter truncates fp32 -> bf16 instead of rounding,
# one more bf16 ulp that these still cover.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-4},
    torch.float16: {"atol": 1e-2, "rtol": 1e-2},
    torch.bfloat16: {"atol": 5e-2, "rtol": 2e-2},
}

# DARTS search shapes for the GPU benchmarks: batch 64, C 16..64 on 32x32 down to 8x8.
DARTS_SHAPES: tuple[tuple[int, int, int], ...] = ((16, 32, 32), (32, 16, 16), (64, 8, 8))
DARTS_BATCH = 64
# ops per DARTS node in the benchmark: 4 incoming edges x 7 ops ('none' skipped) = 28 tensors.
DARTS_NODE_TENSORS = 28
# (kernel size, padding, dilation) of sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5.
DARTS_CONVS = ((3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 4, 2))
# Channel multiplier of the depthwise call per conv shape on a cell's input state: each of a
# 4-node cell's nodes has one edge reading it, so the supernet runs 4 convs of it as one call.
DARTS_MULTIPLIER = 4


def make_tensor(shape: Sequence[int], dtype: torch.dtype, layout: str = "contiguous",
                device: torch.device = DEVICE, scale: float = 1.0, seed: int = 0,
                requires_grad: bool = False) -> torch.Tensor:
    """``scale * randn(shape)`` (from ``seed``) rounded to ``dtype``, stored with ``layout``:
    ``contiguous``, ``channels_last`` (4-D) or ``sliced`` (a strided view into a larger buffer:
    every other channel, offset rows and columns)."""
    gen = torch.Generator().manual_seed(seed)
    values = (torch.randn(tuple(shape), generator=gen, dtype=torch.float64) * scale).to(dtype)
    if layout == "contiguous":
        t = values.to(device)
    elif layout == "channels_last":
        t = values.to(device).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        step_dim = 1 if len(shape) > 1 else 0
        big, index = list(shape), [slice(None)] * len(shape)
        big[step_dim] = 2 * shape[step_dim] + 3
        index[step_dim] = slice(2, 2 + 2 * shape[step_dim], 2)
        if len(shape) > 2:
            big[-1] += 3
            index[-1] = slice(1, 1 + shape[-1])
        t = torch.zeros(big, dtype=dtype, device=device)[tuple(index)]
        t.copy_(values)
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return t.requires_grad_(requires_grad)


def to_reference(t: torch.Tensor) -> torch.Tensor:
    """The float64 leaf the reference is computed from: the same (rounded) values."""
    return t.detach().to(torch.float64).requires_grad_(t.requires_grad)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                 what: str) -> None:
    """``actual`` (kernel, in ``dtype``) against ``expected`` (float64 reference)."""
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    torch.testing.assert_close(actual.to(torch.float64), expected, **TOLERANCES[dtype],
                               msg=lambda m: f"{what} ({dtype}): {m}")
