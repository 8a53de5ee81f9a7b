"""Search inside a user's own model: ``fastnas.Choice`` / ``InputChoice`` and
``DARTSOptimizer(config, model=net)`` (float64 where numbers are compared)."""
import io
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import fastnas
import fastnas.checkpoint
from fastnas import Choice, DARTSOptimizer, InputChoice, UserError
from fastnas.choice import FixedInputChoice
from fastnas.darts.model_search import search_model
from fastnas.reports import AlphaHistory, write_alpha_history
from fastnas.space import Relaxation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
from choice_models import CONFIG, OwnNet, batches  # noqa: E402

WORKER = os.path.join(REPO, "tests", "choice_worker.py")
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           OMP_NUM_THREADS="1")
ENV.pop("TRITON_INTERPRET", None)


def optimizer(seed=0, **config):
    torch.manual_seed(seed)
    opt = DARTSOptimizer(dict(CONFIG, **config), model=OwnNet())
    with torch.no_grad():   # alphas away from uniform, so every term matters
        for a in opt.arch_parameters():
            a.normal_(0, 0.5)
    return opt


def test_the_search_finds_every_choice_and_names_them():
    opt = optimizer()
    assert opt.model.space.names == ("a", "b", "c", "merge")
    assert opt.model.space.options == (("conv3", "conv5", "identity"), ("0", "1"),
                                       ("conv1", "conv3bn"), ("0", "1", "2"))
    assert [tuple(a.shape) for a in opt.arch_parameters()] == [(1, 3), (1, 2), (1, 2), (1, 3)]
    weights = {id(p) for p in opt.weight_parameters()}
    assert weights == {id(p) for p in opt.user_model.parameters()}
    assert not weights & {id(a) for a in opt.arch_parameters()}


def test_the_forward_is_the_softmax_weighted_sum_of_the_candidates():
    opt = optimizer()
    net, (x, _) = opt.user_model, batches(3)[0]
    net.eval()
    w = [F.softmax(a[0], 0) for a in opt.arch_parameters()]
    x0 = net.stem(x)
    a = sum(wk * m(x0) for wk, m in zip(w[0], net.a.candidates))
    x1 = w[1][0] * torch.relu(a) + w[1][1] * torch.tanh(a)
    x2 = sum(wk * m(x1) for wk, m in zip(w[2], net.c.candidates))
    merged = w[3][0] * x0 + w[3][1] * x1 + w[3][2] * x2
    expected = net.head(merged.mean((2, 3)))
    torch.testing.assert_close(opt.model(x), expected, rtol=1e-12, atol=1e-12)


def test_every_choice_sums_through_the_kernel_weighted_sum(monkeypatch):
    calls = []
    real = fastnas.kernels.weighted_sum

    def counted(xs, w):
        calls.append(len(xs))
        return real(xs, w)

    monkeypatch.setattr(fastnas.kernels, "weighted_sum", counted)
    opt = optimizer()
    opt.model(batches(3)[0][0])
    assert calls == [3, 2, 2, 3]


def test_the_choices_run_the_triton_weighted_sum_under_the_triton_backend():
    """Forced to Triton (the interpreter on a CPU, compiled on CUDA), every choice's sum is the
    kernel, forward and backward, and the logits and alpha gradients match the torch path."""
    from fastnas import kernels
    from fastnas.kernels import dispatch

    if not dispatch.HAS_TRITON or not (dispatch.INTERPRET or torch.cuda.is_available()):
        pytest.skip("needs Triton (compiled on CUDA, or TRITON_INTERPRET=1 on a CPU)")
    device = "cuda" if torch.cuda.is_available() and not dispatch.INTERPRET else "cpu"
    x, y = (t.to(device) for t in batches(3, n=4, dtype=torch.float32)[0])
    runs = {}
    for backend in ("torch", "triton"):
        kernels.reset_launch_counts()
        with kernels.use_backend(backend):
            opt = optimizer(precision="fp32", device=device)
            logits = opt.model(x)
            F.cross_entropy(logits, y).backward()
        runs[backend] = logits.detach(), [a.grad.clone() for a in opt.arch_parameters()]
        counts = kernels.launch_counts()
    assert counts.get("weighted_sum_fwd", 0) == 4 and counts.get("weighted_sum_bwd", 0) > 0, counts
    (lt, gt), (lk, gk) = runs["torch"], runs["triton"]
    torch.testing.assert_close(lk, lt, rtol=1e-5, atol=1e-6)
    for a, b in zip(gk, gt):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# -- the bi-level step -----------------------------------------------------------------------------
