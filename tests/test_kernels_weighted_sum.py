"""weighted_sum: the Triton kernel against a float64 ``sum_k w[k] * xs[k]``, forward and the
gradients of every input and of ``w``."""
import pytest
import torch

from fastnas.kernels import launch_counts, reference, reset_launch_counts, use_backend, weighted_sum
from fastnas.kernels.testing import DEVICE, LAYOUTS, assert_close, make_tensor, to_reference

SHAPES = [(2, 3, 5, 7), (2, 20, 9, 9)]  # the second spans several programs, the last partial
MIXED = "mixed"  # inputs in different layouts: the strided (non-FLAT) kernel path


def _inputs(shape, K, dtype, layout, requires_grad=True):
    layouts = [LAYOUTS[k % len(LAYOUTS)] for k in range(K)] if layout == MIXED else [layout] * K
    xs = [make_tensor(shape, dtype, lay, seed=10 + k, requires_grad=requires_grad)
          for k, lay in enumerate(layouts)]
    # w as a strided column of an alpha-like matrix, in fp32 as DARTS keeps its alphas.
    w = make_tensor((K, 3), torch.float32, seed=1)[:, 1].detach().requires_grad_(True)
    return xs, w


def _check(xs, w, dtype, grad_layout="contiguous"):
    with use_backend("triton"):
        y = weighted_sum(xs, w)
    xs64, w64 = [to_reference(x) for x in xs], to_reference(w)
    y64 = reference.weighted_sum(xs64, w64)
    assert_close(y, y64, dtype, "y")
    g = make_tensor(y.shape, dtype, grad_layout, seed=3)
    inputs = [t for t in [w, *xs] if t.requires_grad]
    inputs64 = [t for t in [w64, *xs64] if t.requires_grad]
    grads = torch.autograd.grad(y, inputs, g)
    grads64 = torch.autograd.grad(y64, inputs64, g.double())
    names = [name for name, t in zip(["dw"] + [f"dx{k}" for k in range(len(xs))], [w, *xs])
             if t.requires_grad]
    for name, t, got, want in zip(names, inputs, grads, grads64):
        assert_close(got, want, t.dtype, name)  # dw is fp32 (like w) whatever the dtype of xs
    return y


@pytest.mark.parametrize("layout", LAYOUTS + (MIXED,))
@pytest.mark.parametrize("shape", SHAPES, ids=["small", "multi_program"])
def test_fp32_matches_reference(shape, layout):
    xs, w = _inputs(shape, 5, torch.float32, layout)
    y = _check(xs, w, torch.float32)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["contiguous", MIXED])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_dtypes_match_reference(dtype, layout):
    xs, w = _inputs(SHAPES[1], 7, dtype, layout)
    _check(xs, w, dtype)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_strided_upstream_gradient(layout):
    xs, w = _inputs(SHAPES[0], 3, torch.float32, layout)
    _check(xs, w, torch.float32, grad_layout="sliced")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_unbind_views_of_one_stacked_tensor(dtype):
    # How a supernet hands over a node's op outputs: views sharing strides, not dense.
    N, K, C, H, W = 2, 6, 3, 5, 7
    stacked = make_tensor((N, K, C, H, W), dtype, seed=1).requires_grad_(True)
    w = make_tensor((K,), torch.float32, seed=2, requires_grad=True)
    with use_backend("triton"):
        y = weighted_sum(stacked.unbind(1), w)
    s64, w64 = to_reference(stacked), to_reference(w)
    y64 = reference.weighted_sum(s64.unbind(1), w64)
    assert_close(y, y64, dtype, "y")
    g = make_tensor(y.shape, dtype, seed=3)
    d_stacked, dw = torch.autograd.grad(y, [stacked, w], g)
    d_stacked64, dw64 = torch.autograd.grad(y64, [s64, w64], g.double())
    assert_close(d_stacked, d_stacked64, dtype, "d_stacked")
    assert_close(dw, dw64, torch.float32, "dw")


@pytest.mark.parametrize("shape", [(11,), (3, 7), (2, 2, 3, 4, 5)], ids=["1d", "2d", "5d"])
def test_other_ranks(shape):
    xs, w = _inputs(shape, 3, torch.float32, "sliced")
    _check(xs, w, torch.float32)


def test_single_tensor_and_only_w_or_only_xs_need_grad():
    xs, w = _inputs(SHAPES[0], 1, torch.float32, "contiguous")
    _check(xs, w, torch.float32)
    xs, w = _inputs(SHAPES[0], 4, torch.float32, "contiguous", requires_grad=False)
    _check(xs, w, torch.float32)  # only dw
    xs, w = _inputs(SHAPES[0], 4, torch.float32, "contiguous")
    _check(xs, w.detach(), torch.float32)  # only the dxs


def test_w_gradient_is_deterministic():
    xs, w = _inputs(SHAPES[1], 6, torch.float32, "contiguous", requires_grad=False)
    g = make_tensor(SHAPES[1], torch.float32, seed=3)
    runs = []
    for _ in range(2):
        with use_backend("triton"):
            runs.append(torch.autograd.grad(weighted_sum(xs, w), w, g)[0])
    assert torch.equal(runs[0], runs[1])


def test_launches_one_kernel_each_way():
    xs, w = _inputs(SHAPES[0], 6, torch.float32, "contiguous")
    reset_launch_counts()
    with use_backend("triton"):
        y = weighted_sum(xs, w)
    y.backward(torch.ones_like(y))
    assert launch_counts() == {"weighted_sum_fwd": 1, "weighted_sum_bwd": 1}


def test_argument_errors():
    x = torch.zeros(2, 3, device=DEVICE)
    with pytest.raises(ValueError, match="vector of 2"):
        weighted_sum([x, x], torch.ones(3, device=DEVICE))
    with pytest.raises(ValueError, match="one shape and one dtype"):
        weighted_sum([x, torch.zeros(3, 2, device=DEVICE)], torch.ones(2, device=DEVICE))
    with pytest.raises(ValueError, match="at least one"):
        weighted_sum([], torch.ones(0, device=DEVICE))
