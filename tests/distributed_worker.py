"""One rank of tests/test_distributed.py's 2-process checks (gloo on the CPU, one thread).

    python tests/distributed_worker.py RANK WORLD PORT OUT_DIR

Runs the scenarios below on this rank's shard of fixed batches and writes what it saw to
``OUT_DIR/rank{RANK}.pt`` (plain tensors and lists); the test compares them with single-process
references. Every collective has a 60 s timeout, so a failure never hangs the test.
"""
import datetime
import os
import sys

import torch
import torch.distributed as dist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fastnas import DARTSOptimizer, distributed, pipeline  # noqa: E402
from fastnas.enas import ENASOptimizer  # noqa: E402
from fastnas.errors import UserError  # noqa: E402

DARTS = dict(channels=4, layers=3, num_classes=4, in_channels=1, num_nodes=2, device="cpu",
             seed=0, grad_clip=None, learning_rate_alpha=0.05)
METHODS = {"drnas": dict(method="drnas", warmup_epochs=0),
           "sdarts-adv": dict(method="sdarts-adv", pgd_steps=2),
           "gdas": dict(method="gdas")}
ENAS = dict(channels=4, num_layers=3, num_nodes=2, num_classes=4, in_channels=1, device="cpu",
            seed=0, grad_clip=None, controller_samples=2)


def batches(seed, n=8):
    """Fixed global batches; rank r takes every world-th image from r."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def shard(batch, rank, world):
    x, y = batch
    return x[rank::world].contiguous(), y[rank::world].contiguous()


def recording_alpha_step(opt):
    """Make the architect's Adam step record the alpha gradients it applies."""
    seen = []
    step = opt.architect.optimizer.step

    def recorded(*args, **kwargs):
        seen.append([a.grad.detach().clone() for a in opt.arch_parameters()])
        return step(*args, **kwargs)

    opt.architect.optimizer.step = recorded
    return seen


def darts_step(order, precision, rank, world):
    opt = DARTSOptimizer(dict(DARTS, order=order, precision=precision))
    seen = recording_alpha_step(opt)
    train, val = shard(batches(1), rank, world), shard(batches(2), rank, world)
    opt.step(train, val)
    return {"alpha_grads": seen[0],
            "weight_grads": [p.grad.detach().clone() for p in opt.weight_parameters()]}


def enas_step(rank, world):
    """One shared step and one controller update; records the child, the shared gradients, the
    architectures and rewards the update used, and the controller gradients it applied."""
    opt = ENASOptimizer(ENAS)
    arch = opt.ask()
    opt.step(shard(batches(3), rank, world), arch)
    shared = {n: p.grad.detach().clone() for n, p in opt.model.named_parameters()
              if p.grad is not None}
    weights = {k: v.clone() for k, v in opt.model.state_dict().items()}
    seen, told = [], []
    step, tell = opt.controller_optimizer.step, opt.tell

    def recorded_step(*args, **kwargs):
        seen.append([p.grad.detach().clone() for p in opt.controller.parameters()])
        return step(*args, **kwargs)

    def recorded_tell(archs, rewards):
        told.append(([str(a) for a in archs], list(rewards)))
        return tell(archs, rewards)

    opt.controller_optimizer.step = recorded_step
    opt.tell = recorded_tell
    opt.train_controller(shard(batches(4), rank, world))
    return {"arch": str(arch), "shared_grads": shared, "weights": weights,
            "controller_grads": seen[0], "archs": told[0][0], "rewards": told[0][1]}


def record_mixing(opt):
    """Every mixing-weight tensor the supernet's passes use from now on (after SDARTS' hook)."""
    arch, seen = opt.model.arch, []
    mixing = arch.mixing

    def recorded(training=True):
        out = mixing(training)
        seen.append({t: w.detach().clone() for t, w in out.items()})
        return out

    arch.mixing = recorded
    return seen


def state_of(opt):
    out = {"model": {k: v.clone() for k, v in opt.model.state_dict().items()}}
    for name in ("weight_optimizer", "shared_optimizer", "controller_optimizer"):
        if hasattr(opt, name):
            out[name] = getattr(opt, name).state_dict()
    if hasattr(opt, "architect"):
        out["arch_optimizer"] = opt.architect.state_dict()
    if hasattr(opt, "controller"):
        out["controller"] = opt.controller.state_dict()
        out["baseline"] = opt.baseline
    return out


def five_steps(kind, order, rank, world, **method):
    if kind == "darts":
        opt = DARTSOptimizer(dict(DARTS, order=order, grad_clip=5.0, **method))
        mixed = record_mixing(opt) if method else None
        for s in range(5):
            opt.step(shard(batches(10 + s), rank, world), shard(batches(20 + s), rank, world))
        if mixed is not None:   # the weights every pass mixed with (samples, attacks)
            return distributed.gather({**state_of(opt), "mixed": mixed})
    else:
        opt = ENASOptimizer(dict(ENAS, grad_clip=5.0))
        for s in range(5):
            opt.step(shard(batches(30 + s), rank, world))
            opt.train_controller(shard(batches(40 + s), rank, world))
    return distributed.gather(state_of(opt))


def main():
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    result = {
        "darts1": darts_step(1, "fp64", rank, world),
        "darts2": darts_step(2, "fp64", rank, world),
        "enas": enas_step(rank, world),
        "same_darts1": five_steps("darts", 1, rank, world),
        "same_darts2": five_steps("darts", 2, rank, world),
        "same_enas": five_steps("enas", 1, rank, world),
    }
    # issue 18: the DARTS methods that draw noise (Dirichlet samples; SDARTS' PGD, its random
    # start and the mean ascent direction) keep the replicas identical
    result.update({f"same_{m}": five_steps("darts", 1, rank, world, **extra)
                   for m, extra in METHODS.items()})
    try:
        pipeline._per_rank(5)
        result["split_error"] = None
    except UserError as e:
        result["split_error"] = str(e)
    result["per_rank_batch"] = pipeline._per_rank(8)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