def exact_unrolled_gradient(model, train, val, xi, opt, momentum, wd):
    """grad_a L_val(w'(a), a) by autograd through w' = w - xi (m buf + grad_w L_train + wd w)."""
    names, weights = zip(*model.named_weights())
    g = torch.autograd.grad(F.cross_entropy(model(train[0]), train[1]), weights,
                            create_graph=True)
    virtual = {n: w.detach() - xi * (momentum * opt.state[w]["momentum_buffer"] + gi
                                     + wd * w.detach())
               for n, w, gi in zip(names, weights, g)}
    virtual.update({n: b.clone() for n, b in model.named_buffers()})
    val_loss = F.cross_entropy(functional_call(model, virtual, (val[0],)), val[1])
    return torch.autograd.grad(val_loss, model.alphas())


def rel_err(a, b):
    num = torch.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b)))
    return (num / torch.sqrt(sum((y ** 2).sum() for y in b))).item()


def test_second_order_matches_autograd_through_the_unrolled_step():
    opt = optimizer()
    train, val = batches(1)[0], batches(2)[0]
    opt.step(train, val)   # a real step: momentum buffers, moved alphas and weights
    cfg = opt.config
    xi = 0.1
    grads, _, _ = opt.architect.unrolled_gradient(train, val, xi, opt.weight_optimizer)
    exact = exact_unrolled_gradient(opt.model, train, val, xi, opt.weight_optimizer,
                                    cfg.momentum, cfg.weight_decay)
    assert rel_err(grads, exact) < 1e-6
    virtual = opt.architect.virtual_weights(train, xi, opt.weight_optimizer)
    loss, _ = opt.architect.loss(*val, weights=virtual)
    first_order_at_virtual = torch.autograd.grad(loss, opt.model.alphas())
    assert rel_err(first_order_at_virtual, exact) > 1e-4   # the Hessian term matters here


@pytest.mark.parametrize("order", [1, 2])
def test_a_search_moves_the_alphas_and_records_them(order, tmp_path):
    opt = optimizer(order=order, num_steps=2)
    before = [a.detach().clone() for a in opt.arch_parameters()]
    opt.search(batches(1, count=2), batches(2, count=2), progress=False)
    assert all(not torch.equal(a, b) for a, b in zip(opt.arch_parameters(), before))
    record = opt.history[-1]
    assert record["alphas_what"] == "softmax of the alphas per edge"
    torch.testing.assert_close(record["alphas_a"], F.softmax(opt.arch_parameters()[0].detach(),
                                                            -1), rtol=0, atol=0)
    path = str(tmp_path / "alphas.json")
    write_alpha_history(path, "darts", opt.config.to_dict(), opt.history, space=opt.model.space)
    history = AlphaHistory.read(path)
    assert [p.title for p in history.panels] == ["a (choice)", "b (choice)", "c (choice)",
                                                 "merge (input)"]
    assert history.panels[0].options == ("conv3", "conv5", "identity")
    assert history.weights[-1][3] == pytest.approx(record["alphas_merge"][0].tolist())
    from fastnas.reports.figures import alphas_figure

    figure = alphas_figure(history)   # the alpha grid draws the choices' panels
    gids = {line.get_gid() for ax in figure.axes for line in ax.get_lines()}
    assert {"choices/a/conv5", "choices/merge/2", "choices/b/1"} <= gids


def test_a_non_finite_loss_skips_the_step_under_the_guard():
    calls = []

    def loss(logits, y):
        calls.append(1)
        value = F.cross_entropy(logits, y)
        return value * float("nan") if len(calls) == 2 else value   # the weight step's loss

    torch.manual_seed(0)
    opt = DARTSOptimizer(dict(CONFIG, order=1, on_nonfinite="skip"), model=OwnNet(), loss=loss)
    weights = [p.detach().clone() for p in opt.weight_parameters()]
    stats = opt.step(batches(1)[0], batches(2)[0])
    assert stats["skipped"] and opt.guard.skipped == 1
    assert all(torch.equal(p, q) for p, q in zip(opt.weight_parameters(), weights))


