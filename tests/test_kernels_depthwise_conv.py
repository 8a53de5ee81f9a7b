"""depthwise_conv2d: the Triton kernels against float64
``F.conv2d(torch.cat([x] * M, 1), w, groups=M*C)`` (the channel multiplier ``M`` spelled out by
repeating the input), forward and both gradients, under TRITON_INTERPRET=1 on a CPU (tiny shapes)
or compiled on a GPU; and the torch reference (which never repeats ``x``) against that formula."""
import importlib
import re

import pytest
import torch
import torch.nn.functional as F

from fastnas.kernels import (
    depthwise_conv2d,
    dispatch,
    launch_counts,
    reference,
    reset_launch_counts,
    use_backend,
)
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


def case_id(case, M=1):
    C, H, W, k, s, p, d = case
    return f"{f'M{M}_' if M > 1 else ''}C{C}_{H}x{W}_k{k}_s{s}_p{p}_d{d}"


# (M, case): odd C, strides 1 and 2, dilation 2, kernels 3 and 5. The last has M*C = 68 output
# channels: two channel blocks in the interpreter, the boundary inside copy m = 3.
MULTIPLIER_CASES = [(2, CASES[0]), (4, (3, 9, 7, 5, 2, 2, 1)), (2, CASES[3]), (4, CASES[4])]


def repeated_input_conv(x, w, stride, padding, dilation):
    """The defining formula: ``x`` repeated ``M`` times along channels, one group per channel."""
    M = w.shape[0] // x.shape[1]
    return F.conv2d(torch.cat([x] * M, 1), w, None, stride, padding, dilation, groups=w.shape[0])


def _with_grads(y, x, w, g):
    """``[y, dx, dw]`` for upstream gradient ``g``, leaving out what does not require grad."""
    return [y, *torch.autograd.grad(y, [t for t in (x, w) if t.requires_grad], g)]


