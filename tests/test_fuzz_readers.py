"""Fuzzing every reader of untrusted input (issue 21): genotype files, a run folder's
metrics.json and alphas.json, checkpoints, the DARTS paper's state_dicts and tune's storage URLs.

``fuzz_readers.py`` (the driver) mutates valid inputs with a seeded generator and runs each
through its reader in one subprocess held to 2 GiB (``RLIMIT_DATA``), each input to 20 CPU
seconds; every input must work or fail with one ``fastnas: error:`` line and exit 1 or 2. The
default size (20 inputs per reader) runs in well under a minute of CPU; ``FASTNAS_FUZZ_COUNT``
and ``FASTNAS_FUZZ_SEED`` run a longer or another campaign.
"""
import json
import os

import pytest
from limited_run import run_python

pytest.importorskip("optuna")
pytest.importorskip("matplotlib")

COUNT = int(os.environ.get("FASTNAS_FUZZ_COUNT", "20"))
SEED = int(os.environ.get("FASTNAS_FUZZ_SEED", "0"))
KINDS = ("genotype", "metrics", "alphas", "checkpoint", "paper", "storage")


def test_every_reader_works_or_fails_with_one_line(tmp_path):
    driver = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_readers.py")
    done = run_python([driver, str(tmp_path), str(SEED), str(COUNT)], cwd=str(tmp_path),
                      timeout=max(300, 3 * COUNT * len(KINDS)))
    assert done.status == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["failures"] == [], json.dumps(summary["failures"], indent=1)[:5000]
    for kind in KINDS:  # every reader ran every input, and the generator reached its errors
        outcomes = summary["outcomes"][kind]
        assert sum(outcomes.values()) == COUNT
        assert outcomes.get("2", 0) > 0, (kind, outcomes)
