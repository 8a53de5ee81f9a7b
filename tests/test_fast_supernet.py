"""The fast supernet against the reference (the oracle): same parameters, logits, gradients,
BatchNorm statistics and DARTS steps; and its building blocks against plain torch."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastnas import DARTSOptimizer, SearchNetwork
from fastnas.darts import DARTSConfig
from fastnas.ops.functional.conv_blocks import conv_blocks
from fastnas.ops.functional.depthwise import depthwise_backward, depthwise_forward
from fastnas.ops.functional.node_sum import node_sum
from fastnas.ops.functional.pointwise import grouped_pointwise
from fastnas.supernet import FastSearchNetwork, build_supernet, check_kernels

# layers=4: a normal cell, two reduction cells (one after the other), a normal cell after a
# reduction: every kind of cell and preprocessing.
TINY = dict(C=4, num_classes=5, layers=4, num_nodes=4, multiplier=4)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def pair(seed=0, **kw):
    """A reference and a fast network with identical state, non-trivial alphas."""
    kw = {**TINY, **kw}
    torch.manual_seed(seed)
    ref = SearchNetwork(**kw)
    with torch.no_grad():
        for a in ref.alphas():
            a.normal_()
    fast = FastSearchNetwork(**kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def batch(n=3, size=16, seed=1, classes=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


# -- the network ----------------------------------------------------------------------------------
def test_same_modules_names_and_initialization():
    torch.manual_seed(3)
    ref = SearchNetwork(**TINY)
    torch.manual_seed(3)
    fast = FastSearchNetwork(**TINY)
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
    src = SearchNetwork(**TINY) if direction == "ref->fast" else FastSearchNetwork(**TINY)
    with torch.no_grad():
        for a in src.alphas():
            a.normal_()
    dst = FastSearchNetwork(**TINY) if direction == "ref->fast" else SearchNetwork(**TINY)
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
def test_same_darts_step_as_reference_in_float64(order):
    """Whole DARTS steps (architecture step, unrolled or not, then weight step) in float64: the
    fast supernet's alphas, weights and BatchNorm statistics equal the reference's to 1e-10."""
    cfg = dict(channels=4, layers=4, num_classes=5, batch_size=3, order=order, device="cpu",
               seed=4, learning_rate_alpha=0.05, precision="fp64", hessian_r=1e-5)
    ref = DARTSOptimizer({**cfg, "supernet": "reference"})
    fast = DARTSOptimizer({**cfg, "supernet": "fast"})
    assert isinstance(fast.model, FastSearchNetwork) and type(ref.model) is SearchNetwork
    assert all(p.dtype == torch.float64 for p in fast.model.parameters())
    for step in range(2):
        train, val = batch(seed=7 + step), batch(seed=17 + step)
        for opt in (ref, fast):
            opt.step(train, val)
    for a, b in zip(ref.arch_parameters(), fast.arch_parameters()):
        assert rel(b, a) < 1e-10
        assert not torch.allclose(a, torch.zeros_like(a), atol=1e-4)   # the alphas moved
    sr, sf = ref.model.state_dict(), fast.model.state_dict()
    for k in sr:
        if sr[k].is_floating_point():
            assert rel(sf[k], sr[k]) < 1e-10, k
    assert fast.genotype() == ref.genotype()


def test_float64_logits_and_gradients_match_reference():
    """Logits, alpha gradients and weight gradients of the fast supernet in float64 equal the
    reference's to 1e-10 relative (train mode, batch statistics)."""
    ref, fast = pair()
    ref.double(), fast.double()
    x, y = batch(size=8)
    x = x.double()
    out = {}
    for name, net in (("ref", ref), ("fast", fast)):
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, [*net.alphas(), *net.weights()])
        out[name] = (logits, grads)
    assert rel(out["fast"][0], out["ref"][0]) < 1e-10
    for g_fast, g_ref in zip(out["fast"][1], out["ref"][1]):
        assert rel(g_fast, g_ref) < 1e-10


