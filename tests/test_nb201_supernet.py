"""The NAS-Bench-201 search supernets: the reference against a line-by-line re-implementation of
xautodl's search model (``TinyNetworkDarts`` / ``TinyNetworkGDAS`` with ``NAS201SearchCell``),
and the fast one against the reference (float64, 1e-10) for softmax and a hard (GDAS-like)
straight-through relaxation."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_nb201 import (
    ALL_SKIP,
    BEST,
    MIXED,
    X_OPS,
    XPooling,
    XResNetBasicblock,
    XTinyNetwork,
    count,
    hand_count,
    xautodl_genotype,
)

from fastnas.nb201 import NB201_OPS, NB201Cell
from fastnas.space import Relaxation, Softmax
from fastnas.supernet.nb201_reference import NB201SearchNetwork

TINY = dict(C=4, N=1, num_classes=3)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def batch(n=3, size=8, seed=1, classes=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, size, size, generator=g, dtype=torch.float64),
            torch.randint(0, classes, (n,), generator=g))


class HardStraightThrough(Relaxation):
    """A test relaxation with GDAS's form and no noise: ``p = softmax(a)``, one op per edge
    picked by a fixed pattern (not the argmax, so every op family is selected somewhere, ``none``
    included), weights ``onehot - p.detach() + p``."""

    name = "hard-test"

    def __init__(self, pattern=(1, 3, 2, 4, 0, 3)):
        self.pattern = torch.tensor(pattern)

    def weights(self, a, phase):
        return self.sample(a, phase)[0]

    def sample(self, a, phase):
        p = F.softmax(a, dim=-1)
        index = self.pattern[:a.shape[0]] % a.shape[1]
        onehot = torch.zeros_like(p).scatter_(-1, index.view(-1, 1).to(a.device), 1.0)
        return onehot - p.detach() + p, index


# -- xautodl's search model, line by line ---------------------------------------------------------
class XLibReLUConvBN(nn.Module):
    """ReLUConvBN of xautodl's lib/models/cell_operations.py (2019): a bias-free conv. (The later
    package gives the conv a bias when ``affine=False``; a BN cancels it, see the supernet.)"""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine,
                 track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats))

    def forward(self, x):
        return self.op(x)


X_SEARCH_OPS = {
    **X_OPS,
    "avg_pool_3x3": lambda C_in, C_out, stride, affine, trs: XPooling(C_in, C_out, stride,
                                                                      affine, trs),
    "nor_conv_3x3": lambda C_in, C_out, stride, affine, trs: XLibReLUConvBN(
        C_in, C_out, (3, 3), (stride, stride), (1, 1), (1, 1), affine, trs),
    "nor_conv_1x1": lambda C_in, C_out, stride, affine, trs: XLibReLUConvBN(
        C_in, C_out, (1, 1), (stride, stride), (0, 0), (1, 1), affine, trs),
}


class XSearchCell(nn.Module):
    """NAS201SearchCell (search_cells.py) at stride 1, C_in == C_out."""

    def __init__(self, C, max_nodes, op_names, affine=False, track_running_stats=True):
        super().__init__()
        self.edges = nn.ModuleDict()
        self.max_nodes = max_nodes
        for i in range(1, max_nodes):
            for j in range(i):
                self.edges[f"{i}<-{j}"] = nn.ModuleList(
                    [X_SEARCH_OPS[name](C, C, 1, affine, track_running_stats)
                     for name in op_names])
        self.edge_keys = sorted(self.edges.keys())
        self.edge2index = {key: i for i, key in enumerate(self.edge_keys)}
        self.out_dim = C

    def forward(self, inputs, weightss):
        nodes = [inputs]
        for i in range(1, self.max_nodes):
            inter_nodes = []
            for j in range(i):
                node_str = f"{i}<-{j}"
                weights = weightss[self.edge2index[node_str]]
                inter_nodes.append(sum(layer(nodes[j]) * w
                                       for layer, w in zip(self.edges[node_str], weights)))
            nodes.append(sum(inter_nodes))
        return nodes[-1]

    def forward_gdas(self, inputs, hardwts, index):
        nodes = [inputs]
        for i in range(1, self.max_nodes):
            inter_nodes = []
            for j in range(i):
                node_str = f"{i}<-{j}"
                weights = hardwts[self.edge2index[node_str]]
                argmaxs = index[self.edge2index[node_str]].item()
                inter_nodes.append(sum(weights[_ie] * edge(nodes[j]) if _ie == argmaxs
                                       else weights[_ie]
                                       for _ie, edge in enumerate(self.edges[node_str])))
            nodes.append(sum(inter_nodes))
        return nodes[-1]


class XTinyNetworkSearch(nn.Module):
    """TinyNetworkDarts / TinyNetworkGDAS (search_model_darts.py, search_model_gdas.py)."""

    def __init__(self, C, N, max_nodes, num_classes, search_space, affine, track_running_stats):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, kernel_size=3, padding=1, bias=False),
                                  nn.BatchNorm2d(C))
        layer_channels = [C] * N + [C * 2] + [C * 2] * N + [C * 4] + [C * 4] * N
        layer_reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        C_prev = C
        self.cells = nn.ModuleList()
        for C_curr, reduction in zip(layer_channels, layer_reductions):
            if reduction:
                cell = XResNetBasicblock(C_prev, C_curr, 2)
            else:
                cell = XSearchCell(C_curr, max_nodes, search_space, affine, track_running_stats)
            self.cells.append(cell)
            C_prev = cell.out_dim
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.arch_parameters = nn.Parameter(1e-3 * torch.randn(6, len(search_space)))

    def forward(self, inputs, hardwts=None, index=None):
        alphas = F.softmax(self.arch_parameters, dim=-1)
        feature = self.stem(inputs)
        for cell in self.cells:
            if isinstance(cell, XSearchCell):
                feature = (cell(feature, alphas) if hardwts is None
                           else cell.forward_gdas(feature, hardwts, index))
            else:
                feature = cell(feature)
        out = self.global_pooling(self.lastact(feature))
        out = out.view(out.size(0), -1)
        return out, self.classifier(out)


def x_params(theirs):
    """xautodl's weights, then its alphas (``parameters()`` lists a module's own first)."""
    return [p for n, p in theirs.named_parameters() if n != "arch_parameters"] + [
        theirs.arch_parameters]


def x_pair(track_running_stats=False, relaxation=None, C=4, N=1, seed=0):
    """xautodl's search net and ours with the same (random) tensors, in float64."""
    torch.manual_seed(seed)
    theirs = XTinyNetworkSearch(C, N, 4, 3, list(NB201_OPS), False, track_running_stats).double()
    ours = NB201SearchNetwork(C=C, N=N, num_classes=3, relaxation=relaxation,
                              track_running_stats=track_running_stats).double()
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(-0.5, 0.5)
        for name, b in theirs.named_buffers():
            if "running_var" in name:
                b.uniform_(0.5, 1.5)
            elif "running_mean" in name:
                b.uniform_(-0.2, 0.2)
    theirs_state = theirs.state_dict()
    alphas = theirs_state.pop("arch_parameters")
    ours_state = ours.state_dict()
    assert list(ours_state)[0] == "alphas_cell"
    ours_state.pop("alphas_cell")
    assert [v.shape for v in theirs_state.values()] == [v.shape for v in ours_state.values()]
    ours.load_state_dict({"alphas_cell": alphas, **dict(zip(ours_state, theirs_state.values()))})
    return theirs, ours


