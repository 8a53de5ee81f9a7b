import torch
import torch.nn as nn

from fastnas import PRIMITIVES, Genotype, MixedOp, SearchCell, SearchNetwork
from fastnas.supernet import derive_genotype, num_edges


def count(params):
    return sum(p.numel() for p in params)


def test_default_search_network_has_the_paper_weight_count():
    net = SearchNetwork()
    assert count(net.weights()) == 1_930_618
    assert count(net.parameters()) == 1_930_618 + 2 * 14 * 8


def test_alphas_are_registered_parameters_in_primitive_order():
    torch.manual_seed(0)
    net = SearchNetwork(C=4, layers=3)
    names = dict(net.named_parameters())  # owned by the arch module (fastnas.space)
    assert names["arch.alphas_normal"] is net.alphas_normal is net.arch.alphas_normal
    assert names["arch.alphas_reduce"] is net.alphas_reduce
    assert net.alphas_normal.shape == (14, len(PRIMITIVES)) == net.alphas_reduce.shape
    # ... and named as before in the state_dict (checkpoints, the paper's checkpoints)
    state = net.state_dict()
    assert list(state)[:2] == ["alphas_normal", "alphas_reduce"]   # first, as they always were
    assert not any(k.startswith("arch.") for k in state)
    # init is 1e-3 * randn
    big = SearchNetwork(C=2, layers=1, num_nodes=16)
    assert 0.5e-3 < big.alphas_normal.std().item() < 2e-3
    weight_ids = {id(p) for p in net.weights()}
    assert not weight_ids & {id(a) for a in net.alphas()}
    assert len(weight_ids) + 2 == len(list(net.parameters()))


def test_forward_shapes_and_in_channels():
    torch.manual_seed(0)
    net = SearchNetwork(C=4, num_classes=7, layers=3, num_nodes=2, in_channels=1)
    assert net.alphas_normal.shape == (num_edges(2), 8) == (5, 8)
    out = net(torch.randn(3, 1, 9, 9))
    assert out.shape == (3, 7)
    out.sum().backward()
    assert net.alphas_normal.grad is not None and net.alphas_reduce.grad is not None


def test_mixed_op_is_the_weighted_sum_and_pools_have_bn():
    torch.manual_seed(0)
    op = MixedOp(4, 1)
    for name, module in zip(PRIMITIVES, op.ops):
        if "pool" in name:
            assert isinstance(module, nn.Sequential) and isinstance(module[1], nn.BatchNorm2d)
            assert not module[1].affine
    x = torch.randn(2, 4, 6, 6)
    w = torch.softmax(torch.randn(8), 0)
    expected = sum(wk * o(x) for wk, o in zip(w, op.ops))
    torch.testing.assert_close(op(x, w), expected)


def test_search_cell_concatenates_last_multiplier_nodes():
    cell = SearchCell(3, 2, 6, 6, 4, reduction=True, reduction_prev=False)
    out = cell(torch.randn(2, 6, 8, 8), torch.randn(2, 6, 8, 8), torch.full((9, 8), 1 / 8))
    assert out.shape == (2, 8, 4, 4)


def plant(rows):
    """Alpha logits from {edge: {op: value}}, everything else 0."""
    a = torch.zeros(14, len(PRIMITIVES))
    for edge, ops in rows.items():
        for op, value in ops.items():
            a[edge, PRIMITIVES.index(op)] = value
    return a


def test_derivation_rule_on_planted_alphas():
    # node 0: edges 0,1; node 1: 2-4; node 2: 5-8; node 3: 9-13 (inputs 0..i+1)
    normal = plant({
        0: {"none": 9.0, "max_pool_3x3": 1.0},   # 'none' is ignored: strength 1.0 via max_pool
        1: {"sep_conv_5x5": 2.0},
        2: {"avg_pool_3x3": 0.5},
        3: {"dil_conv_3x3": 3.0},
        4: {"skip_connect": 1.5, "none": 8.0},  # softmax: 'none' drains this edge's strength
        5: {"sep_conv_3x3": 0.1}, 6: {"sep_conv_3x3": 0.2},
        7: {"dil_conv_5x5": 4.0}, 8: {"max_pool_3x3": 0.3},
        9: {"skip_connect": 2.0}, 13: {"sep_conv_5x5": 2.5},
    })
    reduce = plant({1: {"avg_pool_3x3": 1.0}, 0: {"skip_connect": 0.5}})
    g = derive_genotype(normal, reduce, num_nodes=4, multiplier=4)
    assert g.normal == (
        ("sep_conv_5x5", 1), ("max_pool_3x3", 0),
        ("dil_conv_3x3", 1), ("avg_pool_3x3", 0),
        ("dil_conv_5x5", 2), ("max_pool_3x3", 3),
        ("sep_conv_5x5", 4), ("skip_connect", 0),
    )
    assert g.normal_concat == (2, 3, 4, 5) == g.reduce_concat
    # reduce: all-equal rows elsewhere: ties go to the lower index (first op after 'none')
    assert g.reduce[:2] == (("avg_pool_3x3", 1), ("skip_connect", 0))
    assert g.reduce[2:4] == (("max_pool_3x3", 0), ("max_pool_3x3", 1))
    net = SearchNetwork(C=2, layers=3)
    with torch.no_grad():
        net.alphas_normal.copy_(normal)
        net.alphas_reduce.copy_(reduce)
    assert net.genotype() == g
    assert isinstance(g, Genotype)


def test_derivation_concat_uses_last_multiplier_nodes():
    g = derive_genotype(torch.zeros(9, 8), torch.zeros(9, 8), num_nodes=3, multiplier=2)
    assert g.normal_concat == (3, 4)
