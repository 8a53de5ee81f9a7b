"""Interruptions and failures: exact resume after SIGKILL anywhere (a step, a checkpoint write,
between the two renames of a write), two checkpoint generations, failed writes, SIGTERM, the
non-finite guard, and one-line errors for bad input on the command line and the API.

The processes are killed at seeded, exact points by tests/fault_runner.py (no luck involved):
it hooks the library's own step and write functions in the child process only.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastnas import DARTSOptimizer, genotypes
from fastnas.checkpoint import (
    describe,
    load_checkpoint,
    load_latest,
    previous_path,
    save_checkpoint,
)
from fastnas.cli import main
from fastnas.enas import ENASOptimizer
from fastnas.errors import CheckpointWriteError, NonFiniteError, UserError
from fastnas.training import FinalTrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "tests", "fault_runner.py")
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           OMP_NUM_THREADS="1")
TINY = ["--dataset", "digits", "--layers", "3", "--channels", "4", "--batch-size", "16",
        "--limit", "128", "--quiet", "--no-plots"]
STAGES = {
    # 4 weight batches x 3 epochs; ENAS: 30 controller steps on 4 validation batches per epoch
    # (not a multiple: the validation stream runs across epoch boundaries).
    "darts": ["search", "--epochs", "3", *TINY],
    "enas": ["search", "--method", "enas", "--epochs", "3", *TINY],
    "train": ["train", "--genotype", "DARTS_V2", "--epochs", "3", *TINY, "--batch-size", "32"],
}
STEPS = 12  # optimizer steps of each stage above (4 per epoch)


def run(fault, args, output, timeout=180):
    return subprocess.run([sys.executable, RUNNER, fault, "--", *args, "--output", str(output)],
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def run_here(fault, args, output, monkeypatch, capsys):
    """The same in this process (faults that need no process of their own): (status, stderr)."""
    sys.path.insert(0, os.path.dirname(RUNNER))
    try:
        import fault_runner
    finally:
        sys.path.remove(os.path.dirname(RUNNER))
    with monkeypatch.context() as patches:
        fault_runner.install(fault, patches.setattr)
        capsys.readouterr()
        status = main([*args, "--output", str(output)])
    return status, capsys.readouterr().err


def same(a, b, where="state"):
    """Bitwise equality of nested checkpoint contents (timings excluded)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = set(a) - {"seconds"}
        assert keys == set(b) - {"seconds"}, (where, sorted(keys ^ (set(b) - {"seconds"})))
        for k in keys:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, (where, a, b)


