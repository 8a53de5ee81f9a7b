"""``fastnas train --space nb201``: the NB201 network of a cell, trained with the benchmark's
recipe, its parameter count in metrics.json, and its model file."""
import json

import pytest
import torch

from fastnas.cli import main
from fastnas.nb201 import NB201Cell, NB201Network
from fastnas.training import FinalTrainer, load_model, parse_architecture

CELL = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"


def hand_count(cell, C, N, classes, in_channels):
    """conv k x k from a to b: k*k*a*b weights; affine BN: 2*b; see tests/test_nb201.py."""
    ops = NB201Cell.parse(cell).ops
    cells = sum(N * sum({"nor_conv_1x1": c * c + 2 * c, "nor_conv_3x3": 9 * c * c + 2 * c}
                        .get(op, 0) for op in ops) for c in (C, 2 * C, 4 * C))
    blocks = sum(9 * a * b + 2 * b + 9 * b * b + 2 * b + a * b
                 for a, b in ((C, 2 * C), (2 * C, 4 * C)))
    return 9 * in_channels * C + 2 * C + cells + blocks + 8 * C + 4 * C * classes + classes


def test_train_nb201_cell_on_digits(tmp_path, capsys):
    out = tmp_path / "train"
    assert main(["train", "--space", "nb201", "--genotype", CELL, "--dataset", "digits",
                 "--epochs", "1", "--channels", "4", "--layers", "3", "--limit", "200",
                 "--output", str(out), "--no-plots", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["genotype"] == CELL
    assert metrics["params"] == hand_count(CELL, 4, 3, 10, 1)
    config = metrics["config"]
    for key, value in {"batch_size": 256, "learning_rate": 0.1, "lr_min": 0.0, "momentum": 0.9,
                       "nesterov": True, "weight_decay": 5e-4, "grad_clip": None,
                       "auxiliary": False, "drop_path_prob": 0.0, "cutout": 0}.items():
        assert config[key] == value, key
    model, cell, cfg = load_model(str(out / "model.pt"))
    assert isinstance(model, NB201Network) and cell == NB201Cell.parse(CELL)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_the_recipe_defaults_and_the_tune_folder(tmp_path):
    tune = tmp_path / "tune"
    assert main(["tune", "--space", "nb201", "--sampler", "random", "--trials", "3",
                 "--quiet", "--output", str(tune)]) == 0
    best = NB201Cell.load(str(tune / "genotype.json"))
    out = tmp_path / "train"
    assert main(["train", "--space", "nb201", "--genotype", str(tune), "--dataset", "digits",
                 "--epochs", "1", "--channels", "2", "--limit", "100", "--output", str(out),
                 "--no-plots", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["genotype"] == str(best)
    assert metrics["config"]["layers"] == 5  # N=5 by default
    assert metrics["params"] == hand_count(str(best), 2, 5, 10, 1)


def test_the_trainer_uses_nesterov_and_refuses_darts_only_settings():
    cell = NB201Cell.parse(CELL)
    trainer = FinalTrainer(cell, {"channels": 2, "layers": 3, "auxiliary": False,
                                  "drop_path_prob": 0.0, "nesterov": True, "in_channels": 1,
                                  "device": "cpu"})
    assert trainer.optimizer.param_groups[0]["nesterov"] is True
    with pytest.raises(ValueError, match="no auxiliary head"):
        FinalTrainer(cell, {"channels": 2, "layers": 3, "auxiliary": True, "device": "cpu"})
    assert parse_architecture(CELL) == cell


@pytest.mark.parametrize("argv,says", [
    (["--genotype", "nonsense"], "neither an NB201 cell string"),
    (["--genotype", "|none~0|+|none~0|"], "expected 3 nodes"),
    ([], "needs --genotype"),
    (["--genotype", CELL, "--drop-path", "0.2"], "no drop path"),
])
def test_train_nb201_errors_are_one_line(tmp_path, capsys, argv, says):
    assert main(["train", "--space", "nb201", "--dataset", "digits", "--epochs", "1",
                 "--output", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err
