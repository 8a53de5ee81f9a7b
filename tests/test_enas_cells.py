"""ENAS over a cell space: the controller against a float64 re-implementation of its LSTM, the
REINFORCE gradient (reference formula and finite differences), clipping, learning a planted
reward, the shared step and reward on a fixed cell, determinism and exact resume."""
import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fastnas import nb201
from fastnas.enas import CellENASConfig, CellENASOptimizer, ENASOptimizer
from fastnas.engine import accuracy
from fastnas.pipeline import method_for_space
from fastnas.space import Fixed, hold_cell

TINY = dict(channels=4, layers=3, num_nodes=2, in_channels=1, num_classes=4, num_steps=2,
            seed=0, device="cpu", supernet="reference", controller_steps=2,
            controller_aggregate=2, derive_samples=3, controller_hidden=8)


def tiny(**changes):
    return CellENASOptimizer({**TINY, **changes})


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


# -- an independent controller --------------------------------------------------------------------
def _leaf_params(opt):
    return {n: p.detach().clone().requires_grad_(True)
            for n, p in opt.controller.named_parameters()}


def reference_pass(P, choices, layers, tanh_constant, temperature):
    """xautodl's controller written out: a stacked LSTM (gates i, f, g, o), from zero states."""
    hidden = P["input_vars"].numel()
    h = [torch.zeros(hidden, dtype=torch.float64) for _ in range(layers)]
    c = [torch.zeros(hidden, dtype=torch.float64) for _ in range(layers)]
    x = P["input_vars"].view(-1)
    log_prob, entropy = 0.0, 0.0
    for a in choices:
        inp = x
        for k in range(layers):
            gates = (P[f"lstm.weight_ih_l{k}"] @ inp + P[f"lstm.bias_ih_l{k}"]
                     + P[f"lstm.weight_hh_l{k}"] @ h[k] + P[f"lstm.bias_hh_l{k}"])
            i, f, g, o = gates.chunk(4)
            c[k] = torch.sigmoid(f) * c[k] + torch.sigmoid(i) * torch.tanh(g)
            h[k] = torch.sigmoid(o) * torch.tanh(c[k])
            inp = h[k]
        logits = P["w_pred.weight"] @ inp + P["w_pred.bias"]
        if temperature is not None:
            logits = logits / temperature
        logits = tanh_constant * torch.tanh(logits)
        lp = logits - torch.logsumexp(logits, dim=0)
        log_prob = log_prob + lp[a]
        entropy = entropy - (lp.exp() * lp).sum()
        x = P["w_embd.weight"][a]
    return log_prob, entropy


@pytest.mark.parametrize("temperature, layers", [(5.0, 2), (None, 1)])
def test_controller_pass_matches_the_reference(temperature, layers):
    opt = tiny(temperature=temperature, controller_layers=layers)
    opt.controller.double()
    assert opt.controller.num_decisions == 2 * 5 and opt.controller.num_ops == 8
    cells = opt.ask()
    result = opt.controller_pass(cells)
    log_prob, entropy = reference_pass(_leaf_params(opt), opt.choices(cells), layers, 2.5,
                                       temperature)
    assert result.log_prob.item() == pytest.approx(log_prob.item(), rel=1e-12)
    assert result.entropy.item() == pytest.approx(entropy.item(), rel=1e-12)


def test_reinforce_gradient_of_an_aggregated_update_matches_the_reference():
    opt = tiny(entropy_weight=0.1, baseline_decay=0.9, controller_grad_clip=None)
    opt.controller.double()
    opt.tell(opt.ask(), 0.3)  # the first reward only sets the baseline
    cells = [opt.ask() for _ in range(3)]
    rewards = [0.7, 0.2, 0.5]
    params = _leaf_params(opt)
    b, loss = opt.baseline, 0.0
    for cell, r in zip(cells, rewards):
        log_prob, entropy = reference_pass(params, opt.choices(cell), 2, 2.5, 5.0)
        total = r + 0.1 * entropy.item()
        b = b - (1 - 0.9) * (b - total)
        loss = loss - (total - b) * log_prob / 3
    expected = torch.autograd.grad(loss, list(params.values()))
    stats = opt.tell(cells, rewards)
    assert stats["baseline"] == pytest.approx(b, rel=1e-12) and opt.baseline == stats["baseline"]
    assert stats["controller_loss"] == pytest.approx(loss.item(), rel=1e-10)
    for (name, p), g in zip(opt.controller.named_parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12, msg=name)


