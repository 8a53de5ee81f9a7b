"""Exact resume of the DARTS methods that draw noise (issue 18): a search killed with SIGKILL
(tests/fault_runner.py) and resumed equals the straight search bitwise."""
import signal
import subprocess
import sys

import pytest
import torch
from test_reliability import ENV, RUNNER, finished, same

from fastnas.cli import main


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("method, extra", [("drnas", ["--warmup-epochs", "1"]),
                                           ("sdarts-adv", ["--pgd-steps", "2"]),
                                           ("gdas", []),
                                           ("pc-darts", ["--warmup-epochs", "1"])])
def test_sigkill_then_resume_is_bitwise_the_straight_search(method, extra, tmp_path, capsys):
    """The search killed (SIGKILL, tests/fault_runner.py) in its second epoch and resumed equals
    the straight search bitwise: weights, alphas, optimizers, the method's noise generators
    (Dirichlet samples, SDARTS noise) and schedules, RNGs, history."""
    args = ["search", "--method", method, "--epochs", "2", "--dataset", "digits", "--layers",
            "3", "--channels", "4", "--batch-size", "16", "--limit", "64", "--quiet",
            "--no-plots", *extra]   # 2 steps per epoch
    straight = tmp_path / "straight"
    assert main([*args, "--output", str(straight)]) == 0
    killed = tmp_path / "killed"
    done = subprocess.run([sys.executable, RUNNER, "kill-step:4", "--", *args,
                           "--output", str(killed)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    capsys.readouterr()
    assert main([*args, "--resume", "--output", str(killed)]) == 0
    state, metrics = finished(killed)
    reference_state, reference_metrics = finished(straight)
    same(state, reference_state)
    same(metrics["history"], reference_metrics["history"], "metrics.history")
    assert metrics["val_accuracy"] == reference_metrics["val_accuracy"]
