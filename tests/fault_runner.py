"""Run the ``fastnas`` command line with one fault injected, deterministically (for
tests/test_reliability.py). Usage::

    python tests/fault_runner.py FAULT -- fastnas-arguments...

FAULT is one of

- ``none``: no fault;
- ``kill-step:N``: SIGKILL this process at the N-th optimizer step (1-based, counted over all
  stages of this process);
- ``kill-write:N``: SIGKILL at the N-th checkpoint write, after the temporary file is complete
  and before it replaces the latest checkpoint;
- ``kill-rename:N``: SIGKILL between the two renames of the N-th checkpoint write (the latest
  generation has just become the previous one);
- ``nan-step:N[:K]``: steps N .. N+K-1 (K defaults to 1) see a NaN loss;
- ``disk-full:N``: the N-th checkpoint write fails as ``torch.save`` does on a full disk;
- ``kill-step-once:N:MARKER:RANK`` (under torchrun): SIGKILL rank RANK at its N-th step unless
  the file MARKER exists, which it creates first (a restarted worker runs on);
- ``raise-step:N:RANK`` (under torchrun): rank RANK raises at its N-th step;
- ``kill-trial:T:E`` (``fastnas tune``): SIGKILL right after trial T reported epoch E.

Faults hook the library's own functions in this process only, so the code under test is the
code that runs in production. In-process tests call ``install(fault, monkeypatch.setattr)`` so
that the hooks are undone after the test (the kills need a process of their own).
"""
import errno
import os
import signal
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fastnas import checkpoint, cli  # noqa: E402
from fastnas.darts import optimizer as darts_optimizer  # noqa: E402
from fastnas.enas import optimizer as enas_optimizer  # noqa: E402

counts = {"step": 0, "write": 0}


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str, patch=setattr) -> None:
    counts.update(step=0, write=0)
    kind, _, arg = fault.partition(":")
    if kind == "none":
        return
    rank = int(os.environ.get("RANK", "0"))
    if kind == "kill-trial":
        import optuna

        number, epoch = (int(n) for n in arg.split(":"))
        report = optuna.trial.Trial.report

        def reported(trial, value, step):
            report(trial, value, step)
            if trial.number == number and step == epoch:
                die()
        patch(optuna.trial.Trial, "report", reported)
        return
    if kind == "kill-step-once":
        at, marker, victim = arg.split(":")
        if rank != int(victim) or os.path.exists(marker):
            return
        kind, at, span = "kill-step", int(at), 1
        open(marker, "w").close()
    elif kind == "raise-step":
        at, victim = (int(n) for n in arg.split(":"))
        if rank != victim:
            return
        span = 1
    else:
        numbers = [int(n) for n in arg.split(":")]
        at, span = numbers[0], (numbers[1] if len(numbers) > 1 else 1)

    if kind in ("kill-step", "nan-step", "raise-step"):
        def wrap_loss_check(cls, name):
            original = getattr(cls, name)

            def patched(self, loss, *args, **kwargs):
                counts["step"] += 1
                if kind == "kill-step" and counts["step"] == at:
                    die()
                if kind == "raise-step" and counts["step"] == at:
                    raise RuntimeError(f"injected failure on rank {rank}")
                if kind == "nan-step" and at <= counts["step"] < at + span:
                    loss = loss * float("nan")
                return original(self, loss, *args, **kwargs)
            patch(cls, name, patched)

        # The one place each loop hands its training loss to the update.
        wrap_loss_check(darts_optimizer.DARTSOptimizer, "_weight_step")
        wrap_loss_check(enas_optimizer.ENASOptimizer, "_shared_step")
        from fastnas import training
        wrap_loss_check(training.FinalTrainer, "_update")
        return

    real_save, real_replace = checkpoint.torch.save, checkpoint.os.replace

    def save(obj, path, *args, **kwargs):
        # fastnas hands torch.save a file object it opened (so that the OS's ENOSPC reaches it)
        is_checkpoint = str(getattr(path, "name", path)).endswith("checkpoint.pt.tmp")
        if is_checkpoint:
            counts["write"] += 1
            if kind == "disk-full" and counts["write"] == at:
                path.write(b"PK\x03\x04partial")  # a partial file, as a full disk leaves it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, path, *args, **kwargs)
        if is_checkpoint and kind == "kill-write" and counts["write"] == at:
            die()

    def replace(src, dst):
        real_replace(src, dst)
        if (kind == "kill-rename" and counts["write"] == at
                and str(dst).endswith("checkpoint.prev.pt")):
            die()

    patch(checkpoint.torch, "save", save)
    patch(checkpoint.os, "replace", replace)


if __name__ == "__main__":
    fault, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: fault_runner.py FAULT -- ARGS..."
    torch.set_num_threads(1)
    install(fault)
    sys.exit(cli.main(argv))