def test_reinforce_gradient_matches_finite_differences():
    opt = tiny(entropy_weight=0.0, controller_grad_clip=None)
    opt.controller.double()
    opt.tell(opt.ask(), 0.2)
    cell = opt.ask()
    b_new = opt.baseline - 0.01 * (opt.baseline - 0.9)
    snapshot = {n: p.detach().clone() for n, p in opt.controller.named_parameters()}
    opt.tell(cell, 0.9)
    grads = {n: p.grad.clone() for n, p in opt.controller.named_parameters()}
    params = dict(opt.controller.named_parameters())
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(snapshot[n])

        def loss_after_nudge(name, index, delta):
            params[name][index] += delta
            out = -(0.9 - b_new) * opt.controller_pass(cell).log_prob.item()
            params[name][index] -= delta
            return out

        eps = 1e-6
        for name, index in [("w_pred.bias", (k,)) for k in range(8)] + [
                ("w_pred.weight", (3, 1)), ("input_vars", (0, 0, 2)), ("w_embd.weight", (2, 0)),
                ("lstm.weight_hh_l0", (5, 4)), ("lstm.weight_ih_l1", (9, 3)),
                ("lstm.bias_hh_l1", (7,))]:
            fd = (loss_after_nudge(name, index, eps)
                  - loss_after_nudge(name, index, -eps)) / (2 * eps)
            assert grads[name][index].item() == pytest.approx(fd, rel=1e-5, abs=1e-8), name


def test_controller_gradient_is_clipped():
    opt = tiny(controller_grad_clip=1e-4)
    opt.controller.double()
    opt.tell(opt.ask(), 0.0)
    stats = opt.tell([opt.ask(), opt.ask()], [1.0, 0.0])
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in
                                                 opt.controller.parameters()]))
    assert stats["controller_grad_norm"] > 1e-4
    assert norm.item() == pytest.approx(1e-4, rel=1e-5)


def test_controller_init_and_optimizer_are_xautodls():
    c = CellENASConfig()
    assert (c.controller_hidden, c.controller_layers, c.tanh_constant, c.temperature) == (
        32, 2, 2.5, 5.0)
    assert (c.controller_lr, c.entropy_weight, c.baseline_decay, c.controller_steps,
            c.controller_aggregate, c.derive_samples) == (1e-3, 1e-4, 0.99, 50, 20, 100)
    assert (c.shared_lr, c.lr_min, c.lr_period, c.weight_decay, c.batch_size, c.num_steps) == (
        0.05, 0.0005, 10, 2.5e-4, 128, 310)
    opt = tiny()
    group = opt.controller_optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (1e-3, (0.0, 0.999), 1e-3)
    assert opt.shared_optimizer.param_groups[0]["nesterov"] is True
    for p in (opt.controller.input_vars, opt.controller.lstm.weight_ih_l0,
              opt.controller.w_embd.weight, opt.controller.w_pred.weight):
        assert p.abs().max() <= 0.1


def test_learning_rate_is_a_periodic_cosine():
    opt = tiny(num_steps=40)
    assert opt.lr_at(0) == pytest.approx(0.05)
    assert opt.lr_at(10) == pytest.approx(0.0005)
    assert opt.lr_at(20) == pytest.approx(0.05)  # T_max=10: period 20 epochs
    assert opt.lr_at(5) == pytest.approx(0.0005 + (0.05 - 0.0005) / 2)
    whole = tiny(num_steps=40, lr_period=None)
    assert whole.lr_at(20) == pytest.approx(0.0005 + (0.05 - 0.0005) / 2)


def _share(cells, op):
    flat = [i for t in cells.values() for i in t]
    return sum(i == op for i in flat) / len(flat)


def test_controller_learns_a_planted_reward_through_ask_and_tell():
    opt = tiny(controller_lr=0.05, temperature=None, controller_hidden=16)

    def share(n=100):
        return sum(_share(opt.ask(), 2) for _ in range(n)) / n

    initial = share()
    for _ in range(100):
        cell = opt.ask()
        opt.tell(cell, _share(cell, 2))
    learned = share()
    assert learned > initial + 0.3 and learned > 0.5, (initial, learned)


# -- the shared weights ---------------------------------------------------------------------------
def _independent_accuracy(opt, cells, batches):
    model = copy.deepcopy(opt.model)
    model.arch.relaxation = Fixed()
    hold_cell(model.arch, cells)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += accuracy(model(x), y) * len(y)
            total += len(y)
    return correct / total


