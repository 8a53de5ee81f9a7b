"""The CPU paths stay memory-safe on CPUs without AVX-512 (issue 23).

oneDNN picks its kernels by the CPU's instruction set, so a machine with AVX-512 (where CI ran)
never runs the AVX2 kernels that a user's AVX2-only CPU runs. ``ONEDNN_MAX_CPU_ISA=AVX2`` makes
oneDNN take its AVX2 kernels here too. A kernel that writes past its buffer corrupts the heap
and kills the process (abort, segfault or bus error) at some later allocation, so each check
runs in a subprocess and calls glibc's ``malloc_trim`` after every backward, which walks the
heap and aborts at the first corrupted chunk, next to the op that caused it.

The case that crashed: the weight gradient of a stride-2 1x1 conv (the factorized reductions)
on a channels_last input with few channels, as in ``tests/test_compile.py``'s tiny supernet.
"""
import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_avx2 = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64")
    or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
    reason="oneDNN's AVX2 kernels run only on an x86-64 CPU with AVX2")

_PRELUDE = """
import ctypes, ctypes.util, torch
import torch.nn.functional as F
torch.set_num_threads(1)
_libc = ctypes.CDLL(ctypes.util.find_library("c"))
trim = getattr(_libc, "malloc_trim", None)

def check_heap():
    if trim is not None:
        trim(0)
"""


def run_avx2(body: str) -> None:
    """Run ``body`` (after ``_PRELUDE``) in a Python subprocess limited to oneDNN's AVX2
    kernels; it must exit 0 and print ``ok``."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": ROOT}
    code = _PRELUDE + textwrap.dedent(body) + "\nprint('ok')\n"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (
        f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


@needs_avx2
def test_factorized_reductions_backward_under_avx2_kernels():
    """FactorizedReduce and the ENAS micro cell's reducing block input: forward and backward on
    channels_last inputs with 2-16 channels, gradients against the stride-2 convs in float64,
    and the heap intact after every backward."""
    run_avx2("""
        from fastnas.enas.micro import BlockInput
        from fastnas.ops import FactorizedReduce

        def reference(x, w1, w2):
            r = F.relu(x.double())
            shifted = F.pad(r, (0, 1, 0, 1))[:, :, 1:, 1:]
            return torch.cat([F.conv2d(r, w1.double(), stride=2),
                              F.conv2d(shifted, w2.double(), stride=2)], 1)

        torch.manual_seed(0)
        for C_in in (2, 3, 4, 6, 12, 16):
            for size in (8, 7, 16):
                fr = FactorizedReduce(C_in, 8).eval()
                x = torch.randn(2, C_in, size, size).contiguous(
                    memory_format=torch.channels_last).requires_grad_()
                g = torch.randn(2, 8, (size + 1) // 2, (size + 1) // 2)
                y = fr(x)
                gx, gw1, gw2 = torch.autograd.grad(y, [x, fr.conv_1.weight, fr.conv_2.weight], g)
                check_heap()
                # eval-mode BN without affine parameters: y = z / sqrt(1 + eps), z the convs
                z = reference(x, fr.conv_1.weight, fr.conv_2.weight) / (1 + fr.bn.eps) ** 0.5
                xd = x.detach().double().requires_grad_()
                w1 = fr.conv_1.weight.detach().double().requires_grad_()
                w2 = fr.conv_2.weight.detach().double().requires_grad_()
                zd = reference(xd, w1, w2) / (1 + fr.bn.eps) ** 0.5
                want = torch.autograd.grad(zd, [xd, w1, w2], g.double())
                torch.testing.assert_close(y.double(), z.detach(), rtol=1e-5, atol=1e-5)
                for got, ref in zip((gx, gw1, gw2), want):
                    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
        block = BlockInput(num_blocks=2, width=2, C_out=4, reduce=True).train()
        for blocks in ([0], [0, 1]):
            x = torch.randn(2, 2 * len(blocks), 8, 8).contiguous(
                memory_format=torch.channels_last).requires_grad_()
            torch.autograd.grad(block(x, blocks).square().sum(), [x, *block.parameters()],
                                allow_unused=True)
            check_heap()
    """)


@needs_avx2
def test_tiny_fast_supernet_search_steps_under_avx2_kernels():
    """The tiny fast-supernet DARTS steps of ``tests/test_compile.py`` (eager; first and second
    order), which aborted the compile tests on an AVX2-only CPU, with the heap checked after
    every step."""
    run_avx2("""
        from fastnas import DARTSOptimizer

        def batch(seed):
            g = torch.Generator().manual_seed(seed)
            return torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 5, (2,), generator=g)

        for order in (1, 2):
            opt = DARTSOptimizer(dict(channels=4, layers=3, num_nodes=1, num_classes=5,
                                      batch_size=2, device="cpu", seed=4, order=order))
            for step in range(2):
                stats = opt.step(batch(7 + step), batch(17 + step))
                check_heap()
                assert torch.isfinite(torch.tensor(stats["val_loss"]))
    """)
