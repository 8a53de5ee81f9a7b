"""The methods' supernet axes (issue 18): GDAS's Gumbel relaxation and sampled-only execution,
PC-DARTS's partial channels and edge normalization, DARTS-'s auxiliary skip. Each formula is
checked in float64 against a hand-written computation, and the fast supernet against the
reference (the oracle) to 1e-10, with the same Gumbel noise."""
import io

import pytest
import torch
import torch.nn.functional as F

from fastnas.ops import FactorizedReduce, Identity, cell_plan
from fastnas.space import ARCHITECTURE, EVALUATION, WEIGHTS, Gumbel, darts_space
from fastnas.supernet import FastSearchNetwork, SearchNetwork, build_supernet
from fastnas.supernet import fast as fast_module
from fastnas.supernet.reference import MixedOp, SearchCell, channel_shuffle

TINY = dict(C=8, num_classes=5, layers=4, num_nodes=4)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def batch(n=3, size=8, seed=1, classes=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, size, size, generator=g).to(dtype),
            torch.randint(0, classes, (n,), generator=g))


def hand_gumbel(a, seed, tau):
    """The official formula, written out: g = -log(Exp(1)) from a fresh generator seeded like
    the relaxation's (float32 draws), p = softmax((log_softmax(a) + g) / tau)."""
    g = -torch.empty(a.shape, dtype=torch.float32).exponential_(
        generator=torch.Generator().manual_seed(seed)).log().to(a.dtype)
    log_s = a - torch.log(torch.exp(a).sum(-1, keepdim=True))
    z = (log_s + g) / tau
    return torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)


# -- the Gumbel relaxation (GDAS) -----------------------------------------------------------------
@pytest.mark.parametrize("phase", [ARCHITECTURE, WEIGHTS])
def test_gumbel_sample_and_straight_through_gradient_float64(phase):
    """Forward: the one-hot of the argmax of the tempered probabilities. Backward: the
    Jacobian of p, by hand d(sum c*h)/da = p * (c - <p, c>) / tau (the log_softmax part
    vanishes since sum_k p_k (c_k - <p, c>) = 0)."""
    torch.manual_seed(0)
    a = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    relax = Gumbel(tau_max=3.0, tau_min=0.5, seed=11)
    relax.set_epoch(1, 3)
    assert relax.tau == pytest.approx(1.75)
    h, index = relax.sample(a, phase)
    p = hand_gumbel(a.detach(), 11, 1.75)
    assert index.dtype == torch.long and index.device.type == "cpu"
    assert torch.equal(index, p.argmax(-1))
    assert torch.allclose(h, F.one_hot(index, 8).double(), atol=1e-15, rtol=0)
    c = torch.randn(6, 8, dtype=torch.float64)
    (h * c).sum().backward()
    expected = p * (c - (p * c).sum(-1, keepdim=True)) / 1.75
    assert rel(a.grad, expected) < 1e-12
    assert (a.grad != 0).all()       # every alpha of the edge gets a gradient


def test_gumbel_schedule_state_eval_and_strengths():
    relax = Gumbel(tau_max=10.0, tau_min=0.1, seed=3)
    assert relax.tau == 10.0
    relax.set_epoch(0, 5)
    assert relax.tau == 10.0
    relax.set_epoch(4, 5)
    assert relax.tau == pytest.approx(0.1)
    relax.set_epoch(2, 5)
    assert relax.tau == pytest.approx(5.05)
    relax.set_epoch(0, 1)
    assert relax.tau == 10.0
    a = torch.randn(14, 8)
    state = relax.state_dict()
    first = [relax.sample(a, WEIGHTS)[1] for _ in range(3)]
    buffer = io.BytesIO()            # as the search checkpoint keeps it
    torch.save(state, buffer)
    buffer.seek(0)
    again = Gumbel(tau_max=10.0, tau_min=0.1, seed=3)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert again.tau == 10.0
    assert all(torch.equal(i, again.sample(a, WEIGHTS)[1]) for i in first)
    assert not all(torch.equal(first[0], i) for i in first[1:])   # fresh noise every call
    other_seed = Gumbel(seed=4)
    assert not torch.equal(Gumbel(seed=3).noise((14, 8)), other_seed.noise((14, 8)))
    h, index = relax.sample(a, EVALUATION)
    assert torch.equal(index, a.argmax(-1)) and torch.equal(h, F.one_hot(index, 8).float())
    assert torch.allclose(relax.strengths(a), F.softmax(a, -1))
    with pytest.raises(ValueError, match="tau_min <= tau_max"):
        Gumbel(tau_max=0.1, tau_min=1.0)
    with pytest.raises(ValueError, match="0 < tau_min"):
        Gumbel(tau_min=0.0)


