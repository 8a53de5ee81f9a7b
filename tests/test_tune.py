"""``fastnas tune``: the pruned spaces (against a reference written here), the study driver, and
the command end to end: warm start, files, reruns, two processes on one SQLite study, a process
killed mid-trial, ENAS, flags and errors. Tiny nets and 1-epoch trials on the first images of
digits."""
import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F

from fastnas import PRIMITIVES, Genotype, pipeline
from fastnas.cli import main
from fastnas.enas import ENASOptimizer
from fastnas.enas.micro import MICRO_OPS, genotype_from_choices, loose_ends
from fastnas.errors import NonFiniteError, UserError
from fastnas.supernet import derive_genotype
from fastnas.tune import (
    HPARAM_RANGES,
    INSTALL_HINT,
    DecisionSpace,
    EdgeSpace,
    TuneConfig,
    TuneData,
    make_objective,
)
from fastnas.tune import study as studies
from fastnas.tune.objective import validation_split

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--limit", "200", "--layers", "3", "--channels", "4", "--batch-size", "32",
        "--quiet", "--no-plots"]
TRIAL = ["--epochs", "1", "--layers", "3", "--channels", "4", "--batch-size", "32",
         "--limit", "200", "--quiet", "--no-plots"]

optuna.logging.set_verbosity(optuna.logging.ERROR)


# -- a reference of the pruning rule, written from the words ------------------------------
def reference_pruned(alphas, k, m):
    """Per node, {input: set of ops}: the top-k edges by strongest non-none softmax weight, each
    with its top-m non-none ops (ties to the lower index). The softmax in the alphas' precision,
    as the derivation: rounded alphas make exact ties that float64 would order otherwise."""
    w = F.softmax(alphas, dim=-1).tolist()
    real = [o for o, name in enumerate(PRIMITIVES) if name != "none"]
    nodes, start, i = [], 0, 0
    while start < len(w):
        block = w[start:start + i + 2]
        strength = [max(row[o] for o in real) for row in block]
        edges = sorted(range(i + 2), key=lambda j: (-strength[j], j))[:k]
        nodes.append({j: {PRIMITIVES[o] for o in sorted(real, key=lambda o: (-block[j][o], o))[:m]}
                      for j in edges})
        start += i + 2
        i += 1
    return nodes


def in_reference(genotype, pruned_normal, pruned_reduce):
    for edges, nodes in ((genotype.normal, pruned_normal), (genotype.reduce, pruned_reduce)):
        if len(edges) != 2 * len(nodes):
            return False
        for i, node in enumerate(nodes):
            (op_a, a), (op_b, b) = edges[2 * i: 2 * i + 2]
            if a == b or a not in node or b not in node or op_a not in node[a] \
                    or op_b not in node[b]:
                return False
    concat = list(range(2, len(genotype.normal) // 2 + 2))
    return list(genotype.normal_concat) == concat and list(genotype.reduce_concat) == concat


def random_alphas(seed, nodes=4, ties=False):
    g = torch.Generator().manual_seed(seed)
    rows = sum(i + 2 for i in range(nodes))
    a = torch.randn(rows, len(PRIMITIVES), generator=g)
    if ties:  # few distinct values: equal weights everywhere
        a = torch.round(a)
    return a


# -- spaces ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,k,m,ties", [(0, 3, 3, False), (1, 2, 1, False), (2, 4, 2, True),
                                           (3, 3, 3, True)])
def test_edge_space_is_the_top_k_edges_with_their_top_m_ops(seed, k, m, ties):
    normal, reduce = random_alphas(seed, ties=ties), random_alphas(seed + 100, ties=ties)
    space = EdgeSpace.from_alphas(normal, reduce, k=k, m=m)
    for cell, alphas in (("normal", normal), ("reduce", reduce)):
        reference = reference_pruned(alphas, k, m)
        got = [{j: set(n.ops_of(j)) for j in n.inputs} for n in space.cells[cell]]
        assert got == reference


