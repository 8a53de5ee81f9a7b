"""Every Triton kernel, in every launch configuration a DARTS search at the paper's shapes uses,
compiles for sm_80 and sm_90 with the installed Triton and its ptxas, without a GPU; no kernel
spills more than ``MAX_SPILL_BYTES``. The checker itself fails on a kernel that does not compile
and on one that spills.

The configurations come from the fast supernet itself (``fastnas.supernet.launches``: the
paper-size search step run on fake tensors with the Triton kernels picked), fp32 and bf16, for
DARTS and for the supernets of the methods (``METHOD_AXES``: GDAS's sampled plan, PC-DARTS's
C/4 channels, DARTS-'s auxiliary skips).
Compiling ~180 configurations x 2 targets takes minutes on 2 cores, once: the list is cached
under a hash of the sources that decide it (kernels, ops, supernets) and the torch and Triton
versions; Triton caches each compiled kernel and ``gpu_targets`` each ptxas report
(``$FASTNAS_CACHE_DIR``, default ``~/.cache/fastnas``). The two tests over those configurations
are ``slow_compile`` tests (``-m slow_compile``, run by CI); the checker's own tests run by default.
"""
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")

from fastnas.kernels import gpu_targets, launch  # noqa: E402
from fastnas.supernet.launches import METHOD_AXES, search_launches  # noqa: E402

# Bytes of spill stores + loads allowed per kernel (ptxas -v). The kernels spill at most 8 bytes
# today (depthwise_bwd_input at stride 2 on sm_90); more is a regression worth a look.
MAX_SPILL_BYTES = 64


@pytest.fixture(scope="module")
def configurations():
    """Unique launch configurations of the search steps, fp32 and bf16 (cached)."""
    def collect():
        return gpu_targets.unique([launch for method in METHOD_AXES
                                   for dtype in (torch.float32, torch.bfloat16)
                                   for launch in search_launches(dtype, method=method)])
    return gpu_targets.cached_configurations("paper-search-methods", collect)


@pytest.mark.slow_compile
def test_the_search_runs_every_kernel(configurations):
    assert {c.kernel for c in configurations} == set(launch.KERNELS)
    assert {"*bf16", "*fp32"} <= {t for c in configurations for t in c.signature.values()}


@pytest.mark.slow_compile
def test_every_configuration_compiles_without_spilling(configurations):
    reports = gpu_targets.compile_configs(configurations, gpu_targets.ARCHS)
    errors = [r for r in reports if isinstance(r, str)]
    assert not errors, "\n".join(errors[:5])
    worst = max(reports, key=lambda r: r.spills)
    assert worst.spills <= MAX_SPILL_BYTES, worst
    assert all(0 < r.registers <= 255 for r in reports)
    assert {r.arch for r in reports} == {80, 90}


def _broken_kernel(tmp_path, body, block):
    """The configuration of a kernel written to a file (Triton compiles from its source)."""
    path = tmp_path / "broken_kernel.py"
    path.write_text(textwrap.dedent("""
        import triton
        import triton.language as tl


        @triton.jit
        def kernel(X, Y, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    """) + textwrap.indent(textwrap.dedent(body), "    "))
    return gpu_targets.KernelConfig(
        "kernel", {"X": "*fp32", "Y": "*fp32", "n": "i32", "BLOCK": "constexpr"},
        {"BLOCK": block}, ("X", "Y", "n"), 4, source=f"{path}:kernel")


def test_a_kernel_that_does_not_compile_fails(tmp_path):
    config = _broken_kernel(tmp_path, """
        x = tl.load(X + offs)
        tl.store(Y + offs, tl.dot(x, x))   # tl.dot needs 2-D blocks
    """, 64)
    [report] = gpu_targets.compile_configs([config], (90,))
    assert isinstance(report, str) and "CompilationError" in report, report


def test_a_kernel_that_spills_fails_the_threshold(tmp_path):
    # A 512 x 64 fp32 tile (256 values per thread) kept live across its row sums.
    config = _broken_kernel(tmp_path, """
        at = offs[:, None] * 64 + tl.arange(0, 64)[None, :]
        tile = tl.load(X + at)
        tl.store(Y + at, tile * tl.sum(tile, 1)[:, None])
    """, 512)
    [report] = gpu_targets.compile_configs([config], (80,))
    assert not isinstance(report, str), report
    assert report.spills > MAX_SPILL_BYTES, report