@pytest.mark.parametrize("track_running_stats", [False, True])
def test_reference_computes_xautodls_search_model_in_float64(track_running_stats):
    """Softmax (DARTS): logits and every gradient of the reference equal xautodl's search
    model's, in training and (its running statistics, or batch statistics) in eval mode."""
    theirs, ours = x_pair(track_running_stats)
    x, y = batch()
    for train in (True, False):
        theirs.train(train)
        ours.train(train)
        lt, lo = theirs(x)[1], ours(x)
        torch.testing.assert_close(lo, lt, rtol=1e-12, atol=1e-12)
    theirs.train(), ours.train()
    gt = torch.autograd.grad(F.cross_entropy(theirs(x)[1], y), x_params(theirs))
    go = torch.autograd.grad(F.cross_entropy(ours(x), y),
                             [*list(ours.weights()), *ours.alphas()])
    for a, b in zip(go, gt):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_reference_is_xautodls_forward_gdas_with_a_selected_op():
    """With an op selected per edge, the reference is ``NAS201SearchCell.forward_gdas``: only
    the selected op runs, the others add their weights as scalars (and get a gradient)."""
    relaxation = HardStraightThrough()
    theirs, ours = x_pair(relaxation=relaxation)
    x, y = batch()
    hardwts, index = relaxation.sample(theirs.arch_parameters, "weights")
    lt = theirs(x, hardwts, index)[1]
    lo = ours(x)
    assert ours.arch.selected["cell"].tolist() == index.tolist()
    torch.testing.assert_close(lo, lt, rtol=1e-12, atol=1e-12)
    gt = torch.autograd.grad(F.cross_entropy(lt, y), x_params(theirs), allow_unused=True)
    go = torch.autograd.grad(F.cross_entropy(lo, y), [*list(ours.weights()), *ours.alphas()],
                             allow_unused=True)
    for a, b in zip(go, gt):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert go[-1].abs().min() > 0   # every alpha, the unselected ones too, has a gradient


