"""``fastnas search --method rsps`` and ``--method enas-cells`` on digits, in-process: their
files, and a search resumed with more epochs equals a straight one."""
import json

import pytest
import torch

from fastnas.cli import main
from fastnas.errors import UserError
from fastnas.genotypes import Genotype
from fastnas.pipeline import StageOptions, search_stage

SMALL = ["--dataset", "digits", "--limit", "96", "--layers", "3", "--channels", "4",
         "--batch-size", "16", "--quiet", "--no-plots"]


def _config(tmp_path, text):
    path = tmp_path / "search.toml"
    path.write_text("[search]\n" + text)
    return ["--config", str(path)]


def _metrics(folder):
    with open(folder / "metrics.json") as f:
        return json.load(f)


def _without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_rsps_search_resumed_with_more_epochs_equals_a_straight_search(tmp_path):
    config = _config(tmp_path, "select_num = 3\nselect_batches = 2\n")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["search", "--method", "rsps", "--epochs", "2", *SMALL, *config,
                 "--output", str(straight)]) == 0
    assert main(["search", "--method", "rsps", "--epochs", "1", *SMALL, *config,
                 "--output", str(resumed)]) == 0
    torch.manual_seed(321)
    assert main(["search", "--method", "rsps", "--epochs", "2", "--resume", "--quiet",
                 "--no-plots", "--output", str(resumed)]) == 0
    a, b = _metrics(straight), _metrics(resumed)
    assert a["method"] == "rsps" and a["complete"]
    assert _without_seconds(a["history"]) == _without_seconds(b["history"])
    assert a["genotype"] == b["genotype"] and a["val_accuracy"] == b["val_accuracy"]
    assert Genotype.load(str(straight / "genotype.json")) == Genotype.parse(a["genotype"])
    with open(straight / "alphas.json") as f:
        alphas = json.load(f)
    assert alphas["method"] == "rsps" and alphas["weights"][0][0] == [0.125] * 8
    with open(straight / "config.json") as f:
        saved = json.load(f)["search"]
    assert (saved["method"], saved["select_num"]) == ("rsps", 3)


def test_enas_cells_search_writes_its_files(tmp_path):
    config = _config(tmp_path, "controller_steps = 1\ncontroller_aggregate = 2\n"
                               "derive_samples = 2\n")
    out = tmp_path / "out"
    assert main(["search", "--method", "enas-cells", "--epochs", "1", *SMALL, *config,
                 "--output", str(out)]) == 0
    m = _metrics(out)
    assert m["method"] == "enas-cells" and m["complete"]
    assert "controller_loss" in m["history"][0] and len(m["history"][0]["alphas_normal"]) == 14
    assert Genotype.load(str(out / "genotype.json")) == Genotype.parse(m["genotype"])
    with open(out / "alphas.json") as f:
        assert json.load(f)["method"] == "enas-cells"


def test_enas_over_nb201_is_enas_cells(tmp_path):
    """``--method enas`` with the space ``nb201`` runs ENAS over that cell space: a search of
    one epoch once ``fastnas.nb201.nb201_space`` exists, else one line saying it is missing."""
    from fastnas import nb201

    options = StageOptions(dataset="digits", limit=96, quiet=True, config={"search": {
        "controller_steps": 1, "controller_aggregate": 2, "derive_samples": 2}})
    given = {"space": "nb201", "epochs": 1, "layers": 3, "channels": 4, "batch_size": 16}
    if not hasattr(nb201, "nb201_space"):
        with pytest.raises(UserError, match="nb201_space"):
            search_stage(options, "enas", given, str(tmp_path / "out"))
        return
    arch, metrics = search_stage(options, "enas", given, str(tmp_path / "out"))
    assert metrics["method"] == "enas-cells" and isinstance(arch, nb201.NB201Cell)
