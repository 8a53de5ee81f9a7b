"""The fast supernet against the reference (the oracle): same parameters, logits, gradients,
BatchNorm statistics and DARTS steps; and its building blocks against plain torch."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastnas import DARTSOptimizer
from fastnas.darts import build_supernet
from fastnas.config import DARTSConfig
from fastnas.depthwise import depthwise_conv2d
from fastnas.dilconv import dil_conv_blocks
from fastnas.fast_supernet import FastNetwork, resolve_backend, triton_available
from fastnas.pointwise import grouped_pointwise
from fastnas.supernet import Network
from fastnas.weighted_sum import weighted_sum, weighted_sum_parts

# layers=4: a normal cell, two reduction cells (one after the other), a normal cell after a
# reduction: every kind of cell and preprocessing.
TINY = dict(C=4, num_classes=5, layers=4, num_nodes=4, multiplier=4)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def pair(seed=0, **kw):
    """A reference and a fast network with identical state, non-trivial alphas."""
    kw = {**TINY, **kw}
    torch.manual_seed(seed)
    ref = Network(**kw)
    with torch.no_grad():
        for a in ref.alphas():
            a.normal_()
    fast = FastNetwork(**kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def batch(n=3, size=16, seed=1, classes=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


# -- the network ----------------------------------------------------------------------------------
def test_same_modules_names_and_initialization():
    torch.manual_seed(3)
    ref = Network(**TINY)
    torch.manual_seed(3)
    fast = FastNetwork(**TINY)
    sr, sf = ref.state_dict(), fast.state_dict()
    assert list(sr) == list(sf)
    assert all(sr[k].shape == sf[k].shape and torch.equal(sr[k], sf[k]) for k in sr)
    assert [n for n, _ in ref.named_weights()] == [n for n, _ in fast.named_weights()]
    assert len(list(fast.weights())) == len(list(ref.weights()))
    assert all(torch.equal(a, b) for a, b in zip(ref.alphas(), fast.alphas()))
    assert str(ref.genotype()) == str(fast.genotype())


@pytest.mark.parametrize("direction", ["ref->fast", "fast->ref"])
def test_logits_match_after_loading_either_way(direction):
    torch.manual_seed(0)
    src = Network(**TINY) if direction == "ref->fast" else FastNetwork(**TINY)
    with torch.no_grad():
        for a in src.alphas():
            a.normal_()
    dst = FastNetwork(**TINY) if direction == "ref->fast" else Network(**TINY)
    dst.load_state_dict(src.state_dict())
    x, _ = batch()
    assert rel(dst(x), src(x)) < 1e-4                     # training mode: batch statistics
    src.eval(), dst.eval()
    with torch.no_grad():
        assert rel(dst(x), src(x)) < 1e-4                 # eval mode: each edge's running stats


@pytest.mark.parametrize("size", [16, 15])
def test_gradients_and_running_stats_match(size):
    ref, fast = pair()
    x, y = batch(size=size)
    lr, lf = ref(x), fast(x)
    assert rel(lf, lr) < 1e-4
    F.cross_entropy(lr, y).backward()
    F.cross_entropy(lf, y).backward()
    for (name, pr), (_, pf) in zip(ref.named_parameters(), fast.named_parameters()):
        assert rel(pf.grad, pr.grad) < 1e-4, name
    sr, sf = ref.state_dict(), fast.state_dict()
    for k in sr:
        assert torch.allclose(sf[k].double(), sr[k].double(), rtol=1e-5, atol=1e-6), k


def test_eval_uses_each_edges_own_running_stats():
    ref, fast = pair()
    with torch.no_grad():  # make the pool BNs of different edges disagree
        for net in (ref, fast):
            for i, bn in enumerate(m for n, m in net.named_modules()
                                   if n.endswith("ops.1.1") or n.endswith("ops.2.1")):
                bn.running_mean.fill_(0.01 * i)
                bn.running_var.fill_(1 + 0.1 * i)
    ref.eval(), fast.eval()
    x, _ = batch()
    with torch.no_grad():
        assert rel(fast(x), ref(x)) < 1e-4


def test_functional_call_swaps_the_weights():
    """The architect evaluates at virtual weights through functional_call: the fused cell must
    read its parameters at call time, not cache them."""
    ref, fast = pair()
    x, _ = batch()
    g = torch.Generator().manual_seed(5)
    state = {n: p.detach() + 0.1 * torch.randn(p.shape, generator=g)
             for n, p in ref.named_parameters()}
    for net in (ref, fast):
        state.update({n: b.clone() for n, b in net.named_buffers()})
    out_ref = functional_call(ref, state, (x,))
    out_fast = functional_call(fast, dict(state), (x,))
    assert rel(out_fast, out_ref) < 1e-4
    assert rel(out_fast, fast(x)) > 1e-3          # the swap did change the output


@pytest.mark.parametrize("order", [1, 2])
def test_same_darts_step_as_reference(order):
    cfg = dict(channels=4, layers=4, num_classes=5, batch_size=3, order=order, device="cpu",
               seed=4, learning_rate_alpha=0.05)
    ref = DARTSOptimizer({**cfg, "backend": "reference"})
    fast = DARTSOptimizer({**cfg, "backend": "torch"})
    assert isinstance(fast.model, FastNetwork) and type(ref.model) is Network
    train, val = batch(seed=7), batch(seed=8)
    for opt in (ref, fast):
        opt.step(train, val)
    for a, b in zip(ref.arch_parameters(), fast.arch_parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
        assert not torch.allclose(a, torch.zeros_like(a), atol=1e-4)   # the alphas moved
    sr, sf = ref.model.state_dict(), fast.model.state_dict()
    for k in sr:
        assert torch.allclose(sf[k].double(), sr[k].double(), rtol=1e-4, atol=1e-5), k


def test_backend_resolution():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("reference", "cpu") == "reference"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("triton", "cpu")
    assert not triton_available() or torch.cuda.is_available()
    assert isinstance(build_supernet(DARTSConfig(channels=4, layers=2, device="cpu")), FastNetwork)
    assert type(build_supernet(DARTSConfig(channels=4, layers=2, backend="reference",
                                           device="cpu"))) is Network


def test_triton_backend_composition_on_cpu():
    """The triton backend's glue (repeated inputs, unbound node parts) with the kernels' torch
    reference implementations standing in for the Triton ones."""
    kernels = pytest.importorskip("fastnas.kernels")
    ref, _ = pair(layers=3)
    fast = FastNetwork(**{**TINY, "layers": 3}, backend="triton")
    fast.load_state_dict(ref.state_dict())
    x, y = batch(size=8)
    with kernels.use_backend("torch"):
        lf = fast(x)
        F.cross_entropy(lf, y).backward()
    lr = ref(x)
    F.cross_entropy(lr, y).backward()
    assert rel(lf, lr) < 1e-4
    assert rel(fast.alphas_normal.grad, ref.alphas_normal.grad) < 1e-4


# -- building blocks ------------------------------------------------------------------------------
@pytest.mark.parametrize("k,stride,dilation,m,size", [
    (k, s, d, m, size) for (k, s, d), m, size in itertools.product(
        [(3, 1, 1), (5, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2), (5, 1, 2), (3, 2, 2), (5, 2, 2)],
        [1, 3], [8, 7])])
def test_depthwise_conv2d_matches_conv2d(k, stride, dilation, m, size):
    g = torch.Generator().manual_seed(k * 100 + stride * 10 + dilation + m + size)
    C, pad = 3, dilation * (k - 1) // 2
    x = torch.randn(2, C, size, size + 1, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(m * C, 1, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    y = depthwise_conv2d(x.float(), w.float(), stride, pad, dilation)
    y_ref = F.conv2d(x.repeat(1, m, 1, 1), w, None, stride, pad, dilation, m * C)
    assert y.is_contiguous(memory_format=torch.channels_last)
    gy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    gx, gw = torch.autograd.grad(y, (x, w), gy.float())
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, w), gy)
    assert rel(y, y_ref) < 1e-5 and rel(gx, gx_ref) < 1e-5 and rel(gw, gw_ref) < 1e-5


def test_grouped_pointwise_matches_conv2d():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, m * 4, 5, 6, generator=g, dtype=torch.float64)
          .contiguous(memory_format=torch.channels_last).requires_grad_() for m in (2, 3)]
    w = torch.randn(5, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = grouped_pointwise(xs, w)
    y_ref = F.conv2d(torch.cat(xs, 1), w.reshape(30, 4, 1, 1), groups=5)
    gy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(y, (*xs, w), gy)
    grads_ref = torch.autograd.grad(y_ref, (*xs, w), gy)
    assert rel(y, y_ref) < 1e-10
    assert all(rel(a, b) < 1e-10 for a, b in zip(grads, grads_ref))


def test_weighted_sum_matches_autograd():
    g = torch.Generator().manual_seed(0)
    block = torch.randn(2, 6, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    single = torch.randn(2, 1, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    parts = [block[:, 1:4], single]
    out = weighted_sum_parts(parts, w)
    ref = sum(w[k] * t for k, t in enumerate([block[:, 1], block[:, 2], block[:, 3], single[:, 0]]))
    assert rel(out, ref) < 1e-12
    assert torch.autograd.gradcheck(lambda b, s, w: weighted_sum_parts([b[:, 1:4], s], w),
                                    (block, single, w))
    xs = [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    assert rel(weighted_sum(xs, w[:3]), sum(w[k] * x for k, x in enumerate(xs))) < 1e-12


@pytest.mark.parametrize("training", [True, False])
def test_dil_conv_blocks_match_the_modules(training):
    """One fused call == the reference DilConv modules, outputs, all gradients, statistics."""
    from fastnas.ops import DilConv

    torch.manual_seed(0)
    C, convs = 4, [DilConv(4, 4, 3, 1, 1, 1, affine=False), DilConv(4, 4, 5, 1, 4, 2, affine=False),
                   DilConv(4, 4, 3, 1, 2, 2, affine=False)]
    twin = [DilConv(4, 4, m[1].kernel_size[0], 1, m[1].padding[0], m[1].dilation[0],
                    affine=False) for m in convs]
    for a, b in zip(twin, convs):
        a.load_state_dict(b.state_dict())
        a.train(training), b.train(training)
    x = torch.randn(3, C, 6, 6, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    # groups: ops 0 and 1 read x; op 2 reads x too but as its own group
    y = dil_conv_blocks([x], [(0, 1, 1, 1), (0, 1, 4, 2), (0, 1, 2, 2)],
                        [b[1].weight for b in twin],
                        torch.stack([b[2].weight.view(C, C) for b in twin]), [b[3] for b in twin])
    y_ref = torch.cat([m(x2) for m in convs], 1)
    assert rel(y, y_ref) < 1e-5
    gy = torch.randn_like(y_ref)
    y.backward(gy)
    y_ref.backward(gy)
    assert rel(x.grad, x2.grad) < 1e-4
    for a, b in zip(twin, convs):
        assert rel(a[1].weight.grad, b[1].weight.grad) < 1e-4
        assert rel(a[2].weight.grad, b[2].weight.grad) < 1e-4
        assert torch.allclose(a[3].running_var, b[3].running_var)
        assert int(a[3].num_batches_tracked) == int(b[3].num_batches_tracked)
