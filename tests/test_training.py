"""Final training, network cost and checkpoint files (fastnas.training, fastnas.checkpoint)."""
import json
import math
import os

import pytest
import torch
import torch.nn as nn

from fastnas import DARTSOptimizer, data, genotypes
from fastnas.checkpoint import describe, load_checkpoint, save_atomic, write_json_atomic
from fastnas.errors import UserError
from fastnas.training import (
    FinalTrainer,
    TrainConfig,
    count_multiply_adds,
    count_parameters,
    load_model,
    train_genotype,
)

CPU = torch.device("cpu")
TINY = dict(epochs=2, batch_size=32, channels=4, layers=3, auxiliary=True, cutout=0,
            in_channels=1, num_classes=10, device="cpu", drop_path_prob=0.2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest and immune to other processes on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _loaders(n=64, batch_size=32):
    train = data.make_loader(data.load_split("digits", "train", limit=n), batch_size,
                             shuffle=True, device=CPU, seed=0)
    test = data.make_loader(data.load_split("digits", "test", limit=n), 64, shuffle=False,
                            device=CPU)
    return train, test


# -- config ---------------------------------------------------------------------------------------
def test_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.lr_min) == (600, 96, 0.025, 0.0)
    assert (cfg.momentum, cfg.weight_decay, cfg.grad_clip) == (0.9, 3e-4, 5.0)
    assert (cfg.channels, cfg.layers, cfg.auxiliary, cfg.auxiliary_weight) == (36, 20, True, 0.4)
    assert (cfg.drop_path_prob, cfg.cutout) == (0.2, 16)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("key, value, error", [
    ("epochs", 0, ValueError), ("epochs", 1.5, TypeError), ("batch_size", -1, ValueError),
    ("learning_rate", 0.0, ValueError), ("lr_min", 1.0, ValueError),
    ("momentum", 1.0, ValueError), ("grad_clip", 0.0, ValueError), ("layers", 2, ValueError),
    ("auxiliary", 1, TypeError), ("drop_path_prob", 1.0, ValueError), ("cutout", -1, ValueError),
    ("device", "tpu9", ValueError), ("seed", -1, ValueError),
    ("weight_decay", math.nan, ValueError),
])
def test_config_rejects_bad_values(key, value, error):
    with pytest.raises(error, match=key):
        TrainConfig(**{key: value})


def test_config_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['lr'\]"):
        TrainConfig.from_dict({"lr": 0.1})
    assert TrainConfig.from_dict(None) == TrainConfig()
    assert TrainConfig(grad_clip=None).grad_clip is None


# -- cost -----------------------------------------------------------------------------------------
def test_multiply_adds_of_a_known_network():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),            # 8*8*8 outputs x 3*9
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise: 8*8*8 x 9
        nn.Conv2d(8, 4, 1, stride=2),                          # 4*4*4 x 8
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))  # 10 x 4
    expected = 512 * 27 + 512 * 9 + 64 * 8 + 40
    model.train()
    assert count_multiply_adds(model, (3, 8, 8)) == expected
    assert model.training  # the mode is restored
    assert not any(m._forward_hooks for m in model.modules())  # the hooks are removed
    assert count_parameters(model) == 216 + 72 + 32 + 4 + 40 + 10


def test_cost_of_the_final_network_leaves_out_the_auxiliary_head():
    trainer = FinalTrainer(genotypes.DARTS_V2, TINY)
    with_aux = count_parameters(trainer.model, auxiliary=True)
    without = count_parameters(trainer.model)
    head = sum(p.numel() for p in trainer.model.auxiliary_head.parameters())
    assert with_aux - without == head > 0
    assert count_multiply_adds(trainer.model, (1, 8, 8)) > 0