def test_float32_step_close_to_reference():
    cfg = dict(channels=4, layers=4, num_classes=5, batch_size=3, device="cpu", seed=4)
    ref = DARTSOptimizer({**cfg, "supernet": "reference"})
    fast = DARTSOptimizer({**cfg, "supernet": "fast"})
    train, val = batch(seed=7), batch(seed=8)
    for opt in (ref, fast):
        opt.step(train, val)
    sr, sf = ref.model.state_dict(), fast.model.state_dict()
    for k in sr:
        assert torch.allclose(sf[k].double(), sr[k].double(), rtol=1e-4, atol=1e-5), k


def test_one_setting_picks_the_supernet_one_the_kernels(monkeypatch):
    """``supernet`` picks the implementation, the kernel backend picks the kernels; requests
    that contradict each other or cannot be honoured raise an error naming both settings."""
    from fastnas.kernels import dispatch

    cpu = torch.device("cpu")
    assert check_kernels("fast", cpu) == "torch" and check_kernels("reference", cpu) == "torch"
    assert isinstance(build_supernet("fast", C=4, layers=3), FastSearchNetwork)
    assert type(build_supernet("reference", C=4, layers=3)) is SearchNetwork
    with pytest.raises(ValueError, match="supernet must be one of"):
        build_supernet("torch", C=4, layers=3)
    with kernels_backend("triton"):
        with pytest.raises(ValueError, match=r"supernet='reference'.*kernel backend 'triton'"):
            DARTSOptimizer(dict(channels=4, layers=3, device="cpu", supernet="reference"))
        monkeypatch.setattr(dispatch, "INTERPRET", False)   # a CPU without Triton's interpreter
        with pytest.raises(ValueError, match=r"supernet='fast' with the kernel backend 'triton'"):
            DARTSOptimizer(dict(channels=4, layers=3, device="cpu"))
        monkeypatch.undo()
        with pytest.raises(ValueError, match=r"kernel backend 'triton'.*float64"):
            DARTSOptimizer(dict(channels=4, layers=3, device="cpu", precision="fp64"))
    with kernels_backend("triton"), pytest.warns(DeprecationWarning, match="backend='torch'"):
        with pytest.raises(ValueError, match=r"backend='torch'.*kernel backend 'triton'"):
            DARTSOptimizer(dict(channels=4, layers=3, device="cpu", backend="torch"))


def test_deprecated_names_still_work():
    import fastnas
    import fastnas.supernet

    with pytest.warns(DeprecationWarning, match="fastnas.SearchNetwork"):
        assert fastnas.Network is SearchNetwork
    with pytest.warns(DeprecationWarning, match="fastnas.SearchNetwork"):
        assert fastnas.supernet.Network is SearchNetwork
    for old, supernet in (("reference", "reference"), ("torch", "fast"), ("auto", "fast")):
        with pytest.warns(DeprecationWarning, match="deprecated"):
            cfg = DARTSConfig(channels=4, layers=3, device="cpu", backend=old)
        assert cfg.supernet == supernet
        with pytest.warns(DeprecationWarning):
            opt = DARTSOptimizer(cfg.to_dict())
        assert isinstance(opt.model, FastSearchNetwork) == (supernet == "fast")


def kernels_backend(name):
    from fastnas import kernels

    return kernels.use_backend(name)


def test_fast_supernet_runs_the_triton_kernels():
    """With the kernel backend forced to Triton (the interpreter on a CPU), the fast supernet
    runs the fused plan on the Triton kernels (the depthwise convs with their channel
    multiplier, and the node sums) and matches the reference in forward and backward."""
    from fastnas import kernels
    from fastnas.kernels import dispatch

    if not dispatch.HAS_TRITON or not (dispatch.INTERPRET or torch.cuda.is_available()):
        pytest.skip("needs Triton (compiled on CUDA, or TRITON_INTERPRET=1 on a CPU)")
    ref, fast = pair(layers=3, num_nodes=2, multiplier=2)   # normal, then two reduction cells
    device = "cuda" if torch.cuda.is_available() and not dispatch.INTERPRET else "cpu"
    ref, fast = ref.to(device), fast.to(device)
    x, y = batch(size=6)
    x, y = x[:2].to(device), y[:2].to(device)
    kernels.reset_launch_counts()
    with kernels.use_backend("triton"):
        lf = fast(x)
        F.cross_entropy(lf, y).backward()
    counts = kernels.launch_counts()
    lr = ref(x)
    F.cross_entropy(lr, y).backward()
    assert counts.get("depthwise_fwd", 0) > 0 and counts.get("weighted_sum_fwd", 0) > 0, counts
    assert counts.get("depthwise_bwd_input", 0) > 0 and counts.get("weighted_sum_bwd", 0) > 0
    assert counts.get("depthwise_bwd_weight", 0) > 0, counts
    assert rel(lf, lr) < 1e-4
    assert rel(fast.alphas_normal.grad, ref.alphas_normal.grad) < 1e-4
    assert rel(fast.alphas_reduce.grad, ref.alphas_reduce.grad) < 1e-4
    for (name, a), b in zip(fast.named_weights(), ref.weights()):
        if b.grad is not None:
            assert rel(a.grad, b.grad) < 1e-3, name


