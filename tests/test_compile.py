"""The fast supernet under ``torch.compile`` (``DARTSOptimizer(compile=True)``): whole DARTS
steps compile to a fixed set of graphs with no graph break (``fullgraph=True``) and no
recompilation once warm, and give the eager fast path's results.

Dynamo and AOTAutograd are exercised with the ``aot_eager`` backend (the same graphs, run by
eager kernels: seconds); one tiny case runs inductor's generated code (``-m slow_compile``: its
C++ compilation takes minutes from a cold cache on 2 cores)."""
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from fastnas import DARTSOptimizer
from fastnas.space import ARCHITECTURE, WEIGHTS
from fastnas.supernet import compiled

TINY = dict(channels=4, layers=3, num_nodes=1, num_classes=5, batch_size=2, device="cpu",
            seed=4, learning_rate_alpha=0.05)


def batch(seed, size=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, size, size, generator=g), torch.randint(0, 5, (2,), generator=g)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


@pytest.fixture
def backend(monkeypatch):
    """Compile with a counting ``aot_eager`` backend; dynamo's caches and counters reset."""
    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(compiled, "BACKEND", counter)
    torch._dynamo.reset()
    counters.clear()
    yield counter
    torch._dynamo.reset()


def _step_results(opt, train, val):
    """Logits, loss and gradients of both first-order DARTS steps at the current state (the
    architecture step's alphas-only and the weight step's weights-only graphs, each in its
    relaxation phase, as the steps run them)."""
    out = []
    for params, (x, y), phase in ((opt.arch_parameters(), val, ARCHITECTURE),
                                  (opt.weight_parameters(), train, WEIGHTS)):
        with compiled.differentiating(opt.model, params), opt.model.arch.phase(phase):
            logits = opt.model(x)
            loss = F.cross_entropy(logits, y)
        out += [logits, loss, *torch.autograd.grad(loss, params)]
    return out


def test_first_order_steps_and_evaluation_compile_once_without_breaks(backend):
    eager = DARTSOptimizer(TINY)
    comp = DARTSOptimizer({**TINY, "compile": True})
    train, val = batch(7), batch(17)
    for got, want in zip(_step_results(comp, train, val), _step_results(eager, train, val)):
        assert rel(got, want) < 1e-5
    graphs = []
    for step in range(3):
        comp.step(batch(7 + step), batch(17 + step))
        graphs.append(backend.frame_count)
    # One graph for the architecture step (only the alphas differentiated), one for the weight
    # step (only the weights); the later steps reuse them: no recompilation.
    assert graphs == [2, 2, 2]
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert list(comp.model.state_dict()) == list(eager.model.state_dict())   # no "_orig_mod."
    comp.evaluate([batch(3)])            # eval mode, no grad: one more graph, compiled once
    comp.evaluate([batch(4)])
    assert backend.frame_count == 3
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_second_order_steps_compile_without_breaks_or_recompiles(backend):
    comp = DARTSOptimizer({**TINY, "order": 2, "compile": True})
    graphs = []
    for step in range(3):
        stats = comp.step(batch(7 + step), batch(17 + step))
        graphs.append(backend.frame_count)
        assert torch.isfinite(torch.tensor(stats["val_loss"]))
    # The training loss (all parameters), the loss at the virtual weights, the Hessian-vector
    # product's losses (alphas only), the weight step: compiled in the first step only.
    assert graphs[2] == graphs[1] == graphs[0] <= 4, graphs
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.slow_compile
def test_compiled_by_inductor_equals_eager(monkeypatch):
    """Inductor's generated code (the pools' BatchNorm, the skip connections, the running
    statistics, the preprocessing, fused around the custom ops) against the eager fast
    supernet: logits and every gradient to 1e-5 relative in fp32. One reduction cell with one
    node; its C++ compiled without optimization (``TORCHINDUCTOR_DEBUG_COMPILE``) to keep the
    compilation to about a minute."""
    from fastnas.supernet import FastSearchNetwork

    monkeypatch.setenv("TORCHINDUCTOR_DEBUG_COMPILE", "1")
    torch._dynamo.reset()
    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        nets.append(FastSearchNetwork(C=4, num_classes=5, layers=1, num_nodes=1))
    eager, comp = nets
    compiled.compile_supernet(comp, backend="inductor")
    x, y = batch(5)
    out = {}
    for name, net in (("eager", eager), ("compiled", comp)):
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        # (a reduction cell only: alphas_normal is unused)
        out[name] = (logits, torch.autograd.grad(loss, list(net.parameters()), allow_unused=True))
    assert rel(out["compiled"][0], out["eager"][0]) < 1e-5
    for g_c, g_e in zip(out["compiled"][1], out["eager"][1]):
        assert (g_c is None) == (g_e is None)
        assert g_e is None or rel(g_c, g_e) < 1e-5
    for b_c, b_e in zip(comp.buffers(), eager.buffers()):   # running statistics
        assert rel(b_c, b_e) < 1e-5
    torch._dynamo.reset()


def test_the_compile_setting():
    """``compile`` is a DARTSConfig key (off by default), ``--compile`` a search/run flag that
    reaches it through the stage settings, and refused where it cannot apply."""
    from fastnas import cli
    from fastnas.darts import DARTSConfig
    from fastnas.errors import UserError
    from fastnas.pipeline import SEARCH_METHODS

    assert DARTSConfig().compile is False and DARTSConfig().compile_mode == "default"
    with pytest.raises(ValueError, match="checkpointing"):
        DARTSConfig(compile=True, checkpointing=True)
    with pytest.raises(ValueError, match="compile_mode"):
        DARTSConfig(compile_mode="fastest")
    parser = cli.build_parser()
    for argv in (["search", "--compile"], ["run", "--compile"]):
        given = cli._given(parser.parse_args(argv), cli.SEARCH_KEYS,
                           "search_" if argv[0] == "run" else "")
        assert SEARCH_METHODS["darts"].config_given(given) == {"compile": True}
        with pytest.raises(UserError, match="--compile does not apply to --method enas"):
            SEARCH_METHODS["enas"].config_given(given)
    assert "compile" not in cli._given(parser.parse_args(["search"]), cli.SEARCH_KEYS)