@pytest.mark.parametrize("seed", range(12))
def test_the_derived_genotype_is_in_the_pruned_space_and_is_its_own_params(seed):
    """DARTS's rule picks the top of both rankings, so its cell is always representable, also
    with ties and with the tightest space (k=2, m=1)."""
    normal = random_alphas(seed, ties=seed % 2 == 1)
    reduce = random_alphas(seed + 50, ties=seed % 3 == 0)
    derived = derive_genotype(normal, reduce, 4, 4)
    for k, m in ((2, 1), (3, 3)):
        space = EdgeSpace.from_alphas(normal, reduce, k=k, m=m)
        assert in_reference(derived, reference_pruned(normal, k, m),
                            reference_pruned(reduce, k, m))
        assert space.contains(derived)
        assert space.suggest(optuna.trial.FixedTrial(space.params(derived))) == derived


def test_every_drawn_genotype_is_in_the_space_and_the_params_round_trip():
    normal, reduce = random_alphas(7), random_alphas(8)
    space = EdgeSpace.from_alphas(normal, reduce)
    ref = reference_pruned(normal, 3, 3), reference_pruned(reduce, 3, 3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(100):
        trial = study.ask()
        genotype = space.suggest(trial)
        assert in_reference(genotype, *ref)
        assert space.suggest(optuna.trial.FixedTrial(space.params(genotype))) == genotype
        study.tell(trial, 0.0)
    outside = Genotype(normal=[("none", 0), ("none", 1)] * 4, normal_concat=[2, 3, 4, 5],
                       reduce=[("none", 0), ("none", 1)] * 4, reduce_concat=[2, 3, 4, 5])
    assert not space.contains(outside)
    with pytest.raises(ValueError, match="outside the pruned space"):
        space.params(outside)


def test_space_size_counts_the_distinct_genotypes():
    """Enumerate every parameter combination of a small space (2 nodes, k=3, m=2)."""
    space = EdgeSpace.from_alphas(random_alphas(3, nodes=2), random_alphas(4, nodes=2), m=2)
    names, choices = [], []
    for cell in ("normal", "reduce"):
        for i, node in enumerate(space.cells[cell]):
            names.append(f"{cell}.node{i}.inputs")
            choices.append([f"{a},{b}" for a, b in itertools.combinations(sorted(node.inputs), 2)])
            for j in node.inputs:
                names.append(f"{cell}.node{i}.op{j}")
                choices.append(list(node.ops_of(j)))
    seen = {str(space.suggest(optuna.trial.FixedTrial(dict(zip(names, combo)))))
            for combo in itertools.product(*choices)}
    assert space.size == len(seen) == 48 * 48
    full = EdgeSpace.full(4)
    assert full.size == (1 * 3 * 6 * 10 * 7 ** 8) ** 2
    assert all(len(n.inputs) == i + 2 for i, n in enumerate(full.cells["normal"]))


def _micro(choices_normal, choices_reduce):
    return genotype_from_choices(list(choices_normal) + list(choices_reduce), 2)


def test_decision_space_keeps_the_most_frequent_decisions_and_the_warm_starts():
    # 2 nodes; node 1 reads 2 most often, then 0, then 1; ops: sep3 > max > avg
    s3, s5, avg, mx, skip = range(5)
    samples = ([_micro([0, 1, s3, s3, 2, 2, s3, mx], [0, 0, mx, mx, 0, 2, avg, avg])] * 3
               + [_micro([1, 1, s3, mx, 2, 0, mx, s3], [1, 0, mx, s3, 1, 2, avg, mx])] * 2)
    space = DecisionSpace.from_samples(samples, 2, k=2, m=2)
    assert [n.inputs for n in space.cells["normal"]] == [(1, 0), (2, 0)]
    assert [n.ops for n in space.cells["normal"]] == [
        (MICRO_OPS[s3], MICRO_OPS[mx]), (MICRO_OPS[s3], MICRO_OPS[mx])]
    assert [n.inputs for n in space.cells["reduce"]] == [(0, 1), (2, 0)]
    assert [n.ops for n in space.cells["reduce"]] == [
        (MICRO_OPS[mx], MICRO_OPS[s3]), (MICRO_OPS[avg], MICRO_OPS[mx])]
    assert space.contains(samples[0])
    assert not space.contains(samples[-1])  # its reduce node 1 reads state 1, the least read
    warm = _micro([0, 0, skip, s5, 1, 1, skip, skip], [0, 1, s3, s3, 1, 1, s3, s3])
    assert not space.contains(warm)
    widened = DecisionSpace.from_samples(samples, 2, k=2, m=2, include=[warm])
    assert widened.contains(warm)
    assert widened.cells["normal"][1].inputs == (2, 0, 1)
    params = widened.params(warm)
    assert widened.suggest(optuna.trial.FixedTrial(params)) == warm
    drawn = widened.suggest(optuna.trial.FixedTrial(dict(params, **{"normal.node1.input_a": 2})))
    assert list(drawn.normal_concat) == loose_ends([j for _, j in drawn.normal], 2)


def test_decision_space_from_the_controller_holds_its_greedy_cell():
    opt = ENASOptimizer({"num_layers": 3, "channels": 4, "in_channels": 1, "num_nodes": 3,
                         "device": "cpu"})
    greedy = opt.architecture()
    space = DecisionSpace.from_controller(opt, k=2, m=2, samples=64, seed=0, include=[greedy])
    assert space.contains(greedy)
    opt.generator.manual_seed(0)
    again = DecisionSpace.from_samples([opt.ask() for _ in range(64)], 3, k=2, m=2,
                                       include=[greedy])
    assert again.describe() == space.describe()


def test_the_validation_split_is_stratified_fixed_and_disjoint():
    labels = np.repeat(np.arange(10), [20, 30, 25, 20, 20, 20, 20, 20, 20, 5])
    train, val = validation_split(labels, 0.2)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)
    counts = np.bincount(labels[val], minlength=10)
    assert counts.tolist() == [4, 6, 5, 4, 4, 4, 4, 4, 4, 1]
    assert validation_split(labels, 0.2) == (train, val)


