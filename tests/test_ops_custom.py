"""The fast supernet's CPU Functions as custom ops (``torch.ops.fastnas.conv_blocks``,
``node_sum``, ``grouped_pointwise`` and their backward ops): ``torch.library.opcheck`` on each,
fp32 and bf16, at tiny sizes. Their values are tested against the reference modules in
``test_fast_supernet.py``."""
import pytest
import torch

import fastnas.ops.functional.conv_blocks  # noqa: F401 (registers the ops)
import fastnas.ops.functional.node_sum  # noqa: F401
import fastnas.ops.functional.pointwise  # noqa: F401

ALL_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor",
             "test_aot_dispatch_dynamic")
CL = torch.channels_last


def _t(*shape, dtype=torch.float32, seed=0, cl=False, grad=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g).to(dtype)
    if cl:
        t = t.contiguous(memory_format=CL)
    return t.requires_grad_(grad)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck_conv_blocks(dtype, training):
    # Two groups reading one input: 3x3 (M = 2) and dilated 3x3 (M = 1), stride 2.
    x = _t(2, 3, 6, 5, dtype=dtype, cl=True)
    dws = [_t(6, 1, 3, 3, dtype=dtype, seed=1), _t(3, 1, 3, 3, dtype=dtype, seed=2)]
    pw = _t(3, 4, 3, dtype=dtype, seed=3)
    rm, rv = torch.zeros(12), torch.ones(12)
    groups = [0, 2, 1, 1, 0, 2, 2, 2]
    args = ([x], dws, pw, rm, rv, groups, training, 0.1, 1e-5)
    torch.library.opcheck(torch.ops.fastnas.conv_blocks.default, args, test_utils=ALL_TESTS)
    y, invstd, _, _ = torch.ops.fastnas.conv_blocks(*args)
    gy = _t(*y.shape, dtype=dtype, seed=4, cl=True, grad=False)
    for need in ([True], [True, False], False), ([False], [False, True], True):
        torch.library.opcheck(
            torch.ops.fastnas.conv_blocks_backward.default,
            (gy, y.detach(), invstd.detach(), [x.detach()], [w.detach() for w in dws],
             pw.detach(), groups, training, 1e-5, *need), test_utils=ALL_TESTS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck_node_sum(dtype):
    block = _t(2, 4, 3, 5, 5, dtype=dtype)
    parts = [block[:, 1:3], _t(2, 1, 3, 5, 5, dtype=dtype, seed=1)]
    w = _t(3, seed=2)
    torch.library.opcheck(torch.ops.fastnas.node_sum.default, (parts, w), test_utils=ALL_TESTS)
    g = _t(2, 3, 5, 5, dtype=dtype, seed=3, grad=False)
    for need in ([True, False], False), ([False, True], True):
        torch.library.opcheck(torch.ops.fastnas.node_sum_backward.default,
                              ([p.detach() for p in parts], w.detach(), g, *need),
                              test_utils=ALL_TESTS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck_grouped_pointwise(dtype):
    xs = [_t(2, 8, 3, 4, dtype=dtype, cl=True), _t(2, 4, 3, 4, dtype=dtype, seed=1, cl=True)]
    w = _t(3, 5, 4, dtype=dtype, seed=2)
    torch.library.opcheck(torch.ops.fastnas.grouped_pointwise.default, (xs, w),
                          test_utils=ALL_TESTS)
    g = _t(2, 15, 3, 4, dtype=dtype, seed=3, cl=True, grad=False)
    for need in ([True, False], False), ([False, True], True):
        torch.library.opcheck(torch.ops.fastnas.grouped_pointwise_backward.default,
                              ([x.detach() for x in xs], w.detach(), g, *need),
                              test_utils=ALL_TESTS)
