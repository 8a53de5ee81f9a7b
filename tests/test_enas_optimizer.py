"""ENASOptimizer: configuration, the ask/tell API, determinism, state round trip, the learning-rate
schedule, and tiny searches on scikit-learn's 8x8 digits."""
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from fastnas import Genotype, NetworkCIFAR
from fastnas.checkpoint import describe
from fastnas.enas import ENASConfig, ENASOptimizer, MacroArch, MacroNetwork
from fastnas.engine import cosine_lr

TINY = {"channels": 4, "num_layers": 3, "num_nodes": 3, "in_channels": 1,
        "controller_hidden": 8, "seed": 5}


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _params(opt):
    return [p.detach().clone() for p in list(opt.controller.parameters())
            + list(opt.model.parameters())]


# -- configuration -------------------------------------------------------------------------------
def test_config_defaults_follow_the_search_space():
    micro, macro = ENASConfig(), ENASConfig(search_space="macro")
    assert (micro.num_layers, micro.channels, micro.controller_lr, micro.tanh_constant) == (
        8, 20, 0.0035, 1.10)
    assert (macro.num_layers, macro.channels, macro.controller_lr, macro.tanh_constant) == (
        12, 36, 0.001, 1.5)
    for c in (micro, macro):
        assert (c.controller_hidden, c.entropy_weight, c.baseline_decay, c.shared_lr,
                c.controller_samples) == (100, 1e-4, 0.99, 0.05, 1)
    assert ENASConfig.from_dict(micro.to_dict()) == micro
    assert ENASConfig.from_dict({"num_layers": 5}).num_layers == 5


@pytest.mark.parametrize("values, key", [
    ({"controler_lr": 0.1}, "controler_lr"),
    ({"controller_lr": -1.0}, "controller_lr"),
    ({"shared_lr": "fast"}, "shared_lr"),
    ({"entropy_weight": -1e-4}, "entropy_weight"),
    ({"baseline_decay": 1.0}, "baseline_decay"),
    ({"num_layers": 2}, "num_layers"),
    ({"controller_hidden": 0}, "controller_hidden"),
    ({"num_steps": 0}, "num_steps"),
    ({"search_space": "nasnet"}, "search_space"),
    ({"search_space": "macro", "channels": 5}, "channels"),
    ({"num_nodes": True}, "num_nodes"),
    ({"skip_target": 1.0}, "skip_target"),
    ({"temperature": 0.0}, "temperature"),
    ({"device": 3}, "device"),
    ({"lr_min": 1.0}, "lr_min"),
])
def test_bad_config_names_the_key(values, key):
    with pytest.raises((ValueError, TypeError), match=key):
        ENASOptimizer(values)


# -- ask / tell ---------------------------------------------------------------------------------
def test_tell_accepts_any_architecture_of_the_space(tmp_path):
    opt = ENASOptimizer(TINY)
    arch = opt.ask()
    arch.save(tmp_path / "g.json")
    loaded = Genotype.load(tmp_path / "g.json")
    opt.tell(loaded, 0.5)
    stats = opt.tell([opt.ask(), opt.ask()], [0.1, 0.2])
    assert opt.controller_step == 2 and math.isfinite(stats["controller_loss"])
    with pytest.raises(ValueError, match="finite"):
        opt.tell(arch, float("nan"))
    with pytest.raises(ValueError, match="finite"):
        opt.tell(arch, True)
    with pytest.raises(ValueError, match="same length"):
        opt.tell([arch, arch], [0.1])
    with pytest.raises(TypeError):
        opt.tell(MacroArch(("conv_3x3",), ((),)), 0.1)
    assert opt.controller_step == 2


def test_a_custom_reward_moves_the_controller():
    """ask/tell with a user reward (accuracy minus a size penalty, say) trains the controller."""
    opt = ENASOptimizer(dict(TINY, controller_lr=0.05))
    before = [p.detach().clone() for p in opt.controller.parameters()]
    for i in range(3):
        opt.tell(opt.ask(), 0.5 - 0.1 * i)
    assert any(not torch.equal(a, b) for a, b in zip(before, opt.controller.parameters()))


def test_seeded_runs_are_deterministic():
    runs = []
    for _ in range(2):
        opt = ENASOptimizer(TINY)
        archs = []
        for k in range(2):
            archs.append(opt.step(_batch(seed=k))["arch"])
            opt.train_controller(_batch(seed=10 + k))
        runs.append((archs, _params(opt), opt.baseline))
    assert runs[0][0] == runs[1][0] and runs[0][2] == runs[1][2]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.parametrize("space", ["micro", "macro"])
