"""The methods built on DARTS (issue 18): config keys and presets, the Dirichlet and sigmoid
relaxations, the regularizers, SDARTS' perturbation, the schedules and derivation rules, and
exact resume. Formulas are checked in float64 against hand-written ones or an independent
computation (torch.distributions, scipy, finite differences)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fastnas import DARTSConfig, DARTSOptimizer
from fastnas.darts.methods import METHODS, PRESETS
from fastnas.darts.perturbation import Perturbation, project
from fastnas.space import ARCHITECTURE, EVALUATION, WEIGHTS, darts_space
from fastnas.space.derivation import Derivation
from fastnas.space.regularizers import BetaDecay, ZeroOne
from fastnas.space.relaxation import Dirichlet, Sigmoid

TINY = dict(channels=4, layers=3, num_nodes=2, in_channels=1, num_classes=4, num_steps=2,
            seed=0, device="cpu", batch_size=8)
METHODS_HERE = METHODS   # every preset (the supernet axes of issue 18 merged)


def synthetic(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(4, 1, 8, 8, generator=g)
    y = torch.arange(n) % 4
    return templates[y] + 0.5 * torch.randn(n, 1, 8, 8, generator=g), y


def loaders(seed=0):
    """Shuffled by torch's global generator, which the search checkpoint restores."""
    x, y = synthetic(32, seed)
    train = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(x[16:], y[16:]), batch_size=8, shuffle=True)
    return train, val


# -- config and presets ---------------------------------------------------------------------------
def test_darts_preset_is_todays_defaults():
    assert PRESETS["darts"] == {}
    assert DARTSConfig.from_dict({"method": "darts"}) == DARTSConfig()
    c = DARTSConfig()
    assert (c.relaxation, c.perturbation, c.partial_channels, c.warmup_epochs) == (
        "softmax", "none", 1, 0)
    assert c.arch_betas == (0.5, 0.999)


def test_preset_fills_only_the_keys_not_given():
    c = DARTSConfig.from_dict({"method": "pc-darts", "learning_rate_w": 0.05})
    assert (c.learning_rate_w, c.batch_size, c.learning_rate_alpha, c.warmup_epochs,
            c.partial_channels, c.edge_normalization) == (0.05, 256, 6e-4, 15, 4, True)
    f = DARTSConfig.from_dict({"method": "fair-darts"})
    assert (f.relaxation, f.zero_one_weight, f.threshold, f.learning_rate_w, f.batch_size,
            f.learning_rate_alpha, f.arch_betas) == ("sigmoid", 10.0, 0.85, 0.005, 128, 3e-3,
                                                     (0.9, 0.999))
    d = DARTSConfig.from_dict({"method": "drnas"})
    assert (d.relaxation, d.learning_rate_w, d.lr_min, d.learning_rate_alpha,
            d.warmup_epochs, d.arch_weight_decay) == ("dirichlet", 0.1, 0.0, 6e-4, 10, 1e-3)
    assert DARTSConfig.from_dict({"method": "sdarts-adv"}).pgd_steps == 7
    assert DARTSConfig.from_dict({"method": "beta-darts"}).beta_lambda == 50.0
    assert DARTSConfig.from_dict({"method": "darts-minus"}).aux_skip == 50
    g = DARTSConfig.from_dict({"method": "gdas"})
    assert (g.relaxation, g.tau_max, g.tau_min) == ("gumbel", 10.0, 0.1)


@pytest.mark.parametrize("method", METHODS)
def test_config_round_trips_through_json(method):
    import json

    c = DARTSConfig.from_dict({"method": method})
    assert DARTSConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


@pytest.mark.parametrize("values, words", [
    ({"relaxation": "gumbel", "order": 2}, "GDAS has no second-order path"),
    ({"perturbation": "random", "relaxation": "sigmoid"}, "simplex"),
    ({"perturbation": "adversarial", "relaxation": "gumbel"}, "one-hot"),
    ({"dirichlet_kl": 1e-3}, "needs relaxation 'dirichlet'"),
    ({"early_stop_skips": 3, "max_skips": 2}, "can never trigger"),
    ({"method": "snas"}, "method must be one of"),
    ({"relaxation": "hard"}, "relaxation must be one of"),
    ({"partial_channels": 0}, "partial_channels must be >= 1"),
    ({"tau_min": 20.0}, "tau_min must be <= 10.0"),
    ({"epsilon_min": 0.5}, "epsilon_max must be >= 0.5"),
    ({"threshold": 1.5}, "threshold must be <= 1"),
    ({"arch_betas": (0.9, 1.0)}, "arch_betas[1] must be < 1"),
    ({"method": "drnas", "compile": True}, "compile=True with relaxation 'dirichlet'"),
    ({"method": "sdarts-rs", "compile": True}, "is not supported"),
])
def test_bad_method_settings_name_the_reason(values, words):
    with pytest.raises(ValueError) as e:
        DARTSConfig.from_dict(values)
    assert words in str(e.value) and "\n" not in str(e.value)


