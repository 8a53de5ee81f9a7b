import pytest
import torch

from fastnas import NetworkCIFAR, NetworkImageNet
from fastnas.genotypes import DARTS_V2, PUBLISHED
from fastnas.networks import Cell


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_darts_v2_cifar_counts():
    assert count(NetworkCIFAR(36, 10, 20, False, DARTS_V2)) == 3_349_342
    assert count(NetworkCIFAR(36, 10, 20, True, DARTS_V2)) == 3_825_768


def test_darts_v2_imagenet_count():
    assert count(NetworkImageNet(48, 1000, 14, False, DARTS_V2)) == 4_718_752


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_cells_train_with_auxiliary_and_drop_path(name):
    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 5, True, PUBLISHED[name], drop_path_prob=0.3)
    net.train()
    logits, aux = net(torch.randn(2, 3, 16, 16))
    assert logits.shape == aux.shape == (2, 10)
    (logits.sum() + 0.4 * aux.sum()).backward()
    net.eval()
    logits, aux = net(torch.randn(2, 3, 16, 16))
    assert aux is None


def test_single_channel_small_inputs():
    net = NetworkCIFAR(4, 10, 3, True, DARTS_V2, in_channels=1).train()
    logits, aux = net(torch.randn(2, 1, 8, 8))
    assert logits.shape == aux.shape == (2, 10)


def test_imagenet_forward():
    net = NetworkImageNet(8, 5, 3, True, DARTS_V2).train()
    logits, aux = net(torch.randn(2, 3, 64, 64))
    assert logits.shape == aux.shape == (2, 5)


def test_drop_path_only_in_training_and_not_on_identity():
    torch.manual_seed(0)
    cell = Cell(DARTS_V2, 8, 8, 4, reduction=False, reduction_prev=False).eval()
    s0, s1 = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    a = cell(s0, s1, 0.9)
    b = cell(s0, s1, 0.0)
    torch.testing.assert_close(a, b)  # eval: no drop path
    cell.train()
    torch.manual_seed(1)
    dropped = cell(s0, s1, 0.999)
    torch.manual_seed(1)
    kept = cell(s0, s1, 0.0)
    assert not torch.allclose(dropped, kept)


@pytest.mark.parametrize("kwargs, message", [
    (dict(C=0), "C must be"), (dict(layers=2), "layers"), (dict(genotype="DARTS_V2"), "Genotype"),
])
def test_bad_arguments(kwargs, message):
    args = dict(C=4, num_classes=10, layers=5, auxiliary=False, genotype=DARTS_V2)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        NetworkCIFAR(**args)