def test_triton_kernel_set_never_repeats_the_input(monkeypatch):
    """The Triton path hands each depthwise kernel the input once, with an ``M * C``-channel
    weight (the channel multiplier), never an ``M``-fold copy of the input."""
    from fastnas.supernet import fast as fast_module

    seen = []

    def depthwise(x, w, stride, padding, dilation):
        seen.append((x.shape[1], w.shape[0]))
        M = w.shape[0] // x.shape[1]
        return F.conv2d(torch.cat([x] * M, 1), w, None, stride, padding, dilation, w.shape[0])

    monkeypatch.setattr(fast_module.kernels, "depthwise_conv2d", depthwise)
    monkeypatch.setattr(fast_module.kernels, "weighted_sum",
                        lambda xs, w: sum(w[k] * t for k, t in enumerate(xs)))
    monkeypatch.setattr(fast_module, "kernel_set_for", lambda x: fast_module.TritonKernels)
    ref, fast = pair(layers=3)
    x, _ = batch(size=4)
    assert rel(fast(x), ref(x)) < 1e-4
    assert seen and all(w % x == 0 for x, w in seen)
    # First halves: one kernel per reader edge and input channel, the input passed once.
    assert {w // x for x, w in seen} >= {2, 3, 4}


# -- building blocks ------------------------------------------------------------------------------
@pytest.mark.parametrize("k,stride,dilation,m,size", [
    (k, s, d, m, size) for (k, s, d), m, size in itertools.product(
        [(3, 1, 1), (5, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2), (5, 1, 2), (3, 2, 2), (5, 2, 2)],
        [1, 3], [8, 7])])
def test_depthwise_forward_and_backward_match_conv2d(k, stride, dilation, m, size):
    g = torch.Generator().manual_seed(k * 100 + stride * 10 + dilation + m + size)
    C, pad = 3, dilation * (k - 1) // 2
    x = torch.randn(2, C, size, size + 1, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(m * C, 1, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    cl = torch.channels_last
    x32 = x.detach().float().contiguous(memory_format=cl)
    y = depthwise_forward(x32, w.detach().float(), stride, pad, dilation)
    y_ref = F.conv2d(x.repeat(1, m, 1, 1), w, None, stride, pad, dilation, m * C)
    assert y.is_contiguous(memory_format=cl)
    gy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    gx, gw = depthwise_backward(x32, w.detach().float(), gy.float().contiguous(memory_format=cl),
                                stride, pad, dilation)
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


def test_node_sum_matches_autograd():
    g = torch.Generator().manual_seed(0)
    block = torch.randn(2, 6, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    single = torch.randn(2, 1, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    parts = [block[:, 1:4], single]
    out = node_sum(parts, w)
    ref = sum(w[k] * t for k, t in enumerate([block[:, 1], block[:, 2], block[:, 3], single[:, 0]]))
    assert rel(out, ref) < 1e-12
    assert torch.autograd.gradcheck(lambda b, s, w: node_sum([b[:, 1:4], s], w),
                                    (block, single, w))


@pytest.mark.parametrize("training", [True, False])
def test_conv_blocks_match_the_modules(training):
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
    y = conv_blocks([x], [(0, 1, 1, 1), (0, 1, 4, 2), (0, 1, 2, 2)],
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