# -- training -------------------------------------------------------------------------------------
def test_schedules_follow_the_paper():
    train, test = _loaders()
    trainer, metrics = train_genotype(genotypes.DARTS_V2, train, test,
                                      dict(TINY, epochs=4, learning_rate=0.04, lr_min=0.01))
    lrs = [r["lr"] for r in metrics["history"]]
    expected = [0.01 + 0.03 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert lrs == pytest.approx(expected)
    assert [r["drop_path_prob"] for r in metrics["history"]] == pytest.approx([0, 0.05, 0.1, 0.15])
    assert metrics["epochs"] == 4 and metrics["complete"]
    assert metrics["test_accuracy"] == metrics["history"][-1]["test_acc"]
    best = max(metrics["history"], key=lambda r: r["test_acc"])
    assert metrics["best_test_accuracy"] == best["test_acc"]
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["params"] == count_parameters(trainer.model)
    assert metrics["multiply_adds"] == count_multiply_adds(trainer.model, (1, 8, 8))
    assert metrics["genotype"] == str(genotypes.DARTS_V2)


def test_training_learns_digits():
    train, test = _loaders(n=512, batch_size=32)
    trainer, metrics = train_genotype(genotypes.DARTS_V2, train, test,
                                      dict(TINY, epochs=5, channels=8, auxiliary=False))
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert metrics["test_accuracy"] > 0.7


def test_auxiliary_loss_and_gradient_clipping_are_used(monkeypatch):
    train, test = _loaders(n=32)
    clipped = []
    original = nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        clipped.append(max_norm)
        return original(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(nn.utils, "clip_grad_norm_", spy)
    trainer = FinalTrainer(genotypes.DARTS_V1, dict(TINY, epochs=1, grad_clip=2.5))
    stats = []
    trainer.train_epoch(train, on_step=lambda t, s: stats.append(s))
    assert clipped == [2.5] and len(stats) == 1
    head = trainer.model.auxiliary_head.classifier.weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    no_clip = FinalTrainer(genotypes.DARTS_V1, dict(TINY, epochs=1, grad_clip=None))
    no_clip.train_epoch(train)
    assert clipped == [2.5]


def test_callback_can_stop_and_empty_loaders_are_errors():
    train, test = _loaders(n=32)
    trainer = FinalTrainer(genotypes.DARTS_V2, dict(TINY, epochs=5))
    metrics = trainer.fit(train, test, callback=lambda t, r: False)
    assert metrics["epochs"] == 1 and not metrics["complete"]
    with pytest.raises(ValueError, match="no batches"):
        trainer.train_epoch([])
    with pytest.raises(ValueError, match="no batches"):
        trainer.evaluate([])
    with pytest.raises(TypeError, match="Genotype"):
        FinalTrainer("DARTS_V2", TINY)
    with pytest.raises(ValueError, match=r"not a fastnas checkpoint"):
        trainer.load_state_dict({"model": {}, "epoch": 1, "rng": {}})
    with pytest.raises(ValueError, match=r"not a FinalTrainer state: missing \['optimizer'"):
        trainer.load_state_dict({**describe("train"), "model": {}, "epoch": 1, "rng": {}})
    with pytest.raises(ValueError, match="a train checkpoint, not a search checkpoint"):
        DARTSOptimizer(dict(channels=4, layers=3, device="cpu")).load_state_dict(
            trainer.state_dict())
    empty = FinalTrainer(genotypes.DARTS_V2, TINY).metrics()
    assert empty["test_accuracy"] is None and empty["multiply_adds"] is None


def test_resumed_training_continues_exactly(tmp_path):
    """Two epochs in one go equal one epoch, save, load, one more (weights, history, RNG)."""
    def run(stop_after):
        train, test = _loaders(n=64)
        trainer = FinalTrainer(genotypes.DARTS_V2, TINY)
        path = str(tmp_path / "trainer.pt")

        def callback(t, record):
            return t.epoch < stop_after

        trainer.fit(train, test, callback=callback)
        if trainer.epoch < TINY["epochs"]:
            trainer.save(path)
            torch.manual_seed(12345)  # whatever happens in between must not matter
            trainer = FinalTrainer.load(path)
            trainer.fit(train, test, callback=callback)
        return trainer

    straight, resumed = run(stop_after=99), run(stop_after=1)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(straight.history) == strip(resumed.history)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(),
                                 resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_saved_model_loads_with_weights_only(tmp_path):
    train, test = _loaders(n=32)
    trainer, _ = train_genotype(genotypes.DARTS_V2, train, test, dict(TINY, epochs=1))
    path = str(tmp_path / "model.pt")
    trainer.save_model(path, dataset="digits")
    state = torch.load(path, weights_only=True)
    assert state["dataset"] == "digits" and state["config"]["layers"] == 3
    model, genotype, config = load_model(path)
    assert genotype == genotypes.DARTS_V2 and config.channels == 4 and not model.training
    x = torch.randn(5, 1, 8, 8)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x)[0], trainer.model(x)[0])


