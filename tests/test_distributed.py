"""Data parallelism with torch.distributed: gloo on the CPU, 2 processes, one thread each, a free
port per test on 127.0.0.1 and a timeout on every collective.

- equivalence: one 2-rank step's gradients equal the mean of the two shards' gradients computed
  here in one process (float64, 1e-10), for DARTS order 1 and order 2 (the unrolled gradient with
  its Hessian-vector product, by the formulas written out below), and ENAS's shared and
  controller updates (float32, 1e-6);
- no divergence: after 5 steps every rank's state is bitwise the same (DARTS 1 and 2, ENAS);
- the command line under torchrun: one set of files, an elastic restart after SIGKILL that ends
  bitwise where an uninterrupted run ends, two torchrun agents as two "nodes" over the loopback,
  and a failing rank that stops everyone quickly with its own message.
"""
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastnas import DARTSOptimizer, genotypes
from fastnas.checkpoint import load_checkpoint
from fastnas.cli import main
from fastnas.enas import ENASOptimizer
from fastnas.training import FinalTrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import distributed_worker as worker  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           OMP_NUM_THREADS="1")
ENV.pop("TRITON_INTERPRET", None)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' records from tests/distributed_worker.py."""
    out = tmp_path_factory.mktemp("ranks")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "distributed_worker.py"),
                               str(r), "2", str(port), str(out)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


# -- references, in one process -------------------------------------------------------------------
def shard_loss(model, params, batch):
    """Training-mode cross-entropy on ``batch`` with ``params`` (buffers copied: untouched)."""
    state = {**params, **{n: b.clone() for n, b in model.named_buffers()}}
    x, y = batch
    return F.cross_entropy(functional_call(model, state, (x.double(),)), y)


def grads(model, params, batch, wrt):
    loss = shard_loss(model, params, batch)
    return torch.autograd.grad(loss, [params[n] for n in wrt], allow_unused=True)


def mean(*lists):
    return [sum(gs) / len(gs) for gs in zip(*lists)]


def darts_reference(order):
    """The 2-rank DARTS step written out: alpha gradient (first order, or the unrolled one with
    every shard quantity averaged before use), the Adam step, then the weight gradient."""
    opt = DARTSOptimizer(dict(worker.DARTS, order=order, precision="fp64"))
    model = opt.model
    alphas = [n for n, _ in model.named_parameters() if n.endswith(("alphas_normal",
                                                                      "alphas_reduce"))]
    assert len(alphas) == 2
    names = [n for n, _ in model.named_weights()]
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    train = [worker.shard(worker.batches(1), r, 2) for r in range(2)]
    val = [worker.shard(worker.batches(2), r, 2) for r in range(2)]
    if order == 1:
        alpha_grad = mean(*[grads(model, params, v, alphas) for v in val])
    else:
        cfg, xi = opt.config, opt.lr
        g = mean(*[grads(model, params, t, names) for t in train])
        virtual = dict(params)
        for n, gn in zip(names, g):   # first step: no momentum buffer yet
            w = params[n].detach()
            virtual[n] = (w - xi * (gn + cfg.weight_decay * w)).requires_grad_()
        both = mean(*[grads(model, virtual, v, alphas + names) for v in val])
        d_alpha, v = both[:2], both[2:]
        R = cfg.hessian_r / torch.sqrt(sum((t ** 2).sum() for t in v))

        def at(sign):
            shifted = dict(params)
            for n, vn in zip(names, v):
                shifted[n] = params[n].detach() + sign * R * vn
            return mean(*[grads(model, shifted, t, alphas) for t in train])

        plus, minus = at(1.0), at(-1.0)
        alpha_grad = [da - xi * (p - m) / (2 * R) for da, p, m in zip(d_alpha, plus, minus)]
    for a, ga in zip(opt.arch_parameters(), alpha_grad):
        a.grad = ga.detach().clone()
    opt.architect.optimizer.step()
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    weight_grad = mean(*[grads(model, params, t, names) for t in train])
    return alpha_grad, weight_grad


@pytest.mark.parametrize("order", [1, 2])
def test_a_two_rank_darts_step_averages_the_shards(order, ranks):
    alpha_ref, weight_ref = darts_reference(order)
    for rank in ranks:
        got = rank[f"darts{order}"]
        for a, b in zip(got["alpha_grads"], alpha_ref):
            assert rel(a, b) < 1e-10
        for a, b in zip(got["weight_grads"], weight_ref):
            if b is not None:
                assert rel(a, b) < 1e-10
    # each shard alone gives another gradient: the averaging is what the test sees
    single = DARTSOptimizer(dict(worker.DARTS, order=1, precision="fp64"))
    params = {n: p.detach().clone().requires_grad_() for n, p in single.model.named_parameters()}
    one = grads(single.model, params, worker.shard(worker.batches(2), 0, 2),
                ["arch.alphas_normal", "arch.alphas_reduce"])
    assert rel(one[0], darts_reference(1)[0][0]) > 1e-3