def test_gumbel_draws_again_while_the_noise_is_not_finite(monkeypatch):
    relax = Gumbel(seed=0)
    real, calls = relax.noise, []

    def noise(shape):
        calls.append(shape)
        g = real(shape)
        if len(calls) == 1:
            g[0, 0] = float("inf")
        return g

    monkeypatch.setattr(relax, "noise", noise)
    h, _ = relax.sample(torch.zeros(3, 4), WEIGHTS)
    assert len(calls) == 2 and torch.isfinite(h).all()


def test_one_sample_per_forward_and_cell_type_shared_by_its_cells(monkeypatch):
    torch.manual_seed(0)
    net = SearchNetwork(**TINY, relaxation=Gumbel(seed=1))
    calls = []
    real = net.relaxation.noise
    monkeypatch.setattr(net.relaxation, "noise", lambda shape: calls.append(shape) or real(shape))
    seen = []
    for cell in net.cells:
        for r, edge in enumerate(cell.edges):
            edge.register_forward_pre_hook(
                lambda m, args, cell=cell, r=r: seen.append((cell.reduction, r, args[2])))
    x, _ = batch(dtype=torch.float32)
    net(x)
    assert len(calls) == 2                                   # normal and reduce, once each
    for reduction, r, index in seen:
        t = "reduce" if reduction else "normal"
        assert index == int(net.arch.selected[t][r])


# -- sampled-only execution -----------------------------------------------------------------------
def test_reference_edge_computes_only_the_sampled_op():
    torch.manual_seed(0)
    edge = MixedOp(4, 1).double()
    ran = []
    for k, op in enumerate(edge.ops):
        op.register_forward_hook(lambda m, i, o, k=k: ran.append(k))
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    w = torch.rand(8, dtype=torch.float64)
    out = edge(x, w, index=4)
    assert ran == [4]
    edge_copy = edge.ops[4]
    assert torch.equal(out, edge_copy(x) * w[4])


def nets(seed=0, relaxation=None, **kw):
    """A reference and a fast network (float64) with identical state, non-trivial alphas and
    relaxations seeded alike (the same Gumbel noise)."""
    kw = {**TINY, **kw}
    torch.manual_seed(seed)
    ref = SearchNetwork(**kw, relaxation=None if relaxation is None else relaxation())
    with torch.no_grad():
        for a in ref.alphas():
            a.normal_()
    fast = FastSearchNetwork(**kw, relaxation=None if relaxation is None else relaxation())
    fast.load_state_dict(ref.state_dict())
    return ref.double(), fast.double()


