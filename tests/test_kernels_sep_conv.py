"""sep_conv2d: the fused Triton kernels against float64 ``pointwise(depthwise(relu(x)))``, forward
and the gradients of ``x`` and both weights."""
import importlib

import pytest
import torch

from fastnas.kernels import (dispatch, launch_counts, reference, reset_launch_counts, sep_conv2d,
                             use_backend)
from fastnas.kernels.testing import DEVICE, LAYOUTS, assert_close, make_tensor, to_reference

sep_module = importlib.import_module("fastnas.kernels.sep_conv")
depthwise_module = importlib.import_module("fastnas.kernels.depthwise_conv")

N = 2
# (C, C_out, H, W, kernel, stride, padding, dilation)
CASES = [
    (5, 5, 7, 9, 3, 1, 1, 1),  # sep_conv_3x3
    (20, 12, 9, 7, 3, 2, 1, 1),  # strided; C and C_out not multiples of their blocks
    (3, 6, 5, 5, 5, 1, 2, 1),  # sep_conv_5x5 on a 5x5 input
    (7, 7, 9, 9, 3, 2, 2, 2),  # dil_conv_3x3, strided
    (17, 9, 8, 6, 5, 1, 4, 2),  # dil_conv_5x5
    (6, 70, 9, 8, 5, 2, 0, 1),  # C_out > 64: two output-channel blocks
]
IDS = [f"C{c}_O{o}_{h}x{w}_k{k}_s{s}_p{p}_d{d}" for c, o, h, w, k, s, p, d in CASES]


def _check(case, dtype, layout, grad_layout="contiguous", needs=(True, True, True)):
    C, O, H, W, k, stride, padding, dilation = case
    x = make_tensor((N, C, H, W), dtype, layout, seed=1, requires_grad=needs[0])
    v = make_tensor((C, 1, k, k), dtype, scale=1 / k, seed=2, requires_grad=needs[1])
    u = make_tensor((O, C, 1, 1), dtype, scale=C ** -0.5, seed=4, requires_grad=needs[2])
    with use_backend("triton"):
        y = sep_conv2d(x, v, u, stride, padding, dilation)
    x64, v64, u64 = to_reference(x), to_reference(v), to_reference(u)
    y64 = reference.sep_conv2d(x64, v64, u64, stride, padding, dilation)
    assert_close(y, y64, dtype, "y")
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    g = make_tensor(y.shape, dtype, grad_layout, seed=3)
    pick = lambda ts: [t for t in ts if t.requires_grad]  # noqa: E731
    grads = torch.autograd.grad(y, pick([x, v, u]), g)
    grads64 = torch.autograd.grad(y64, pick([x64, v64, u64]), g.double())
    names = [n for n, need in zip(["dx", "d_dw_weight", "d_pw_weight"], needs) if need]
    for name, got, want in zip(names, grads, grads64):
        assert_close(got, want, dtype, name)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fp32_matches_reference(case, layout):
    _check(case, torch.float32, layout)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES[:5], ids=IDS[:5])
def test_half_dtypes_match_reference(case, dtype):
    _check(case, dtype, LAYOUTS[CASES.index(case) % len(LAYOUTS)])


def test_strided_upstream_gradient():
    _check(CASES[1], torch.float32, "channels_last", grad_layout="sliced")


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True)], ids=["x", "dw_weight", "pw_weight"])
def test_only_some_inputs_need_grad(needs):
    reset_launch_counts()
    _check(CASES[0], torch.float32, "contiguous", needs=needs)
    assert ("depthwise_bwd_input" in launch_counts()) == needs[0]


def test_small_blocks_many_programs(monkeypatch):
    # Several channel chunks, output-channel blocks and pixel blocks, all with partial last
    # blocks, and two programs per (channel, output-channel) block each walking three of the six
    # pixel tiles for the weight gradients.
    monkeypatch.setattr(sep_module, "block_sizes", lambda C, O, P: (16, 16, 16))
    monkeypatch.setattr(depthwise_module, "MAX_PARTIAL_PROGRAMS", 12)
    _check((36, 20, 7, 6, 3, 1, 1, 1), torch.float32, "sliced")


def test_gpu_block_heuristic(monkeypatch):
    # The blocks the compiled (GPU) path picks, run here in whatever mode the suite runs in.
    choose = sep_module.block_sizes

    def gpu_block_sizes(C, O, P):
        with monkeypatch.context() as m:
            m.setattr(dispatch, "INTERPRET", False)
            return choose(C, O, P)

    monkeypatch.setattr(sep_module, "block_sizes", gpu_block_sizes)
    _check(CASES[1], torch.float32, "contiguous")


def test_weight_gradients_are_deterministic(monkeypatch):
    monkeypatch.setattr(depthwise_module, "MAX_PARTIAL_PROGRAMS", 2)
    C, O, H, W, k, stride, padding, dilation = CASES[4]
    x = make_tensor((3, C, H, W), torch.float32, seed=1)
    v = make_tensor((C, 1, k, k), torch.float32, scale=1 / k, seed=2, requires_grad=True)
    u = make_tensor((O, C, 1, 1), torch.float32, scale=C ** -0.5, seed=4, requires_grad=True)
    runs = []
    for _ in range(2):
        with use_backend("triton"):
            y = sep_conv2d(x, v, u, stride, padding, dilation)
        runs.append(torch.autograd.grad(y, [v, u], torch.ones_like(y)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_shape_errors():
    x = torch.zeros(1, 4, 5, 5, device=DEVICE)
    v = torch.zeros(4, 1, 3, 3, device=DEVICE)
    with use_backend("triton"), pytest.raises(ValueError, match="pointwise weight"):
        sep_conv2d(x, v, torch.zeros(8, 3, 1, 1, device=DEVICE))