# -- checkpoint files -----------------------------------------------------------------------------
def test_atomic_writes_leave_no_temp_files(tmp_path):
    path = str(tmp_path / "state.pt")
    save_atomic({"a": torch.arange(3)}, path)
    save_atomic({"a": torch.arange(4)}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(4))
    json_path = str(tmp_path / "m.json")
    write_json_atomic({"t": torch.tensor([[0.5, 1.0]]), "nan": float("nan"), 3: (1, 2)}, json_path)
    assert json.load(open(json_path)) == {"t": [[0.5, 1.0]], "nan": None, "3": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["m.json", "state.pt"]


def test_unreadable_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=f"checkpoint {bad} is unreadable"):
        load_checkpoint(str(bad))


# -- BatchNorm statistics after training ----------------------------------------------------------
def _batch_norm_inputs_reference(model, loader):
    """Per BatchNorm, the mean over ``loader``'s batches of its input's per-batch channel mean
    and unbiased variance, in float64, from a copy of ``model`` in train mode without drop
    path (forward pre-hooks; the copy's own statistics are never read)."""
    import copy

    model = copy.deepcopy(model).train()
    model.drop_path_prob = 0.0
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    sums = {name: [0.0, 0.0] for name in layers}
    hooks = []
    for name, m in layers.items():
        def hook(module, inputs, name=name):
            x = inputs[0].detach().double().transpose(0, 1).flatten(1)   # [C, N*H*W]
            sums[name][0] = sums[name][0] + x.mean(1)
            sums[name][1] = sums[name][1] + x.var(1, unbiased=True)
        hooks.append(m.register_forward_pre_hook(hook))
    batches = 0
    with torch.no_grad():
        for x, _ in loader:
            model(x)
            batches += 1
    for h in hooks:
        h.remove()
    return {name: (s[0] / batches, s[1] / batches) for name, s in sums.items()}, batches


def test_recalibrated_batch_norm_statistics_are_the_train_batches_means():
    train, test = _loaders(n=128)
    trainer, _ = train_genotype(genotypes.DARTS_V2, train, test, dict(TINY, epochs=1))
    train.set_epoch(1)   # the same batches for both passes
    reference, batches = _batch_norm_inputs_reference(trainer.model, train)
    momenta = {name: m.momentum for name, m in trainer.model.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    trainer.model.drop_path_prob = 0.1
    train.set_epoch(1)
    assert trainer.recalibrate_batch_norm(train) == batches == 4
    for name, m in trainer.model.named_modules():
        if name in reference:
            mean, var = reference[name]
            torch.testing.assert_close(m.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(m.running_var.double(), var, rtol=1e-5, atol=1e-6)
            assert m.momentum == momenta[name]
    assert trainer.model.drop_path_prob == 0.1 and trainer.model.training


def test_after_one_short_epoch_eval_mode_scores_the_weights_not_stale_statistics(tmp_path,
                                                                                 capsys):
    """One digits epoch (11 steps): the running statistics still weigh their start by 0.31 and
    eval mode scored 0.19 where training's own batches scored 0.26; recomputed statistics
    make model.pt score what its weights do (0.53), and both numbers say what they are."""
    from fastnas.cli import main

    out = tmp_path / "train"
    assert main(["train", "--genotype", "DARTS_V2", "--epochs", "1", "--layers", "3",
                 "--channels", "8", "--quiet", "--no-plots", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    with open(out / "metrics.json", encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["test_accuracy_running_statistics"] == metrics["history"][-1]["test_acc"]
    assert metrics["test_accuracy"] >= metrics["test_accuracy_running_statistics"] + 0.2
    model, _, _ = load_model(str(out / "model.pt"))
    test = data.make_loader(data.load_split("digits", "test"), 256, shuffle=False, device=CPU)
    with torch.no_grad():
        correct = sum((model(x)[0].argmax(1) == y).sum().item() for x, y in test)
    assert correct / 360 == pytest.approx(metrics["test_accuracy"])
    assert "(train mode, epoch mean)" in captured.err
    assert "(eval mode, running BN statistics)" in captured.err
    assert (f"test accuracy  {metrics['test_accuracy']:.4f} (eval mode, of model.pt: BatchNorm "
            "statistics recomputed over the train split)") in captured.out