def test_compiled_search_takes_the_eager_steps(monkeypatch):
    from fastnas.supernet import compiled

    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")   # the same graphs, no code generation
    runs = []
    for compile in (False, True):
        torch.manual_seed(0)
        opt = DARTSOptimizer(dict(CONFIG, order=1, compile=compile), model=OwnNet())
        for _ in range(2):
            opt.step(batches(1)[0], batches(2)[0])
        runs.append([p.detach().clone() for p in opt.model.parameters()])
    for eager, compiled_ in zip(*runs):
        torch.testing.assert_close(compiled_, eager, rtol=1e-9, atol=1e-12)


def test_a_state_loads_only_into_a_search_of_the_same_choices(tmp_path):
    opt = optimizer()
    opt.step(batches(1)[0], batches(2)[0])
    path = str(tmp_path / "search.pt")
    opt.save(path)
    state = fastnas.checkpoint.load_checkpoint(path)
    assert state["choices"] == ["a", "b", "c", "merge"]
    again = optimizer(seed=1)
    again.load_state_dict(state)
    for (k, v), w in zip(opt.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(v, w), k
    with pytest.raises(ValueError, match="rebuild it with DARTSOptimizer"):
        DARTSOptimizer.load(path)
    supernet = DARTSOptimizer(dict(channels=4, layers=3, num_nodes=2, device="cpu"))
    with pytest.raises(ValueError, match="not of a search inside your model"):
        opt.load_state_dict(supernet.state_dict())
    other = nn.Sequential(nn.Flatten(), fastnas.Choice([nn.Linear(36, 3), nn.Linear(36, 3)]))
    with pytest.raises(ValueError, match="are not this model's"):
        DARTSOptimizer(dict(CONFIG), model=other).load_state_dict(state)


class Squares(Relaxation):
    """Softmax weights and a penalty ``c * sum of squares`` over ``{choice: alphas}``."""

    def weights(self, alphas, phase):
        return F.softmax(alphas, -1)

    def penalty(self, alphas):
        return 0.5 * sum((a ** 2).sum() for a in alphas.values())


def test_the_relaxation_penalty_joins_the_validation_loss_over_the_choices():
    torch.manual_seed(0)
    opt = DARTSOptimizer(dict(CONFIG, order=1), model=OwnNet(), relaxation=Squares())
    with torch.no_grad():
        for a in opt.arch_parameters():
            a.normal_(0, 0.5)
    x, y = batches(2)[0]
    loss, _ = opt.architect.val_loss(x, y)
    alphas = opt.arch_parameters()
    expected = F.cross_entropy(opt.model(x), y) + 0.5 * sum((a ** 2).sum() for a in alphas)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert set(opt.model.arch.by_type()) == {"a", "b", "c", "merge"}


# -- the answer ------------------------------------------------------------------------------------
def set_alphas(opt, rows):
    with torch.no_grad():
        for a, row in zip(opt.arch_parameters(), rows):
            a.copy_(torch.tensor([row], dtype=a.dtype))


def test_export_names_the_strongest_candidates_as_json():
    opt = optimizer()
    set_alphas(opt, [[0.1, 0.9, 0.2], [0.5, 0.4], [0.0, 0.3], [0.7, 0.1, 0.8]])
    chosen = opt.export()
    assert chosen == {"a": "conv5", "b": "0", "c": "conv3bn", "merge": [2, 0]}
    assert json.loads(json.dumps(chosen)) == chosen


def test_fixed_model_has_exactly_the_parameters_of_the_chosen_candidates():
    opt = optimizer()
    set_alphas(opt, [[0.1, 0.9, 0.2], [0.5, 0.4], [0.0, 0.3], [0.7, 0.1, 0.8]])
    fixed = opt.fixed_model()
    net = opt.user_model
    kept = {"stem": net.stem, "a": net.a.candidate("conv5"), "b": net.b.candidate("0"),
            "c": net.c.candidate("conv3bn"), "head": net.head}
    expected = {f"{k}.{n}": p for k, m in kept.items() for n, p in m.named_parameters()}
    got = dict(fixed.named_parameters())
    assert sorted(got) == sorted(expected)
    for name, p in got.items():
        assert torch.equal(p, expected[name]) and p is not expected[name], name
    assert isinstance(fixed.merge, FixedInputChoice) and fixed.merge.chosen == [2, 0]
    assert not any(isinstance(m, (Choice, InputChoice)) for m in fixed.modules())
    # the fixed model computes the chosen path
    x = batches(3)[0][0]
    fixed.eval()
    x0 = net.stem.eval()(x)
    x1 = torch.relu(net.a.candidate("conv5")(x0))
    x2 = net.c.candidate("conv3bn").eval()(x1)
    torch.testing.assert_close(fixed(x), net.head((x2 + x0).mean((2, 3))), rtol=0, atol=0)
    # trainable on its own, and saved whole
    fixed.train()
    sgd = torch.optim.SGD(fixed.parameters(), lr=0.1)
    F.cross_entropy(fixed(x), batches(3)[0][1]).backward()
    sgd.step()
    assert not torch.equal(fixed.head.weight, net.head.weight)
    buffer = io.BytesIO()
    torch.save(fixed, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded.eval()(x), fixed.eval()(x), rtol=0, atol=0)


def test_candidate_names_may_be_any_string():
    choice = Choice({"half": nn.ReLU(), "train": nn.Tanh(), "a.b": nn.Identity()})
    assert choice.names == ["half", "train", "a.b"]
    assert isinstance(choice.candidate("train"), nn.Tanh)
    with pytest.raises(UserError, match="no candidate 'x'"):
        choice.candidate("x")


def test_a_choice_outside_a_search_is_a_one_line_error():
    net = OwnNet()
    with pytest.raises(UserError, match="no mixing weights outside a search"):
        net(batches(3)[0][0].float())
    opt = optimizer()   # a model saved whole in the search loads without its search
    buffer = io.BytesIO()
    torch.save(opt.user_model, buffer)
    buffer.seek(0)
    with pytest.raises(UserError, match="no mixing weights outside a search"):
        torch.load(buffer, weights_only=False)(batches(3)[0][0])
    with pytest.raises(UserError, match="nothing to search"):
        DARTSOptimizer(dict(CONFIG), model=nn.Linear(2, 2))


@pytest.mark.parametrize("bad,match", [
    (lambda: Choice(nn.ReLU()), "list or a dict"),
    (lambda: Choice([]), "at least one"),
    (lambda: Choice({"": nn.ReLU()}), "non-empty strings"),
    (lambda: Choice([nn.ReLU(), 3]), "not an nn.Module"),
    (lambda: InputChoice(2, 3), "exceeds"),
    (lambda: InputChoice(0), "n_candidates"),
])
def test_bad_choices_are_one_line_errors(bad, match):
    with pytest.raises(UserError, match=match):
        bad()


def test_the_supernet_options_on_edges_are_refused_for_a_user_model():
    with pytest.raises(UserError, match="partial_channels=4 acts on the edges"):
        search_model(OwnNet())("fast", partial_channels=4)
    with pytest.raises(UserError, match="export\\(\\) and fixed_model\\(\\) answer"):
        DARTSOptimizer(dict(channels=4, layers=3, num_nodes=2, device="cpu")).export()


class HardPick(Relaxation):
    """A hard relaxation (the interface GDAS' Gumbel implements): straight-through one-hot
    weights of the argmax of ``a + fixed noise``, and its index."""

    name = "hard"

    def weights(self, alphas, phase):
        return F.softmax(alphas, -1)

    def sample(self, alphas, phase):
        p = F.softmax(alphas, -1)
        index = (alphas.detach() + torch.tensor([0.0, 5.0, 0.0][:alphas.shape[1]],
                                                dtype=alphas.dtype)).argmax(-1)
        hard = F.one_hot(index, alphas.shape[1]).to(p.dtype)
        return hard - p.detach() + p, index.cpu()


def test_a_hard_relaxation_runs_only_the_sampled_candidate():
    torch.manual_seed(0)
    net = OwnNet()
    ran = []
    for name, m in zip(net.a.names, net.a.candidates):
        m.register_forward_hook(lambda mod, i, o, name=name: ran.append(name))
    opt = DARTSOptimizer(dict(CONFIG, order=1), model=net, relaxation=HardPick())
    x, y = batches(3)[0]
    loss = F.cross_entropy(opt.model(x), y)
    assert ran == ["conv5"]
    assert opt.model.arch.selected["a"].tolist() == [1]
    loss.backward()
    # every alpha of the choice gets a gradient through the straight-through weights
    assert (opt.arch_parameters()[0].grad != 0).all()


@pytest.mark.parametrize("relaxation", ["gumbel", "dirichlet", "sigmoid"])
def test_the_methods_relaxations_search_a_user_model(relaxation):
    """The relaxations of the methods issue (issue 18, the config key ``relaxation``) through
    the same interface (gumbel: first order, GDAS has no second-order step)."""
    torch.manual_seed(0)
    net = OwnNet()
    ran = []
    for name, m in zip(net.a.names, net.a.candidates):
        m.register_forward_hook(lambda mod, i, o, name=name: ran.append(name))
    order = 1 if relaxation == "gumbel" else 2
    opt = DARTSOptimizer(dict(CONFIG, order=order, num_steps=2, relaxation=relaxation),
                         model=net)
    opt.search(batches(1, count=2), batches(2, count=2), progress=False)
    assert set(opt.history[-1]) >= {"alphas_a", "alphas_b", "alphas_c", "alphas_merge"}
    chosen = opt.export()
    assert chosen["a"] in net.a.names and len(chosen["merge"]) == 2
    if relaxation == "gumbel":   # a hard relaxation: one candidate per pass of the choice
        passes = len(ran)
        ran.clear()
        opt.model.train()
        opt.model(batches(3)[0][0])
        assert len(ran) == 1 and passes > 0
    fixed = opt.fixed_model()
    assert not any(isinstance(m, (Choice, InputChoice)) for m in fixed.modules())


# -- processes: kill -9 and resume, torchrun -------------------------------------------------------
def worker(*args, timeout=240):
    return subprocess.run([sys.executable, WORKER, *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_kill_9_then_resume_ends_bitwise_where_an_uninterrupted_search_ends(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    cut.mkdir()
    done = worker("run", whole)
    assert done.returncode == 0, done.stderr
    killed = worker("run", cut, 5)   # step 5 of 6: in the last epoch, after two checkpoints
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (cut / "search.pt").exists() and not (cut / "final.pt").exists()
    done = worker("run", cut)
    assert done.returncode == 0, done.stderr
    a = torch.load(whole / "final.pt", weights_only=True)
    b = torch.load(cut / "final.pt", weights_only=True)
    assert a["export"] == b["export"]
    for key in ("model", "weight_optimizer", "arch_optimizer"):
        assert repr(a["state"][key].keys()) == repr(b["state"][key].keys())
    for k, v in a["state"]["model"].items():
        assert torch.equal(v, b["state"]["model"][k]), k
    assert a["state"]["epoch"] == b["state"]["epoch"] == 3
    assert a["state"]["global_step"] == b["state"]["global_step"] == 6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_torchrun_keeps_identical_replicas(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), WORKER, "dist",
               str(tmp_path)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["export"] == ranks[1]["export"]
    assert ranks[0]["model"].keys() == ranks[1]["model"].keys()
    for k, v in ranks[0]["model"].items():
        assert torch.equal(v, ranks[1]["model"][k]), k
    # the search did run: every alpha vector moved from its initial draw
    for i, initial in enumerate(ranks[0]["initial_alphas"]):
        assert not torch.equal(ranks[0]["model"][f"arch.alphas_list.{i}"], initial)


def test_the_own_model_example_runs(tmp_path):
    example = os.path.join(REPO, "examples", "own_model.py")
    saved = tmp_path / "fixed.pt"
    done = subprocess.run([sys.executable, example, "--epochs", "1", "--train-epochs", "1",
                           "--limit", "200", "--save", str(saved)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(t for t in done.stdout.splitlines() if t.startswith("chosen: "))
    chosen = json.loads(line[len("chosen: "):])
    assert len(chosen) == 10 and chosen["blocks.0.conv"] in ("3x3", "5x5")
    assert len(chosen["features"]) == 2
    assert "fixed model epoch 1: test accuracy" in done.stdout
    state = torch.load(saved, weights_only=True)
    assert "blocks.0.conv.0.weight" in state and not any("candidates" in k for k in state)
