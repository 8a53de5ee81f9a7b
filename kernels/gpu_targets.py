"""Compile the kernels for real GPU targets without a GPU, and read their register use.

``compile_launch(launch, arch)`` compiles the kernel of a ``fastnas.kernels.launch.Launch`` (the
constexprs, ``num_warps`` and argument types of that launch) for ``sm_<arch>`` with Triton's own
compiler (``triton.compile`` of an ``ASTSource`` for a ``GPUTarget``), then runs Triton's bundled
``ptxas -v`` on the PTX and returns a ``CompiledKernel`` with the registers per thread and the
bytes of spill stores and loads. Nothing here needs a GPU or a CUDA driver.

The argument types are specialized as Triton's launcher does: an integer equal to 1 becomes a
constant, integers and pointers that are multiples of 16 (pointers: 16-byte aligned addresses)
carry the ``tt.divisibility = 16`` attribute, so the code compiled here is the code a launch on a
GPU would compile. Launches recorded on fake tensors (``launch.recording()`` around a model run
on fake CUDA tensors) have no addresses: their alignment is read from the storage offset.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from . import dispatch
from .launch import KERNELS, Launch

ARCHS = (80, 90)
_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
           torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32", torch.int8: "i8",
           torch.uint8: "u8", torch.bool: "i1"}


@dataclass(frozen=True)
class KernelConfig:
    """One compiled variant of a kernel: what a launch fixes at compile time. ``signature``:
    parameter name -> Triton type (``constexpr`` for constants); ``constexprs``: name -> value;
    ``divisible``: the parameters carrying ``tt.divisibility = 16``."""

    kernel: str
    signature: Dict[str, str]
    constexprs: Dict[str, Any]
    divisible: Tuple[str, ...]
    num_warps: int
    source: Optional[str] = None   # "path/to/module.py:function" outside ``KERNELS``

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def describe(self) -> str:
        """Constexprs, warps and argument types in one line (``D``: divisible by 16)."""
        consts = ", ".join(f"{k}={v}" for k, v in self.constexprs.items())
        types = ",".join(("D" if n in self.divisible else "") + t
                         for n, t in self.signature.items() if t != "constexpr")
        return f"{consts}, num_warps={self.num_warps} [{types}]"


@dataclass(frozen=True)
class CompiledKernel:
    """What ``ptxas -v`` says about one kernel configuration on one architecture."""

    kernel: str
    arch: int
    config: str            # KernelConfig.describe()
    registers: int         # per thread
    spill_stores: int      # bytes
    spill_loads: int       # bytes

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


def _aligned(t: torch.Tensor) -> bool:
    if not isinstance(t, torch._subclasses.fake_tensor.FakeTensor) and t.device.type != "meta":
        return t.data_ptr() % 16 == 0
    return t.storage_offset() * t.element_size() % 16 == 0


def _specialize(value: Any) -> Tuple[str, Any, bool]:
    """``(type, constant or None, divisible by 16)`` of one runtime argument, as Triton's
    launcher specializes it."""
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[value.dtype], None, _aligned(value)
    if isinstance(value, bool):
        return "i1", None, False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", 1, False
        kind = "i32" if -2**31 <= value < 2**31 else ("i64" if value < 2**63 else "u64")
        return kind, None, value % 16 == 0
    if isinstance(value, float):
        return "fp32", None, False
    raise TypeError(f"cannot specialize a kernel argument of type {type(value).__name__}")


def config_of(launch: Launch) -> KernelConfig:
    """The compile-time configuration of ``launch``."""
    names = KERNELS[launch.kernel].arg_names
    runtime = [n for n in names if n not in launch.constexprs]
    if len(runtime) != len(launch.args):
        raise ValueError(f"{launch.kernel}: {len(launch.args)} arguments for {len(runtime)} "
                         f"runtime parameters {runtime}")
    values = dict(zip(runtime, launch.args))
    signature, constexprs, divisible = {}, {}, []
    for name in names:
        if name in launch.constexprs:
            signature[name], constexprs[name] = "constexpr", launch.constexprs[name]
            continue
        kind, constant, is_divisible = _specialize(values[name])
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = constant
        elif is_divisible:
            divisible.append(name)
    return KernelConfig(launch.kernel, signature, constexprs, tuple(divisible), launch.num_warps)


def unique(launches: List[Launch]) -> List[KernelConfig]:
    """The distinct compile-time configurations of ``launches``, in first-seen order."""
    seen: Dict[str, KernelConfig] = {}
    for launch in launches:
        config = config_of(launch)
        seen.setdefault(config.key(), config)
    return list(seen.values())


# -- compiling ------------------------------------------------------------------------------------
def ptxas_path() -> str:
    """Triton's bundled ``ptxas`` (``TRITON_PTXAS_PATH`` overrides it, as for Triton itself)."""
    path = os.environ.get("TRITON_PTXAS_PATH")
    if path:
        return path
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_usage(ptx: str) -> Tuple[int, int, int]:
    """``(registers, spill store bytes, spill load bytes)`` of the one kernel in ``ptx``, from
    ``ptxas -v`` for the PTX's own ``.target``; cached by the PTX's hash."""
    target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    ptxas = ptxas_path()
    key = hashlib.sha256(f"{ptxas}\n{os.path.getmtime(ptxas)}\n{ptx}".encode()).hexdigest()
    cached = os.path.join(cache_dir(), "ptxas", key + ".json")
    if os.path.exists(cached):
        with open(cached) as f:
            return tuple(json.load(f))
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, "-v", f"--gpu-name={target}", src, "-o",
                              os.path.join(tmp, "kernel.cubin")],
                             capture_output=True, text=True, check=True)
    log = out.stdout + out.stderr
    regs, spills = _PTXAS_REGS.search(log), _PTXAS_SPILLS.search(log)
    if regs is None or spills is None:
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    usage = (int(regs.group(1)), int(spills.group(1)), int(spills.group(2)))
    _write_json(cached, usage)
    return usage


