"""Your own ops (issue 20): ``fastnas.ops.register``, the ``primitives`` config key and
``--primitives``, ``--plugins`` (recorded in the checkpoint, imported again on resume), and
registered ops in both supernets, genotypes, the final networks and the plots."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnas import DARTSOptimizer, FastSearchNetwork, Genotype, NetworkCIFAR, SearchNetwork
from fastnas.cli import main
from fastnas.darts import DARTSConfig
from fastnas.ops import OPS, PRIMITIVES, is_registered, make_op, register, unregister
from fastnas.space import darts_space

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The op the tests register: GELU, a 3x3 conv (strided in a reduction) and a BatchNorm.
PLUGIN = """
import torch.nn as nn
from fastnas.ops import register


@register("gelu_conv")
def gelu_conv(C, stride, affine):
    return nn.Sequential(nn.GELU(), nn.Conv2d(C, C, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(C, affine=affine))
"""
SUBSET = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
WITH_OP = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "gelu_conv"]


def gelu_conv(C, stride, affine):
    return nn.Sequential(nn.GELU(), nn.Conv2d(C, C, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(C, affine=affine))


@pytest.fixture
def own_ops():
    """Registers ``gelu_conv``; afterwards every registered op (and a plugin module the test
    imported) is gone, so no other test sees them."""
    before = set(OPS)
    modules = set(sys.modules)
    register("gelu_conv", gelu_conv)
    yield
    for name in [n for n in OPS if n not in before]:
        unregister(name)
    for name in set(sys.modules) - modules:
        if name.startswith("h5_plugin"):
            del sys.modules[name]


# -- register ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "1conv", "my-op", "a b", "x'y", None])
def test_register_refuses_names_that_are_no_identifiers(name):
    with pytest.raises(ValueError, match="an op name is an identifier"):
        register(name, gelu_conv)


def test_register_refuses_builtins_unless_replace_and_unregister_restores(own_ops):
    with pytest.raises(ValueError, match="'sep_conv_3x3' is already a built-in op"):
        register("sep_conv_3x3", gelu_conv)
    with pytest.raises(ValueError, match="'gelu_conv' is already a registered op"):
        register("gelu_conv", lambda C, s, a: gelu_conv(C, s, a))
    register("gelu_conv", gelu_conv)  # the same factory again: nothing happens
    with pytest.raises(TypeError, match="must be callable"):
        register("other_op", 3)
    builtin = OPS["sep_conv_3x3"]
    register("sep_conv_3x3", gelu_conv, replace=True)
    assert isinstance(make_op("sep_conv_3x3", 4, 1)[1], nn.Conv2d)
    unregister("sep_conv_3x3")
    assert OPS["sep_conv_3x3"] is builtin
    with pytest.raises(ValueError, match="it is built in"):
        unregister("sep_conv_3x3")


def test_register_as_a_decorator(own_ops):
    @register("double_conv")
    def double(C, stride, affine):
        return nn.Conv2d(C, C, 3, stride, 1)

    assert is_registered("double_conv") and double(4, 1, True).out_channels == 4
    assert make_op("double_conv", 4, 2)(torch.zeros(1, 4, 6, 6)).shape == (1, 4, 3, 3)


@pytest.mark.parametrize("factory, message", [
    (lambda C, s, a: nn.Conv2d(C, C, 3, s), r"maps \[2, 4, 8, 8\] to \[2, 4, 6, 6\]"),
    (lambda C, s, a: nn.Conv2d(C, 2 * C, 1, s), r"to \[2, 8, 8, 8\]; an op must give"),
    (lambda C, s, a: nn.Conv2d(C + 1, C, 1, s), "fails on a .*RuntimeError"),
    (lambda C, s, a: "conv", "returned str, not an nn.Module"),
])
def test_a_module_of_the_wrong_shape_is_an_error_naming_the_op(own_ops, factory, message):
    register("bad_op", factory)
    with pytest.raises(ValueError, match="operation 'bad_op'.*" + message):
        make_op("bad_op", 4, 1)


def test_the_shape_check_draws_no_random_numbers_and_changes_no_statistic(own_ops):
    register("fresh_op", gelu_conv)
    state = torch.get_rng_state()
    op = make_op("fresh_op", 4, 2, affine=False)  # its first build: checked
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    direct = gelu_conv(4, 2, False)
    assert torch.equal(after, torch.get_rng_state())
    assert torch.equal(op[1].weight, direct[1].weight)
    bn = op[2]
    assert op.training and int(bn.num_batches_tracked) == 0 and not bn.running_mean.any()


# -- the primitives key --------------------------------------------------------------------------
@pytest.mark.parametrize("value, error, message", [
    (["none", "conv_9x9"], ValueError, "primitives: unknown operation 'conv_9x9'; known: .*"
                                       "sep_conv_3x3.*register"),
    (["skip_connect", "none", "skip_connect"], ValueError, "skip_connect given more than once"),
    (["none"], ValueError, "at least one op other than none"),
    ([], ValueError, "at least one op other than none"),
    ("sep_conv_3x3", TypeError, "must be a list of op names"),
    (["sep_conv_3x3", 3], TypeError, "op names are strings"),
])
def test_primitives_are_validated(value, error, message):
    with pytest.raises(error, match=message):
        DARTSConfig(primitives=value)


def test_primitives_round_trip_as_a_list(own_ops):
    cfg = DARTSConfig(primitives=tuple(WITH_OP))
    assert cfg.primitives == WITH_OP
    assert DARTSConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert DARTSConfig().primitives is None


def test_primitives_are_the_ops_of_the_search(own_ops):
    cfg = dict(channels=4, layers=3, num_classes=3, batch_size=2, device="cpu", seed=0)
    default = DARTSOptimizer(cfg)
    assert default.model.space.ops == PRIMITIVES
    search = DARTSOptimizer({**cfg, "primitives": WITH_OP})
    assert search.model.space.ops == tuple(WITH_OP)
    assert search.model.alphas_normal.shape == (14, len(WITH_OP))
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    search.step((x, y), (x, y))
    assert set(search.genotype().to_architecture().ops()) <= set(WITH_OP) - {"none"}


# -- the supernets -------------------------------------------------------------------------------
@pytest.mark.parametrize("ops", [SUBSET, WITH_OP], ids=["subset", "registered"])
def test_fast_and_reference_agree_in_float64(own_ops, ops):
    """Logits, alpha and weight gradients of the fast supernet equal the reference's to 1e-10
    relative in float64 (train mode), and so do the BatchNorm statistics that forward updated
    and the eval-mode logits, for a subset of the built-ins and with a registered op (run per
    edge by the fast plan, joined to the fused node sums)."""
    space = darts_space(4, ops=ops)
    kw = dict(C=4, num_classes=5, layers=4, space=space)  # normal, 2 reductions, normal
    torch.manual_seed(0)
    ref = SearchNetwork(**kw)
    with torch.no_grad():
        for a in ref.alphas():
            a.normal_()
    fast = FastSearchNetwork(**kw)
    fast.load_state_dict(ref.state_dict())
    ref.double(), fast.double()
    others = [len(o) for cell in fast.cells for plan in cell._plans for o in plan.others]
    assert set(others) == ({1} if "gelu_conv" in ops else {0})
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (3,), generator=g)
    out = {}
    for name, net in (("ref", ref), ("fast", fast)):
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        out[name] = (logits, torch.autograd.grad(loss, [*net.alphas(), *net.weights()]))

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()

    assert rel(out["fast"][0], out["ref"][0]) < 1e-10
    assert len(out["fast"][1]) == len(out["ref"][1])
    for g_fast, g_ref in zip(*(out[k][1] for k in ("fast", "ref"))):
        assert rel(g_fast, g_ref) < 1e-10
    sr, sf = ref.state_dict(), fast.state_dict()  # the running statistics the forward updated
    for k in sr:
        if sr[k].is_floating_point():
            assert rel(sf[k], sr[k]) < 1e-10, k
    ref.eval(), fast.eval()
    with torch.no_grad():
        assert rel(fast(x), ref(x)) < 1e-10


def test_same_second_order_darts_steps_with_a_registered_op_in_float64(own_ops):
    """Two second-order DARTS steps through ``primitives`` with a registered op: the fast
    supernet's alphas and whole state equal the reference's to 1e-10 in float64.

    The finite-difference Hessian-vector product divides the two supernets' rounding
    differences by ``2 r / ||v||``: at ``hessian_r=1e-5`` they reach 1.9e-10 here (5.8e-11 with
    built-in ops only, the same phenomenon), at ``1e-3`` 2.9e-12, so this test takes 1e-3."""
    cfg = dict(channels=4, layers=4, num_classes=5, batch_size=3, order=2, device="cpu",
               seed=4, learning_rate_alpha=0.05, precision="fp64", hessian_r=1e-3,
               primitives=WITH_OP)
    ref = DARTSOptimizer({**cfg, "supernet": "reference"})
    fast = DARTSOptimizer({**cfg, "supernet": "fast"})
    g = torch.Generator().manual_seed(7)
    batches = [(torch.randn(3, 3, 8, 8, generator=g), torch.randint(0, 5, (3,), generator=g))
               for _ in range(4)]
    for step in range(2):
        for opt in (ref, fast):
            opt.step(batches[2 * step], batches[2 * step + 1])

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()

    for a, b in zip(ref.arch_parameters(), fast.arch_parameters()):
        assert rel(b, a) < 1e-10 and a.abs().max() > 1e-2   # equal, and the alphas moved
    sr, sf = ref.model.state_dict(), fast.model.state_dict()
    for k in sr:
        if sr[k].is_floating_point():
            assert rel(sf[k], sr[k]) < 1e-10, k
    assert fast.genotype() == ref.genotype()


# -- genotypes, final networks -------------------------------------------------------------------
GENOTYPE = ("Genotype(normal=[('gelu_conv', 0), ('sep_conv_3x3', 1), ('gelu_conv', 2), "
            "('skip_connect', 0), ('gelu_conv', 1), ('max_pool_3x3', 3), ('gelu_conv', 4), "
            "('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('gelu_conv', 0), "
            "('gelu_conv', 1), ('max_pool_3x3', 0), ('gelu_conv', 2), ('skip_connect', 2), "
            "('gelu_conv', 3), ('gelu_conv', 0), ('skip_connect', 4)], reduce_concat=[2, 3, 4, 5])")


def test_genotypes_and_final_networks_take_registered_ops(own_ops, tmp_path):
    genotype = Genotype.parse(GENOTYPE)
    assert str(genotype) == GENOTYPE and Genotype.from_json(genotype.to_json()) == genotype
    path = str(tmp_path / "genotype.json")
    genotype.save(path)
    assert Genotype.load(path) == genotype
    net = NetworkCIFAR(4, 3, 3, False, genotype, in_channels=1)
    logits, _ = net(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 3)
    per_cell = {kind: [op for op, _ in getattr(genotype, kind)].count("gelu_conv")
                for kind in ("normal", "reduce")}
    assert per_cell == {"normal": 4, "reduce": 5}
    # layers=3: cell 0 normal, cells 1 and 2 reductions
    assert sum(isinstance(m, nn.GELU) for m in net.modules()) == 4 + 2 * 5
    unregister("gelu_conv")
    for read in (lambda: Genotype.parse(GENOTYPE), lambda: Genotype.load(path)):
        with pytest.raises(ValueError, match="normal: unknown operation 'gelu_conv' on node 0; "
                                             "known: .*; an op of your own must be registered"):
            read()


# -- the command line ----------------------------------------------------------------------------
SMALL = ["--limit", "64", "--quiet", "--no-plots"]


def _plugin(tmp_path, name="h5_plugin_ops"):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    return name


def _fastnas(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "fastnas", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_run_with_a_registered_op_then_resume_with_the_recorded_plugin(tmp_path, own_ops,
                                                                      monkeypatch, capsys):
    """`fastnas run --plugins M --primitives ...,gelu_conv` searches and trains on digits in a
    process of its own; the checkpoint and config.json record the plugin, a resumed search
    without --plugins imports it again, and `fastnas plot --plugins M` draws the cells."""
    plugin = _plugin(tmp_path)
    done = _fastnas(tmp_path, "run", "--plugins", plugin, "--primitives", ",".join(WITH_OP),
                    "--search-epochs", "1", "--train-epochs", "1", "--search-layers", "3",
                    "--train-layers", "3", "--search-channels", "4", "--train-channels", "4",
                    "--search-batch-size", "16", "--train-batch-size", "16", *SMALL,
                    "--output", "out")
    assert done.returncode == 0, done.stderr
    search = tmp_path / "out" / "search"
    config = _json(tmp_path / "out" / "config.json")
    assert config["search"]["plugins"] == [plugin] == config["train"]["plugins"]
    assert config["search"]["primitives"] == WITH_OP
    state = torch.load(search / "checkpoint.pt", weights_only=True)
    assert state["run"]["plugins"] == [plugin] and state["config"]["primitives"] == WITH_OP
    alphas = _json(search / "alphas.json")
    assert all(p["options"] == WITH_OP for p in alphas["panels"])
    genotype = _json(search / "genotype.json")
    ops = {op for cell in ("normal", "reduce") for op, _ in genotype[cell]}
    assert ops <= set(WITH_OP) - {"none"}
    trained = torch.load(tmp_path / "out" / "train" / "model.pt", weights_only=True)
    assert Genotype.parse(trained["genotype"]) == Genotype.from_dict(genotype)  # own_ops
    net = NetworkCIFAR(4, 10, 3, False, Genotype.from_dict(genotype), in_channels=1)
    assert {k: v.shape for k, v in net.state_dict().items()} == {
        k: v.shape for k, v in trained["model"].items()}

    resumed = _fastnas(tmp_path, "search", "--resume", "--epochs", "2", *SMALL,
                       "--output", str(search))
    assert resumed.returncode == 0, resumed.stderr
    assert _json(search / "metrics.json")["epochs"] == 2
    assert torch.load(search / "checkpoint.pt", weights_only=True)["run"]["plugins"] == [plugin]

    unregister("gelu_conv")  # as in a fresh process: the plugin registers it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a plugin import appends the cwd
    assert main(["plot", str(search)]) == 2
    assert "unknown operation 'gelu_conv'" in _error(capsys)
    assert main(["plot", "--plugins", plugin, str(search)]) == 0
    assert (search / "plots" / "cell_normal.png").stat().st_size > 0
    assert "gelu_conv" in (search / "plots" / "cell_reduce.dot").read_text(encoding="utf-8") or \
        "gelu_conv" in (search / "plots" / "cell_normal.dot").read_text(encoding="utf-8")


def test_run_with_a_subset_of_the_builtins(tmp_path):
    """`fastnas run --primitives` with five of the eight built-ins searches and trains."""
    done = _fastnas(tmp_path, "run", "--primitives", ",".join(SUBSET), "--search-epochs", "1",
                    "--train-epochs", "1", "--search-layers", "3", "--train-layers", "3",
                    "--search-channels", "4", "--train-channels", "4", "--search-batch-size",
                    "16", "--train-batch-size", "16", *SMALL, "--output", "out")
    assert done.returncode == 0, done.stderr
    config = _json(tmp_path / "out" / "config.json")["search"]
    assert config["primitives"] == SUBSET and "plugins" not in config
    state = torch.load(tmp_path / "out" / "search" / "checkpoint.pt", weights_only=True)
    assert state["model"]["alphas_normal"].shape == (14, len(SUBSET))
    assert "plugins" not in state["run"]
    genotype = Genotype.load(str(tmp_path / "out" / "search" / "genotype.json"))
    assert set(genotype.to_architecture().ops()) <= set(SUBSET) - {"none"}
    trained = torch.load(tmp_path / "out" / "train" / "model.pt", weights_only=True)
    assert Genotype.parse(trained["genotype"]) == genotype and "plugins" not in trained


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastnas: error:"), err
    return err[0]


def test_command_line_errors_name_the_op_or_the_plugin(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a plugin import appends the cwd
    out = ["--output", str(tmp_path / "out"), *SMALL]
    assert main(["search", "--primitives", "none,gelu_conv", *out]) == 2
    assert "primitives: unknown operation 'gelu_conv'; known: " in _error(capsys)
    assert main(["search", "--plugins", "h5_plugin_missing", *out]) == 2
    assert "plugin module 'h5_plugin_missing' not found" in _error(capsys)
    assert main(["search", "--plugins", "../evil", *out]) == 2
    assert "plugin '../evil' is not a module name" in _error(capsys)
    assert main(["search", "--primitives", "none,,skip_connect", *out]) == 2
    assert "--primitives: must be op names separated by commas" in _error(capsys)
    assert main(["search", "--method", "enas", "--primitives", "sep_conv_3x3", *out]) == 2
    assert "--primitives does not apply to --method enas" in _error(capsys)
    (tmp_path / "genotype.txt").write_text(GENOTYPE, encoding="utf-8")
    assert main(["train", "--genotype", "genotype.txt", *out]) == 2
    assert "unknown operation 'gelu_conv' on node 0" in _error(capsys)


def test_a_resumed_run_whose_plugin_is_gone_names_it(tmp_path, monkeypatch, capsys, own_ops):
    """A search written with a plugin: `--config DIR/config.json` imports it again; resuming
    a checkpoint whose plugin is gone is one line naming it and the checkpoint."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a plugin import appends the cwd
    plugin = _plugin(tmp_path, "h5_plugin_gone")
    unregister("gelu_conv")  # the plugin registers it
    out = str(tmp_path / "out")
    common = ["--layers", "3", "--channels", "4", "--batch-size", "16", *SMALL, "--output", out]
    assert main(["search", "--plugins", plugin, "--primitives", ",".join(WITH_OP), "--epochs",
                 "1", *common]) == 0
    capsys.readouterr()
    # as in a fresh process: a run repeated from its config.json imports the plugin it lists
    unregister("gelu_conv")
    del sys.modules[plugin]
    again = ["--config", os.path.join(out, "config.json"), *SMALL, "--output", out + "-again"]
    assert main(["search", *again]) == 0
    assert is_registered("gelu_conv") and plugin in sys.modules
    capsys.readouterr()
    os.remove(tmp_path / f"{plugin}.py")
    del sys.modules[plugin]
    assert main(["search", "--resume", "--epochs", "2", *common]) == 2
    line = _error(capsys)
    assert f"plugin module '{plugin}' not found" in line and "checkpoint.pt was written with it" \
        in line


MARKING_PLUGIN = PLUGIN + """
import os

with open(f"imported-by-rank-{os.environ.get('RANK', 'none')}", "w") as f:
    f.write("x")
"""


def test_torchrun_imports_the_plugins_on_every_rank(tmp_path):
    """Under torchrun every rank imports the plugins (each writes a marker when imported) and
    builds the supernet with the registered op; the search ends with one set of files."""
    (tmp_path / "h5_plugin_ranks.py").write_text(MARKING_PLUGIN, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "fastnas",
               "search", "--plugins", "h5_plugin_ranks", "--primitives", ",".join(WITH_OP),
               "--epochs", "1", "--layers", "3", "--channels", "4", "--batch-size", "16",
               "--limit", "64", "--quiet", "--no-plots", "--dist-timeout", "60",
               "--output", "out"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("imported-by-rank-*")) == [
        "imported-by-rank-0", "imported-by-rank-1"]
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert state["run"]["plugins"] == ["h5_plugin_ranks"]
    assert state["model"]["alphas_normal"].shape == (14, len(WITH_OP))