METHODS = {
    "gdas": dict(relaxation=lambda: Gumbel(seed=5)),
    "pc-darts K=2": dict(partial_channels=2),
    "pc-darts K=4, edge norm": dict(partial_channels=4, edge_normalization=True),
    "edge norm": dict(edge_normalization=True),
    "darts-minus": dict(aux_skip=4),
    "gdas, K=2, edge norm, aux skip": dict(relaxation=lambda: Gumbel(seed=2), partial_channels=2,
                                           edge_normalization=True, aux_skip=4),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_fast_matches_reference_in_float64(method):
    """Logits, the gradients of every alpha (and beta) and every weight, and the BatchNorm
    statistics: fast = reference to 1e-10 (train mode, then eval mode), the same ops sampled."""
    ref, fast = nets(**METHODS[method])
    for net in (ref, fast):
        net.set_epoch(1, 3)
    sizes = (8, 7) if method == "gdas" else (8,)
    for size in sizes:
        x, y = batch(size=size)
        out = {}
        for name, net in (("ref", ref), ("fast", fast)):
            logits = net(x)
            params = [*net.alphas(), *net.weights()]
            grads = torch.autograd.grad(F.cross_entropy(logits, y), params, allow_unused=True)
            out[name] = logits, grads, {t: s.clone() for t, s in net.arch.selected.items()
                                        if s is not None}
        assert rel(out["fast"][0], out["ref"][0]) < 1e-10
        assert out["fast"][2].keys() == out["ref"][2].keys()
        assert all(torch.equal(out["fast"][2][t], out["ref"][2][t]) for t in out["ref"][2])
        names = [n for n, _ in ref.named_parameters()]
        alpha_names = {id(a) for a in ref.alphas()}
        for name, g_fast, g_ref, p in zip(names, out["fast"][1], out["ref"][1],
                                          [*ref.alphas(), *ref.weights()]):
            assert (g_fast is None) == (g_ref is None), name
            if g_ref is not None:
                assert rel(g_fast, g_ref) < 1e-10, name
            if id(p) in alpha_names:
                assert g_ref is not None and g_ref.abs().sum() > 0
    sr, sf = ref.state_dict(), fast.state_dict()
    assert list(sr) == list(sf)
    for k in sr:
        if sr[k].is_floating_point():   # (some running means are ~1e-17: no relative error)
            assert torch.allclose(sf[k], sr[k], rtol=1e-10, atol=1e-14), k
    ref.eval(), fast.eval()
    x, _ = batch(seed=3)
    with torch.no_grad():
        assert rel(fast(x), ref(x)) < 1e-10


def test_checkpointed_gdas_cells_recompute_the_same_sample():
    ref, fast = nets(relaxation=lambda: Gumbel(seed=5), partial_channels=2)
    fast.set_checkpointing(True)
    x, y = batch()
    g = {}
    for name, net in (("ref", ref), ("fast", fast)):
        loss = F.cross_entropy(net(x), y)
        g[name] = torch.autograd.grad(loss, net.alphas())
    assert all(rel(a, b) < 1e-10 for a, b in zip(g["fast"], g["ref"]))


def expected_work(net):
    """From the last forward's samples: (depthwise blocks x channels, pools) that the fused
    plan must run: per cell and state, each edge that sampled a sep or dil conv is one block of
    the first half (a sep conv one more of the second half), each distinct sampled pool one
    pool."""
    space = net.space
    blocks = pools = 0
    for cell, spec in zip(net.cells, cell_plan(net.layers, net.C)):
        index = net.arch.selected["reduce" if cell.reduction else "normal"]
        C = spec.C // net.partial_channels
        for j in range(space.num_states - 1):
            chosen = [space.ops[int(index[e.row])] for e in space.readers(j)]
            blocks += C * sum(2 if op.startswith("sep") else 1 for op in chosen
                              if op.startswith(("sep", "dil")))
            pools += len({op for op in chosen if "pool" in op})
    return blocks, pools


def count_fused_work(monkeypatch):
    done = {"blocks": 0, "pools": 0}
    conv_blocks, pool = fast_module.conv_blocks, fast_module._pool

    def counting_conv_blocks(inputs, groups, dw, pw, bns):
        done["blocks"] += sum(w.shape[0] for w in dw)
        return conv_blocks(inputs, groups, dw, pw, bns)

    def counting_pool(x, p):
        done["pools"] += 1
        return pool(x, p)

    monkeypatch.setattr(fast_module, "conv_blocks", counting_conv_blocks)
    monkeypatch.setattr(fast_module, "_pool", counting_pool)
    return done


@pytest.mark.parametrize("partial_channels", [1, 2])
def test_fast_gdas_step_runs_only_the_sampled_ops(monkeypatch, partial_channels):
    """The fused plan's depthwise blocks (channels x ops) and pools, counted, are exactly those
    of the sampled ops (forward and the backward's recomputations alike), far fewer than the
    full plan's."""
    done = count_fused_work(monkeypatch)
    torch.manual_seed(0)
    gdas = FastSearchNetwork(**TINY, relaxation=Gumbel(seed=3), partial_channels=partial_channels)
    x, y = batch(dtype=torch.float32)
    for _ in range(2):
        for k in done:
            done[k] = 0
        with torch.no_grad():
            gdas(x)
        blocks, pools = expected_work(gdas)
        assert (done["blocks"], done["pools"]) == (blocks, pools)
    torch.manual_seed(0)
    darts = FastSearchNetwork(**TINY, partial_channels=partial_channels)
    for k in done:
        done[k] = 0
    with torch.no_grad():
        darts(x)
    assert done["blocks"] > 2 * blocks and done["pools"] >= 2 * pools


@pytest.mark.parametrize("axes", [{}, dict(partial_channels=2, edge_normalization=True,
                                           aux_skip=4)])
def test_fast_gdas_runs_only_the_sampled_ops_on_the_triton_kernels(axes):
    """Under the Triton kernels (the interpreter on a CPU): the depthwise launches cover exactly
    the sampled sep and dil convs (their output channels counted), and the result equals the
    reference's (also with partial channels, edge normalization and the auxiliary skip)."""
    from fastnas import kernels
    from fastnas.kernels import dispatch
    from fastnas.kernels.launch import recording

    if not dispatch.HAS_TRITON or not (dispatch.INTERPRET or torch.cuda.is_available()):
        pytest.skip("needs Triton (compiled on CUDA, or TRITON_INTERPRET=1 on a CPU)")
    kw = dict(C=4, num_classes=5, layers=3, num_nodes=2, multiplier=2, **axes)
    torch.manual_seed(0)
    ref = SearchNetwork(**kw, relaxation=Gumbel(seed=7))
    fast = FastSearchNetwork(**kw, relaxation=Gumbel(seed=7))
    fast.load_state_dict(ref.state_dict())
    device = "cuda" if torch.cuda.is_available() and not dispatch.INTERPRET else "cpu"
    ref, fast = ref.to(device), fast.to(device)
    x, y = batch(n=2, size=6, dtype=torch.float32)
    x, y = x.to(device), y.to(device)
    with kernels.use_backend("triton"), recording() as launches:
        lf = fast(x)
        F.cross_entropy(lf, y).backward()
    lr = ref(x)
    F.cross_entropy(lr, y).backward()
    forward = [launch for launch in launches if launch.kernel == "depthwise_fwd"]
    channels = sum(launch.args[4] for launch in forward)          # C_out of each launch
    blocks, _ = expected_work(fast)
    assert blocks > 0 and channels == blocks
    sums = [launch for launch in launches if launch.kernel == "weighted_sum_fwd"]
    assert 0 < len(sums) <= 3 * 2 * (2 if axes else 1)   # per node (and its bypass channels)
    assert rel(lf, lr) < 1e-4
    for a, b in zip(fast.alphas(), ref.alphas()):
        assert rel(a.grad, b.grad) < 1e-4


# -- partial channels and edge normalization (PC-DARTS) -------------------------------------------
def test_channel_shuffle_moves_channel_grp_times_c_plus_i_to_i_times_g_plus_grp():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    y = channel_shuffle(x, 4)
    for grp in range(4):
        for i in range(3):
            assert y[0, i * 4 + grp, 0, 0] == x[0, grp * 3 + i, 0, 0]


def test_edge_normalized_partial_channel_node_by_hand():
    """Node 1 of a reduction cell (edges from s0 and s1 at stride 2, from node 0 at stride 1),
    K=2: sum_j softmax(betas over the node's edges)_j * shuffle(cat(sum_k w_jk op_jk(x_j[:C/2]),
    bypass_j)), the bypass a 2x2 max pool on the stride-2 edges; written out with loops."""
    torch.manual_seed(0)
    C, K = 4, 2
    cell = SearchCell(2, 2, 6, 6, C, True, False, partial_channels=K).double()
    s0 = torch.randn(2, 6, 6, 6, dtype=torch.float64)
    s1 = torch.randn(2, 6, 6, 6, dtype=torch.float64)
    w = torch.softmax(torch.randn(5, 8, dtype=torch.float64), -1)
    betas = torch.randn(5, dtype=torch.float64)
    b = torch.cat([torch.softmax(betas[0:2], 0), torch.softmax(betas[2:5], 0)])
    out = cell(s0, s1, w, edge_weights=b)

    def edge(r, x, stride):
        mixed = sum(w[r, k] * op(x[:, :C // K]) for k, op in enumerate(cell.edges[r].ops))
        rest = x[:, C // K:]
        if stride == 2:
            rest = torch.stack([torch.stack([rest[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                                             .amax(dim=(2, 3)) for j in range(3)], -1)
                                for i in range(3)], -2)
        cat = torch.cat([mixed, rest], 1)
        shuffled = torch.empty_like(cat)
        for grp in range(K):
            for i in range(C // K):
                shuffled[:, i * K + grp] = cat[:, grp * (C // K) + i]
        return shuffled

    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    node0 = b[0] * edge(0, states[0], 2) + b[1] * edge(1, states[1], 2)
    node1 = b[2] * edge(2, states[0], 2) + b[3] * edge(3, states[1], 2) + b[4] * edge(4, node0, 1)
    assert rel(out, torch.cat([node0, node1], 1)) < 1e-12
    assert torch.allclose(b[2:5].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_betas_are_architecture_parameters_named_betas():
    torch.manual_seed(0)
    plain = SearchNetwork(**TINY)
    torch.manual_seed(0)
    net = SearchNetwork(**TINY, edge_normalization=True)
    assert list(net.state_dict())[:4] == ["alphas_normal", "alphas_reduce", "betas_normal",
                                          "betas_reduce"]
    assert "betas_normal" not in plain.state_dict()
    assert net.betas_normal.shape == (14,) and net.alphas()[2] is net.betas_normal
    assert len(net.alphas()) == 4 and not {id(p) for p in net.weights()} & {
        id(a) for a in net.alphas()}
    # Drawn after the alphas: the same seed gives the same alphas and weights as without betas.
    assert all(torch.equal(a, b) for a, b in zip(plain.alphas(), net.alphas()[:2]))
    assert all(torch.equal(a, b) for a, b in zip(plain.weights(), net.weights()))
    again = SearchNetwork(**TINY, edge_normalization=True)
    again.load_state_dict(net.state_dict())
    assert torch.equal(again.betas_reduce, net.betas_reduce)


def test_edge_normalized_derivation_ranks_edges_by_max_softmax_times_edge_weight():
    """PC-DARTS's genotype: node 0 keeps both of its edges; node 1 (edges 2, 3, 4) keeps the two
    with the largest max_{k != none} softmax(a)_k * softmax(betas of node 1); the op of an edge
    stays the argmax of its softmax."""
    net = SearchNetwork(**TINY, edge_normalization=True)
    space = darts_space(4)
    none = space.index("none")
    with torch.no_grad():
        net.alphas_normal.zero_()
        net.alphas_normal[2, space.index("sep_conv_3x3")] = 3.0     # strongest op ...
        net.alphas_normal[3, space.index("max_pool_3x3")] = 2.0
        net.alphas_normal[4, space.index("dil_conv_5x5")] = 2.5
        net.betas_normal.zero_()
        net.betas_normal[2] = -3.0                                # ... on a weak edge
    s = net.arch.strengths()["normal"]
    b = torch.softmax(net.betas_normal[2:5].detach(), 0)
    score = [max(v for k, v in enumerate(torch.softmax(net.alphas_normal[r].detach(), 0))
                 if k != none) * b[r - 2] for r in (2, 3, 4)]
    kept = sorted(range(3), key=lambda j: -score[j])[:2]
    assert sorted(kept) == [1, 2]
    assert torch.allclose(s[2:5], torch.softmax(net.alphas_normal[2:5].detach(), -1)
                          * b.unsqueeze(1))
    gene = net.genotype().normal
    assert list(gene[2:4]) == [("dil_conv_5x5", 2), ("max_pool_3x3", 1)]


# -- auxiliary skip (DARTS-) ----------------------------------------------------------------------
def test_aux_skip_modules_schedule_and_edge_by_hand():
    torch.manual_seed(0)
    net = SearchNetwork(**TINY, aux_skip=50)
    reduce_cell = next(c for c in net.cells if c.reduction)
    assert isinstance(reduce_cell.edges[0].aux, FactorizedReduce)     # stride 2
    assert isinstance(reduce_cell.edges[2].aux, FactorizedReduce)
    assert isinstance(reduce_cell.edges[4].aux, Identity)             # from node 0, stride 1
    assert isinstance(net.cells[0].edges[0].aux, Identity)
    names = [n for n, _ in net.named_weights()]
    assert any(".aux.conv_1." in n for n in names)                    # learnable, SGD-trained
    assert net.aux_beta == 1.0
    for epoch, beta in ((0, 1.0), (25, 0.5), (49, 0.02), (50, 0.0), (70, 0.0)):
        net.set_epoch(epoch, 100)
        assert net.aux_beta == pytest.approx(beta)
    edge = reduce_cell.edges[0].double()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)       # the reduction cell's C
    w = torch.rand(8, dtype=torch.float64)
    expected = sum(w[k] * op(x) for k, op in enumerate(edge.ops)) + 0.3 * edge.aux(x)
    assert rel(edge(x, w, aux_beta=0.3), expected) < 1e-12


# -- building -------------------------------------------------------------------------------------
def test_build_supernet_takes_the_method_axes_and_names_bad_values():
    for supernet in ("reference", "fast"):
        net = build_supernet(supernet, C=8, layers=3, partial_channels=4, edge_normalization=True,
                             aux_skip=10)
        assert net.partial_channels == 4 and net.aux_skip == 10 and len(net.alphas()) == 4
        assert net.cells[0].edges[0].ops[4].first.depthwise.in_channels == 2   # at C/K
    with pytest.raises(ValueError, match=r"partial_channels=3 must divide the channels C=8"):
        build_supernet("fast", C=8, layers=3, partial_channels=3)
    with pytest.raises(ValueError, match="partial_channels must be a whole number"):
        build_supernet("fast", C=8, layers=3, partial_channels=0)
    with pytest.raises(ValueError, match="aux_skip must be a whole number"):
        build_supernet("reference", C=8, layers=3, aux_skip=0)
    with pytest.raises(ValueError, match="edge_normalization must be true or false"):
        build_supernet("reference", C=8, layers=3, edge_normalization="yes")