def _kernel(config: KernelConfig):
    if config.source is None:
        return KERNELS[config.kernel]
    path, name = config.source.rsplit(":", 1)
    spec = importlib.util.spec_from_file_location(f"_fastnas_kernel_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def compile_config(config: KernelConfig, arch: int) -> CompiledKernel:
    """Compile ``config`` for ``sm_<arch>`` in this process (Triton caches the result); raises
    on a compile error. The kernels must be compiled ``@triton.jit`` functions, not the
    interpreter's: see ``compile_configs``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _kernel(config)
    index = {name: (i,) for i, name in enumerate(fn.arg_names)}
    src = ASTSource(fn, dict(config.signature),
                    {index[n]: v for n, v in config.constexprs.items()},
                    {index[n]: [["tt.divisibility", 16]] for n in config.divisible})
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": config.num_warps})
    regs, stores, loads = ptxas_usage(compiled.asm["ptx"])
    return CompiledKernel(config.kernel, arch, config.describe(), regs, stores, loads)


def compile_configs(configs: List[KernelConfig], archs=ARCHS,
                    workers: Optional[int] = None) -> List[Union[CompiledKernel, str]]:
    """``compile_config`` of every config for every arch (config-major), a compile error given
    as its message instead of a report. The work is split over ``workers`` processes (default:
    one per CPU) running ``python -m fastnas.kernels.gpu_targets``, without Triton's interpreter
    (under ``TRITON_INTERPRET=1``, as in the CPU test suite, this process's kernels are not
    compilable); with one worker outside the interpreter it runs in this process."""
    jobs = [(c, a) for c in configs for a in archs]
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    if workers == 1 and not dispatch.INTERPRET:
        return [_compile_or_error(c, a) for c, a in jobs]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

    def run(w: int) -> list:   # worker w takes jobs w, w + workers, ...
        payload = json.dumps([[dataclasses.asdict(c), a] for c, a in jobs[w::workers]])
        out = subprocess.run([sys.executable, "-m", "fastnas.kernels.gpu_targets"],
                             input=payload, capture_output=True, text=True, env=env,
                             check=False)
        if out.returncode != 0:
            raise RuntimeError(f"compiling the kernels failed:\n{out.stderr[-4000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    results: List[Union[CompiledKernel, str]] = [""] * len(jobs)
    with ThreadPoolExecutor(workers) as pool:
        for w, chunk in enumerate(pool.map(run, range(workers))):
            for i, r in zip(range(w, len(jobs), workers), chunk):
                results[i] = CompiledKernel(**r) if isinstance(r, dict) else r
    return results


def _compile_or_error(config: KernelConfig, arch: int) -> Union[CompiledKernel, str]:
    try:
        return compile_config(config, arch)
    except Exception as e:  # noqa: BLE001 (every compile failure is reported, by name)
        return f"{config.kernel} on sm_{arch} ({config.describe()}): {type(e).__name__}: {e}"


def _main() -> None:
    """``compile_configs`` for the JSON list ``[[config, arch], ...]`` on stdin; JSON out."""
    jobs = json.loads(sys.stdin.read())
    results = []
    for config, arch in jobs:
        config["divisible"] = tuple(config["divisible"])
        r = _compile_or_error(KernelConfig(**config), arch)
        results.append(dataclasses.asdict(r) if isinstance(r, CompiledKernel) else r)
    sys.stdout.write(json.dumps(results) + "\n")


# -- caching the configurations of a model --------------------------------------------------------
def cache_dir() -> str:
    """``$FASTNAS_CACHE_DIR``, else ``~/.cache/fastnas``."""
    return os.environ.get("FASTNAS_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "fastnas")


def _write_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _source_hash() -> str:
    """Hash of the sources that decide which launches a supernet run makes (the kernels, the
    ops, the supernets) and of the torch and Triton versions."""
    import triton

    here = os.path.dirname(os.path.abspath(__file__))    # kernels/ (or fastnas/kernels/)
    parent = os.path.dirname(here)
    package = parent if os.path.basename(parent) == "fastnas" else os.path.join(parent, "fastnas")
    h = hashlib.sha256(f"{torch.__version__} {triton.__version__}".encode())
    for root in (here, os.path.join(package, "ops"), os.path.join(package, "supernet")):
        for folder, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    with open(os.path.join(folder, name), "rb") as f:
                        h.update(name.encode() + f.read())
    return h.hexdigest()[:24]


def cached_configurations(name: str, collect: Callable[[], List[KernelConfig]]
                          ) -> List[KernelConfig]:
    """``collect()`` (a list of configurations), cached on disk under ``name`` and a hash of the
    sources that decide it (``_source_hash``)."""
    path = os.path.join(cache_dir(), "configurations", f"{name}-{_source_hash()}.json")
    if os.path.exists(path):
        with open(path) as f:
            return [KernelConfig(**{**c, "divisible": tuple(c["divisible"])})
                    for c in json.load(f)]
    configs = collect()
    _write_json(path, [dataclasses.asdict(c) for c in configs])
    return configs


__all__ = ["ARCHS", "CompiledKernel", "KernelConfig", "cache_dir", "cached_configurations",
           "compile_config", "compile_configs", "config_of", "ptxas_path", "ptxas_usage",
           "unique"]

if __name__ == "__main__":
    _main()
