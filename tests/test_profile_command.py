"""``fastnas profile``: the search-step table (fast and reference rows), ``--json`` and
``--trace``, on a tiny supernet (4 channels, 3 cells, 8x8 images)."""
import json
import re

import pytest

from fastnas.cli import main

TINY = ["--channels", "4", "--layers", "3", "--image-size", "8", "--steps", "2", "--warmup", "0",
        "--threads", "1"]


def test_profile_compares_fast_with_reference(tmp_path, capsys):
    table, trace = tmp_path / "profile.json", tmp_path / "trace.json"
    assert main(["profile", "--batch-size", "8", "--compare", *TINY, "--json", str(table),
                 "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if re.match(r"^(fast|reference)\s+torch\s+\d", line)}
    assert set(rows) == {"fast", "reference"}
    assert rows["fast"][-2].endswith("x") and rows["fast"][-1].endswith("x")  # vs reference
    assert "batch 8, 8x8, cpu" in out and "peak RSS" in out
    assert "supernet fast: activations kept for backward" in out and "per op:" in out

    data = json.loads(table.read_text())
    assert data["settings"]["batch_size"] == 8 and data["settings"]["supernet"] == "fast"
    fast, reference = data["rows"]
    assert (fast["supernet"], reference["supernet"]) == ("fast", "reference")
    for row in (fast, reference):
        assert len(row["step_times"]) == 2 and all(t > 0 for t in row["step_times"])
        assert row["step_seconds"] == pytest.approx(sum(row["step_times"]) / 2)  # median of 2
        assert row["steps_per_second"] == pytest.approx(1 / row["step_seconds"])
        assert row["step_peak_bytes"] >= 0 and row["saved_bytes"] > 0
        assert row["batch_size"] == 8 and row["image_size"] == 8
        # the table prints these very numbers
        printed = rows[row["supernet"]]
        assert float(printed[2]) == pytest.approx(row["step_seconds"], abs=5e-5)
    assert float(rows["fast"][-2][:-1]) == pytest.approx(
        fast["step_seconds"] / reference["step_seconds"], abs=0.0051)
    assert fast["saved_bytes"] < reference["saved_bytes"]  # the fused supernet keeps less

    events = json.loads(trace.read_text())["traceEvents"]
    steps = [e for e in events if e.get("name") == "search step"]
    assert len(steps) == 2 and all(e["dur"] > 0 for e in steps)


def test_profile_rejects_bad_settings(capsys):
    assert main(["profile", "--backend", "torch"]) == 2
    assert "unrecognized arguments: --backend" in capsys.readouterr().err
    assert main(["profile", "--supernet", "triton"]) == 2
    assert main(["profile", "--device", "tpu", *TINY]) == 2
    assert capsys.readouterr().err.count("fastnas: error:") == 2
