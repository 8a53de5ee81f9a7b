"""Gradient checkpointing of supernet cells: same losses, gradients and BatchNorm statistics as
without, statistics updated once per forward, correct under functional_call (the architect),
and fewer activations kept."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastnas import DARTSOptimizer
from fastnas.profiling import saved_activations
from fastnas.supernet import FastSearchNetwork, SearchNetwork

KW = dict(C=4, num_classes=5, layers=4, num_nodes=4, multiplier=4)


def batch(seed=1, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 3, size, size, generator=g), torch.randint(0, 5, (3,), generator=g)


def twins(cls):
    torch.manual_seed(0)
    plain = cls(**KW)
    with torch.no_grad():
        for a in plain.alphas():
            a.normal_()
    ckpt = cls(**KW, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


@pytest.mark.parametrize("cls", [SearchNetwork, FastSearchNetwork])
def test_same_gradients_and_statistics_updated_once(cls):
    plain, ckpt = twins(cls)
    x, y = batch()
    for net in (plain, ckpt):
        F.cross_entropy(net(x), y).backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name
    sp, sc = plain.state_dict(), ckpt.state_dict()
    for k in sp:   # the recomputation in backward did not update the running stats again
        assert torch.equal(sp[k], sc[k]), k
    assert int(sc["cells.0.edges.0.ops.4.0.3.num_batches_tracked"]) == 1


def test_checkpointing_is_correct_under_functional_call():
    """The architect differentiates after functional_call has restored the real weights: the
    recomputation must use the swapped-in ones."""
    plain, ckpt = twins(FastSearchNetwork)
    x, y = batch()
    g = torch.Generator().manual_seed(3)
    weights = {n: (p.detach() + 0.05 * torch.randn(p.shape, generator=g)).requires_grad_()
               for n, p in plain.named_weights()}
    grads = []
    for net in (plain, ckpt):
        state = dict(weights, **{n: b.clone() for n, b in net.named_buffers()})
        loss = F.cross_entropy(functional_call(net, state, (x,)), y)
        grads.append(torch.autograd.grad(loss, net.alphas() + list(weights.values())))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_per_cell_checkpointing_and_validation():
    plain, ckpt = twins(FastSearchNetwork)
    ckpt.set_checkpointing([1, 3])
    assert ckpt.checkpointed == {1, 3}
    x, y = batch()
    assert torch.allclose(plain(x), ckpt(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no such cells"):
        ckpt.set_checkpointing([7])
    ckpt.set_checkpointing(False)
    assert not ckpt.checkpointed


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_fewer_activations_kept(backend):
    cls = FastSearchNetwork if backend == "torch" else SearchNetwork
    plain, ckpt = twins(cls)
    x, y = batch()
    kept_plain, _, _ = saved_activations(plain, x, y)
    kept_ckpt, _, _ = saved_activations(ckpt, x, y)
    assert kept_ckpt < 0.5 * kept_plain


@pytest.mark.parametrize("order", [1, 2])
def test_darts_step_with_checkpointing(order):
    cfg = dict(channels=4, layers=4, num_classes=5, batch_size=3, order=order, device="cpu",
               seed=4, learning_rate_alpha=0.05)
    plain = DARTSOptimizer(cfg)
    ckpt = DARTSOptimizer({**cfg, "checkpointing": True})
    assert ckpt.model.checkpointed == set(range(4))
    train, val = batch(seed=7), batch(seed=8)
    for opt in (plain, ckpt):
        opt.step(train, val)
    for a, b in zip(plain.arch_parameters(), ckpt.arch_parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    sp, sc = plain.model.state_dict(), ckpt.model.state_dict()
    for k in sp:
        assert torch.allclose(sp[k].double(), sc[k].double(), rtol=1e-4, atol=1e-6), k


def test_memory_profile_report():
    """``fastnas profile``'s API: a report with the step's peak and a per-cell/per-op breakdown."""
    from fastnas.profiling import MemoryReport, format_report, profile_memory

    cfg = dict(channels=4, layers=3, num_classes=5, device="cpu", seed=0)
    fast = profile_memory(cfg, batch_size=2, image_size=8)
    ref = profile_memory({**cfg, "supernet": "reference"}, batch_size=2, image_size=8)
    assert isinstance(fast, MemoryReport) and fast.supernet == "fast" and fast.kernels == "torch"
    assert ref.supernet == "reference" and fast.step_peak_bytes >= 0
    assert set(fast.saved_by_cell) >= {"stem", "cells.0", "cells.1", "cells.2"}
    assert sum(fast.saved_by_cell.values()) == fast.saved_bytes == sum(fast.saved_by_op.values())
    assert {"pools", "sep/dil convs, first half", "node sums"} <= set(fast.saved_by_op)
    assert {"sep_conv_3x3", "max_pool_3x3", "dil_conv_5x5"} <= set(ref.saved_by_op)
    assert fast.saved_bytes < 0.5 * ref.saved_bytes
    text = format_report(fast)
    assert "peak memory growth during one search step" in text and "cells.2" in text