def _check(case, dtype, layout, M=1, grad_layout="contiguous", x_grad=True, w_grad=True):
    C, H, W, k, *args = case
    x = make_tensor((N, C, H, W), dtype, layout, seed=1, requires_grad=x_grad)
    w = make_tensor((M * C, 1, k, k), dtype, scale=1 / k, seed=2, requires_grad=w_grad)
    reset_launch_counts()
    with use_backend("triton"):
        y = depthwise_conv2d(x, w, *args)
    g = make_tensor(y.shape, dtype, grad_layout, seed=3)
    got = _with_grads(y, x, w, g)
    ran = ["depthwise_fwd"] + ["depthwise_bwd_input"] * x_grad + ["depthwise_bwd_weight"] * w_grad
    assert set(launch_counts()) == set(ran)  # the kernels ran, and only those needed

    x64, w64, g64 = to_reference(x), to_reference(w), g.double()
    want = _with_grads(repeated_input_conv(x64, w64, *args), x64, w64, g64)
    oracle = _with_grads(reference.depthwise_conv2d(x64, w64, *args), x64, w64, g64)
    names = ["y"] + ["dx"] * x_grad + ["dw"] * w_grad
    for name, ref, expected in zip(names, oracle, want):
        torch.testing.assert_close(ref, expected, msg=lambda m, what=name: f"reference {what}: {m}")
    for name, actual, expected in zip(names, got, want):
        assert_close(actual, expected, dtype, name)
    if layout == "channels_last":
        assert got[0].is_contiguous(memory_format=torch.channels_last)
        if x_grad:
            assert got[1].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_fp32_matches_reference(case, layout):
    _check(case, torch.float32, layout)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_half_dtypes_match_reference(case, dtype):
    layout = LAYOUTS[CASES.index(case) % len(LAYOUTS)]
    _check(case, dtype, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("M, case", MULTIPLIER_CASES,
                         ids=[case_id(c, m) for m, c in MULTIPLIER_CASES])
def test_channel_multiplier_matches_repeated_input(M, case, layout):
    _check(case, torch.float32, layout, M=M)


@pytest.mark.parametrize("M, case", MULTIPLIER_CASES,
                         ids=[case_id(c, m) for m, c in MULTIPLIER_CASES])
def test_channel_multiplier_bf16(M, case):
    layout = LAYOUTS[MULTIPLIER_CASES.index((M, case)) % len(LAYOUTS)]
    _check(case, torch.bfloat16, layout, M=M)


def test_channel_multiplier_never_repeats_the_input(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the input was repeated")

    x = make_tensor((N, 5, 7, 9), torch.float32, "channels_last", seed=1, requires_grad=True)
    w = make_tensor((15, 1, 3, 3), torch.float32, seed=2, requires_grad=True)
    for name in ("repeat", "repeat_interleave", "tile"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for name in ("cat", "concat", "concatenate", "stack", "tile", "repeat_interleave"):
        monkeypatch.setattr(torch, name, refuse)
    for backend in ("triton", "torch"):
        with use_backend(backend):
            y = depthwise_conv2d(x, w, 1, 1, 1)
        y.backward(torch.ones_like(y))
        assert y.shape == (N, 15, 7, 9)


def test_strided_upstream_gradient():
    _check(CASES[3], torch.float32, "contiguous", grad_layout="sliced")
    _check(CASES[1], torch.float32, "channels_last", grad_layout="contiguous")
    _check(CASES[0], torch.float32, "channels_last", M=2, grad_layout="sliced")


@pytest.mark.parametrize("M", [1, 2])
def test_only_some_inputs_need_grad(M):
    # _check asserts that only the kernels of the gradients asked for ran.
    _check(CASES[0], torch.float32, "contiguous", M=M, w_grad=False)
    _check(CASES[0], torch.float32, "contiguous", M=M, x_grad=False)


@pytest.mark.parametrize("M", [1, 2])
def test_rectangular_kernel_and_pair_arguments(M):
    x = make_tensor((N, 4, 7, 8), torch.float32, seed=1, requires_grad=True)
    w = make_tensor((M * 4, 1, 3, 5), torch.float32, scale=0.3, seed=2, requires_grad=True)
    args = ((2, 1), (1, 2), (1, 2))
    with use_backend("triton"):
        y = depthwise_conv2d(x, w, *args)
    x64, w64 = to_reference(x), to_reference(w)
    y64 = repeated_input_conv(x64, w64, *args)
    assert_close(y, y64, torch.float32, "y")
    g = make_tensor(y.shape, torch.float32, seed=3)
    for name, got, want in zip(["dx", "dw"], torch.autograd.grad(y, [x, w], g),
                               torch.autograd.grad(y64, [x64, w64], g.double())):
        assert_close(got, want, torch.float32, name)


@pytest.mark.parametrize("M", [1, 2])
def test_weight_gradient_is_deterministic_across_programs(monkeypatch, M):
    # Two programs per channel block, each walking several tiles: the looped reduction path.
    monkeypatch.setattr(depthwise_module, "MAX_PARTIAL_PROGRAMS", 2)
    C, H, W, k, *args = CASES[4]
    x = make_tensor((3, C, H, W), torch.float32, seed=1)
    w = make_tensor((M * C, 1, k, k), torch.float32, scale=1 / k, seed=2, requires_grad=True)
    g = make_tensor((3, M * C, H, W), torch.float32, seed=3)
    runs = []
    for _ in range(2):
        with use_backend("triton"):
            y = depthwise_conv2d(x, w, *args)
        runs.append(torch.autograd.grad(y, w, g)[0])
    assert torch.equal(runs[0], runs[1])
    w64 = to_reference(w)
    y64 = repeated_input_conv(x.double(), w64, *args)
    assert_close(runs[0], torch.autograd.grad(y64, w64, g.double())[0], torch.float32, "dw")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_shape_errors(backend):
    x = torch.zeros(1, 4, 5, 5, device=DEVICE)
    for bad in [(3, 1, 3, 3), (6, 1, 3, 3), (0, 1, 3, 3), (8, 2, 3, 3), (4, 3, 3)]:
        message = re.escape(f"got weight {bad} for x (1, 4, 5, 5)")
        with use_backend(backend), pytest.raises(ValueError, match="depthwise weight.*" + message):
            depthwise_conv2d(x, torch.zeros(bad, device=DEVICE))
    with use_backend(backend), pytest.raises((ValueError, RuntimeError)):
        depthwise_conv2d(x, torch.zeros(8, 1, 7, 7, device=DEVICE))


def test_empty_output_is_an_error():
    x = torch.zeros(1, 4, 5, 5, device=DEVICE)
    with use_backend("triton"), pytest.raises(ValueError, match="empty"):
        depthwise_conv2d(x, torch.zeros(4, 1, 7, 7, device=DEVICE))


@pytest.mark.parametrize("M", [1, 2])
def test_small_tiles_many_blocks(monkeypatch, M):
    # Several channel and pixel blocks per image, each with a partial last block; with M = 2 the
    # output-channel blocks of 8 straddle the copies (40 = 5 blocks of 8, copy boundary at 20).
    monkeypatch.setattr(depthwise_module, "tile_sizes", lambda C, P, channels_last: (8, 16))
    _check(CASES[1], torch.float32, "channels_last", M=M)


@pytest.mark.parametrize("layout, M", [("contiguous", 1), ("channels_last", 1),
                                       ("channels_last", 4)])
def test_gpu_tile_heuristic(monkeypatch, layout, M):
    # The tiles the compiled (GPU) path picks, run here in whatever mode the suite runs in.
    choose = depthwise_module.tile_sizes

    def gpu_tile_sizes(C, P, channels_last):
        with monkeypatch.context() as m:
            m.setattr(dispatch, "INTERPRET", False)
            return choose(C, P, channels_last)

    monkeypatch.setattr(depthwise_module, "tile_sizes", gpu_tile_sizes)
    _check(CASES[4], torch.float32, layout, M=M)
