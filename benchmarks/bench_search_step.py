"""pytest-benchmark suite of the DARTS search step: reference vs fast supernet, eager and
compiled (``fast-compiled``: ``compile=True``; its first, untimed step compiles for minutes).

    pytest benchmarks/bench_search_step.py                       # small network, quick
    FASTNAS_BENCH_SIZE=paper pytest benchmarks/bench_search_step.py --benchmark-columns=median
    pytest benchmarks/bench_search_step.py -k "order1 and fp32" --benchmark-compare

Not collected by ``pytest tests/``. Same configurations and setup as
``benchmarks/search_step.py`` (which also measures peak memory, one process per configuration):
``FASTNAS_BENCH_SIZE=paper`` is the paper's search network (C=16, 8 cells, 32x32, batch 8 on the
CPU, 64 on CUDA); the default ``small`` (C=8, 5 cells, batch 4) keeps a full run to minutes on a
laptop CPU. ``FASTNAS_BENCH_THREADS=1`` sets torch's intra-op threads: on a CPU shared with other
jobs, OpenMP threads waiting on each other slow the reference's thousands of small ops down many
times over (35 s instead of 1.5 s a step was seen on a loaded 2-core machine), so compare
supernets at one thread there.
"""
import os

import pytest
import torch
from search_step import make_config, make_step

PAPER = os.environ.get("FASTNAS_BENCH_SIZE", "small") == "paper"
if os.environ.get("FASTNAS_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["FASTNAS_BENCH_THREADS"]))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = (64 if DEVICE == "cuda" else 8) if PAPER else 4
SIZE = {} if PAPER else dict(channels=8, layers=5)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "ckpt"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("order", [1, 2], ids=["order1", "order2"])
@pytest.mark.parametrize("supernet", ["reference", "fast", "fast-compiled"])
def test_search_step(benchmark, supernet, order, precision, checkpointing):
    if supernet == "fast-compiled" and checkpointing:
        pytest.skip("compile=True does not combine with checkpointing")
    cfg = make_config(supernet, order, precision, checkpointing, BATCH, DEVICE, **SIZE)
    _, step = make_step(cfg)
    step()  # warm-up: first-call allocations and kernel selection (compilation if compiled)
    benchmark.extra_info.update(supernet=supernet, order=order, precision=precision,
                                checkpointing=checkpointing, batch_size=BATCH, device=DEVICE,
                                torch=torch.__version__, threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=3, iterations=1)