# -- the study driver -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data():
    return TuneData.load("digits", 0.2, limit=200)


def _cheap(trial, space):
    genotype = space.suggest(trial)
    trial.set_user_attr("genotype", str(genotype))
    return sum(op.startswith("sep") for op, _ in genotype.normal) / 8.0


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random"])
def test_each_sampler_draws_inside_the_space_reproducibly(sampler):
    space = EdgeSpace.from_alphas(random_alphas(11), random_alphas(12), k=3, m=2)

    def drawn(seed):
        study = optuna.create_study(direction="maximize",
                                    sampler=studies.make_sampler(sampler, seed, 2))
        study.optimize(lambda t: _cheap(t, space), n_trials=3)
        return [t.params for t in study.trials]

    first = drawn(0)
    assert all(space.contains(space.suggest(optuna.trial.FixedTrial(p))) for p in first)
    assert drawn(0) == first
    assert drawn(1) != first


def test_the_objective_reports_every_epoch_and_prunes_only_before_the_last(tiny_data):
    space = EdgeSpace.from_alphas(random_alphas(0), random_alphas(1))

    class AlwaysPrune(optuna.trial.FixedTrial):
        reported = []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return True

    params = space.params(derive_genotype(random_alphas(0), random_alphas(1), 4, 4))
    for epochs, pruned in ((2, True), (1, False)):
        config = TuneConfig(epochs=epochs, layers=3, channels=4, batch_size=32)
        objective = make_objective(space, config, tiny_data, torch.device("cpu"))
        trial = AlwaysPrune(params)
        AlwaysPrune.reported = []
        if pruned:
            with pytest.raises(optuna.TrialPruned):
                objective(trial)
        else:
            assert 0 <= objective(trial) <= 1
        assert [s for s, _ in AlwaysPrune.reported] == [0]