def test_state_round_trip_resumes_exactly(tmp_path, space):
    cfg = dict(TINY, search_space=space, controller_samples=2)
    if space == "macro":
        cfg.update(num_layers=4)
    a = ENASOptimizer(cfg)
    for k in range(2):
        a.step(_batch(seed=k))
        a.train_controller(_batch(seed=20 + k))
    a.save(tmp_path / "enas.ckpt")
    b = ENASOptimizer.load(tmp_path / "enas.ckpt")  # weights_only=True inside
    assert b.baseline == a.baseline and b.controller_step == a.controller_step == 2
    records = [[str(opt.ask()), opt.step(_batch(seed=7))["train_loss"],
                opt.train_controller(_batch(seed=8))["controller_loss"]] for opt in (a, b)]
    assert records[0] == records[1]
    assert all(torch.equal(x, y) for x, y in zip(_params(a), _params(b)))
    state = a.state_dict()  # the global generator is part of the state
    expected = torch.rand(3)
    b.load_state_dict(state)
    assert torch.equal(torch.rand(3), expected)


def test_load_rejects_foreign_state():
    with pytest.raises(ValueError, match="not a fastnas checkpoint"):
        ENASOptimizer(TINY).load_state_dict({"model": {}})
    with pytest.raises(ValueError, match="missing"):
        ENASOptimizer(TINY).load_state_dict({**describe("search", "enas"), "model": {}})
    with pytest.raises(ValueError, match="a darts search, not an enas search"):
        ENASOptimizer(TINY).load_state_dict(describe("search", "darts"))


def test_learning_rate_schedule():
    opt = ENASOptimizer(dict(TINY, num_steps=4))
    assert [opt.lr_at(e) for e in range(4)] == [cosine_lr(e, 4, 0.05, 0.0005) for e in range(4)]
    sgdr = ENASOptimizer(dict(TINY, lr_t0=2, lr_t_mul=2))
    lrs = [sgdr.lr_at(e) for e in range(8)]
    assert lrs[0] == lrs[2] == lrs[6] == 0.05  # restarts after 2 and 2 + 4 epochs
    assert lrs[3] == cosine_lr(1, 4, 0.05, 0.0005) and lrs[7] == cosine_lr(1, 8, 0.05, 0.0005)


def test_derive_picks_the_best_sampled_architecture():
    opt = ENASOptimizer(TINY)
    batch = _batch(32)
    state = opt.generator.get_state()
    best = opt.derive(4, batch)
    opt.generator.set_state(state)
    candidates = [opt.ask() for _ in range(4)]
    scores = [opt.reward(a, batch) for a in candidates]
    assert best == candidates[scores.index(max(scores))]
    opt.generator.set_state(state)
    by_prob = opt.derive(4)
    log_probs = [opt.controller_pass(a).log_prob.item() for a in candidates]
    assert by_prob == candidates[log_probs.index(max(log_probs))]


# -- tiny searches on digits ------------------------------------------------------------------
def _digits(n_train=1024, n_val=256, batch=32):
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8]
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(y)))
    x, y = x[order], y[order]

    def batches(lo, hi):
        return [(x[i:min(i + batch, hi)], y[i:min(i + batch, hi)]) for i in range(lo, hi, batch)]

    return batches(0, n_train), batches(n_train, n_train + n_val)


def test_micro_search_on_digits():
    train, val = _digits()
    cfg = dict(TINY, num_nodes=1, channels=8, num_steps=5, controller_steps=5, derive_samples=4)
    opt = ENASOptimizer(cfg)
    seen = []
    result = opt.search(train, val, on_step=lambda o, s: seen.append(s["train_loss"]))
    assert isinstance(result, Genotype) and opt.choices(result)
    assert len(opt.history) == 5 and len(seen) == 5 * len(train)
    first, last = opt.history[0], opt.history[-1]
    assert last["train_acc"] > max(first["train_acc"] + 0.2, 0.4)  # chance is 0.1
    assert {"epoch", "lr", "train_loss", "val_acc", "reward", "baseline", "entropy",
            "controller_loss", "arch", "seconds"} <= set(last)
    assert opt.evaluate(val, result)["accuracy"] > 0.3
    net = NetworkCIFAR(8, 10, 3, False, result, in_channels=1)
    assert net(val[0][0])[0].shape == (32, 10)
    # resuming continues from the completed epochs; a callback returning False stops
    opt.search(train, val, epochs=7, callback=lambda o, record: False)
    assert opt.epoch == 6 and len(opt.history) == 6


def test_macro_search_on_digits():
    train, val = _digits(n_train=256, n_val=128)
    opt = ENASOptimizer({"search_space": "macro", "channels": 4, "num_layers": 4,
                         "in_channels": 1, "controller_hidden": 8, "num_steps": 1,
                         "controller_steps": 3, "derive_samples": 3, "seed": 1})
    result = opt.search(train, val)
    assert isinstance(result, MacroArch) and result.num_layers == 4
    assert 0.0 <= opt.history[-1]["skip_density"] <= 1.0
    assert MacroNetwork(result, 4, 10, in_channels=1)(val[0][0]).shape == (32, 10)
