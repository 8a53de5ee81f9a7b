"""Config files (``--config``), the search's hyperparameter flags, and ``config.json`` in every
run folder: flags over the file over the per-dataset defaults, and a run repeated from its
folder resolves to the same settings."""
import json

import pytest

from fastnas.cli import main
from fastnas.config import read_config_file

TINY = ["--limit", "64", "--quiet", "--no-plots"]
TINY_SEARCH = ["--search-layers", "3", "--search-channels", "4", "--train-layers", "3",
               "--train-channels", "4"]


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_file_forms(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[search]\nlearning_rate_alpha = 0.01\n[train]\nepochs = 3\n')
    assert read_config_file(str(toml)) == {"search": {"learning_rate_alpha": 0.01},
                                           "train": {"epochs": 3}}
    flat = tmp_path / "c.json"
    flat.write_text('{"epochs": 3}')
    assert read_config_file(str(flat), "train") == {"train": {"epochs": 3}}
    with pytest.raises(ValueError, match=r"\[search\] and/or a \[train\] table"):
        read_config_file(str(flat))  # fastnas run needs the tables


@pytest.mark.parametrize("text, message", [
    ("[1]", "must hold a table of keys, got list"),
    ('{"search": 1}', "search must be a table of keys, got int"),
    ('{"search": {}, "x": 1}', r"keys \['x'\] stand outside"),
    ("{bad", "is not valid JSON"),
    ('{"search": {"device": "cpu"}}', "chosen with --device"),
])
def test_malformed_files_are_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_config_file(str(path), "search")
    assert main(["search", "--config", str(path), "--output", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastnas: error: config file") and "\n" not in err


def test_flags_over_file_over_defaults_and_repeat_from_the_folder(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[search]\nlearning_rate_alpha = 0.01\nlearning_rate_w = 0.1\n"
                      "num_steps = 1\narch_weight_decay = 0.0\n[train]\nepochs = 1\n"
                      "learning_rate = 0.05\n")
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--search-learning-rate", "0.07",
                 "--arch-learning-rate", "0.02", "--learning-rate", "0.03",
                 "--search-momentum", "0.8", "--output", str(out), *TINY_SEARCH, *TINY]) == 0
    resolved = _json(out / "config.json")
    search, train = resolved["search"], resolved["train"]
    assert search["method"] == "darts"
    assert search["learning_rate_alpha"] == 0.02      # flag over file
    assert search["learning_rate_w"] == 0.07          # --search-learning-rate, not the train's
    assert search["momentum"] == 0.8
    assert search["arch_weight_decay"] == 0.0         # file over default (1e-3)
    assert search["num_steps"] == 1
    assert train["learning_rate"] == 0.03             # the train's --learning-rate
    assert train["epochs"] == 1
    for key in ("device", "in_channels", "num_classes"):
        assert key not in search and key not in train
    assert _json(out / "search" / "config.json") == {"search": search}
    assert _json(out / "train" / "config.json") == {"train": train}
    assert _json(out / "search" / "metrics.json")["config"]["learning_rate_alpha"] == 0.02

    again = tmp_path / "again"
    assert main(["run", "--config", str(out / "config.json"), "--output", str(again),
                 *TINY]) == 0
    assert _json(again / "config.json") == resolved


def test_method_from_the_file_and_flags_that_do_not_apply(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"method": "enas", "num_steps": 1, "num_layers": 3,
                                  "channels": 4, "controller_steps": 1}))
    out = tmp_path / "s"
    assert main(["search", "--config", str(config), "--arch-learning-rate", "0.002",
                 "--output", str(out), *TINY]) == 0
    search = _json(out / "config.json")["search"]
    assert search["method"] == "enas" and search["controller_lr"] == 0.002
    assert main(["search", "--method", "enas", "--arch-weight-decay", "0.1",
                 "--output", str(tmp_path / "t"), *TINY]) == 2
    assert "--arch-weight-decay does not apply to --method enas" in capsys.readouterr().err


def test_a_data_key_that_contradicts_the_dataset(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text('{"in_channels": 3}')  # digits are gray
    assert main(["search", "--config", str(config), "--output", str(tmp_path / "o"),
                 *TINY]) == 2
    assert "search.in_channels does not match the dataset (in_channels 1)" in \
        capsys.readouterr().err