# -- relaxations ----------------------------------------------------------------------------------
def test_dirichlet_samples_and_gradient_equal_torch_distributions():
    torch.manual_seed(0)
    a = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    relax = Dirichlet(seed=3)
    w = relax.weights(a, ARCHITECTURE)
    v = torch.randn(5, 8, dtype=torch.float64)
    (w * v).sum().backward()
    torch.manual_seed(3)  # the same noise from torch's global generator
    b = a.detach().clone().requires_grad_()
    ref = torch.distributions.Dirichlet(F.elu(b) + 1).rsample()
    (ref * v).sum().backward()
    assert torch.equal(w.detach(), ref.detach())
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)
    assert torch.allclose(w.sum(-1), torch.ones(5, dtype=torch.float64))


def test_dirichlet_reparameterized_gradient_is_unbiased():
    """The pathwise gradient, averaged over many samples, is the gradient of the expectation:
    for x ~ Dirichlet(c), E[x_i^2] = c_i (c_i + 1) / (c0 (c0 + 1)), written out by hand."""
    c = torch.tensor([0.7, 1.3, 2.0, 0.4], dtype=torch.float64)
    v = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    n = 200_000
    a = torch.where(c >= 1, c - 1, torch.log(c))   # elu(a) + 1 = c
    a = a.expand(n, 4).clone().requires_grad_()
    relax = Dirichlet(seed=0)
    x = relax.weights(a, WEIGHTS)
    torch.testing.assert_close(F.elu(a[0]) + 1, c)
    ((x ** 2) @ v).mean().backward()
    grad_c = a.grad.sum(0) / torch.where(a[0] > 0, torch.ones_like(c), c).detach()  # d elu

    k = c.clone().requires_grad_()
    k0 = k.sum()
    (((k * (k + 1)) / (k0 * (k0 + 1))) @ v).backward()
    torch.testing.assert_close(grad_c, k.grad, rtol=0.02, atol=0.003)


def test_dirichlet_samples_in_every_phase_from_its_own_generator():
    a = torch.zeros(3, 4)
    relax = Dirichlet(seed=1)
    draws = [relax.weights(a, p) for p in (ARCHITECTURE, WEIGHTS, EVALUATION)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    state = relax.state_dict()
    nxt = relax.weights(a, WEIGHTS)
    other = Dirichlet(seed=99)
    other.load_state_dict(state)
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(other.weights(a, WEIGHTS), nxt)
    s = relax.strengths(torch.tensor([[1.0, 2.0, 0.0, -1.0]]))
    torch.testing.assert_close(s, F.softmax(torch.tensor([[1.0, 2.0, 0.0, -1.0]]), -1))
    again = relax.state_dict()["generator"]
    relax.strengths(a)
    assert torch.equal(relax.state_dict()["generator"], again)  # strengths draw nothing


def test_dirichlet_kl_penalty_is_the_scaled_sum_of_torch_kl():
    torch.manual_seed(0)
    alphas = {t: torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
              for t in ("normal", "reduce")}
    relax = Dirichlet(kl=1e-3, seed=0)
    got = relax.penalty(alphas)
    D = torch.distributions
    want = 1e-3 * sum(D.kl_divergence(D.Dirichlet(F.elu(a) + 1),
                                      D.Dirichlet(torch.ones_like(a))).sum()
                      for a in alphas.values())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    g1 = torch.autograd.grad(got, list(alphas.values()))
    g2 = torch.autograd.grad(want, list(alphas.values()))
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-14)
    assert Dirichlet(kl=0.0).penalty(alphas) is None


def test_sigmoid_weights_and_strengths():
    a = torch.tensor([[0.0, 2.0, -1.0]], dtype=torch.float64)
    want = 1 / (1 + torch.exp(-a))
    for phase in (ARCHITECTURE, WEIGHTS, EVALUATION):
        torch.testing.assert_close(Sigmoid().weights(a, phase), want)
    torch.testing.assert_close(Sigmoid().strengths(a), want)