def test_a_silent_trial_of_another_host_is_failed_after_the_grace_period_and_retried(tmp_path):
    """Heartbeat path: a RUNNING trial whose process (on another host) stopped beating is failed
    after 2 * heartbeat seconds, queued again with its parameters, and run here."""
    space = EdgeSpace.from_alphas(random_alphas(5), random_alphas(6))
    storage = studies.open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=1)
    study, _ = studies.open_study(storage, "s", studies.make_sampler("random", 0, 0),
                                  optuna.pruners.NopPruner(), {})
    with warnings.catch_warnings():  # Optuna's hint: heartbeats are meant for optimize()
        warnings.simplefilter("ignore", UserWarning)
        ghost = study.ask()
    space.suggest(ghost)
    ghost.set_user_attr("worker", "elsewhere:1")
    storage.record_heartbeat(ghost._trial_id)
    ran = studies.run_trials(study, lambda t: _cheap(t, space), trials=1, poll=0.2)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert ran == [1] and study.trials[1].params == study.trials[0].params
    assert study.trials[1].system_attrs["failed_trial"] == 0


def test_a_rerun_fails_at_once_the_trials_of_a_dead_process_of_this_host(tmp_path):
    """Restart path, on a journal file (no heartbeat there): a RUNNING trial whose process on
    this host is gone is failed before anything else runs, and its cell runs again."""
    space = EdgeSpace.from_alphas(random_alphas(5), random_alphas(6))
    storage = studies.open_storage(f"journal:{tmp_path}/s.log")
    study, _ = studies.open_study(storage, "s", studies.make_sampler("random", 0, 0),
                                  optuna.pruners.NopPruner(), {})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    space.suggest(orphan)
    orphan.set_user_attr("worker", f"{studies.worker_id().rpartition(':')[0]}:{dead.pid}")
    ran = studies.run_trials(study, lambda t: _cheap(t, space), trials=2, poll=0.2)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL] + [optuna.trial.TrialState.COMPLETE] * 2
    assert ran == [1, 2] and study.trials[1].params == study.trials[0].params


def test_a_diverging_candidate_is_a_failed_trial_and_another_one_runs():
    space = EdgeSpace.from_alphas(random_alphas(5), random_alphas(6))
    study = optuna.create_study(direction="maximize", sampler=studies.make_sampler("random", 0, 0))
    calls = []

    def objective(trial):
        calls.append(trial.number)
        if len(calls) == 1:
            raise NonFiniteError("train loss", 0, 3, float("nan"))
        return _cheap(trial, space)

    assert studies.run_trials(study, objective, trials=1) == [0, 1]
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    def diverges(trial):
        raise NonFiniteError("train loss", 0, 0)

    with pytest.raises(UserError, match="3 trials in a row diverged"):
        studies.run_trials(study, diverges, trials=5, max_failures=3)


# -- the command ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def darts_search(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("darts") / "search")
    assert main(["search", "--epochs", "1", "--output", folder, *TINY]) == 0
    return folder


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _search_alphas(folder):
    state = torch.load(os.path.join(folder, "checkpoint.pt"), weights_only=True)
    return state["model"]["alphas_normal"], state["model"]["alphas_reduce"]