def test_step_trains_the_given_cell_and_reward_scores_it_in_eval_mode():
    opt = tiny()
    cells = {"normal": [1, 2, 3, 4, 5], "reduce": [7, 6, 0, 1, 2]}
    alphas_ids = {id(a) for a in opt.model.alphas()}
    assert not any(id(p) in alphas_ids for g in opt.shared_optimizer.param_groups
                   for p in g["params"])
    before = [p.detach().clone() for p in opt.model.weights()]
    stats = opt.step(synthetic(8), cells)
    assert stats["cells"] == cells and opt.held() == {t: tuple(i) for t, i in cells.items()}
    assert {t: i.tolist() for t, i in opt.model.arch.selected.items()} == cells
    assert any(not torch.equal(a, b) for a, b in zip(before, opt.model.weights()))
    batch = synthetic(16, seed=1)
    assert opt.reward(cells, batch) == pytest.approx(_independent_accuracy(opt, cells, [batch]),
                                                     abs=1e-12)
    assert opt.model.training  # back in train mode


@pytest.mark.parametrize("cells, match", [
    ({"normal": [0] * 5}, "cell types"),
    ({"normal": [0] * 4, "reduce": [0] * 5}, "5 op indices"),
    ({"normal": [0] * 5, "reduce": [0, 0, 0, 0, 8]}, "0..7"),
])
def test_cells_that_do_not_fit_are_refused(cells, match):
    with pytest.raises(ValueError, match=match):
        tiny().tell(cells, 0.5)


def test_bad_config_values_name_the_key():
    for key, value in (("controller_aggregate", 0), ("entropy_weight", -1.0),
                       ("baseline_decay", 1.0), ("space", "nb101"), ("lr_period", 0),
                       ("layers", 2)):
        with pytest.raises(ValueError, match=key):
            tiny(**{key: value})
    with pytest.raises(ValueError, match="nesterov"):
        tiny(momentum=0.0)
    assert CellENASConfig().layers == 8 and CellENASConfig(space="nb201").layers == 5


def test_nb201_space_is_the_one_cell_space_when_fastnas_has_it():
    """With ``fastnas.nb201.nb201_space`` (the NB201 search supernet's issue): 6 decisions of
    5 ops; without it, one line that says so."""
    if hasattr(nb201, "nb201_space"):
        opt = tiny(space="nb201")
        assert (opt.controller.num_decisions, opt.controller.num_ops) == (6, 5)
        assert isinstance(opt.architecture(), nb201.NB201Cell)
    else:
        with pytest.raises(ValueError, match="nb201_space"):
            tiny(space="nb201")


def test_enas_over_another_space_routes_to_enas_cells():
    assert method_for_space("enas", "nb201") == "enas-cells"
    assert method_for_space("enas", None) == "enas"
    assert method_for_space("enas", "darts") == "enas"
    assert method_for_space("darts", "nb201") == "darts"


# -- the search -----------------------------------------------------------------------------------
def _same(a, b):
    assert a.derived == b.derived and a.baseline == b.baseline
    for x, y in ((a.model, b.model), (a.controller, b.controller)):
        assert all(torch.equal(p, q) for p, q in zip(x.state_dict().values(),
                                                      y.state_dict().values()))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history]


def test_seeded_search_is_deterministic_and_resume_is_exact(tmp_path):
    train, val = loaders()
    a = tiny()
    arch = a.search(train, val, progress=False)
    assert a.derived is not None and arch == a.architecture_of(a.derived)
    record = a.history[-1]
    assert len(record["alphas_normal"]) == 5 and len(record["alphas_normal"][0]) == 8
    greedy = a.controller(greedy=True).probabilities  # the controller after the last epoch
    assert record["alphas_normal"] + record["alphas_reduce"] == greedy
    assert all(sum(row) == pytest.approx(1.0) for row in greedy)
    b = tiny()
    b.search(train, val, progress=False)
    _same(a, b)
    path = tmp_path / "cells.pt"

    def save_and_stop(opt, record):
        opt.save(str(path))
        return False

    first = tiny()
    first.search(train, val, callback=save_and_stop, progress=False)
    torch.manual_seed(321)  # nothing drawn between the runs may matter
    resumed = CellENASOptimizer.load(str(path))
    assert resumed.epoch == 1 and resumed.derived is None
    resumed.search(train, val, progress=False)
    _same(a, resumed)
    assert resumed.evaluate(val) == a.evaluate(val)


def test_state_kinds_are_not_mixed():
    enas = ENASOptimizer({"num_nodes": 2, "channels": 2, "num_layers": 3, "seed": 0,
                          "device": "cpu"})
    with pytest.raises(ValueError, match="enas-cells"):
        tiny().load_state_dict(enas.state_dict())
    with pytest.raises(ValueError):
        enas.load_state_dict(tiny().state_dict())
