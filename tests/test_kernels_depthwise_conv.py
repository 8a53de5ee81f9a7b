"""depthwise_conv2d: the Triton kernel against float64 ``F.conv2d(groups=C)``, forward and both
gradients, under TRITON_INTERPRET=1 on a CPU (tiny shapes) or compiled on a GPU."""
import importlib

import pytest
import torch

from fastnas.kernels import (depthwise_conv2d, dispatch, launch_counts, reference,
                             reset_launch_counts, use_backend)
from fastnas.kernels.testing import DEVICE, LAYOUTS, assert_close, make_tensor, to_reference

depthwise_module = importlib.import_module("fastnas.kernels.depthwise_conv")

N = 2
# (C, H, W, kernel, stride, padding, dilation)
CASES = [
    (5, 7, 9, 3, 1, 1, 1),  # sep_conv_3x3
    (20, 9, 7, 3, 2, 1, 1),  # strided; C=20 is not a multiple of the channel block
    (3, 5, 5, 5, 1, 2, 1),  # sep_conv_5x5 on a 5x5 input
    (7, 9, 9, 3, 2, 2, 2),  # dil_conv_3x3, strided
    (17, 8, 6, 5, 1, 4, 2),  # dil_conv_5x5
    (6, 9, 8, 5, 2, 0, 1),  # no padding, stride 2
]
IDS = [f"C{c}_{h}x{w}_k{k}_s{s}_p{p}_d{d}" for c, h, w, k, s, p, d in CASES]


def _check(case, dtype, layout, grad_layout="contiguous", x_grad=True, w_grad=True):
    C, H, W, k, stride, padding, dilation = case
    x = make_tensor((N, C, H, W), dtype, layout, seed=1, requires_grad=x_grad)
    w = make_tensor((C, 1, k, k), dtype, scale=1 / k, seed=2, requires_grad=w_grad)
    x64, w64 = to_reference(x), to_reference(w)
    with use_backend("triton"):
        y = depthwise_conv2d(x, w, stride, padding, dilation)
    y64 = reference.depthwise_conv2d(x64, w64, stride, padding, dilation)
    assert_close(y, y64, dtype, "y")
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    g = make_tensor(y.shape, dtype, grad_layout, seed=3)
    inputs = [t for t in (x, w) if t.requires_grad]
    grads = torch.autograd.grad(y, inputs, g)
    grads64 = torch.autograd.grad(y64, [t for t in (x64, w64) if t.requires_grad], g.double())
    for name, got, want in zip(["dx" if x_grad else "dw", "dw"], grads, grads64):
        assert_close(got, want, dtype, name)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fp32_matches_reference(case, layout):
    _check(case, torch.float32, layout)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_half_dtypes_match_reference(case, dtype):
    layout = LAYOUTS[CASES.index(case) % len(LAYOUTS)]
    _check(case, dtype, layout)


def test_strided_upstream_gradient():
    _check(CASES[3], torch.float32, "contiguous", grad_layout="sliced")
    _check(CASES[1], torch.float32, "channels_last", grad_layout="contiguous")


def test_only_some_inputs_need_grad():
    reset_launch_counts()
    _check(CASES[0], torch.float32, "contiguous", w_grad=False)
    assert "depthwise_bwd_weight" not in launch_counts()
    reset_launch_counts()
    _check(CASES[0], torch.float32, "contiguous", x_grad=False)
    assert "depthwise_bwd_input" not in launch_counts()


def test_rectangular_kernel_and_pair_arguments():
    x = make_tensor((N, 4, 7, 8), torch.float32, seed=1, requires_grad=True)
    w = make_tensor((4, 1, 3, 5), torch.float32, scale=0.3, seed=2, requires_grad=True)
    with use_backend("triton"):
        y = depthwise_conv2d(x, w, (2, 1), (1, 2), (1, 2))
    x64, w64 = to_reference(x), to_reference(w)
    y64 = reference.depthwise_conv2d(x64, w64, (2, 1), (1, 2), (1, 2))
    assert_close(y, y64, torch.float32, "y")
    g = make_tensor(y.shape, torch.float32, seed=3)
    for name, got, want in zip(["dx", "dw"], torch.autograd.grad(y, [x, w], g),
                               torch.autograd.grad(y64, [x64, w64], g.double())):
        assert_close(got, want, torch.float32, name)


def test_weight_gradient_is_deterministic_across_programs(monkeypatch):
    # Two programs per channel block, each walking several tiles: the looped reduction path.
    monkeypatch.setattr(depthwise_module, "MAX_PARTIAL_PROGRAMS", 2)
    C, H, W, k, stride, padding, dilation = CASES[4]
    x = make_tensor((3, C, H, W), torch.float32, seed=1)
    w = make_tensor((C, 1, k, k), torch.float32, scale=1 / k, seed=2, requires_grad=True)
    g = make_tensor((3, C, H, W), torch.float32, seed=3)
    runs = []
    for _ in range(2):
        with use_backend("triton"):
            y = depthwise_conv2d(x, w, stride, padding, dilation)
        runs.append(torch.autograd.grad(y, w, g)[0])
    assert torch.equal(runs[0], runs[1])
    w64 = to_reference(w)
    y64 = reference.depthwise_conv2d(x.double(), w64, stride, padding, dilation)
    assert_close(runs[0], torch.autograd.grad(y64, w64, g.double())[0], torch.float32, "dw")


def test_shape_errors():
    x = torch.zeros(1, 4, 5, 5, device=DEVICE)
    with use_backend("triton"), pytest.raises(ValueError, match="depthwise weight"):
        depthwise_conv2d(x, torch.zeros(3, 1, 3, 3, device=DEVICE))
    with use_backend("triton"), pytest.raises(ValueError, match="empty"):
        depthwise_conv2d(x, torch.zeros(4, 1, 7, 7, device=DEVICE))


def test_small_tiles_many_blocks(monkeypatch):
    # Several channel and pixel blocks per image, each with a partial last block.
    monkeypatch.setattr(depthwise_module, "tile_sizes", lambda C, P, channels_last: (8, 16))
    _check(CASES[1], torch.float32, "channels_last")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gpu_tile_heuristic(monkeypatch, layout):
    # The tiles the compiled (GPU) path picks, run here in whatever mode the suite runs in.
    choose = depthwise_module.tile_sizes

    def gpu_tile_sizes(C, P, channels_last):
        with monkeypatch.context() as m:
            m.setattr(dispatch, "INTERPRET", False)
            return choose(C, P, channels_last)

    monkeypatch.setattr(depthwise_module, "tile_sizes", gpu_tile_sizes)
    _check(CASES[4], torch.float32, layout)