def test_weight_count_equals_xautodls_search_model():
    torch.manual_seed(0)
    ours = NB201SearchNetwork()
    theirs = XTinyNetworkSearch(16, 5, 4, 10, list(NB201_OPS), False, True)
    assert count(ours) == count(theirs)
    assert [p.shape for p in ours.weights()] == [p.shape for p in x_params(theirs)][:-1]


@pytest.mark.parametrize("text", [BEST, ALL_SKIP, MIXED])
def test_the_derived_network_has_xautodls_weight_count(text):
    net = NB201SearchNetwork()
    cell = NB201Cell.parse(text)
    with torch.no_grad():
        net.alphas_cell.zero_()
        for e, op in enumerate(cell.ops):
            net.alphas_cell[e, NB201_OPS.index(op)] = 1.0
    assert net.genotype() == cell
    derived = net.derived_network()
    assert count(derived) == count(XTinyNetwork(16, 5, xautodl_genotype(text), 10)) \
        == hand_count(text)


def test_search_network_basics():
    net = NB201SearchNetwork(**TINY)
    assert [n for n, _ in net.named_parameters()][-1] == "arch.alphas_cell"
    assert net.alphas() == [net.alphas_cell] and net.alphas_cell.shape == (6, 5)
    assert isinstance(net.relaxation, Softmax)
    assert len(list(net.weights())) + 1 == len(list(net.parameters()))
    assert isinstance(net.genotype(), NB201Cell)
    assert net.search_cells == [0, 2, 4]
    with pytest.raises(ValueError, match="search cells"):
        net.set_checkpointing([1])
    x = torch.randn(2, 3, 8, 8)
    net.set_checkpointing(True)
    net(x).sum().backward()
    assert net.alphas_cell.grad is not None


# -- the fast supernet against the reference ------------------------------------------------------
def fast_pair(relaxation=None, track_running_stats=False, seed=0, **kw):
    """A reference and a fast network with identical state and non-trivial alphas."""
    from fastnas.supernet.nb201_fast import FastNB201SearchNetwork

    kw = {**TINY, **kw}
    torch.manual_seed(seed)
    ref = NB201SearchNetwork(relaxation=relaxation, track_running_stats=track_running_stats,
                             **kw)
    with torch.no_grad():
        ref.alphas_cell.normal_()
    torch.manual_seed(seed)
    fast = FastNB201SearchNetwork(relaxation=relaxation,
                                  track_running_stats=track_running_stats, **kw)
    return ref, fast