def test_a_two_rank_enas_update_uses_both_shards(ranks):
    a, b = (r["enas"] for r in ranks)
    assert a["arch"] == b["arch"]               # one child per shared step, the same on all ranks
    opt = ENASOptimizer(worker.ENAS)
    arch = opt.ask()
    assert str(arch) == a["arch"]
    per_shard = []
    for r in range(2):
        opt.model.zero_grad(set_to_none=True)
        x, y = worker.shard(worker.batches(3), r, 2)
        F.cross_entropy(opt.model(x, arch), y).backward()
        per_shard.append({n: p.grad.clone() for n, p in opt.model.named_parameters()
                          if p.grad is not None})
    for name, g in a["shared_grads"].items():
        reference = (per_shard[0][name] + per_shard[1][name]) / 2
        assert rel(g, reference) < 1e-6 and torch.equal(g, b["shared_grads"][name])
    # the controller update: 2 ranks x 2 samples, each rank's rewards on its own shard
    assert a["archs"] == b["archs"] and len(a["archs"]) == 4 and a["rewards"] == b["rewards"]
    opt.model.load_state_dict(a["weights"])
    for i, text in enumerate(a["archs"]):
        child = genotypes.Genotype.parse(text)
        x, y = worker.shard(worker.batches(4), i // 2, 2)
        with torch.no_grad():
            accuracy = (opt.model(x, child).argmax(1) == y).float().mean().item()
        assert a["rewards"][i] == pytest.approx(accuracy, abs=1e-12)
    reference = ENASOptimizer(worker.ENAS)
    loss, _, _ = reference.reinforce_loss([genotypes.Genotype.parse(t) for t in a["archs"]],
                                          a["rewards"])
    loss.backward()
    for got_a, got_b, p in zip(a["controller_grads"], b["controller_grads"],
                               reference.controller.parameters()):
        assert torch.equal(got_a, got_b) and rel(got_a, p.grad) < 1e-6


@pytest.mark.parametrize("key", ["same_darts1", "same_darts2", "same_enas"])
def test_no_divergence_after_five_steps(key, ranks):
    def same(x, y, where):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), where
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                same(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, (u, v) in enumerate(zip(x, y)):
                same(u, v, f"{where}[{i}]")
        else:
            assert x == y, where

    for rank in ranks:
        states = rank[key]      # every rank's state, gathered on each rank
        assert len(states) == 2
        # weights, alphas, both optimizers, (ENAS) controller and baseline; the BatchNorm
        # running statistics are per rank until averaged (before evaluation or a checkpoint)
        for state in states:
            state["model"] = {k: v for k, v in state["model"].items()
                              if "running_" not in k and "num_batches" not in k}
        same(states[0], states[1], key)


@pytest.mark.parametrize("method", list(worker.METHODS))
def test_no_divergence_with_a_darts_methods_noise(method, ranks):
    """Issue 18: Dirichlet samples, SDARTS' attack and GDAS' Gumbel samples are the same on
    every rank."""
    test_no_divergence_after_five_steps(f"same_{method}", ranks)


def test_the_global_batch_splits_evenly(ranks):
    assert ranks[0]["per_rank_batch"] == 4
    assert ranks[0]["split_error"] == ("--batch-size 5 does not split evenly over 2 ranks; use a "
                                       "multiple of 2")


# -- the command line under torchrun --------------------------------------------------------------
SEARCH = ["search", "--dataset", "digits", "--epochs", "3", "--layers", "3", "--channels", "4",
          "--batch-size", "32", "--limit", "256", "--quiet", "--no-plots",
          "--dist-timeout", "30"]


def torchrun(args, output, nproc=2, extra=(), script=("-m", "fastnas"), timeout=240):
    command = [*TORCHRUN, "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), *extra, *script, *args, "--output", str(output)]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_rank_search(tmp_path_factory):
    out = tmp_path_factory.mktemp("search2")
    done = torchrun(SEARCH, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_torchrun_search_writes_one_set_of_files(two_rank_search):
    out, done = two_rank_search
    assert sorted(os.listdir(out)) == ["alphas.json", "checkpoint.prev.pt", "checkpoint.pt",
                                       "config.json", "genotype.json", "metrics.json"]
    state = load_checkpoint(out / "checkpoint.pt")
    assert len(state["rng"]["per_rank"]) == 2 and state["epoch"] == 3
    assert state["history"][0]["steps"] == 4   # 128 weight images, 64 a rank, 16 a batch
    assert done.stdout.count("search finished") == 1   # rank 0 prints


def test_an_automatic_resume_of_another_method_is_one_line_per_rank_and_exit_2(two_rank_search):
    """Under torchrun resuming is on by itself: an ENAS search pointed at a DARTS folder stops
    every worker with exit 2 and a line that says so and how to avoid it; the traceback left is
    torchrun's own summary of its workers' exit codes, no frame of fastnas."""
    out, _ = two_rank_search
    before = os.path.getmtime(out / "checkpoint.pt")
    done = torchrun([*SEARCH, "--method", "enas"], out)
    assert done.returncode != 0
    for rank in (0, 1):
        assert (f"fastnas (rank {rank}): error: {out}/checkpoint.pt is a darts search, not an "
                "enas search: resume it with --method darts (resuming is automatic under "
                "torchrun: --no-resume starts anew over it, --output DIR writes elsewhere)"
                ) in done.stderr
    # each worker exits 2, unless torchrun's SIGTERM (sent to the rest once one worker has
    # failed) reaches it after its line was printed and before it exits: -15 is torchrun's doing
    codes = re.findall(r"exitcode  : (-?\d+)", done.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, done.stderr[-3000:]
    frames = [line for line in done.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [f for f in frames if "fastnas" in f], frames
    assert os.path.getmtime(out / "checkpoint.pt") == before


def test_elastic_restart_resumes_by_itself(two_rank_search, tmp_path):
    """Rank 1 is killed with SIGKILL in epoch 2; torchrun restarts both workers, which resume
    from the last checkpoint (``--resume auto`` under torchrun) and end bitwise where the
    uninterrupted run ended."""
    env_marker = tmp_path / "killed-once"
    runner = os.path.join(REPO, "tests", "fault_runner.py")
    command = [*TORCHRUN, "--nproc_per_node", "2", "--max-restarts", "1", "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), runner,
               f"kill-step-once:6:{env_marker}:1", "--", *SEARCH, "--output", str(tmp_path)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert env_marker.exists()   # the kill did happen, in epoch 2 (steps 5-8 of each rank)
    reference = load_checkpoint(two_rank_search[0] / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "checkpoint.pt")
    for key in ("alphas_normal", "alphas_reduce"):
        assert torch.equal(resumed["model"][key], reference["model"][key])
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_torchrun_train_with_ddp(tmp_path):
    done = torchrun(["train", "--genotype", "DARTS_V2", "--dataset", "digits", "--epochs", "1",
                     "--layers", "3", "--channels", "4", "--batch-size", "64", "--limit", "256",
                     "--quiet", "--no-plots", "--dist-timeout", "30"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "config.json", "metrics.json",
                                            "model.pt"]
    assert main(["train", "--genotype", "DARTS_V2", "--sync-bn", "--dataset", "digits",
                 "--quiet", "--output", str(tmp_path / "syncbn")]) == 2


def test_two_nodes_over_the_loopback(tmp_path):
    port = free_port()
    args = ["train", "--genotype", "DARTS_V2", "--dataset", "digits", "--epochs", "1",
            "--layers", "3", "--channels", "4", "--batch-size", "64", "--limit", "128", "--quiet",
            "--no-plots", "--dist-timeout", "30", "--output", str(tmp_path)]
    agents = [subprocess.Popen([*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1",
                                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                                "--rdzv-id", "fastnas-test", "-m", "fastnas", *args], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outs = [a.communicate(timeout=240) for a in agents]
    for agent, (_, err) in zip(agents, outs):
        assert agent.returncode == 0, err[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "config.json", "metrics.json",
                                            "model.pt"]
    assert sum(out.count("training finished") for out, _ in outs) == 1


def test_a_failing_rank_stops_every_rank_with_its_message(tmp_path):
    runner = os.path.join(REPO, "tests", "fault_runner.py")
    started = time.time()
    done = torchrun([*SEARCH], tmp_path, script=(runner, "raise-step:2:1", "--"))
    assert done.returncode != 0
    assert time.time() - started < 120
    assert "fastnas (rank 1): internal error: RuntimeError: injected failure on rank 1" in \
        done.stderr


def test_sync_bn_needs_cuda_in_the_api():
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        FinalTrainer(genotypes.DARTS_V2, dict(channels=4, layers=3, sync_bn=True, device="cpu"))
