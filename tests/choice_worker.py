"""A search inside a user's model in a process of its own (tests/test_choice.py).

    python tests/choice_worker.py run OUT [KILL_AT_STEP]
    torchrun --nproc_per_node 2 tests/choice_worker.py dist OUT

``run``: 3 epochs of 2 steps over ``choice_models.OwnNet`` (fp64, second order), a checkpoint
``OUT/search.pt`` after every epoch; resumes from it when it exists; SIGKILLs itself at the
global step ``KILL_AT_STEP`` (1-based) if given; ends by writing ``OUT/final.pt`` (the
optimizer's state_dict and ``export()``).
``dist``: each rank builds the model from a different seed (the optimizer makes the replicas
identical), searches 2 epochs on its shard of each batch and writes ``OUT/rank{RANK}.pt``.
"""
import json
import os
import signal
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from choice_models import CONFIG, OwnNet, batches  # noqa: E402

from fastnas import DARTSOptimizer, distributed  # noqa: E402
from fastnas.checkpoint import load_checkpoint, save_atomic  # noqa: E402


def run(out, kill_at=None):
    path = os.path.join(out, "search.pt")
    torch.manual_seed(0)
    opt = DARTSOptimizer(dict(CONFIG, num_steps=3), model=OwnNet())
    if os.path.exists(path):
        opt.load_state_dict(load_checkpoint(path))
    train, val = batches(1, count=2), batches(2, count=2)

    def on_step(o, stats):
        if kill_at is not None and o.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    opt.search(train, val, callback=lambda o, r: o.save(path), on_step=on_step, progress=False)
    save_atomic({"state": opt.state_dict(), "export": json.dumps(opt.export())},
                os.path.join(out, "final.pt"))


def dist(out):
    launch, _ = distributed.init(timeout_s=60, device="cpu")
    torch.manual_seed(100 + launch.rank)   # a different initial model on each rank
    opt = DARTSOptimizer(dict(CONFIG, num_steps=2), model=OwnNet())
    r, w = launch.rank, launch.world_size
    train = [(x[r::w], y[r::w]) for x, y in batches(1, count=2)]
    val = [(x[r::w], y[r::w]) for x, y in batches(2, count=2)]
    initial = [a.detach().clone() for a in opt.arch_parameters()]
    opt.search(train, val, progress=False)
    torch.save({"model": opt.model.state_dict(), "export": json.dumps(opt.export()),
                "initial_alphas": initial},
               os.path.join(out, f"rank{r}.pt"))
    distributed.shutdown()


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "run":
        run(out, int(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        dist(out)
