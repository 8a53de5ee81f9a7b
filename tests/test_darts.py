import io
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fastnas import DARTSConfig, DARTSOptimizer, Genotype
from fastnas.checkpoint import describe
from fastnas.engine import cosine_lr, paired

TINY = dict(channels=4, layers=3, num_nodes=2, in_channels=1, num_classes=4, num_steps=3,
            seed=0, device="cpu")


def synthetic(n=48, seed=0):
    """4 classes, each a fixed 8x8 template plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(4, 1, 8, 8, generator=g)
    y = torch.arange(n) % 4
    x = templates[y] + 0.5 * torch.randn(n, 1, 8, 8, generator=g)
    return x, y


def batches(seed=0):
    x, y = synthetic(16, seed)
    return (x[:8], y[:8]), (x[8:], y[8:])


def test_config_defaults_are_the_papers():
    c = DARTSConfig()
    assert (c.learning_rate_w, c.lr_min, c.momentum, c.weight_decay, c.grad_clip) == (
        0.025, 0.001, 0.9, 3e-4, 5.0)
    assert (c.learning_rate_alpha, c.arch_weight_decay) == (3e-4, 1e-3)
    assert (c.channels, c.layers, c.num_nodes, c.num_classes, c.batch_size, c.order) == (
        16, 8, 4, 10, 64, 1)
    assert DARTSConfig.from_dict({"order": 2}).order == 2


@pytest.mark.parametrize("values, error, key", [
    ({"learning_rate_x": 1.0}, ValueError, "learning_rate_x"),
    ({"channels": "16"}, TypeError, "channels"),
    ({"channels": 16.0}, TypeError, "channels"),
    ({"num_nodes": True}, TypeError, "num_nodes"),
    ({"learning_rate_w": -0.1}, ValueError, "learning_rate_w"),
    ({"learning_rate_w": float("nan")}, ValueError, "learning_rate_w"),
    ({"momentum": 1.0}, ValueError, "momentum"),
    ({"order": 3}, ValueError, "order"),
    ({"num_steps": 0}, ValueError, "num_steps"),
    ({"lr_min": 0.5}, ValueError, "lr_min"),
    ({"precision": "fp8"}, ValueError, "precision"),
    ({"backend": "cuda"}, ValueError, "backend"),
    ({"device": "tpu9"}, ValueError, "device"),
    ({"grad_clip": 0}, ValueError, "grad_clip"),
])
def test_bad_config_names_the_key(values, error, key):
    with pytest.raises(error, match=key):
        DARTSOptimizer(values)


def test_config_must_be_a_mapping():
    with pytest.raises(TypeError, match="dict"):
        DARTSOptimizer([("channels", 4)])


def test_cosine_schedule():
    assert cosine_lr(0, 50, 0.025, 0.001) == pytest.approx(0.025)
    assert cosine_lr(25, 50, 0.025, 0.001) == pytest.approx(0.013)
    assert cosine_lr(50, 50, 0.025, 0.001) == pytest.approx(0.001)


def test_paired_restarts_the_shorter_validation_loader():
    pairs = list(paired([1, 2, 3], [10, 20]))
    assert pairs == [(1, 10), (2, 20), (3, 10)]
    with pytest.raises(ValueError, match="val_loader"):
        list(paired([1], []))


def test_parameter_groups_and_step_outputs():
    opt = DARTSOptimizer(TINY)
    assert [p is a for p, a in zip(opt.arch_parameters(), opt.model.alphas())] == [True, True]
    assert len(opt.weight_parameters()) + 2 == len(list(opt.model.parameters()))
    before = [p.detach().clone() for p in opt.weight_parameters()]
    alphas = [a.detach().clone() for a in opt.arch_parameters()]
    stats = opt.step(*batches())
    assert {"train_loss", "val_loss", "train_acc", "val_acc", "lr"} <= set(stats)
    assert all(math.isfinite(stats[k]) for k in ("train_loss", "val_loss"))
    assert any(not torch.equal(b, p) for b, p in zip(before, opt.weight_parameters()))
    assert all(not torch.equal(b, a) for b, a in zip(alphas, opt.arch_parameters()))
    assert isinstance(opt.genotype(), Genotype) and opt.ask() == opt.genotype()


def test_weight_gradients_are_clipped():
    opt = DARTSOptimizer(dict(TINY, grad_clip=1e-3, momentum=0.0, weight_decay=0.0,
                              learning_rate_w=1.0, lr_min=0.0))
    before = torch.cat([p.detach().flatten().clone() for p in opt.weight_parameters()])
    opt.step(*batches())
    after = torch.cat([p.detach().flatten() for p in opt.weight_parameters()])
    # lr 1, no momentum, no decay: the update is the clipped gradient itself
    assert (after - before).norm().item() == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("bad, message", [
    ((torch.randn(8, 1, 8, 8),), "pair"),
    ((torch.randn(8, 8, 8), torch.zeros(8, dtype=torch.long)), "N, C, H, W"),
    ((torch.randn(8, 1, 8, 8), torch.zeros(7, dtype=torch.long)), "targets"),
])
def test_bad_batches_get_clear_errors(bad, message):
    opt = DARTSOptimizer(TINY)
    with pytest.raises((TypeError, ValueError), match=message):
        opt.step(bad, batches()[1])


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("order", [1, 2])
def test_resumed_optimizer_takes_the_identical_next_step(order):
    cfg = dict(TINY, order=order)
    a = DARTSOptimizer(cfg)
    a.step(*batches(0))
    state = roundtrip(a.state_dict())
    b = DARTSOptimizer(dict(cfg, seed=123))  # a different init, overwritten by the state
    b.load_state_dict(state)
    sa, sb = a.step(*batches(1)), b.step(*batches(1))
    assert sa == sb
    for (n, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), n


def loaders(seed=0):
    x, y = synthetic(32, seed)
    train = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(x[16:], y[16:]), batch_size=8, shuffle=True)
    return train, val


def test_search_resume_continues_exactly(tmp_path):
    full = DARTSOptimizer(TINY)
    g_full = full.search(*loaders(), epochs=2)

    first = DARTSOptimizer(TINY)
    first.search(*loaders(), epochs=1)
    path = str(tmp_path / "ckpt.pt")
    first.save(path)
    resumed = DARTSOptimizer.load(path)
    assert resumed.epoch == 1
    g_resumed = resumed.search(*loaders(), epochs=2)

    assert g_full == g_resumed
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]


def test_tiny_search_loss_falls_and_history_is_recorded():
    opt = DARTSOptimizer(dict(TINY, learning_rate_w=0.05))
    seen = []
    genotype = opt.search(*loaders(), callback=lambda o, rec: seen.append(rec["epoch"]))
    assert seen == [0, 1, 2] and len(opt.history) == 3
    losses = [h["train_loss"] for h in opt.history]
    assert losses[-1] < losses[0]
    first = opt.history[0]
    assert first["lr"] == pytest.approx(0.05) and opt.history[-1]["lr"] < first["lr"]
    assert first["alphas_normal"].shape == (5, 8)
    torch.testing.assert_close(first["alphas_normal"].sum(-1), torch.ones(5))
    assert Genotype.parse(opt.history[-1]["genotype"]) == genotype
    ev = opt.evaluate(loaders()[1])
    assert 0.0 <= ev["accuracy"] <= 1.0 and ev["loss"] > 0


def test_callback_can_stop_the_search():
    opt = DARTSOptimizer(TINY)
    opt.search(*loaders(), callback=lambda o, rec: False)
    assert opt.epoch == 1
    with pytest.raises(ValueError, match="epochs"):
        opt.search(*loaders(), epochs=0)


def test_ask_tell_best():
    opt = DARTSOptimizer(TINY)
    with pytest.raises(ValueError, match="tell"):
        opt.best()
    from fastnas.genotypes import DARTS_V1, DARTS_V2

    opt.tell(DARTS_V1, 0.5)
    opt.tell(DARTS_V2, 0.9)
    opt.tell(opt.ask(), 0.7)
    assert opt.best() == DARTS_V2
    with pytest.raises(ValueError, match="score"):
        opt.tell(DARTS_V1, float("nan"))
    with pytest.raises(TypeError, match="Genotype"):
        opt.tell(str(DARTS_V1), 1.0)
    restored = DARTSOptimizer(TINY)
    restored.load_state_dict(roundtrip(opt.state_dict()))
    assert restored.best() == DARTS_V2 and len(restored.told) == 3


def test_seeded_construction_is_deterministic():
    a, b = DARTSOptimizer(TINY), DARTSOptimizer(TINY)
    for (n, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), n


def test_load_state_rejects_foreign_dicts():
    with pytest.raises(ValueError, match="not a fastnas checkpoint"):
        DARTSOptimizer(TINY).load_state_dict({"model": {}})
    with pytest.raises(ValueError, match="missing"):
        DARTSOptimizer(TINY).load_state_dict({**describe("search", "darts"), "model": {}})
    other = DARTSOptimizer(dict(TINY, channels=TINY.get("channels", 4) * 2))
    with pytest.raises(ValueError, match=r"does not fit the model its config builds: \d+ tensor"):
        DARTSOptimizer(TINY).load_state_dict(other.state_dict())
