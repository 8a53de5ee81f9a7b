"""Backend dispatch of fastnas.kernels: which path runs, and that a forced ``triton`` backend runs
the kernels or raises, never silently falling back to torch."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from fastnas import kernels
from fastnas.kernels import dispatch, reference
from fastnas.kernels.testing import DEVICE, make_tensor


def _args(dtype=torch.float32, device=DEVICE):
    """Inputs for each op: {name: (function, args)}."""
    x = make_tensor((2, 4, 6, 5), dtype, device=device, seed=1, requires_grad=True)
    # Two depthwise convs of x in one call (channel multiplier 2), strided and dilated.
    v = make_tensor((8, 1, 3, 3), dtype, device=device, scale=0.3, seed=2, requires_grad=True)
    w = make_tensor((3,), torch.float32 if dtype != torch.float64 else dtype, device=device,
                    seed=4, requires_grad=True)
    xs = [make_tensor((2, 4, 6, 5), dtype, device=device, seed=5 + k, requires_grad=True)
          for k in range(3)]
    return {
        "weighted_sum": (kernels.weighted_sum, (xs, w)),
        "depthwise_conv2d": (kernels.depthwise_conv2d, (x, v, 2, 2, 2)),
    }


OPS = ["weighted_sum", "depthwise_conv2d"]
KERNELS = {
    "weighted_sum": {"weighted_sum_fwd", "weighted_sum_bwd"},
    "depthwise_conv2d": {"depthwise_fwd", "depthwise_bwd_input", "depthwise_bwd_weight"},
}


def _run(op, **kw):
    fn, args = _args(**kw)[op]
    y = fn(*args)
    y.backward(torch.ones_like(y))
    return y


@pytest.mark.parametrize("op", OPS)
def test_forced_triton_runs_the_kernels_forward_and_backward(op, monkeypatch):
    with kernels.use_backend("torch"):
        expected = _run(op)

    def refuse(*args, **kwargs):
        raise AssertionError("the torch reference ran under FASTNAS_BACKEND=triton")

    monkeypatch.setattr(reference, op, refuse)
    kernels.reset_launch_counts()
    with kernels.use_backend("triton"):
        y = _run(op)
    assert set(kernels.launch_counts()) == KERNELS[op]
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", OPS)
def test_env_var_selects_the_backend(op, monkeypatch):
    monkeypatch.setenv("FASTNAS_BACKEND", "triton")
    assert kernels.get_backend() == "triton"
    kernels.reset_launch_counts()
    _run(op)
    assert set(kernels.launch_counts()) == KERNELS[op]

    monkeypatch.setenv("FASTNAS_BACKEND", "torch")
    kernels.reset_launch_counts()
    _run(op)
    assert kernels.launch_counts() == {}


def test_auto_runs_triton_on_cuda_and_torch_on_cpu():
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        kernels.reset_launch_counts()
        with kernels.use_backend("auto"):
            for op in OPS:
                _run(op, device=torch.device(device))
        ran = set(kernels.launch_counts())
        assert ran == (set().union(*KERNELS.values()) if device == "cuda" else set()), device


def test_set_backend_and_use_backend_restore(monkeypatch):
    monkeypatch.delenv("FASTNAS_BACKEND", raising=False)
    assert kernels.get_backend() == "auto"
    with kernels.use_backend("torch"):
        assert kernels.get_backend() == "torch"
        with kernels.use_backend("triton"):
            assert kernels.get_backend() == "triton"
        assert kernels.get_backend() == "torch"
    assert kernels.get_backend() == "auto"
    kernels.set_backend("TORCH")
    try:
        assert kernels.get_backend() == "torch"
    finally:
        kernels.set_backend(None)
    assert kernels.get_backend() == "auto"


def test_unknown_backend_names_raise(monkeypatch):
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'"):
        kernels.set_backend("cuda")
    monkeypatch.setenv("FASTNAS_BACKEND", "fast")
    with pytest.raises(ValueError, match="unknown kernel backend 'fast'"):
        kernels.get_backend()


@pytest.mark.parametrize("op", OPS)
def test_forced_triton_on_cpu_without_interpreter_raises(op, monkeypatch):
    monkeypatch.setattr(dispatch, "INTERPRET", False)
    kernels.reset_launch_counts()
    with kernels.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _run(op, device=torch.device("cpu"))
    assert kernels.launch_counts() == {}


@pytest.mark.parametrize("op", OPS)
def test_float64_raises_when_forced_and_runs_torch_under_auto(op):
    with kernels.use_backend("triton"), pytest.raises(TypeError, match="float64"):
        _run(op, dtype=torch.float64)
    kernels.reset_launch_counts()
    with kernels.use_backend("auto"):
        _run(op, dtype=torch.float64)
    assert kernels.launch_counts() == {}


def test_tensors_on_two_devices_raise_when_forced():
    x = torch.zeros(1, 2, 3, 3, device=DEVICE)
    w = torch.zeros(2, 1, 3, 3, device="meta")
    with kernels.use_backend("triton"), pytest.raises(RuntimeError, match="one device"):
        kernels.depthwise_conv2d(x, w)


def test_without_triton_gpu_tensors_take_torch_with_one_warning(monkeypatch):
    # Pretend Triton is missing and that CPU tensors are GPU tensors.
    monkeypatch.setattr(dispatch, "HAS_TRITON", False)
    monkeypatch.setattr(dispatch, "INTERPRET", False)
    monkeypatch.setattr(dispatch, "GPU_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(dispatch, "_warned_no_triton", False)
    kernels.reset_launch_counts()
    with kernels.use_backend("auto"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for op in OPS:
            _run(op, device=torch.device("cpu"))
    assert kernels.launch_counts() == {}
    assert len([w for w in caught if "Triton is not installed" in str(w.message)]) == 1
    with kernels.use_backend("triton"), pytest.raises(RuntimeError, match="not installed"):
        _run("weighted_sum", device=torch.device("cpu"))


def test_imports_and_runs_torch_path_without_triton():
    # As on macOS: `import triton` fails; the package still imports and the torch path works.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, fastnas.kernels as K\n"
        "assert not K.HAS_TRITON\n"
        "x = torch.randn(1, 2, 5, 5); v = torch.randn(2, 1, 3, 3)\n"
        "K.depthwise_conv2d(x, v); K.depthwise_conv2d(x, torch.randn(6, 1, 3, 3), 1, 1)\n"
        "K.weighted_sum([x, x], torch.ones(2))\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASTNAS_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