def test_tune_writes_its_files_starts_from_darts_and_stays_in_the_pruned_space(
        darts_search, tmp_path, capsys):
    out = str(tmp_path / "tune")
    command = ["tune", "--search", darts_search, "--trials", "3", "--sampler", "tpe",
               "--pruner", "median", "--startup-trials", "1", "--output", out, *TRIAL]
    assert main(command) == 0
    rows = _rows(os.path.join(out, "trials.csv"))
    normal, reduce = _search_alphas(darts_search)
    derived = derive_genotype(normal, reduce, 4, 4)
    assert derived == Genotype.load(os.path.join(darts_search, "genotype.json"))
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert Genotype.parse(rows[0]["genotype"]) == derived and rows[0]["warm_start"] == "darts"
    pruned = reference_pruned(normal, 3, 3), reference_pruned(reduce, 3, 3)
    assert all(in_reference(Genotype.parse(r["genotype"]), *pruned) for r in rows)
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: (float(r["value"]), -int(r["number"])))
    genotype = pipeline.resolve_genotype(os.path.join(out, "genotype.json"))
    assert genotype == Genotype.parse(best["genotype"])
    metrics = _json(os.path.join(out, "metrics.json"))
    assert metrics["best"]["number"] == int(best["number"])
    assert metrics["test"]["val_accuracy"] == pytest.approx(float(best["value"]))
    assert 0 <= metrics["test"]["test_accuracy"] <= 1
    assert metrics["trials"]["ran_here"] == [0, 1, 2]
    captured = capsys.readouterr()
    assert "test accuracy" in captured.out
    # the best trial's training again is logged, epoch by epoch, and its outcome
    assert f"tune: training the best trial's cell (trial {best['number']}," in captured.err
    assert "train epoch 1/" in captured.err and "(eval mode, running BN statistics)" in \
        captured.err
    assert (f"tune: the best trial's cell, trained again: validation accuracy "
            f"{metrics['test']['val_accuracy']:.4f}, test accuracy "
            f"{metrics['test']['test_accuracy']:.4f} (eval mode)") in captured.err

    # the same command again: the study is complete, nothing runs
    assert main(command) == 0
    assert len(_rows(os.path.join(out, "trials.csv"))) == 3
    # more trials continue it, with another sampler and pruner
    more = [*command[:4], "4", *command[5:], "--sampler", "gp", "--pruner", "hyperband"]
    assert main(more) == 0
    rows = _rows(os.path.join(out, "trials.csv"))
    assert len(rows) == 4 and _json(os.path.join(out, "metrics.json"))["trials"]["ran_here"] == [3]
    assert in_reference(Genotype.parse(rows[3]["genotype"]), *pruned)
    # another budget on the same study is refused
    assert main([*command, "--channels", "8"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_tune_searches_first_and_tunes_hyperparameters_with_the_cell(tmp_path):
    out = str(tmp_path / "tune")
    command = ["tune", "--trials", "2", "--tune-hparams", "--search-epochs", "1",
               "--search-layers", "3", "--search-channels", "4", "--search-batch-size", "32",
               "--output", out, *TRIAL]
    assert main(command) == 0
    search = os.path.join(out, "search")
    derived = derive_genotype(*_search_alphas(search), 4, 4)
    rows = _rows(os.path.join(out, "trials.csv"))
    assert Genotype.parse(rows[0]["genotype"]) == derived
    budget = TuneConfig().hparams()
    assert json.loads(rows[0]["hyperparameters"]) == budget
    drawn = json.loads(rows[1]["hyperparameters"])
    assert drawn.keys() == budget.keys() and drawn != budget
    for name, (low, high, _) in HPARAM_RANGES.items():
        assert low <= drawn[name] <= high
    stamp = os.stat(os.path.join(search, "checkpoint.pt")).st_mtime_ns
    assert main(command) == 0  # the search is reused, the study is complete
    assert os.stat(os.path.join(search, "checkpoint.pt")).st_mtime_ns == stamp
    assert len(_rows(os.path.join(out, "trials.csv"))) == 2


def _tune_process(search, out, storage, trials, extra=()):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "fastnas", "tune", "--search", search, "--trials", str(trials),
         "--storage", storage, "--output", out, *TRIAL, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def test_two_processes_share_one_sqlite_study(darts_search, tmp_path):
    storage = f"sqlite:///{tmp_path}/shared.db"
    outs = [str(tmp_path / "a"), str(tmp_path / "b")]
    procs = [_tune_process(darts_search, out, storage, 4, ["--pruner", "none"]) for out in outs]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    metrics = [_json(os.path.join(out, "metrics.json")) for out in outs]
    ran = [m["trials"]["ran_here"] for m in metrics]
    study = optuna.load_study(study_name="fastnas-tune", storage=storage)
    numbers = [t.number for t in study.trials]
    assert sorted(ran[0] + ran[1]) == numbers == list(range(len(numbers)))  # none lost, no twice
    assert ran[0] and ran[1]
    assert 4 <= len(numbers) <= 5  # 5 only if both start a last trial at the same instant
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2
    assert sum(bool(t.user_attrs.get("warm_start")) for t in study.trials) == 1
    assert metrics[0]["best"] == metrics[1]["best"]
    assert metrics[0]["best"]["number"] == study.best_trial.number
    assert metrics[0]["test"] == metrics[1]["test"]


def test_a_killed_process_loses_only_its_running_trial(darts_search, tmp_path):
    """The process is killed (SIGKILL, by tests/fault_runner.py) right after trial 1 reported its
    first epoch: exactly then, not by luck of timing."""
    storage = f"sqlite:///{tmp_path}/k.db"
    out = str(tmp_path / "k")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "fault_runner.py"), "kill-trial:1:0", "--",
         "tune", "--search", darts_search, "--trials", "2", "--storage", storage, "--output", out,
         *TRIAL, "--epochs", "3", "--pruner", "none", "--sampler", "random"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    trials = optuna.load_study(study_name="fastnas-tune", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE,
                                         optuna.trial.TrialState.RUNNING]
    killed = trials[1]

    command = ["tune", "--search", darts_search, "--trials", "2", "--storage", storage,
               "--output", out, *TRIAL, "--epochs", "3", "--pruner", "none", "--sampler",
               "random"]
    assert main(command) == 0
    rows = _rows(os.path.join(out, "trials.csv"))
    states = {int(r["number"]): r["state"] for r in rows}
    assert states[killed.number] == "FAIL"
    assert sum(s in ("COMPLETE", "PRUNED") for s in states.values()) == 2
    retry = [r for r in rows if r["retry_of"] == str(killed.number)]
    assert len(retry) == 1 and retry[0]["state"] == "COMPLETE"
    assert retry[0]["genotype"] == killed.user_attrs["genotype"]


@pytest.fixture(scope="module")
def enas_search(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("enas") / "search")
    assert main(["search", "--method", "enas", "--epochs", "1", "--output", folder, *TINY]) == 0
    return folder


def test_tune_from_enas_seeds_with_the_controllers_answers(enas_search, tmp_path, capsys):
    out = str(tmp_path / "tune")
    assert main(["tune", "--from", "enas", "--search", enas_search, "--trials", "2",
                 "--sampler", "random", "--output", out, *TRIAL]) == 0
    rows = _rows(os.path.join(out, "trials.csv"))
    opt = ENASOptimizer.load(os.path.join(enas_search, "checkpoint.pt"), device="cpu")
    answers = [Genotype.load(os.path.join(enas_search, "genotype.json")), opt.architecture()]
    warm = [Genotype.parse(r["genotype"]) for r in rows if r["warm_start"] == "enas"]
    assert warm == list(dict.fromkeys(answers)) and rows[0]["warm_start"] == "enas"
    space = _json(os.path.join(out, "metrics.json"))["space"]
    for r in rows:
        g = Genotype.parse(r["genotype"])
        for cell in ("normal", "reduce"):
            edges = getattr(g, cell)
            assert list(getattr(g, f"{cell}_concat")) == loose_ends([j for _, j in edges], 5)
            for i, node in enumerate(space[cell]):
                assert all(j in node["inputs"] and op in node["ops"]
                           for op, j in edges[2 * i: 2 * i + 2])
    assert main(["tune", "--from", "darts", "--search", enas_search, "--output", out,
                 *TRIAL]) == 2
    assert "holds an enas search" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--sampler", "cma"], "--sampler"),
    (["--pruner", "never"], "--pruner"),
    (["--top-k", "1"], "--top-k"),
    (["--trials", "0"], "--trials"),
])
def test_bad_values_are_one_line_errors(flags, message, tmp_path, capsys):
    assert main(["tune", "--search", str(tmp_path), "--output", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastnas: error:") and message in err and "\n" not in err


def test_a_folder_without_a_search_is_a_one_line_error(tmp_path, capsys):
    assert main(["tune", "--search", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no search in" in err and "\n" not in err


def test_without_optuna_tune_says_what_to_install_and_fastnas_still_imports(tmp_path):
    code = ("import sys; sys.modules['optuna'] = None\n"
            "import fastnas, fastnas.tune, fastnas.cli\n"
            f"sys.exit(fastnas.cli.main(['tune', '--output', {str(tmp_path)!r}]))\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"fastnas: error: {INSTALL_HINT}"
    assert INSTALL_HINT == 'fastnas tune needs Optuna: pip install -e ".[tune]"'
