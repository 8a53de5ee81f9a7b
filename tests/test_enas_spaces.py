"""ENAS search spaces: the micro and macro supergraphs run only the sampled child, the macro
architecture type, and the final networks that train a searched architecture."""
import json

import pytest
import torch
import torch.nn.functional as F

from fastnas import Genotype, NetworkCIFAR
from fastnas.enas import (
    MACRO_OPS,
    ENASOptimizer,
    MacroArch,
    MacroNetwork,
    MicroSupernet,
    load_architecture,
)
from fastnas.enas.macro import pool_layers
from fastnas.enas.micro import MICRO_OPS, loose_ends


def _batch(n=8, C=1, hw=8, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, hw, hw, generator=g), torch.randint(0, classes, (n,), generator=g)


def _calls(modules):
    """Register forward hooks on ``{key: module}``; returns the set the keys called go into."""
    called = set()
    for key, m in modules.items():
        m.register_forward_hook(lambda mod, inp, out, key=key: called.add(key))
    return called


# -- micro --------------------------------------------------------------------------------------
def test_micro_step_runs_and_updates_only_the_sampled_child():
    opt = ENASOptimizer({"channels": 4, "num_layers": 3, "num_nodes": 3, "in_channels": 1,
                         "controller_hidden": 8, "seed": 3})
    model = opt.model
    ops = {(c, n, j, k): op for c, cell in enumerate(model.cells)
           for n, node in enumerate(cell.edges) for j, inp in enumerate(node)
           for k, op in enumerate(inp)}
    pre = {(c, i): getattr(cell, f"preprocess{i}") for c, cell in enumerate(model.cells)
           for i in (0, 1)}
    called_ops, called_pre = _calls(ops), _calls(pre)
    # an architecture where node 0 of the normal cell reads input 1 twice, so state 0 is unused
    arch = Genotype(normal=[("sep_conv_3x3", 1), ("max_pool_3x3", 1), ("skip_connect", 2),
                            ("sep_conv_5x5", 1), ("avg_pool_3x3", 3), ("sep_conv_3x3", 2)],
                    normal_concat=[4],
                    reduce=[("sep_conv_5x5", 0), ("skip_connect", 1), ("max_pool_3x3", 0),
                            ("sep_conv_3x3", 2), ("sep_conv_3x3", 3), ("skip_connect", 0)],
                    reduce_concat=[4])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step(_batch(), arch)

    expected = set()
    for c, cell in enumerate(model.cells):
        edges = arch.reduce if cell.reduction else arch.normal
        expected |= {(c, pos // 2, j, MICRO_OPS.index(op)) for pos, (op, j) in enumerate(edges)}
    assert called_ops == expected
    normal_cells = [c for c, cell in enumerate(model.cells) if not cell.reduction]
    assert (normal_cells[0], 0) not in called_pre and (normal_cells[0], 1) in called_pre

    used_params = set()
    for key in expected:
        used_params |= {id(p) for p in ops[key].parameters()}
    for key, op in ops.items():
        for p in op.parameters():
            assert (p.grad is not None) == (id(p) in used_params), key
    for name, p in model.named_parameters():
        if p.grad is None:  # untouched: no gradient, no weight decay, no momentum
            assert torch.equal(p, before[name]), name
    # the next cell's 1x1 conv reads only the loose end (node 2, block 2) of this cell
    reader = model.cells[normal_cells[0] + 1].preprocess1
    w, width = reader.conv.weight.grad, reader.width
    assert w[:, 2 * width:].abs().sum() > 0 and w[:, :2 * width].abs().sum() == 0


def test_sampled_genotype_trains_as_a_network_cifar():
    opt = ENASOptimizer({"channels": 4, "num_layers": 3, "in_channels": 1, "controller_hidden": 8})
    genotype = opt.ask()
    assert genotype == Genotype.from_json(genotype.to_json())
    net = NetworkCIFAR(4, 10, 3, False, genotype, in_channels=1)
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = _batch(16)
    losses = []
    for _ in range(3):
        sgd.zero_grad()
        loss = F.cross_entropy(net(x)[0], y)
        loss.backward()
        sgd.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # the shared child and the final network agree on the output width
    assert opt.model(x, genotype).shape == net(x)[0].shape


def test_micro_space_rejects_foreign_genotypes():
    ok = ENASOptimizer({"channels": 2, "num_layers": 3, "num_nodes": 4, "controller_hidden": 8})
    from fastnas.genotypes import DARTS_V2  # 4 nodes, but dil_conv and a fixed concat

    with pytest.raises(ValueError, match="not in the micro search space"):
        ok.choices(DARTS_V2)
    g = ok.ask()
    with pytest.raises(ValueError, match="loose ends"):
        ok.choices(Genotype(g.normal, [2, 3, 4, 5], g.reduce, g.reduce_concat))
    with pytest.raises(ValueError, match="nodes"):
        ok.choices(Genotype(g.normal[:4], [2, 3], g.reduce, g.reduce_concat))
    with pytest.raises(TypeError):
        ok.choices(MacroArch(("conv_3x3",), ((),)))


def test_loose_ends():
    assert loose_ends([0, 1, 2, 1, 3, 3], 3) == [4]
    assert loose_ends([0, 1, 0, 1, 0, 1], 3) == [2, 3, 4]


def test_micro_supernet_layout_matches_network_cifar():
    net = MicroSupernet(C=4, num_classes=10, layers=8, num_nodes=5, in_channels=3)
    assert [c.reduction for c in net.cells] == [i in (2, 5) for i in range(8)]
    assert not any(m.track_running_stats for m in net.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))


# -- macro ---------------------------------------------------------------------------------------
def test_macro_step_runs_only_the_sampled_child():
    opt = ENASOptimizer({"search_space": "macro", "channels": 4, "num_layers": 6,
                         "in_channels": 1, "controller_hidden": 8})
    model = opt.model
    branches = {(l, k): b for l, layer in enumerate(model.branches) for k, b in enumerate(layer)}
    reductions = {(p, j): r for p, pool in enumerate(model.reductions) for j, r in enumerate(pool)}
    called_branches, called_reductions = _calls(branches), _calls(reductions)
    arch = MacroArch(ops=("conv_3x3", "sep_conv_5x5", "max_pool_3x3", "avg_pool_3x3",
                          "conv_5x5", "sep_conv_3x3"),
                     skips=((), (1,), (0, 0), (1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 0, 1)))
    assert pool_layers(6) == (1, 3)
    opt.step(_batch(), arch)
    assert called_branches == {(l, MACRO_OPS.index(op)) for l, op in enumerate(arch.ops)}
    # states: 0 the stem, l + 1 layer l; pools after layers 1 and 3. Reductions run only for
    # states read after a pool: layer 2 reads state 2 (pool 0); layer 3 skips to state 0 (pool 0);
    # layer 4 reads state 4 (pool 1) and skips to state 2 (pools 0 and 1, the first cached).
    assert called_reductions == {(0, 2), (0, 0), (1, 4), (1, 2)}
    for key, b in branches.items():
        for p in b.parameters():
            assert (p.grad is not None) == (key in called_branches)


def test_macro_arch_round_trips_and_validates(tmp_path):
    arch = MacroArch(["conv_3x3", "max_pool_3x3", "sep_conv_3x3"], [[], [1], [0, 1]])
    assert arch.skip_density == pytest.approx(2 / 3)
    assert MacroArch.parse(str(arch)) == arch
    assert MacroArch.parse(str(arch).replace('"', "'")) == arch
    assert MacroArch.from_json(arch.to_json()) == arch
    assert json.loads(arch.to_json())["search_space"] == "macro"
    arch.save(tmp_path / "arch.json")
    assert MacroArch.load(tmp_path / "arch.json") == arch
    assert load_architecture(tmp_path / "arch.json") == arch
    (tmp_path / "arch.txt").write_text(str(arch))
    assert load_architecture(tmp_path / "arch.txt") == arch
    g = ENASOptimizer({"channels": 2, "num_layers": 3, "controller_hidden": 8}).ask()
    g.save(tmp_path / "genotype.json")
    assert load_architecture(tmp_path / "genotype.json") == g
    for bad, match in [((["conv_9x9"], [[]]), "unknown op"),
                       ((["conv_3x3", "conv_3x3"], [[], []]), "needs 1 skip bits"),
                       ((["conv_3x3", "conv_3x3"], [[], [2]]), "0 or 1"),
                       ((["conv_3x3"], [[], []]), "rows of skips"),
                       (([], []), "at least one layer")]:
        with pytest.raises(ValueError, match=match):
            MacroArch(*bad)
    with pytest.raises(ValueError, match="unknown fields"):
        MacroArch.from_dict({"ops": ["conv_3x3"], "skips": [[]], "extra": 1})
    with pytest.raises(ValueError, match="MacroArch"):
        MacroArch.parse("__import__('os')")


def test_macro_network_trains_a_searched_architecture():
    opt = ENASOptimizer({"search_space": "macro", "channels": 4, "num_layers": 6,
                         "in_channels": 1, "controller_hidden": 8})
    arch = opt.ask()
    net = MacroNetwork(arch, C=4, num_classes=10, in_channels=1, dropout=0.1)
    assert net.classifier.in_features == 16  # doubled at both pools
    x, y = _batch(16)
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        sgd.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        sgd.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses))) and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="even"):
        MacroNetwork(arch, C=3, num_classes=10)
