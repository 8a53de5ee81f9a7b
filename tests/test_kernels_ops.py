"""The kernels as custom ops (``torch.ops.fastnas.*``): ``torch.library.opcheck`` on every op,
on the torch path and on the Triton path (compiled on CUDA, the interpreter on a CPU), at tiny
sizes; and the dispatch rules hold for the ops as for the Python functions."""
import pytest
import torch

from fastnas import kernels
from fastnas.kernels import dispatch, reference
from fastnas.kernels.testing import DEVICE, make_tensor

BACKENDS = ["torch", "triton"]
ALL_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor",
             "test_aot_dispatch_dynamic")


def _needs_triton(backend):
    if backend == "triton" and not (dispatch.HAS_TRITON
                                    and (dispatch.INTERPRET or torch.cuda.is_available())):
        pytest.skip("needs Triton (compiled on CUDA, or TRITON_INTERPRET=1 on a CPU)")


def _weighted_sum_args(layout, requires_grad=True):
    xs = [make_tensor((2, 3, 4, 5), torch.float32, layout, seed=k, requires_grad=requires_grad)
          for k in range(3)]
    w = make_tensor((3,), torch.float32, seed=9, requires_grad=requires_grad)
    return xs, w


def _conv_args(layout, M, requires_grad=True):
    x = make_tensor((2, 3, 6, 5), torch.float32, layout, seed=1, requires_grad=requires_grad)
    w = make_tensor((M * 3, 1, 3, 3), torch.float32, scale=0.3, seed=2,
                    requires_grad=requires_grad)
    return x, w, [2, 1], [2, 1], [2, 1]   # strided in H, dilated in H


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_weighted_sum(backend, layout):
    _needs_triton(backend)
    with kernels.use_backend(backend):
        torch.library.opcheck(torch.ops.fastnas.weighted_sum.default,
                              _weighted_sum_args(layout), test_utils=ALL_TESTS)
        xs, w = _weighted_sum_args(layout, requires_grad=False)
        g = make_tensor(xs[0].shape, torch.float32, "sliced", seed=5)
        for need_dx, need_dw in [(True, True), (True, False), (False, True)]:
            torch.library.opcheck(torch.ops.fastnas.weighted_sum_backward.default,
                                  (xs, w, g, need_dx, need_dw, backend == "triton"),
                                  test_utils=ALL_TESTS)


@pytest.mark.parametrize("layout, M", [("contiguous", 1), ("channels_last", 2)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_depthwise_conv2d(backend, layout, M):
    _needs_triton(backend)
    args = _conv_args(layout, M)
    with kernels.use_backend(backend):
        torch.library.opcheck(torch.ops.fastnas.depthwise_conv2d.default, args,
                              test_utils=ALL_TESTS)
        x, w, *conv = _conv_args(layout, M, requires_grad=False)
        y = torch.ops.fastnas.depthwise_conv2d(x, w, *conv)
        g = make_tensor(y.shape, torch.float32, "sliced", seed=3)
        for op in (torch.ops.fastnas.depthwise_conv2d_input_grad.default,
                   torch.ops.fastnas.depthwise_conv2d_weight_grad.default):
            torch.library.opcheck(op, (g, x, w, *conv, backend == "triton"), test_utils=ALL_TESTS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_compute_the_reference(backend):
    """The ops themselves (not only their metadata) against the float64 reference."""
    _needs_triton(backend)
    xs, w = _weighted_sum_args("channels_last")
    x, v, *conv = _conv_args("contiguous", 2)
    kernels.reset_launch_counts()
    with kernels.use_backend(backend):
        y = torch.ops.fastnas.weighted_sum(xs, w)
        z = torch.ops.fastnas.depthwise_conv2d(x, v, *conv)
        (y.square().sum() + z.square().sum()).backward()
    assert bool(kernels.launch_counts()) == (backend == "triton")
    xs64, w64 = [t.detach().double().requires_grad_() for t in xs], w.detach().double()
    x64, v64 = x.detach().double().requires_grad_(), v.detach().double().requires_grad_()
    y64 = reference.weighted_sum(xs64, w64.requires_grad_())
    z64 = reference.depthwise_conv2d(x64, v64, *conv)
    (y64.square().sum() + z64.square().sum()).backward()
    for got, want in [(y, y64), (z, z64), (w.grad, w64.grad), (xs[1].grad, xs64[1].grad),
                      (x.grad, x64.grad), (v.grad, v64.grad)]:
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_backward_runs_what_the_forward_ran():
    """A forward on the Triton kernels takes the Triton backward even when the backend has
    changed in between; a forced ``triton`` op that cannot run raises, never falls back."""
    _needs_triton("triton")
    xs, w = _weighted_sum_args("contiguous")
    kernels.reset_launch_counts()
    with kernels.use_backend("triton"):
        y = kernels.weighted_sum(xs, w)
    with kernels.use_backend("torch"):
        y.sum().backward()
    assert kernels.launch_counts() == {"weighted_sum_fwd": 1, "weighted_sum_bwd": 1}
    if DEVICE.type == "cpu":
        x = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
        with kernels.use_backend("triton"), pytest.raises(TypeError, match="float64"):
            torch.ops.fastnas.depthwise_conv2d(x, torch.zeros(2, 1, 3, 3, dtype=torch.float64),
                                               [1, 1], [1, 1], [1, 1])