def finished(output):
    state = load_checkpoint(os.path.join(output, "checkpoint.pt"))
    with open(os.path.join(output, "metrics.json")) as f:
        metrics = json.load(f)
    return state, metrics


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Each stage run once without a fault (in this process: one thread, as the children): the
    reference the interrupted runs must equal."""
    out = {}
    for name, args in STAGES.items():
        folder = tmp_path_factory.mktemp(f"straight-{name}")
        assert main([*args, "--output", str(folder)]) == 0
        out[name] = finished(folder)
    return out


def resume_here(args, output, capsys):
    capsys.readouterr()
    status = main([*args, "--resume", "--output", str(output)])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("stage,faults", [
    ("darts", ("kill-step", "kill-write")),
    ("enas", ("kill-step", "kill-rename")),
    ("train", ("kill-write", "kill-step")),
])
def test_sigkill_anywhere_then_resume_is_bitwise_the_straight_run(stage, faults, straight,
                                                                   tmp_path, capsys):
    rng = random.Random(f"{stage}-kills")
    args = STAGES[stage]
    for fault in faults:
        # A seeded point inside what is left to run in this process: steps count from 1 in the
        # resumed process, writes too; a kill between renames needs a latest checkpoint first.
        done_epochs = (load_checkpoint(tmp_path / "checkpoint.pt")["epoch"]
                       if os.path.exists(tmp_path / "checkpoint.pt") else 0)
        left_epochs = 3 - done_epochs
        point = {"kill-step": rng.randrange(2, left_epochs * STEPS // 3 + 1),
                 "kill-write": rng.randrange(1, left_epochs + 1),
                 "kill-rename": rng.randrange(1 if done_epochs else 2, left_epochs + 1)}[fault]
        if fault == "kill-step" and faults.index(fault) == 0 and "kill-rename" in faults:
            point = rng.randrange(STEPS // 3 + 1, STEPS)   # after epoch 1 is on disk
        done = run(f"{fault}:{point}", [*args, "--resume"], tmp_path)
        assert done.returncode == -signal.SIGKILL, (fault, point, done.stderr)
    status, err = resume_here(args, tmp_path, capsys)
    assert status == 0, err
    state, metrics = finished(tmp_path)
    reference_state, reference_metrics = straight[stage]
    same(state, reference_state)      # weights, alphas, both optimizers, RNGs, streams, history
    same({k: v for k, v in metrics.items() if k != "history"},
         {k: v for k, v in reference_metrics.items() if k != "history"}, "metrics")
    same(metrics["history"], reference_metrics["history"], "metrics.history")


def test_a_failed_write_leaves_nothing_behind_and_says_why(tmp_path, monkeypatch, capsys):
    status, err = run_here("disk-full:2", STAGES["train"], tmp_path, monkeypatch, capsys)
    assert status == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("fastnas: error: cannot write ") and "checkpoint.pt" in lines[-1]
    assert "disk full (No space left on device)" in lines[-1] and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "config.json",
                                            "metrics.json"]   # epoch 1 kept
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(straight, tmp_path, capsys):
    done = run("kill-step:10", STAGES["darts"], tmp_path)   # epochs 1 and 2 are on disk
    assert done.returncode == -signal.SIGKILL
    assert load_checkpoint(previous_path(str(tmp_path / "checkpoint.pt")))["epoch"] == 1
    with open(tmp_path / "checkpoint.pt", "r+b") as f:   # a bit-rotted latest generation
        f.truncate(os.path.getsize(tmp_path / "checkpoint.pt") // 2)
    status, err = resume_here(STAGES["darts"], tmp_path, capsys)
    assert status == 0, err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "resuming from the previous checkpoint" in warning[0]
    same(finished(tmp_path)[0], straight["darts"][0])


def test_sigterm_is_handled_like_ctrl_c(straight, tmp_path, capsys):
    args = [sys.executable, RUNNER, "none", "--", *STAGES["train"], "--output", str(tmp_path)]
    child = subprocess.Popen(args, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(tmp_path / "checkpoint.pt") and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    if child.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")   # a very fast machine
    assert child.returncode == 143
    last = err.strip().splitlines()[-1]
    assert last.startswith("fastnas: training terminated (SIGTERM) in epoch ")
    assert "resume with: fastnas train" in last and "--resume" in last
    status, err = resume_here(STAGES["train"], tmp_path, capsys)
    assert status == 0, err
    same(finished(tmp_path)[0], straight["train"][0])


# -- non-finite values ----------------------------------------------------------------------------
def test_nan_after_good_epochs_stops_and_keeps_the_good_files(tmp_path, monkeypatch, capsys):
    status, err = run_here("nan-step:6", STAGES["train"], tmp_path, monkeypatch, capsys)
    assert status == 3   # step 6 is the second of epoch 2
    last = err.strip().splitlines()[-1]
    assert last == ("fastnas: training stopped: non-finite train loss (nan) in epoch 2, step 6; "
                    f"the last good checkpoint {tmp_path / 'checkpoint.pt'} (1 epoch done) is "
                    "kept; see --on-nonfinite")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "config.json",
                                            "metrics.json"]   # no model.pt
    state, metrics = finished(tmp_path)
    assert state["epoch"] == 1 and metrics["epochs"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_nan_with_skip_policy_skips_and_counts(tmp_path, monkeypatch, capsys):
    status, err = run_here("nan-step:6:2", [*STAGES["train"], "--on-nonfinite", "skip"],
                           tmp_path, monkeypatch, capsys)
    assert status == 0, err
    _, metrics = finished(tmp_path)
    assert [r["skipped_steps"] for r in metrics["history"]] == [0, 2, 2]
    status, err = run_here("nan-step:2:3", [*STAGES["train"], "--on-nonfinite", "skip",
                                            "--max-nonfinite-skips", "2"], tmp_path / "again",
                           monkeypatch, capsys)
    assert status == 3
    assert "(3 steps in a row, over max_skips)" in err


@pytest.mark.parametrize("stage", ["darts", "enas"])
def test_a_nan_search_writes_no_genotype(stage, tmp_path, monkeypatch, capsys):
    status, err = run_here("nan-step:2", STAGES[stage], tmp_path, monkeypatch, capsys)
    assert status == 3
    assert err.strip().splitlines()[-1] == (
        "fastnas: search stopped: non-finite train loss (nan) in epoch 1, step 2; no checkpoint "
        "was written; see --on-nonfinite")
    assert not os.path.exists(tmp_path / "genotype.json")


def test_the_api_raises_a_dedicated_error():
    opt = DARTSOptimizer(dict(channels=4, layers=3, num_classes=4, in_channels=1, device="cpu"))
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    opt.step((x, y), (x, y))
    with torch.no_grad():
        opt.model.alphas_normal[0, 0] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        opt.step((x, y), (x, y))
    assert isinstance(info.value, ArithmeticError)
    assert info.value.quantity == "validation loss" and info.value.step == 1
    assert str(info.value) == "non-finite validation loss (nan) in epoch 1, step 2"


def test_weights_blowing_up_after_a_step_stop_even_when_skipping():
    trainer = FinalTrainer(genotypes.DARTS_V2, dict(channels=4, layers=3, auxiliary=False,
                                                    in_channels=1, num_classes=4, cutout=0,
                                                    on_nonfinite="skip", device="cpu"))
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    trainer.train_epoch([(x, y)])
    step = trainer.optimizer.step

    def overflowing_step():   # an update that overflows (finite loss and gradients)
        step()
        with torch.no_grad():
            next(trainer.model.parameters())[0] = float("inf")

    trainer.optimizer.step = overflowing_step
    with pytest.raises(NonFiniteError, match="weights after the step"):
        trainer.train_epoch([(x, y)])
    assert trainer.guard.skipped == 0


# -- checkpoints ----------------------------------------------------------------------------------
def test_two_generations(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    for epoch in (1, 2, 3):
        save_checkpoint({**describe("train"), "epoch": epoch}, path)
    assert load_checkpoint(path)["epoch"] == 3
    assert load_checkpoint(previous_path(path))["epoch"] == 2
    with open(path, "wb") as f:
        f.write(b"not a checkpoint")
    warnings = []
    state, used = load_latest(path, warnings.append)
    assert state["epoch"] == 2 and used == previous_path(path) and len(warnings) == 1
    os.remove(previous_path(path))
    with pytest.raises(UserError, match="unreadable"):
        load_latest(path)


def test_a_failed_write_in_the_api(tmp_path, monkeypatch):
    from fastnas import checkpoint

    def full(obj, f):  # torch's own writer failing (fastnas hands it an open file)
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1 vs 2")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(CheckpointWriteError, match=r"cannot write .*x\.pt: unexpected pos 1 vs 2"):
        checkpoint.save_checkpoint({"a": 1}, str(tmp_path / "x.pt"))
    assert os.listdir(tmp_path) == []
    os.chmod(tmp_path, 0o500)
    monkeypatch.undo()
    try:
        if os.geteuid() != 0:   # root writes anyway
            with pytest.raises(CheckpointWriteError, match="Permission denied"):
                checkpoint.save_atomic({"a": 1}, str(tmp_path / "x.pt"))
    finally:
        os.chmod(tmp_path, 0o700)


def test_checkpoints_describe_themselves(tmp_path):
    opt = DARTSOptimizer(dict(channels=4, layers=3, in_channels=1, device="cpu"))
    state = opt.state_dict()
    assert state["fastnas_checkpoint"] == {"format": 2, "kind": "search", "method": "darts"}
    newer = {**state, "fastnas_checkpoint": {**state["fastnas_checkpoint"], "format": 99}}
    with pytest.raises(ValueError, match="written by a newer fastnas"):
        opt.load_state_dict(newer)
    legacy = {k: v for k, v in state.items() if k != "fastnas_checkpoint"}   # fastnas 0.1
    DARTSOptimizer(dict(channels=4, layers=3, in_channels=1, device="cpu")).load_state_dict(
        legacy)
    torch.save(state, tmp_path / "s.pt")
    with pytest.raises(ValueError, match=r"s\.pt: .*does not fit the model its config builds"):
        DARTSOptimizer.load(str(tmp_path / "s.pt"), channels=6)


# -- one line for every bad input -----------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished 2-epoch search and training, to resume the wrong way."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["search", "--epochs", "2", *TINY, "--output", str(root / "search")]) == 0
    assert main(["train", "--genotype", "DARTS_V2", "--epochs", "1", *TINY, "--output",
                 str(root / "train")]) == 0
    deep = root / "deep.json"
    deep.write_text('{"normal": ' + "[" * 200_000 + "]" * 200_000 + "}")
    huge = root / "huge.json"
    huge.write_text(" " * (2 << 20) + "{}")
    return root


@pytest.mark.parametrize("argv,expected", [
    (["search", "--layers", "1"], "layers must be >= 3, got 1"),
    (["search", "--layers", "2"], "layers must be >= 3, got 2"),
    (["search", "--method", "enas", "--layers", "2"], "num_layers must be >= 3, got 2"),
    (["search", "--device", "mps"], "device 'mps' is not available"),
    (["search", "--device", "cuda:7"], "device 'cuda:7'"),
    (["search", "--device", "junk"], "device 'junk' is not a device"),
    (["search", "--limit", "3"], "--limit 3 leaves 1 image(s) for the weight half"),
    (["search", "--threads", "100000"], "100000 threads is more than this machine can use"),
    (["search", "--workers", "1000"], "1000 workers is more than this machine can use"),
    (["search", "--output", ""], "--output: must name a folder"),
    (["search", "--resume", "--epochs", "1", "--output", "{runs}/search"],
     "--epochs 1 is below the 2 epoch(s) the checkpoint"),
    (["search", "--resume", "--output", "{runs}/train"],
     "is a train checkpoint, not a search checkpoint: resume it with fastnas train --resume"),
    (["train", "--resume", "--output", "{runs}/search"],
     "is a search checkpoint, not a train checkpoint: resume it with fastnas search --resume"),
    (["search", "--resume", "--method", "enas", "--output", "{runs}/search"],
     "is a darts search, not an enas search: resume it with --method darts"),
    (["train", "--genotype", "{runs}/deep.json"], "nested too deeply"),
    (["train", "--genotype", "{runs}/huge.json"], "an architecture file is at most 1048576"),
])
def test_bad_input_is_one_line(argv, expected, runs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output folders land here, not in the checkout
    argv = [a.replace("{runs}", str(runs)) for a in argv]
    status = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, err
    assert expected in err[-1] and err[-1].startswith("fastnas: error: "), err[-1]
    assert all(line.startswith("fastnas:") or line.startswith(("no checkpoint", "search:"))
               for line in err), err


def test_a_checkpoint_whose_config_no_longer_fits(runs, capsys, tmp_path):
    state = load_checkpoint(runs / "search" / "checkpoint.pt")
    state["config"]["channels"] = 6
    torch.save(state, tmp_path / "checkpoint.pt")
    assert main(["search", "--resume", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit the model its config builds" in err[0]


def test_internal_errors_are_one_line_unless_debugging(monkeypatch, capsys, tmp_path):
    from fastnas import pipeline

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(pipeline, "search_stage", broken)
    monkeypatch.setattr("fastnas.cli.search_stage", broken)
    argv = ["search", "--output", str(tmp_path / "search")]  # never the default runs/ folder
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == ("fastnas: internal error: ZeroDivisionError: a bug "
                                               "(run with FASTNAS_DEBUG=1 for the traceback, and "
                                               "please report it)")
    monkeypatch.setenv("FASTNAS_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(argv)


# -- the API's input checks -----------------------------------------------------------------------
@pytest.mark.parametrize("x,y,error,message", [
    (torch.randn(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), ValueError, "the batch is empty"),
    (torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), ValueError, "3 channels"),
    (torch.randn(2, 1, 8, 8), torch.zeros(2), TypeError, "int64 class indices, got torch.float32"),
    (torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.int32), TypeError, "torch.int32"),
    (torch.randn(2, 1, 8, 8), torch.tensor([0, 4]), ValueError, "target 4 is outside"),
    (torch.randn(2, 1, 8, 8), torch.tensor([0, -100]), ValueError, "target -100 is outside"),
    (torch.full((2, 1, 8, 8), float("nan")), torch.zeros(2, dtype=torch.long), ValueError,
     "NaN or Inf"),
])
def test_bad_batches_are_refused_by_every_strategy(x, y, error, message):
    darts = DARTSOptimizer(dict(channels=4, layers=3, num_classes=4, in_channels=1,
                                device="cpu"))
    enas = ENASOptimizer(dict(channels=4, num_layers=3, num_classes=4, in_channels=1,
                              device="cpu"))
    good = (torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(error, match=message):
        darts.step((x, y), good)
    with pytest.raises(error, match=message):
        enas.step((x, y))
    with pytest.raises(error, match=message):
        enas.reward(enas.ask(), (x, y))
