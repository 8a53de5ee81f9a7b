"""``--method M`` and the method flags on the command line (issue 18): every preset searches
digits, the resolved keys land in ``config.json``, flags beat presets and presets beat the
dataset's defaults, a resumed search keeps its method, and ``fastnas tune`` and ``fastnas
profile`` take a method's search."""
import json
import os

import pytest
import torch

from fastnas import pipeline
from fastnas.cli import main
from fastnas.darts.methods import METHODS, PRESETS

# a supernet small enough for a step in a few milliseconds (as tests/test_cli.py)
SMALL = ["--limit", "96", "--layers", "3", "--channels", "4", "--batch-size", "16", "--quiet",
         "--no-plots"]
METHODS_HERE = METHODS   # every preset (the supernet axes of issue 18 merged)
WHAT = {"softmax": "softmax of the alphas per edge", "sigmoid": "sigmoid of the alphas per op"}


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("method", METHODS_HERE)
def test_each_method_searches_digits_and_records_its_settings(method, tmp_path):
    out = tmp_path / method
    extra = ["--pgd-steps", "1"] if method == "sdarts-adv" else []
    assert main(["search", "--method", method, "--epochs", "1", *SMALL, *extra,
                 "--output", str(out)]) == 0
    config = _json(out / "config.json")["search"]
    assert config["method"] == method
    for key, value in PRESETS[method].items():
        if key not in ("batch_size", "pgd_steps"):   # given as flags here
            want = list(value) if isinstance(value, tuple) else value
            assert config[key] == want, key
    metrics = _json(out / "metrics.json")
    assert metrics["method"] == "darts" and metrics["config"]["method"] == method
    assert metrics["complete"] and os.path.exists(out / "genotype.json")
    relaxation = config["relaxation"]
    alphas = _json(out / "alphas.json")
    assert alphas["what"].startswith(WHAT.get(relaxation, "softmax of the alphas"))


def test_flags_beat_the_preset_which_beats_the_datasets_defaults(tmp_path):
    out = tmp_path / "fair"
    assert main(["search", "--method", "fair-darts", "--threshold", "0.5", "--epochs", "1",
                 *SMALL, "--output", str(out)]) == 0
    config = _json(out / "config.json")["search"]
    assert config["threshold"] == 0.5 and config["zero_one_weight"] == 10.0
    assert config["learning_rate_alpha"] == 3e-3 and config["arch_betas"] == [0.9, 0.999]
    # plain darts on digits: the digits architecture learning rate (README quick start)
    out = tmp_path / "darts"
    assert main(["search", "--epochs", "1", *SMALL, "--output", str(out)]) == 0
    config = _json(out / "config.json")["search"]
    digits = pipeline.DARTS_SEARCH_DEFAULTS["digits"]["arch_learning_rate"]
    assert config["method"] == "darts" and config["learning_rate_alpha"] == digits != 3e-4
    # drnas: its preset's, over the digits default
    out = tmp_path / "drnas"
    assert main(["search", "--method", "drnas", "--warmup-epochs", "0", "--epochs", "1",
                 *SMALL, "--output", str(out)]) == 0
    config = _json(out / "config.json")["search"]
    assert config["learning_rate_alpha"] == 6e-4 and config["warmup_epochs"] == 0
    assert config["relaxation"] == "dirichlet"


def test_method_settings_from_a_config_file_and_their_errors(tmp_path, capsys):
    path = tmp_path / "search.toml"
    path.write_text('method = "sdarts-rs"\nepsilon_max = 0.1\n', encoding="utf-8")
    out = tmp_path / "rs"
    assert main(["search", "--config", str(path), "--epochs", "1", *SMALL,
                 "--output", str(out)]) == 0
    config = _json(out / "config.json")["search"]
    assert (config["method"], config["perturbation"], config["epsilon_max"]) == (
        "sdarts-rs", "random", 0.1)
    assert "runs" not in os.listdir(tmp_path)
    # resumed from its own config.json (the Adam betas read back as a list)
    assert main(["search", "--config", str(out / "config.json"), "--resume", "--epochs", "2",
                 *SMALL, "--output", str(out)]) == 0
    assert _json(out / "metrics.json")["epochs"] == 2
    capsys.readouterr()
    # a method flag for ENAS, a combination that cannot work, another method on resume
    assert main(["search", "--method", "enas", "--tau-max", "5", "--epochs", "1", *SMALL,
                 "--output", str(tmp_path / "e")]) == 2
    assert "--tau-max does not apply to --method enas" in capsys.readouterr().err
    assert main(["search", "--relaxation", "sigmoid", "--perturbation", "random", "--epochs",
                 "1", *SMALL, "--output", str(tmp_path / "x")]) == 2
    assert "simplex" in capsys.readouterr().err
    assert main(["search", "--method", "drnas", "--resume", "--epochs", "2", *SMALL,
                 "--output", str(out)]) == 2
    assert "--method drnas does not match the checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["drnas", "fair-darts"])
def test_tune_takes_a_methods_search(method, tmp_path, capsys):
    pytest.importorskip("optuna")
    search = tmp_path / "search"
    assert main(["search", "--method", method, "--epochs", "1", *SMALL,
                 "--output", str(search)]) == 0
    out = tmp_path / "tune"
    trial = ["--trials", "1", "--startup-trials", "1", "--epochs", "1", "--layers", "3",
             "--channels", "4", "--batch-size", "32", "--limit", "200", "--quiet", "--no-plots",
             "--output", str(out)]
    assert main(["tune", "--from", method, "--search", str(search), *trial]) == 0
    assert _json(out / "metrics.json")["search"]["method"] == "darts"
    capsys.readouterr()
    assert main(["tune", "--from", "sdarts-rs", "--search", str(search), *trial]) == 2
    assert f"holds a {method} search" in capsys.readouterr().err


def test_profile_takes_a_method(capsys):
    assert main(["profile", "--method", "sdarts-adv", "--batch-size", "2", "--channels", "4",
                 "--layers", "3", "--image-size", "8", "--steps", "1", "--warmup", "0",
                 "--threads", "1"]) == 0
    assert "fast" in capsys.readouterr().out

