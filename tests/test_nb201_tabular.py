"""Tabular search on the NAS-Bench-201 table: the strategies (REINFORCE against an independent
float64 autograd reference, REA's aging population), seeded runs, and ``fastnas tune --space
nb201``."""
import csv
import json
import random

import pytest
import torch

from fastnas.cli import main
from fastnas.nb201 import NB201_OPS, NB201Cell, Table
from fastnas.tune.tabular import (
    TABULAR_STRATEGIES,
    MovingAverage,
    RegularizedEvolution,
    Reinforce,
    make_strategy,
    mutate,
    random_cell,
    run_tabular,
)


def test_reinforce_matches_autograd_and_torch_adam_in_float64():
    """The reference: torch autograd of ``-(R - b) sum log softmax(theta)[a]``, torch.optim.Adam,
    and the moving average written from its definition as explicit weighted sums."""
    policy = Reinforce(seed=3, learning_rate=0.05, momentum=0.8)
    theta = torch.tensor(policy.theta, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([theta], lr=0.05)
    rng = random.Random(0)
    rewards = []
    for _ in range(25):
        cell = policy.ask() if rng.random() < 0.5 else random_cell(rng)
        reward = rng.uniform(10, 95)
        rewards.append(reward)
        policy.tell(cell, reward)
        n = len(rewards)
        weights = [(1 - 0.8) * 0.8 ** (n - 1 - k) for k in range(n)]
        baseline = sum(w * r for w, r in zip(weights, rewards)) / sum(weights)
        actions = torch.tensor([NB201_OPS.index(op) for op in cell.ops])
        log_p = torch.log_softmax(theta, dim=-1).gather(1, actions.view(-1, 1)).sum()
        adam.zero_grad()
        (-(reward - baseline) * log_p).backward()
        adam.step()
        assert policy.baseline.value() == pytest.approx(baseline, rel=1e-13)
        torch.testing.assert_close(torch.from_numpy(policy.theta), theta.detach(), rtol=1e-11,
                                   atol=1e-12)
    assert policy.best() == NB201Cell(tuple(NB201_OPS[i] for i in theta.argmax(1).tolist()))


def test_moving_average_is_bias_corrected():
    average = MovingAverage(0.9)
    average.update(50.0)
    assert average.value() == pytest.approx(50.0)  # not 5.0: the denominator corrects the bias
    average.update(60.0)
    assert average.value() == pytest.approx((0.1 * 0.9 * 50 + 0.1 * 60) / (0.1 * 0.9 + 0.1))


def test_reinforce_samples_from_its_probabilities():
    policy = Reinforce(seed=0)
    policy.theta[:] = -50.0
    policy.theta[:, 3] = 0.0  # all mass on nor_conv_3x3
    assert policy.ask().ops == ("nor_conv_3x3",) * 6


def test_mutation_switches_exactly_one_edge():
    rng = random.Random(1)
    for _ in range(200):
        parent = random_cell(rng)
        child = mutate(parent, rng)
        assert sum(a != b for a, b in zip(parent.ops, child.ops)) == 1


def test_regularized_evolution_ages_its_population():
    rea = RegularizedEvolution(seed=0, population=4, tournament=2)
    told = []
    for i in range(4):
        cell = rea.ask()
        told.append(cell)
        rea.tell(cell, float(i))
    assert [c for c, _ in rea.population] == told
    for step in range(20):
        members = [c for c, _ in rea.population]
        child = rea.ask()
        assert any(sum(a != b for a, b in zip(child.ops, m.ops)) == 1 for m in members)
        rea.tell(child, 100.0 - step)
        assert len(rea.population) == 4 and rea.population[-1] == (child, 100.0 - step)
        assert rea.population[0][0] == (members[1] if len(members) > 1 else child)


def test_tournament_picks_the_best_of_the_sample():
    rea = RegularizedEvolution(seed=0, population=3, tournament=50)  # samples every member
    cells = [NB201Cell(("none",) * 6), NB201Cell(("skip_connect",) * 6),
             NB201Cell(("avg_pool_3x3",) * 6)]
    for cell, value in zip(cells, (1.0, 3.0, 2.0)):
        rea.tell(cell, value)
    for _ in range(20):
        child = rea.ask()
        assert sum(op != "skip_connect" for op in child.ops) == 1


@pytest.mark.parametrize("strategy", TABULAR_STRATEGIES)
def test_seeded_runs_repeat_and_score_by_the_table(strategy):
    table = Table.load()
    config = {"strategy": strategy, "trials": 14, "seed": 5, "dataset": "cifar100"}
    first, again = run_tabular(config, table), run_tabular(config, table)
    assert [(t.cell, t.value) for t in first] == [(t.cell, t.value) for t in again]
    other = run_tabular(dict(config, seed=6), table)
    assert [t.cell for t in other] != [t.cell for t in first]
    best = float("-inf")
    for t in first:
        assert t.value == table.lookup(t.cell).cifar100
        best = max(best, t.value)
        assert t.best_value == best


def test_optuna_strategies_take_cells_they_did_not_ask_for():
    strategy = make_strategy(type("C", (), {"strategy": "tpe", "seed": 0,
                                            "startup_trials": 2})())
    strategy.tell(NB201Cell(("nor_conv_3x3",) * 6), 90.0)
    assert len(strategy.study.trials) == 1 and strategy.study.best_value == 90.0


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_cli_table_search_writes_trials_genotype_and_table_accuracies(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["tune", "--space", "nb201", "--objective", "table:imagenet16_120",
                 "--sampler", "rea", "--trials", "30", "--seed", "2", "--quiet",
                 "--output", str(out)]) == 0
    rows = _rows(out / "trials.csv")
    table = Table.load()
    assert len(rows) == 30 and list(rows[0]) == ["number", "value", "best_value", "genotype",
                                                 "seconds"]
    for row in rows:
        assert float(row["value"]) == table.lookup(row["genotype"]).imagenet16_120
    metrics = json.loads((out / "metrics.json").read_text())
    best = NB201Cell.load(str(out / "genotype.json"))
    assert str(best) == metrics["best"]["genotype"]
    assert metrics["best"]["value"] == max(float(r["value"]) for r in rows)
    assert metrics["nb201_table"] == table.lookup(best).as_dict()
    printed = capsys.readouterr().out
    assert "NB201 table: CIFAR-10" in printed and str(best) in printed


def test_cli_user_table_replaces_the_shipped_one(tmp_path):
    shipped = Table.load()
    path = tmp_path / "inverted.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "cifar10", "cifar100", "imagenet16_120"])
        for cell, values in shipped.rows.items():
            writer.writerow([str(cell)] + [repr(100.0 - v) for v in values])
    out = tmp_path / "out"
    assert main(["tune", "--space", "nb201", "--table", str(path), "--sampler", "random",
                 "--trials", "10", "--quiet", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    cell = NB201Cell.parse(metrics["best"]["genotype"])
    assert metrics["best"]["value"] == 100.0 - shipped.lookup(cell).cifar10
    assert metrics["nb201_table"]["cifar10"] == metrics["best"]["value"]


@pytest.mark.parametrize("argv,says", [
    (["--objective", "table:mnist"], "--objective 'table:mnist'"),
    (["--epochs", "3"], "--epochs: not for --space nb201"),
    (["--search", "somewhere"], "--search: not for --space nb201"),
    (["--table", "/nonexistent.csv"], "does not exist"),
])
def test_cli_table_search_errors_are_one_line(tmp_path, capsys, argv, says):
    assert main(["tune", "--space", "nb201", "--output", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err


def test_cli_partial_table_is_refused(tmp_path, capsys):
    path = tmp_path / "two.csv"
    path.write_text("arch,cifar10,cifar100,imagenet16_120\n"
                    f"{NB201Cell(('none',) * 6)},1,2,3\n")
    assert main(["tune", "--space", "nb201", "--table", str(path), "--output",
                 str(tmp_path / "o")]) == 2
    assert "has 1 of the 15625 cells" in capsys.readouterr().err


def test_cli_darts_tune_refuses_table_flags(capsys):
    assert main(["tune", "--objective", "table:cifar10"]) == 2
    assert "for --space nb201" in capsys.readouterr().err
