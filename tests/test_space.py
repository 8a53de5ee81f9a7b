"""The space layer (fastnas.space): the cell space as data, relaxations and their consumers, a
space of the tests' own on both supernets, and a penalty on the validation loss."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from fastnas import DARTSOptimizer, Genotype, SearchNetwork
from fastnas.genotypes import DARTS_V2, Architecture
from fastnas.ops import OPS
from fastnas.reports.alphas import AlphaHistory
from fastnas.space import ARCHITECTURE, EVALUATION, WEIGHTS, CellSpace, Softmax, darts_space
from fastnas.supernet import FastSearchNetwork, num_edges
from fastnas.tune.config import TuneConfig
from fastnas.tune.space import EdgeSpace
from fastnas.tune.stage import SPACES


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def synthetic(n=16, seed=0, classes=4, size=8):
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 1, size, size, generator=torch.Generator().manual_seed(3))
    y = torch.arange(n) % classes
    x = templates[y] + 0.5 * torch.randn(n, 1, size, size, generator=g)
    return (x[:n // 2], y[:n // 2]), (x[n // 2:], y[n // 2:])


TINY = dict(channels=4, layers=3, num_nodes=3, in_channels=1, num_classes=4, num_steps=1,
            seed=0, device="cpu")


# -- the cell space -------------------------------------------------------------------------------
def test_darts_space_walks_the_edges_node_by_node():
    space = darts_space(4)
    assert space.shape == (14, 8) and space.num_edges == num_edges(4)
    assert [(e.node, e.state) for e in space.edges[:5]] == [(0, 0), (0, 1), (1, 0), (1, 1),
                                                            (1, 2)]
    assert [e.row for e in space.edges] == list(range(14))
    assert space.rows(2) == slice(5, 9)
    assert [e.node for e in space.readers(2)] == [1, 2, 3]   # node 0's state
    assert space.concat == [2, 3, 4, 5]
    every = CellSpace(ops=("a", "b"), num_nodes=3, num_inputs=1, keep=None, cell_types=("c",))
    assert every.num_edges == 1 + 2 + 3 and every.rows(2) == slice(3, 6)


def test_space_checks_its_shape_and_its_ops():
    with pytest.raises(ValueError, match="keep"):
        CellSpace(ops=("a",), num_nodes=2, num_inputs=2, keep=3)
    with pytest.raises(ValueError, match="distinct ops"):
        CellSpace(ops=("a", "a"), num_nodes=2)
    space = darts_space(4, ops=("none", "skip_connect", "sep_conv_3x3"))
    with pytest.raises(ValueError, match="normal cell, node 3: operation .dil_conv_3x3."):
        space.check_architecture(DARTS_V2)
    darts_space(4).check_architecture(DARTS_V2)


def test_every_edge_derivation_and_the_generic_architecture():
    space = CellSpace(ops=("none", "x", "y"), num_nodes=2, num_inputs=1, keep=None,
                      cell_types=("cell",), never_derived=())
    strengths = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]])
    arch = space.derive({"cell": strengths})
    assert isinstance(arch, Architecture)
    assert arch.cells["cell"].nodes == ((("none", 0),), (("y", 0), ("x", 1)))
    assert Architecture.from_json(arch.to_json()) == arch and hash(arch) == hash(
        Architecture.from_json(arch.to_json()))
    with pytest.raises(ValueError, match="cannot take input"):
        Architecture({"cell": ([[("x", 1)]], [1])}, num_inputs=1)
    arch.check_ops(space.ops)
    with pytest.raises(ValueError, match="'x'"):
        arch.check_ops(("none", "y"))


def test_genotype_is_the_darts_spaces_architecture_unchanged():
    arch = DARTS_V2.to_architecture()
    assert arch.num_inputs == 2 and len(arch.cells["normal"].nodes) == 4
    assert Genotype.from_architecture(arch) == DARTS_V2
    assert str(Genotype.from_architecture(arch)) == str(DARTS_V2)
    assert DARTS_V2.to_dict() == Genotype.from_json(DARTS_V2.to_json()).to_dict()
    with pytest.raises(ValueError, match="Genotype needs"):
        Genotype.from_architecture(Architecture({"cell": ([[("x", 0)]], [1])}, 1))


# -- one relaxation, four consumers ---------------------------------------------------------------
class Negated(Softmax):
    """A relaxation unlike softmax, so that a consumer reading softmax instead would differ:
    ``w = softmax(-a)``."""

    name = "negated"
    what = "softmax of minus the alphas (a test relaxation)"

    def weights(self, alphas, phase):
        return F.softmax(-alphas, dim=-1)


def test_one_relaxation_is_seen_by_the_forward_and_all_four_consumers():
    opt = DARTSOptimizer(dict(TINY, learning_rate_alpha=0.5), relaxation=Negated())
    model = opt.model
    with torch.no_grad():
        for a in model.alphas():
            a.normal_(0, 1)
    own = {t: F.softmax(-a.detach(), -1) for t, a in model.arch.by_type().items()}
    softmax = {t: F.softmax(a.detach(), -1) for t, a in model.arch.by_type().items()}
    # the forward mixes with it
    x = synthetic()[0][0]
    plain = SearchNetwork(C=4, layers=3, num_nodes=3, in_channels=1, num_classes=4)
    state = model.state_dict()
    state["alphas_normal"], state["alphas_reduce"] = -state["alphas_normal"], -state[
        "alphas_reduce"]
    plain.load_state_dict(state)
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x), plain(x))
    model.train()
    # 1. derivation
    space = model.space
    assert opt.genotype() == space.derive(own)
    assert opt.genotype() != space.derive(softmax)
    # 2. the history (alphas.json's source), after one epoch of search
    (train, val) = synthetic()
    opt.search([train], [val], epochs=1)
    record = opt.history[-1]
    now = {t: F.softmax(-a.detach(), -1) for t, a in model.arch.by_type().items()}
    for t in ("normal", "reduce"):
        torch.testing.assert_close(record[f"alphas_{t}"], now[t], rtol=0, atol=0)
    assert record["genotype"] == str(space.derive(now))
    # 3. the plots and alphas.json read the history, under the relaxation's name
    history = AlphaHistory.from_search("darts", opt.config.to_dict(), opt.history)
    assert history.what == Negated.what
    assert history.weights[-1][0] == pytest.approx(now["normal"][0].tolist(), abs=1e-7)
    # 4. tune's pruned space
    pruned = SPACES["darts"](opt, TuneConfig.from_dict({"k": 2, "m": 2}), [])
    assert pruned.describe() == EdgeSpace.from_strengths(space, now, 2, 2).describe()
    assert pruned.describe() != EdgeSpace.from_strengths(space, {
        t: F.softmax(a.detach(), -1) for t, a in model.arch.by_type().items()}, 2, 2).describe()


class Phased(Softmax):
    """Records the phase of every mixing."""

    def __init__(self):
        self.seen = []

    def weights(self, alphas, phase):
        self.seen.append(phase)
        return super().weights(alphas, phase)


@pytest.mark.parametrize("order", [1, 2])
def test_each_pass_mixes_in_its_phase(order):
    relaxation = Phased()
    opt = DARTSOptimizer(dict(TINY, order=order), relaxation=relaxation)
    opt.step(*synthetic())
    passes = 1 if order == 1 else 4   # val; or train (w'), val at w', two Hessian passes
    per_pass = 2                     # normal and reduce
    assert relaxation.seen == [ARCHITECTURE] * passes * per_pass + [WEIGHTS] * per_pass
    relaxation.seen.clear()
    opt.evaluate([synthetic()[1]])
    assert set(relaxation.seen) == {EVALUATION}


# -- a space of the test's own on both supernets --------------------------------------------------
class TanhConv(nn.Module):
    """An op the fast plan does not know: ``tanh(BN(conv3x3(x)))``."""

    def __init__(self, C, stride, affine):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(C, affine=affine)

    def forward(self, x):
        return torch.tanh(self.bn(self.conv(x)))


@pytest.fixture
def tanh_op(monkeypatch):
    monkeypatch.setitem(OPS, "tanh_conv_3x3", TanhConv)
    return "tanh_conv_3x3"


@pytest.mark.parametrize("order", [1, 2])
def test_own_space_with_an_unknown_op_same_steps_on_both_supernets(tanh_op, order):
    space = CellSpace(ops=("max_pool_3x3", "sep_conv_3x3", tanh_op), num_nodes=3, keep=None)
    cfg = dict(TINY, order=order, precision="fp64", learning_rate_alpha=0.05, hessian_r=1e-5)
    ref = DARTSOptimizer({**cfg, "supernet": "reference"}, space=space)
    fast = DARTSOptimizer({**cfg, "supernet": "fast"}, space=space)
    assert isinstance(fast.model, FastSearchNetwork) and type(ref.model) is SearchNetwork
    assert ref.model.alphas_normal.shape == (2 + 3 + 4, 3)
    plan = fast.model.cells[0]._plans[0]
    assert plan.pools and plan.S == 1 and plan.D == 0 and not plan.skips
    assert all(isinstance(o[0], TanhConv) for o in plan.others)  # run per edge, unfused
    for step in range(2):
        train, val = synthetic(seed=10 + step)
        for opt in (ref, fast):
            opt.step(train, val)
    for a, b in zip(ref.arch_parameters(), fast.arch_parameters()):
        assert rel(b, a) < 1e-10
        assert a.abs().max() > 1e-2   # the alphas moved
    sr, sf = ref.model.state_dict(), fast.model.state_dict()
    for k in sr:
        if sr[k].is_floating_point():
            assert rel(sf[k], sr[k]) < 1e-10, k
    arch = fast.genotype()
    assert arch == ref.genotype() and isinstance(arch, Architecture)
    assert all(len(n) == 2 + i for i, n in enumerate(arch.cells["normal"].nodes))
    space.check_architecture(arch)
    # the alpha history of this space: one panel per edge, over its three ops
    fast.search([synthetic(seed=12)[0]], [synthetic(seed=12)[1]], epochs=1)
    history = AlphaHistory.from_search("darts", fast.config.to_dict(), fast.history, space)
    assert len(history.panels) == 2 * 9 and history.panels[0].options == space.ops
    with pytest.raises(ValueError, match="num_nodes"):
        DARTSOptimizer(dict(cfg, num_nodes=2), space=space)


# -- a penalty on the validation loss -------------------------------------------------------------
class Penalized(Softmax):
    """Softmax with ``P(a) = lam * sum_t mean(logsumexp(a_t, -1))`` (beta-DARTS' form)."""

    lam = 0.7

    def penalty(self, alphas):
        return self.lam * sum(torch.logsumexp(a, -1).mean() for a in alphas.values())


def penalty_problem(relaxation):
    torch.manual_seed(0)
    net = SearchNetwork(C=4, num_classes=3, layers=3, num_nodes=2, in_channels=1,
                        relaxation=relaxation).double()
    with torch.no_grad():
        for a in net.alphas():
            a.normal_(0, 0.5)
    train = (torch.randn(6, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (6,)))
    val = (torch.randn(6, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (6,)))
    return net, train, val


def own_penalty(net):
    return Penalized.lam * sum(torch.logsumexp(a, -1).mean() for a in net.alphas())


def test_penalty_joins_the_first_order_validation_loss():
    from fastnas import Architect

    net, train, val = penalty_problem(Penalized())
    architect = Architect(net, lr=3e-4, order=1, weight_decay=0.0)
    loss, _ = architect.val_loss(*val)
    grads = torch.autograd.grad(loss, net.alphas())
    expected = torch.autograd.grad(F.cross_entropy(net(val[0]), val[1]) + own_penalty(net),
                                   net.alphas())
    for g, e in zip(grads, expected):
        assert rel(g, e) < 1e-12
    # and the step applies it: Adam's first step moves each alpha by -lr * g / (|g| + eps)
    before = [a.detach().clone() for a in net.alphas()]
    architect.step(train, val, 0.1, torch.optim.SGD(net.weights(), lr=0.1))
    for a, b, e in zip(net.alphas(), before, expected):
        torch.testing.assert_close(b - a.detach(), 3e-4 * e / (e.abs() + 1e-8), rtol=1e-9,
                                   atol=1e-15)


def test_penalty_joins_the_unrolled_validation_loss():
    from fastnas import Architect

    net, train, val = penalty_problem(Penalized())
    opt = torch.optim.SGD(net.weights(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    F.cross_entropy(net(train[0]), train[1]).backward(inputs=list(net.weights()))
    opt.step()
    opt.zero_grad()
    xi = 0.1
    architect = Architect(net, lr=3e-4, order=2, momentum=0.9, network_weight_decay=3e-4,
                          hessian_r=1e-5)
    grads, loss, _ = architect.unrolled_gradient(train, val, xi, opt)
    # exact: grad_a [L_val(w'(a), a) + P(a)] by autograd through w'
    names, weights = zip(*net.named_weights())
    g = torch.autograd.grad(F.cross_entropy(net(train[0]), train[1]), weights,
                            create_graph=True)
    virtual = {n: w.detach() - xi * (0.9 * opt.state[w]["momentum_buffer"] + gi
                                     + 3e-4 * w.detach())
               for n, w, gi in zip(names, weights, g)}
    virtual.update({n: b.clone() for n, b in net.named_buffers()})
    total = F.cross_entropy(functional_call(net, virtual, (val[0],)), val[1]) + own_penalty(net)
    exact = torch.autograd.grad(total, net.alphas())
    num = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(grads, exact)))
    den = torch.sqrt(sum((b ** 2).sum() for b in exact))
    assert (num / den).item() < 1e-6
    # the penalty matters here: without it the gradient is far off
    plain = [e - p for e, p in zip(exact, torch.autograd.grad(own_penalty(net), net.alphas()))]
    num = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(grads, plain)))
    assert (num / den).item() > 1e-2
    assert loss.item() == pytest.approx(total.item(), rel=1e-9)