# -- regularizers ---------------------------------------------------------------------------------
def _alphas(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {t: torch.randn(5, 8, dtype=torch.float64, generator=g).requires_grad_()
            for t in ("normal", "reduce")}


def test_beta_decay_value_gradient_and_ramp():
    alphas = _alphas()
    reg = BetaDecay(50.0)
    assert reg(alphas).item() == 0.0   # epoch 0: lambda 0
    reg.set_epoch(30, 100)
    assert reg.weight == 15.0          # the code's 50 * 30 / 100
    reg.set_epoch(3, 10)
    lam = 15.0
    rows = [r for a in alphas.values() for r in a.tolist()]
    want = lam * sum(math.log(sum(math.exp(v) for v in r)) for r in rows) / len(rows)
    got = reg(alphas)
    assert abs(got.item() - want) < 1e-12
    grads = torch.autograd.grad(got, list(alphas.values()))
    for a, g in zip(alphas.values(), grads):  # lambda * softmax(a_e) / rows
        torch.testing.assert_close(g, lam * F.softmax(a.detach(), -1) / len(rows),
                                   rtol=1e-12, atol=1e-15)
    fresh = BetaDecay(50.0)
    fresh.load_state_dict(reg.state_dict())
    assert fresh.weight == lam


def test_zero_one_value_and_gradient():
    alphas = _alphas(1)
    got = ZeroOne(10.0)(alphas)
    entries = [v for a in alphas.values() for r in a.tolist() for v in r]
    sig = [1 / (1 + math.exp(-v)) for v in entries]
    want = -10.0 * sum((s - 0.5) ** 2 for s in sig) / len(sig)
    assert abs(got.item() - want) < 1e-12
    grads = torch.autograd.grad(got, list(alphas.values()))
    for a, g in zip(alphas.values(), grads):
        s = torch.sigmoid(a.detach())
        torch.testing.assert_close(g, -10.0 * 2 * (s - 0.5) * s * (1 - s) / len(sig),
                                   rtol=1e-12, atol=1e-15)


def test_architecture_loss_adds_the_relaxation_penalty_and_the_regularizers():
    opt = DARTSOptimizer(dict(TINY, method="drnas", dirichlet_kl=1e-2, beta_lambda=4.0,
                              zero_one_weight=2.0, precision="fp64"))
    opt.set_epoch(1)   # beta-decay at lambda 4 * 1 / 2
    x, y = next(iter(loaders()[0]))
    x = x.double()
    arch = opt.model.arch
    gen = arch.relaxation.generator.get_state()
    total, _ = opt.architect.val_loss(x, y)
    arch.relaxation.generator.set_state(gen)   # the same sample for the plain loss
    plain, _ = opt.architect.loss(x, y)
    by_type = arch.by_type()
    lam = 4.0 * 1 / 2
    rows = torch.cat(list(by_type.values()))
    terms = (arch.relaxation.penalty(by_type) + lam * torch.logsumexp(rows, -1).mean()
             - 2.0 * ((torch.sigmoid(rows) - 0.5) ** 2).mean())
    torch.testing.assert_close(total, plain + terms, rtol=1e-12, atol=1e-12)


# -- SDARTS ---------------------------------------------------------------------------------------
def test_projection_clamps_and_renormalizes_as_sdarts():
    p = torch.tensor([[0.5, -0.2, 0.9], [-0.1, -0.3, -0.2], [2.0, 0.0, 0.0]],
                     dtype=torch.float64)
    want = torch.tensor([[0.5 / 1.4, 0.0, 0.9 / 1.4], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
                        dtype=torch.float64)
    torch.testing.assert_close(project(p), want)


def test_random_perturbation_only_in_the_weight_step_with_its_ramp():
    pert = Perturbation("random", 0.03, 0.3, seed=0)
    pert.set_epoch(5, 10)
    assert abs(pert.epsilon - (0.03 + 0.27 * 0.5)) < 1e-15
    w = {"normal": F.softmax(torch.randn(6, 8, dtype=torch.float64), -1)}
    for phase in (ARCHITECTURE, EVALUATION):
        assert pert(w, phase) is w
    state = pert.state_dict()
    out = pert(w, WEIGHTS)["normal"]
    noise = Perturbation("random", 0.03, 0.3, seed=0)
    noise.load_state_dict(state)
    torch.testing.assert_close(out, project(w["normal"] + noise.noise(w["normal"])))
    assert not torch.equal(out, w["normal"])
    torch.testing.assert_close(out.sum(-1), torch.ones(6, dtype=torch.float64))


def test_adversarial_perturbation_raises_the_training_loss():
    opt = DARTSOptimizer(dict(TINY, method="sdarts-adv", precision="fp64", epsilon_min=0.3))
    opt.set_epoch(0)
    batch = next(iter(loaders()[0]))
    x, y = batch[0].double(), batch[1]
    model, pert = opt.model, opt.perturbation
    model.eval()
    with torch.no_grad():
        before = opt.loss(model(x), y).item()
        p0 = {t: F.softmax(a, -1) for t, a in model.arch.by_type().items()}
    model.train()
    pert.attack(model, (x, y), opt.loss)
    assert pert.fixed is not None
    model.eval()
    with torch.no_grad():
        after = opt.loss(model(x), y).item()
    assert after > before
    for t, p in pert.fixed.items():
        torch.testing.assert_close(p.sum(-1), torch.ones(len(p), dtype=torch.float64))
        assert (p - p0[t]).abs().max() <= 2 * 0.3  # within eps before the projection
    # the weight step mixes with it (WEIGHTS phase), until released
    with model.arch.phase(WEIGHTS):
        assert model.arch.mixing(True)["normal"] is pert.fixed["normal"]
    pert.release()
    with model.arch.phase(WEIGHTS):
        torch.testing.assert_close(model.arch.mixing(True)["normal"], p0["normal"])


# -- schedules and derivation ---------------------------------------------------------------------
def test_warmup_freezes_the_alphas_but_trains_the_weights():
    opt = DARTSOptimizer(dict(TINY, warmup_epochs=1))
    alphas = [a.detach().clone() for a in opt.arch_parameters()]
    weights = [w.detach().clone() for w in opt.weight_parameters()]
    opt.search(*loaders(), epochs=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(alphas, opt.arch_parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(weights, opt.weight_parameters()))
    first = opt.history[0]
    assert first["alphas_frozen"] and math.isnan(first["val_loss"])
    opt.search(*loaders(), epochs=2, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(alphas, opt.arch_parameters()))
    assert not opt.history[1]["alphas_frozen"] and not math.isnan(opt.history[1]["val_loss"])


def _strengths(space, skip_rows, other=0.1):
    """Strengths where the rows in ``skip_rows`` ({row: skip strength}) favour skip_connect."""
    s = torch.full(space.shape, other, dtype=torch.float64)
    conv = space.index("sep_conv_3x3")
    for r in range(space.num_edges):
        s[r, conv] = 0.3 + 0.01 * r
    for r, v in skip_rows.items():
        s[r, space.index("skip_connect")] = v
    return s


def test_max_skips_replaces_the_weakest_skips_in_the_normal_cell_only():
    space = darts_space(num_nodes=2)   # rows: node 0: 0, 1; node 1: 2, 3, 4
    skips = {0: 0.9, 1: 0.5, 2: 0.8, 3: 0.7}
    strengths = {"normal": _strengths(space, skips), "reduce": _strengths(space, skips)}
    plain = space.derive(strengths)
    assert [op for op, _ in plain.normal].count("skip_connect") == 4
    capped = space.derive(strengths, Derivation(max_skips=2))
    # the two weakest skips (rows 1: 0.5, then 3: 0.7) give way to sep_conv_3x3; node 1 then
    # ranks row 3 (0.33) under row 4 (0.34) and keeps rows 2 and 4
    assert capped.normal == (("skip_connect", 0), ("sep_conv_3x3", 1),
                             ("skip_connect", 0), ("sep_conv_3x3", 2))
    assert capped.reduce == plain.reduce
    none = space.derive(strengths, Derivation(max_skips=0))
    assert "skip_connect" not in [op for op, _ in none.normal]


def test_threshold_drops_weak_edges_as_none():
    space = darts_space(num_nodes=2)
    s = torch.full(space.shape, 0.2, dtype=torch.float64)
    s[0, space.index("sep_conv_3x3")] = 0.9
    s[1, space.index("max_pool_3x3")] = 0.5
    s[2, space.index("dil_conv_3x3")] = 0.86
    s[4, space.index("skip_connect")] = 0.95
    arch = space.derive({"normal": s, "reduce": s}, Derivation(threshold=0.85))
    assert arch.normal == (("sep_conv_3x3", 0), ("none", 1),
                           ("skip_connect", 2), ("dil_conv_3x3", 0))


def test_darts_plus_stops_when_the_normal_cell_holds_enough_skips(tmp_path):
    opt = DARTSOptimizer(dict(TINY, early_stop_skips=2, num_steps=5))
    with torch.no_grad():   # skip_connect dominates every edge of the normal cell
        opt.model.alphas_normal[:, opt.model.space.index("skip_connect")] = 10.0
    opt.search(*loaders(), progress=False)
    assert opt.epoch == 1 and len(opt.history) == 1
    assert "DARTS+ early stop after epoch 1" in opt.history[0]["stopped"]
    path = str(tmp_path / "s.pt")
    opt.save(path)
    again = DARTSOptimizer.load(path)
    assert again.stopped == opt.stopped
    again.search(*loaders(), epochs=5, progress=False)
    assert again.epoch == 1   # it stays stopped


def test_methods_derive_with_their_rules():
    opt = DARTSOptimizer(dict(TINY, method="fair-darts"))
    assert opt.model.arch.derivation == Derivation(threshold=0.85)
    # sigmoid(~0) = 0.5 < 0.85 everywhere: every edge is dropped, as the code would
    assert {op for op, _ in opt.genotype().normal} == {"none"}


# -- every method runs and resumes exactly --------------------------------------------------------
@pytest.mark.parametrize("method", METHODS_HERE)
def test_each_method_searches(method):
    opt = DARTSOptimizer(dict(TINY, method=method, num_steps=1, warmup_epochs=0))
    alphas = [a.detach().clone() for a in opt.arch_parameters()]
    opt.search(*loaders(), progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(alphas, opt.arch_parameters()))
    assert math.isfinite(opt.history[0]["train_loss"])


@pytest.mark.parametrize("method", ["drnas", "sdarts-adv"])
def test_resume_equals_an_uninterrupted_search(method, tmp_path):
    cfg = dict(TINY, method=method, warmup_epochs=0, pgd_steps=2)
    full = DARTSOptimizer(cfg)
    full.search(*loaders(), epochs=2, progress=False)
    first = DARTSOptimizer(cfg)
    first.search(*loaders(), epochs=1, progress=False)
    path = str(tmp_path / "ckpt.pt")
    first.save(path)
    del first
    torch.manual_seed(12345)   # nothing may depend on the global generator's state
    resumed = DARTSOptimizer.load(path)
    resumed.search(*loaders(), epochs=2, progress=False)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]


# -- the methods across spaces and models: what does not apply is a one-line error ---------------
@pytest.mark.parametrize("method,key", [("pc-darts", "partial_channels"),
                                        ("darts-minus", "aux_skip")])
def test_nb201_refuses_the_darts_cell_axes(method, key):
    with pytest.raises(ValueError, match=f"{key}=.*does not apply to space='nb201'"):
        DARTSConfig.from_dict(dict(TINY, method=method, space="nb201", layers=1))


def test_compile_refuses_gumbel():
    with pytest.raises(ValueError, match="compile=True with relaxation 'gumbel'"):
        DARTSConfig.from_dict(dict(TINY, method="gdas", compile=True))


@pytest.mark.parametrize("method", ["sdarts-rs", "fair-darts"])
def test_a_user_model_refuses_what_reads_the_darts_cell(method):
    from fastnas.errors import UserError

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    with pytest.raises(UserError, match="does not apply to a search inside your model"):
        DARTSOptimizer(dict(TINY, method=method), model=net)


def test_darts_plus_and_the_skip_cap_on_nb201():
    """The DARTS+ stop counts the NB201 cell's skip_connects; P-DARTS' cap applies to it."""
    from fastnas.nb201 import NB201Cell

    opt = DARTSOptimizer(dict(TINY, space="nb201", layers=1, early_stop_skips=2, max_skips=2))
    with torch.no_grad():
        opt.model.arch.alphas_cell.zero_()
        opt.model.arch.alphas_cell[:, 1] = 5.0       # every edge prefers skip_connect
    cell = opt.genotype()
    assert isinstance(cell, NB201Cell) and cell.ops.count("skip_connect") == 2   # capped
    assert opt._early_stop(cell) is not None
    assert opt._early_stop(NB201Cell.parse("|skip_connect~0|+|none~0|none~1|+"
                                           "|none~0|none~1|none~2|")) is None
