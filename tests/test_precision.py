"""Mixed precision: bf16 and fp16 losses within tolerance of fp32 on the same batch, steps that
run (fp16 through a GradScaler), architect gradients unscaled and fp32, clear errors."""
import pytest
import torch
import torch.nn.functional as F

from fastnas import DARTSOptimizer, SearchNetwork
from fastnas.darts import Architect, Precision
from fastnas.supernet import FastSearchNetwork

KW = dict(C=4, num_classes=5, layers=3, num_nodes=4, multiplier=4)
CFG = dict(channels=4, layers=3, num_classes=5, batch_size=4, device="cpu", seed=2)


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g)


@pytest.mark.parametrize("cls", [SearchNetwork, FastSearchNetwork])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_loss_close_to_fp32(cls, precision):
    torch.manual_seed(0)
    net = cls(**KW)
    x, y = batch()
    loss32 = F.cross_entropy(net(x), y)
    with Precision(precision, torch.device("cpu")).autocast():
        logits = net(x)
    assert logits.dtype == (torch.bfloat16 if precision == "bf16" else torch.float16)
    loss = F.cross_entropy(logits.float(), y)
    assert abs(loss.item() - loss32.item()) < 0.02 * abs(loss32.item()) + 0.01
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.alphas_normal.grad.dtype == torch.float32


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("supernet", ["reference", "fast"])
def test_search_step(precision, supernet):
    opt32 = DARTSOptimizer({**CFG, "supernet": supernet})
    opt = DARTSOptimizer({**CFG, "supernet": supernet, "precision": precision})
    assert (opt.precision.scaler is not None) == (precision == "fp16")
    train, val = batch(7), batch(8)
    s32, s = opt32.step(train, val), opt.step(train, val)
    for key in ("train_loss", "val_loss"):
        assert abs(s[key] - s32[key]) < 0.02 * abs(s32[key]) + 0.01
    for a, a32 in zip(opt.arch_parameters(), opt32.arch_parameters()):
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        assert torch.allclose(a, a32, atol=2e-3)      # Adam's first step moves each alpha by lr
    if precision == "fp16":
        state = opt.state_dict()
        assert "grad_scaler" in state
        again = DARTSOptimizer({**CFG, "supernet": supernet, "precision": precision})
        again.load_state_dict(state)
        assert again.precision.scaler.get_scale() == opt.precision.scaler.get_scale()


def test_second_order_step_in_bf16():
    opt = DARTSOptimizer({**CFG, "order": 2, "precision": "bf16"})
    before = [a.detach().clone() for a in opt.arch_parameters()]
    opt.step(batch(7), batch(8))
    assert all(torch.isfinite(a).all() and not torch.equal(a, b)
               for a, b in zip(opt.arch_parameters(), before))


def test_architect_loss_scale_is_divided_out():
    """With a loss scale the architect's gradients (first and second order, finite differences
    included) are the unscaled fp32 ones."""
    torch.manual_seed(0)
    net = FastSearchNetwork(**KW)
    train, val = batch(7), batch(8)
    wopt = torch.optim.SGD(net.weights(), lr=0.1, momentum=0.9)
    plain = Architect(net, lr=0.01, order=2)
    scaled = Architect(net, lr=0.01, order=2, loss_scale=lambda: 1024.0)
    g_plain, _, _ = plain.unrolled_gradient(train, val, 0.1, wopt)
    g_scaled, _, _ = scaled.unrolled_gradient(train, val, 0.1, wopt)
    for a, b in zip(g_plain, g_scaled):
        assert b.dtype == torch.float32
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_architect_skips_non_finite_steps():
    torch.manual_seed(0)
    net = FastSearchNetwork(**KW)
    arch = Architect(net, lr=0.01, loss_scale=lambda: float("inf"))
    before = [a.detach().clone() for a in net.alphas()]
    arch.step(batch(7), batch(8), 0.1, torch.optim.SGD(net.weights(), lr=0.1))
    assert arch.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(net.alphas(), before))


def test_unsupported_precision_is_a_clear_error(monkeypatch):
    import fastnas.darts.precision as precision

    monkeypatch.setattr(precision, "_autocast_supports", lambda device, dtype: False)
    with pytest.raises(ValueError, match="use 'bf16' on the CPU"):
        Precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision"):
        Precision("fp8", torch.device("cpu"))
