"""``fastnas search --space nb201`` and ``fastnas run --space nb201``: a DARTS search of the
NAS-Bench-201 space on digits, the found cell's table accuracies in metrics.json and the
summary, ``--table FILE``, the NB201 figures, resume, and the one-line errors."""
import json

import pytest

from fastnas.cli import main
from fastnas.nb201 import NB201Cell, lookup

QUICK = ["--dataset", "digits", "--epochs", "1", "--limit", "120", "--quiet"]


def test_search_nb201_on_digits_writes_the_table_accuracies(tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["search", "--space", "nb201", *QUICK, "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    cell = NB201Cell.load(str(out / "genotype.json"))
    assert metrics["genotype"] == str(cell)
    accuracies = lookup(cell)
    assert metrics["nb201_table"] == {**accuracies.as_dict(), "table": None}
    assert accuracies.summary() in capsys.readouterr().out
    config = metrics["config"]
    for key, value in {"space": "nb201", "layers": 1, "channels": 8, "weight_decay": 5e-4,
                       "nesterov": True, "order": 1}.items():
        assert config[key] == value, key
    assert len(metrics["history"][0]["alphas_cell"]) == 6
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"cell_nb201.dot", "alphas.svg"} <= plots, plots
    if "cell_nb201.png" in plots or "alphas.png" in plots:   # matplotlib is there
        assert {"cell_nb201.png", "alphas.png"} <= plots
    alphas = json.loads((out / "alphas.json").read_text())
    assert [p["title"] for p in alphas["panels"]] == ["0 -> 1", "0 -> 2", "1 -> 2", "0 -> 3",
                                                      "1 -> 3", "2 -> 3"]
    # resume: one more epoch from the checkpoint, same space
    assert main(["search", "--space", "nb201", *QUICK[:2], "--epochs", "2", "--quiet",
                 "--resume", "--output", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_second_order_and_a_users_table(tmp_path, capsys):
    """Order 2 runs; ``--table FILE`` replaces the shipped table: a table holding every cell at
    the same made-up accuracies reports them, with the file named."""
    from fastnas.nb201 import NB201_CELLS

    table = tmp_path / "table.csv"
    rows = ["arch,cifar10,cifar100,imagenet16_120"]
    rows += [f"{NB201Cell.from_index(i)},50.5,25.25,12.125" for i in range(NB201_CELLS)]
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "search"
    assert main(["search", "--space", "nb201", "--order", "2", *QUICK, "--no-plots",
                 "--table", str(table), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nb201_table"] == {"cifar10": 50.5, "cifar100": 25.25,
                                      "imagenet16_120": 12.125, "table": str(table)}
    assert "NB201 table: CIFAR-10 50.50, CIFAR-100 25.25, ImageNet16-120 12.12" \
        in capsys.readouterr().out


def test_run_nb201_searches_then_trains_the_cell(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--space", "nb201", "--dataset", "digits", "--search-epochs", "1",
                 "--train-epochs", "1", "--train-channels", "2", "--train-layers", "3",
                 "--limit", "120", "--quiet", "--no-plots", "--output", str(out)]) == 0
    searched = json.loads((out / "search" / "metrics.json").read_text())
    trained = json.loads((out / "train" / "metrics.json").read_text())
    assert trained["genotype"] == searched["genotype"]
    assert searched["nb201_table"]["cifar10"] == lookup(searched["genotype"]).cifar10
    assert json.loads((out / "config.json").read_text())["search"]["space"] == "nb201"


@pytest.mark.parametrize("argv,says", [
    (["search", "--table", "t.csv"], "--table is for --space nb201"),
    (["search", "--space", "nb201", "--table", "missing.csv"], "missing.csv does not exist"),
    (["search", "--space", "nb201", "--method", "pc-darts"],
     "partial_channels=4 does not apply to space='nb201'"),
    (["search", "--space", "nb101"], "invalid choice: 'nb101'"),
])
def test_search_nb201_errors_are_one_line(tmp_path, capsys, argv, says):
    assert main([*argv, *QUICK, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err


def test_the_nb201_cell_as_dot_text():
    from fastnas.reports.nb201_cells import nb201_cell_dot, nb201_cell_edges

    cell = NB201Cell.parse("|avg_pool_3x3~0|+|nor_conv_1x1~0|none~1|"
                           "+|none~0|skip_connect~1|nor_conv_3x3~2|")
    assert nb201_cell_edges(cell)[:3] == [(0, 1, "avg_pool_3x3"), (0, 2, "nor_conv_1x1"),
                                          (1, 2, "none")]
    dot = nb201_cell_dot(cell)
    assert '"0" -> "1" [label="avg_pool_3x3"];' in dot
    assert '"1" -> "2" [label="none", style=dashed, color=gray];' in dot
    assert dot.count("->") == 6


@pytest.mark.parametrize("method", ["gdas", "drnas", "beta-darts", "rsps", "enas"])
def test_each_method_searches_nb201_and_reports_the_table(method, tmp_path):
    """Issue 19: GDAS, DrNAS, beta-DARTS, RSPS and ENAS search the NB201 space on digits and
    write the found cell's table accuracies (DARTS orders 1 and 2: the tests above)."""
    out = tmp_path / method
    assert main(["search", "--space", "nb201", "--method", method, *QUICK, "--no-plots",
                 "--warmup-epochs" if method == "drnas" else "--quiet",
                 *(["0"] if method == "drnas" else []), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    cell = NB201Cell.load(str(out / "genotype.json"))
    assert metrics["nb201_table"] == {**lookup(cell).as_dict(), "table": None}
    assert metrics["config"]["space"] == "nb201"
