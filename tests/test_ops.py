import pytest
import torch
import torch.nn.functional as F

from fastnas.ops import (
    OPS,
    PRIMITIVES,
    FactorizedReduce,
    Identity,
    ReLUConvBN,
    Zero,
    drop_path,
    make_op,
)


def test_primitives_in_paper_order():
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                          "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert set(PRIMITIVES) | {"sep_conv_7x7", "conv_7x1_1x7", "nor_conv_1x1",
                              "nor_conv_3x3"} == set(OPS)   # the last two: NAS-Bench-201's


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [8, 7])
def test_op_shape_and_gradient(name, stride, hw):
    torch.manual_seed(0)
    op = make_op(name, 6, stride, affine=True)
    x = torch.randn(2, 6, hw, hw, requires_grad=True)
    y = op(x)
    out = (hw + stride - 1) // stride
    assert y.shape == (2, 6, out, out)
    y.square().sum().backward()
    if name == "none":
        assert torch.count_nonzero(y) == 0
        assert torch.count_nonzero(x.grad) == 0
    else:
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        for p in op.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()


def test_identity_and_zero_values():
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(Identity()(x), x)
    assert Zero(2)(x).shape == (2, 3, 3, 3)
    assert isinstance(make_op("skip_connect", 4, 1), Identity)
    assert isinstance(make_op("skip_connect", 4, 2), FactorizedReduce)


def test_unknown_op_names_the_op():
    with pytest.raises(ValueError, match="conv_9x9"):
        make_op("conv_9x9", 4, 1)


def test_factorized_reduce_matches_paper_slicing_on_even_sizes():
    torch.manual_seed(0)
    fr = FactorizedReduce(4, 6).eval()
    x = torch.randn(2, 4, 8, 8)
    r = F.relu(x)
    expected = fr.bn(torch.cat([fr.conv_1(r), fr.conv_2(r[:, :, 1:, 1:])], dim=1))
    torch.testing.assert_close(fr(x), expected)
    with pytest.raises(ValueError, match="even"):
        FactorizedReduce(4, 5)


def test_relu_conv_bn_is_relu_conv_bn():
    torch.manual_seed(0)
    block = ReLUConvBN(3, 5, 3, 1, 1, affine=False).eval()
    x = torch.randn(1, 3, 6, 6)
    conv = block[1]
    ref = F.batch_norm(F.conv2d(F.relu(x), conv.weight, padding=1), block[2].running_mean,
                       block[2].running_var, training=False)
    torch.testing.assert_close(block(x), ref)


def test_drop_path_keeps_expectation_and_drops_whole_samples():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    y = drop_path(x, 0.25)
    per_sample = y.flatten(1)
    # each sample is either all zero or all 1/keep
    kept = torch.isclose(per_sample, torch.tensor(1 / 0.75)).all(1)
    assert torch.all((per_sample == 0).all(1) | kept)
    assert abs(y.mean().item() - 1.0) < 0.05
    assert drop_path(x, 0.0) is x