# -- the Triton path computes only what a backward uses -------------------------------------------
def test_triton_architecture_step_launches_no_depthwise_weight_gradient():
    from fastnas import kernels
    from fastnas.kernels import dispatch
    from fastnas.kernels.launch import recording

    if not dispatch.HAS_TRITON or not (dispatch.INTERPRET or torch.cuda.is_available()):
        pytest.skip("needs Triton (compiled on CUDA, or TRITON_INTERPRET=1 on a CPU)")
    device = "cuda" if torch.cuda.is_available() and not dispatch.INTERPRET else "cpu"
    cfg = dict(TINY, num_nodes=2, device=device, supernet="fast")
    train, val = synthetic(n=4)
    with kernels.use_backend("triton"):
        opt = DARTSOptimizer(cfg)
        train = tuple(t.to(device) for t in train)
        val = tuple(t.to(device) for t in val)
        kernels.reset_launch_counts()
        with recording() as arch_launches:
            opt.architect.step(train, val, opt.lr, opt.weight_optimizer)
        arch = kernels.launch_counts()
        kernels.reset_launch_counts()
        with recording() as step_launches:
            opt.step(train, val)
        both = kernels.launch_counts()
    assert arch.get("depthwise_fwd", 0) > 0 and arch.get("depthwise_bwd_input", 0) > 0, arch
    assert arch.get("depthwise_bwd_weight", 0) == 0, arch
    assert both.get("depthwise_bwd_weight", 0) > 0, both   # the weight step needs them
    # the node sums: the architecture step asks their alpha gradient, the weight step does not
    def need_dw(launches):
        return [lc.constexprs["NEED_DW"] for lc in launches if lc.kernel == "weighted_sum_bwd"]

    assert any(need_dw(arch_launches))
    weight_step = need_dw(step_launches)[len(need_dw(arch_launches)):]
    assert weight_step and not any(weight_step)
