"""RSPS: the one-hot relaxations (Uniform, Fixed), the weight-only search on uniform cells, the
final ranking of fixed cells (against an independent per-cell evaluation), determinism, resume."""
import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fastnas.checkpoint import MARKER
from fastnas.darts import DARTSOptimizer, RSPSConfig, RSPSOptimizer
from fastnas.engine import accuracy
from fastnas.space import (
    ARCHITECTURE,
    WEIGHTS,
    ArchitectureParameters,
    CellSpace,
    Fixed,
    Uniform,
    darts_space,
    held_cell,
    hold_cell,
)

TINY = dict(channels=4, layers=3, num_nodes=2, in_channels=1, num_classes=4, num_steps=2,
            seed=0, device="cpu", select_num=4, supernet="reference")
ONE_CELL = CellSpace(ops=("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                          "avg_pool_3x3"), num_nodes=3, num_inputs=1, keep=None,
                     cell_types=("cell",), never_derived=())


def synthetic(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(4, 1, 8, 8, generator=g)
    y = torch.arange(n) % 4
    return templates[y] + 0.5 * torch.randn(n, 1, 8, 8, generator=g), y


def loaders(n=48):
    x, y = synthetic(n)
    half = n // 2
    return (DataLoader(TensorDataset(x[:half], y[:half]), batch_size=8),
            DataLoader(TensorDataset(x[half:], y[half:]), batch_size=8))


# -- the relaxations ------------------------------------------------------------------------------
def test_uniform_draws_exact_one_hot_cells_without_gradient():
    arch = ArchitectureParameters(ONE_CELL, Uniform(seed=3))
    for phase in (WEIGHTS, ARCHITECTURE):
        with arch.phase(phase):
            w = arch.mixing(training=True)["cell"]
        index = arch.selected["cell"]
        assert index.dtype == torch.long and index.device.type == "cpu"
        assert index.shape == (6,)
        assert torch.equal(w, torch.nn.functional.one_hot(index, 5).float())
        assert not w.requires_grad  # no gradient to the alphas


def test_uniform_is_uniform_seeded_and_resumable():
    a, b = Uniform(seed=7), Uniform(seed=7)
    draws = torch.stack([a.draw(6, 5) for _ in range(3000)])
    assert torch.equal(draws, torch.stack([b.draw(6, 5) for _ in range(3000)]))
    share = torch.nn.functional.one_hot(draws, 5).float().mean(dim=0)  # [edge, op]
    assert (share - 0.2).abs().max() < 0.03, share  # 3000 draws: sd 0.0073 per share
    state = copy.deepcopy(a.state_dict())
    after = [a.draw(6, 5) for _ in range(4)]
    c = Uniform(seed=0)
    c.load_state_dict(state)
    assert all(torch.equal(x, c.draw(6, 5)) for x in after)
    assert c.seed == 7
    assert not torch.equal(Uniform(seed=8).draw(6, 50), Uniform(seed=7).draw(6, 50))


def test_uniform_evaluates_and_fixed_always_runs_the_held_cell():
    for relaxation in (Uniform(seed=0), Fixed()):
        arch = ArchitectureParameters(ONE_CELL, relaxation)
        hold_cell(arch, {"cell": [4, 0, 2, 1, 3, 3]})
        assert held_cell(arch) == {"cell": (4, 0, 2, 1, 3, 3)}
        w = arch.mixing(training=False)["cell"]
        assert arch.selected["cell"].tolist() == [4, 0, 2, 1, 3, 3]
        assert torch.equal(w, torch.nn.functional.one_hot(arch.selected["cell"], 5).float())
        derived = arch.derive()  # the space's rule on the one-hot strengths, none allowed
        assert [op for node in derived.cells["cell"].nodes for op, _ in node] == [
            "avg_pool_3x3", "none", "nor_conv_1x1", "skip_connect", "nor_conv_3x3",
            "nor_conv_3x3"]
    fixed = ArchitectureParameters(ONE_CELL, Fixed())
    hold_cell(fixed, {"cell": [1] * 6})
    for phase in (WEIGHTS, ARCHITECTURE):
        with fixed.phase(phase):
            fixed.mixing(training=True)
        assert fixed.selected["cell"].tolist() == [1] * 6


@pytest.mark.parametrize("cells, match", [
    ({"normal": [0] * 6}, "cell type"),
    ({"cell": [0] * 5}, "6 edges"),
    ({"cell": [0, 0, 0, 0, 0, 5]}, "0..4"),
    ({"cell": [-1, 0, 0, 0, 0, 0]}, "0..4"),
])
def test_hold_cell_names_what_does_not_fit(cells, match):
    with pytest.raises(ValueError, match=match):
        hold_cell(ArchitectureParameters(ONE_CELL, Fixed()), cells)


def test_uniform_seed_is_checked():
    with pytest.raises(ValueError, match="seed"):
        Uniform(seed=-1)


# -- the search -----------------------------------------------------------------------------------
def test_config_defaults_and_bad_values():
    c = RSPSConfig()
    assert (c.select_num, c.select_batches, c.nesterov, c.method) == (100, None, True, "rsps")
    assert RSPSConfig.from_dict(c.to_dict()) == c   # config.json reads back
    with pytest.raises(ValueError, match="method"):
        RSPSConfig.from_dict({"method": "darts"})
    with pytest.raises(ValueError, match="select_num"):
        RSPSOptimizer({**TINY, "select_num": 0})
    with pytest.raises(ValueError, match="select_batches"):
        RSPSOptimizer({**TINY, "select_batches": 0})


def test_step_trains_the_weights_on_the_drawn_cell_only():
    opt = RSPSOptimizer(TINY)
    alphas = [a.detach().clone() for a in opt.arch_parameters()]
    before = [p.detach().clone() for p in opt.weight_parameters()]
    replay = Uniform(seed=0)
    x, y = synthetic(8)
    for _ in range(3):
        stats = opt.step((x, y))
        for t in ("normal", "reduce"):  # mixing draws normal, then reduce, per forward pass
            assert stats["cells"][t] == replay.draw(5, 8).tolist()
    assert all(torch.equal(a, b) for a, b in zip(alphas, opt.arch_parameters()))
    assert all(a.grad is None for a in opt.arch_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, opt.weight_parameters()))
    assert opt.weight_optimizer.param_groups[0]["nesterov"] is True


def _independent_accuracy(opt, cells, loader):
    """The cell fixed by a Fixed relaxation in a copy of the supernet, evaluated batch by batch
    in eval mode: the number RSPS must give each candidate."""
    model = copy.deepcopy(opt.model)
    model.arch.relaxation = Fixed()
    hold_cell(model.arch, cells)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            assert {t: i.tolist() for t, i in model.arch.selected.items()} == cells
            correct += accuracy(logits, y) * len(y)
            total += len(y)
    return correct / total


def test_ranking_scores_each_cell_fixed_over_all_batches():
    train, val = loaders()
    opt = RSPSOptimizer(TINY)
    opt.search(train, val, progress=False)
    assert len(opt.ranking) == 4
    accs = [r["accuracy"] for r in opt.ranking]
    assert accs == sorted(accs, reverse=True)
    g = torch.Generator().manual_seed(1)  # seed + 1: the cells rank() drew
    drawn = [{t: torch.randint(8, (5,), generator=g).tolist() for t in ("normal", "reduce")}
             for _ in range(4)]
    assert sorted(map(str, drawn)) == sorted(str(r["cells"]) for r in opt.ranking)
    for r in opt.ranking:
        assert r["accuracy"] == pytest.approx(_independent_accuracy(opt, r["cells"], val),
                                              abs=1e-12)
    best = opt.ranking[0]
    assert opt.held() == {t: tuple(i) for t, i in best["cells"].items()}
    assert str(opt.architecture()) == best["architecture"]
    assert opt.evaluate(val)["accuracy"] == pytest.approx(best["accuracy"], abs=1e-12)


def test_ranking_on_the_first_batches_only():
    train, val = loaders()
    opt = RSPSOptimizer({**TINY, "select_batches": 1, "num_steps": 1})
    opt.search(train, val, progress=False)
    first = [next(iter(val))]
    for r in opt.ranking:
        assert r["accuracy"] == pytest.approx(_independent_accuracy(opt, r["cells"], first),
                                              abs=1e-12)


def test_seeded_runs_are_identical_and_resume_is_exact(tmp_path):
    train, val = loaders()
    a = RSPSOptimizer(TINY)
    a.search(train, val, progress=False)
    b = RSPSOptimizer(TINY)
    b.search(train, val, progress=False)
    assert a.ranking == b.ranking
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(),
                                                  b.model.state_dict().values()))
    path = tmp_path / "rsps.pt"
    first = RSPSOptimizer(TINY)  # stopped after epoch 1, as a checkpointing run is

    def save_and_stop(opt, record):
        opt.save(str(path))
        return False

    first.search(train, val, callback=save_and_stop, progress=False)
    assert first.ranking == []
    resumed = RSPSOptimizer.load(str(path))
    assert resumed.epoch == 1
    resumed.search(train, val, epochs=2, progress=False)
    assert resumed.ranking == a.ranking
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(),
                                                  resumed.model.state_dict().values()))
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in a.history]


def test_state_kinds_are_not_mixed():
    rsps, darts = RSPSOptimizer(TINY), DARTSOptimizer({k: v for k, v in TINY.items()
                                                       if k != "select_num"})
    with pytest.raises(ValueError, match="rsps"):
        rsps.load_state_dict(darts.state_dict())
    with pytest.raises(ValueError, match="darts"):
        darts.load_state_dict(rsps.state_dict())
    state = rsps.state_dict()
    assert state[MARKER]["method"] == "rsps"
    del state["select_seed"]
    with pytest.raises(ValueError, match="select_seed"):
        RSPSOptimizer(TINY).load_state_dict(state)


def test_the_selection_draws_the_same_cells_whenever_it_runs():
    train, val = loaders()
    opt = RSPSOptimizer({**TINY, "num_steps": 1})
    opt.search(train, val, progress=False)
    again = opt.rank(val)
    assert [r["cells"] for r in again] == [r["cells"] for r in opt.ranking]
    assert opt.draw_cells(6)[:3] == opt.draw_cells(3)
    assert RSPSOptimizer(TINY).space == darts_space(2)