def test_fast_has_the_references_modules_names_and_initialization():
    torch.manual_seed(3)
    ref = NB201SearchNetwork(**TINY)
    _, fast = fast_pair(seed=3)
    sr, sf = ref.state_dict(), fast.state_dict()
    assert list(sr) == list(sf)
    assert all(torch.equal(sr[k], sf[k]) for k in sr)
    assert [n for n, _ in ref.named_weights()] == [n for n, _ in fast.named_weights()]
    assert fast.genotype() == ref.genotype()


@pytest.mark.parametrize("relaxation,track_running_stats", [
    (None, False), (None, True), (HardStraightThrough(), False),
    (HardStraightThrough((0, 0, 0, 4, 4, 2)), True),   # node 1 and 2: none alone, pools shared
    (HardStraightThrough((2, 3, 2, 3, 3, 2)), False),  # only convs: stacked per kernel shape
])
def test_fast_equals_reference_in_float64(relaxation, track_running_stats):
    """Logits, alpha and weight gradients and BatchNorm statistics of the fast supernet equal
    the reference's to 1e-10 (float64), for softmax (DARTS) and a hard straight-through
    relaxation (GDAS's form: only the selected ops run), in training and eval mode."""
    ref, fast = fast_pair(relaxation, track_running_stats)
    ref.double(), fast.double()
    fast.load_state_dict(ref.state_dict())
    x, y = batch()
    out = {}
    for name, net in (("ref", ref), ("fast", fast)):
        logits = net(x)
        grads = torch.autograd.grad(F.cross_entropy(logits, y), [*net.alphas(), *net.weights()],
                                    allow_unused=True)
        net.eval()
        out[name] = (logits, grads, net(x))
    assert rel(out["fast"][0], out["ref"][0]) < 1e-10
    assert rel(out["fast"][2], out["ref"][2]) < 1e-10
    # A gradient that is zero but for rounding (a BN bias whose shift a later BN cancels) is
    # held to the scale of all gradients, every other one to its own.
    scale = max(g.abs().max().item() for g in out["ref"][1] if g is not None)
    for (n, _), g_fast, g_ref in zip([("alphas", None), *ref.named_weights()], out["fast"][1],
                                     out["ref"][1]):
        if g_ref is None and g_fast is None:
            continue
        g_ref = torch.zeros_like(g_fast) if g_ref is None else g_ref
        g_fast = torch.zeros_like(g_ref) if g_fast is None else g_fast
        denom = max(g_ref.abs().max().item(), 1e-3 * scale)
        assert (g_fast - g_ref).abs().max().item() / denom < 1e-10, n
    sr, sf = ref.state_dict(), fast.state_dict()
    for k in sr:   # (a running mean of BN outputs is zero but for rounding: absolute there)
        if sr[k].is_floating_point():
            assert (sf[k] - sr[k]).abs().max() < 1e-10 * max(1.0, sr[k].abs().max()), k
        else:
            assert torch.equal(sr[k], sf[k]), k


@pytest.mark.parametrize("relaxation", [None, HardStraightThrough()])
def test_fast_runs_the_triton_kernels(relaxation):
    """With the kernel backend forced to Triton (the interpreter on a CPU), the fused NB201 cells
    sum their nodes with the Triton ``weighted_sum`` and match the reference."""
    from fastnas import kernels
    from fastnas.kernels import dispatch

    if not dispatch.HAS_TRITON or not (dispatch.INTERPRET or torch.cuda.is_available()):
        pytest.skip("needs Triton (compiled on CUDA, or TRITON_INTERPRET=1 on a CPU)")
    device = "cuda" if torch.cuda.is_available() and not dispatch.INTERPRET else "cpu"
    ref, fast = fast_pair(relaxation)
    fast.load_state_dict(ref.state_dict())
    ref, fast = ref.to(device), fast.to(device)
    x, y = batch(n=2, size=6)
    x, y = x.float().to(device), y.to(device)
    kernels.reset_launch_counts()
    with kernels.use_backend("triton"):
        lf = fast(x)
        F.cross_entropy(lf, y).backward()
    counts = kernels.launch_counts()
    lr = ref(x)
    F.cross_entropy(lr, y).backward()
    assert counts.get("weighted_sum_fwd", 0) > 0 and counts.get("weighted_sum_bwd", 0) > 0
    assert rel(lf, lr) < 1e-4
    assert rel(fast.alphas_cell.grad, ref.alphas_cell.grad) < 1e-4
    for (name, a), b in zip(fast.named_weights(), ref.weights()):
        if b.grad is not None and b.grad.abs().max() > 1e-6:
            assert rel(a.grad, b.grad) < 1e-3, name


