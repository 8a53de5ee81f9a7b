"""Writes ``darts_steps.pt``: the golden record of plain DARTS, made from the code before the
space layer (issue 17), so ``tests/test_golden.py`` can show that plain DARTS is unchanged.
That code is commit 6a021d7 with the factorized-reduction fix of issue 23 (b4154eb: two
stride-1 1x1 convs of the subsampled input instead of stride-2 convs, the same math) applied,
since that fix changes float32 rounding; the file was written from that tree.

For each supernet (reference, fast), order (1, 2) and precision (fp32, fp64) a tiny search
network (C=4, 3 cells, 3 nodes, 1x8x8 inputs, 4 classes, seed 0, 1 thread) takes 3 DARTS steps
on fixed synthetic batches, with a large alpha learning rate so the alphas move. Recorded:
each step's losses and accuracies, the final alphas (in full), per weight tensor (and
BatchNorm buffer) its sum and sum of squares (float64), and the derived genotype.
Run from the repository root:

    PYTHONPATH=. python tests/golden/make_darts_golden.py
"""
from __future__ import annotations

import os

import torch

from fastnas import DARTSOptimizer

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "darts_steps.pt")
CONFIG = dict(channels=4, layers=3, num_nodes=3, in_channels=1, num_classes=4, num_steps=3,
              seed=0, device="cpu", learning_rate_alpha=0.05, hessian_r=1e-2)
STEPS = 3


def batches(step: int):
    g = torch.Generator().manual_seed(100 + step)
    templates = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    y = torch.arange(16) % 4
    x = templates[y] + 0.5 * torch.randn(16, 1, 8, 8, generator=g)
    return (x[:8], y[:8]), (x[8:], y[8:])


def run(supernet: str, order: int, precision: str) -> dict:
    opt = DARTSOptimizer(dict(CONFIG, supernet=supernet, order=order, precision=precision))
    stats = []
    for step in range(STEPS):
        s = opt.step(*batches(step))
        stats.append([s["train_loss"], s["val_loss"], s["train_acc"], s["val_acc"]])
    state = opt.model.state_dict()
    record = {"stats": torch.tensor(stats, dtype=torch.float64),
              "alphas_normal": state["alphas_normal"].detach().clone(),
              "alphas_reduce": state["alphas_reduce"].detach().clone(),
              "genotype": str(opt.genotype())}
    names, summary = [], []
    for name, t in state.items():
        if name.startswith("alphas") or not t.is_floating_point():
            continue
        t = t.detach().double().flatten()
        names.append(name)
        summary.append(torch.stack([t.sum(), (t * t).sum()]))
    record["weight_names"] = names
    record["weights"] = torch.stack(summary)
    return record


def cases():
    for supernet in ("reference", "fast"):
        for order in (1, 2):
            for precision in ("fp32", "fp64"):
                yield f"{supernet}-order{order}-{precision}", (supernet, order, precision)


if __name__ == "__main__":
    torch.set_num_threads(1)   # as tests/conftest.py: float32 sums depend on the thread count
    records = {key: run(*args) for key, args in cases()}
    names = {tuple(r.pop("weight_names")) for r in records.values()}
    assert len(names) == 1, "both supernets have one state_dict layout"
    torch.save({"weight_names": list(names.pop()), "cases": records}, PATH)
    print(f"wrote {PATH} ({os.path.getsize(PATH)} bytes)")
