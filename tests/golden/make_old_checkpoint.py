"""Writes ``old_darts_search.pt.gz`` (a ``DARTSOptimizer.save`` checkpoint, gzipped) and
``old_darts_search_next.pt`` (the model after the next step), from the code before the space
layer (issue 17), so ``tests/test_golden.py`` can show that such checkpoints still resume, to
the bit (that code: commit 6a021d7 with issue 23's factorized-reduction fix b4154eb applied, as
for ``make_darts_golden.py``). A tiny second-order search (C=2, 3 cells, 1 node, fast
supernet, 1 thread) takes one step and saves; then takes the next step, whose result is
recorded (the alphas in full, per other tensor its sum and sum of squares). Run from the
repository root of that code:

    PYTHONPATH=. python tests/golden/make_old_checkpoint.py OUTPUT_FOLDER
"""
from __future__ import annotations

import gzip
import os
import shutil
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_darts_golden as golden  # noqa: E402

CONFIG = dict(channels=2, layers=3, num_nodes=1, in_channels=1, num_classes=4, num_steps=3,
              seed=0, device="cpu", learning_rate_alpha=0.05, order=2)


def summary(state) -> dict:
    names = [k for k, t in state.items() if t.is_floating_point() and not k.startswith("alphas")]
    return {"keys": list(state), "alphas_normal": state["alphas_normal"].clone(),
            "alphas_reduce": state["alphas_reduce"].clone(),
            "weights": torch.stack([torch.stack([state[k].double().sum(),
                                                 (state[k].double() ** 2).sum()])
                                    for k in names])}


if __name__ == "__main__":
    from fastnas import DARTSOptimizer

    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    torch.set_num_threads(1)
    opt = DARTSOptimizer(CONFIG)
    opt.step(*golden.batches(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "search.pt")
        opt.save(path)
        with open(path, "rb") as f, gzip.open(os.path.join(out, "old_darts_search.pt.gz"),
                                              "wb", compresslevel=9) as g:
            shutil.copyfileobj(f, g)
    opt.step(*golden.batches(1))
    torch.save(summary(opt.model.state_dict()), os.path.join(out, "old_darts_search_next.pt"))