# -- the search on NB201 --------------------------------------------------------------------------
@pytest.mark.parametrize("order,hard", [(1, False), (2, False), (1, True)])
def test_same_darts_step_on_nb201_in_float64(order, hard):
    """Whole DARTS steps (first or second order; softmax, or the hard straight-through test
    relaxation) with ``space='nb201'``: the fast supernet's alphas, weights and BatchNorm
    statistics equal the reference's to 1e-10 (float64)."""
    from fastnas import DARTSOptimizer
    from fastnas.supernet.nb201_fast import FastNB201SearchNetwork

    cfg = dict(space="nb201", channels=4, layers=1, num_classes=3, batch_size=3, order=order,
               device="cpu", seed=4, learning_rate_alpha=0.05, precision="fp64",
               hessian_r=1e-5, nesterov=True, weight_decay=5e-4)
    relaxation = HardStraightThrough() if hard else None
    ref = DARTSOptimizer({**cfg, "supernet": "reference"}, relaxation=relaxation)
    fast = DARTSOptimizer({**cfg, "supernet": "fast"}, relaxation=relaxation)
    assert isinstance(fast.model, FastNB201SearchNetwork)
    assert type(ref.model) is NB201SearchNetwork
    assert ref.weight_optimizer.param_groups[0]["nesterov"] is True
    for step in range(2):
        train, val = batch(seed=7 + step), batch(seed=17 + step)
        for opt in (ref, fast):
            opt.step(train, val)
    a, b = ref.arch_parameters()[0], fast.arch_parameters()[0]
    assert rel(b, a) < 1e-10 and not torch.allclose(a, torch.zeros_like(a), atol=1e-4)
    sr, sf = ref.model.state_dict(), fast.model.state_dict()
    for k in sr:
        if sr[k].is_floating_point():
            assert (sf[k] - sr[k]).abs().max() < 1e-10 * max(1.0, sr[k].abs().max()), k
    assert isinstance(fast.genotype(), NB201Cell) and fast.genotype() == ref.genotype()


def test_the_space_key_and_its_errors():
    from fastnas import DARTSOptimizer
    from fastnas.darts import DARTSConfig
    from fastnas.nb201 import nb201_space
    from fastnas.space import darts_space
    from fastnas.supernet import build_supernet

    assert DARTSConfig().space == "darts" and DARTSConfig().nesterov is False
    assert isinstance(build_supernet("reference", C=4, layers=1, num_classes=3,
                                     space=nb201_space()), NB201SearchNetwork)
    with pytest.raises(ValueError, match="space must be one of"):
        DARTSConfig(space="nb101")
    from fastnas.supernet import build_nb201_supernet
    with pytest.raises(ValueError, match="partial_channels=4 is not supported"):
        build_nb201_supernet("fast", C=4, N=1, partial_channels=4)
    with pytest.raises(ValueError, match="layers must be >= 3, got 1"):
        DARTSConfig(layers=1)
    with pytest.raises(ValueError, match="nesterov=True needs a momentum"):
        DARTSConfig(space="nb201", nesterov=True, momentum=0.0)
    with pytest.raises(ValueError, match="space='nb201'"):
        DARTSOptimizer(dict(layers=3, channels=4, device="cpu"), space=nb201_space())
    with pytest.raises(ValueError, match="another"):
        DARTSOptimizer(dict(space="nb201", layers=1, channels=4, device="cpu"),
                       space=darts_space())
