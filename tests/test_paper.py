"""Checkpoints of the DARTS paper's code: ``fastnas.load_paper_state_dict`` and
``fastnas convert-paper``.

The paper-format state_dicts are built here from the naming rules of the paper's code
(``operations.py``: ``ReLUConvBN.op``, ``DilConv.op``, ``SepConv.op`` with 8 entries;
``model.py``: ``AuxiliaryHead*.features`` starting with ReLU and AvgPool; ``model_search.py``:
``MixedOp._ops`` inside ``Cell._ops``), written in the direction fastnas -> paper, independently
of the converter's paper -> fastnas rules.
"""
import re

import pytest
import torch
import torch.nn as nn

import fastnas
from fastnas.cli import main
from fastnas.genotypes import DARTS_V1, DARTS_V2
from fastnas.ops import DilConv, ReLUConvBN, SepConv
from fastnas.training import load_model


def paper_key(name: str, modules) -> str:
    """The paper code's name for the fastnas tensor ``name``."""
    parts = name.split(".")
    for depth in range(1, len(parts)):  # the outermost op: a SepConv holds two DilConvs
        path, rest = ".".join(parts[:depth]), parts[depth:]
        module = modules.get(path)
        if isinstance(module, SepConv):  # SepConv.op: relu dw pw bn relu dw pw bn
            head = f"op.{4 * int(rest[0]) + int(rest[1])}"
            return paper_path(path) + "." + ".".join([head, *rest[2:]])
        if isinstance(module, (DilConv, ReLUConvBN)):
            return paper_path(path) + "." + ".".join(["op", *rest])
    m = re.match(r"^auxiliary_head\.features\.(\d+)\.(.+)$", name)
    if m:  # the paper's head starts with ReLU and AvgPool2d
        return f"auxiliary_head.features.{int(m.group(1)) + 2}.{m.group(2)}"
    return paper_path(name)


def paper_path(path: str) -> str:
    """Module paths: MixedOps are ``cells.i._ops.e`` with their ops in ``_ops.k``."""
    return re.sub(r"^cells\.(\d+)\.edges\.(\d+)\.ops\.(\d+)", r"cells.\1._ops.\2._ops.\3", path)


def to_paper(model: nn.Module, keep_num_batches_tracked=False):
    modules = dict(model.named_modules())
    return {paper_key(k, modules): v.clone() for k, v in model.state_dict().items()
            if not k.startswith("alphas_")
            and (keep_num_batches_tracked or not k.endswith("num_batches_tracked"))}


def randomized(model: nn.Module, seed=0) -> nn.Module:
    """Random weights and BatchNorm statistics, so that a misplaced tensor shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else 0.1 * torch.randn(t.shape, generator=g))
    return model


def test_the_test_names_match_the_paper():
    """Spot checks of the rules above against names printed by the paper's code."""
    net = fastnas.NetworkCIFAR(8, 10, 5, True, DARTS_V2)
    names = to_paper(net)
    for key in ("stem.0.weight", "cells.0.preprocess0.op.1.weight",
                "cells.0._ops.0.op.7.running_var",  # sep_conv_3x3: second BN
                "cells.0._ops.7.op.2.weight",  # dil_conv_3x3: pointwise conv
                "cells.2.preprocess0.conv_1.weight",  # FactorizedReduce after a reduction
                "auxiliary_head.features.6.running_mean", "auxiliary_head.classifier.bias",
                "classifier.weight"):
        assert key in names, key
    supernet = fastnas.SearchNetwork(C=4, layers=3)
    assert "cells.0._ops.13._ops.5.op.5.weight" in to_paper(supernet)  # sep_conv_5x5


def test_convert_paper_gives_the_same_logits(tmp_path, capsys):
    """The paper-format state_dict of NetworkCIFAR(36, 10, 20, True, DARTS_V2) goes through
    ``fastnas convert-paper``; the model ``fastnas.load_model`` rebuilds gives bitwise the logits
    of the same tensors loaded under fastnas names."""
    torch.manual_seed(0)
    original = randomized(fastnas.NetworkCIFAR(36, 10, 20, True, DARTS_V2))
    paper = to_paper(original)  # as PyTorch 0.3 saved it: no num_batches_tracked
    torch.save(paper, tmp_path / "paper.pt")
    assert main(["convert-paper", str(tmp_path / "paper.pt"), str(tmp_path / "model.pt"),
                 "--genotype", "DARTS_V2"]) == 0
    assert "NetworkCIFAR(C=36, layers=20, classes=10, auxiliary=True)" in capsys.readouterr().out
    converted, genotype, config = load_model(str(tmp_path / "model.pt"))
    assert genotype == DARTS_V2 and (config.channels, config.layers, config.auxiliary) == (
        36, 20, True)

    reference = fastnas.NetworkCIFAR(36, 10, 20, True, DARTS_V2)
    reference.load_state_dict(original.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference.eval()
        assert torch.equal(converted(x)[0], reference(x)[0])
        converted.train(), reference.train()  # the auxiliary head runs in training only
        (a, a_aux), (b, b_aux) = converted(x), reference(x)
    assert torch.equal(a, b) and torch.equal(a_aux, b_aux)

    net = fastnas.NetworkCIFAR(36, 10, 20, True, DARTS_V2)
    assert fastnas.load_paper_state_dict(net, paper) == []
    expected = original.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items()
               if not k.endswith("num_batches_tracked"))


def test_a_name_that_fits_no_rule_is_an_error(tmp_path, capsys):
    net = fastnas.NetworkCIFAR(4, 10, 3, True, DARTS_V2)
    paper = to_paper(net, keep_num_batches_tracked=True)
    with pytest.raises(ValueError, match=r"cells\.0\.mystery\.weight \(no naming rule"):
        fastnas.load_paper_state_dict(net, {**paper, "cells.0.mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"auxiliary_head\.features\.4\.weight"):
        fastnas.load_paper_state_dict(net, {**paper,
                                            "auxiliary_head.features.4.weight": torch.zeros(1)})
    missing = dict(paper)
    del missing["classifier.bias"]
    with pytest.raises(ValueError, match="lacks 1 tensor.*classifier.bias"):
        fastnas.load_paper_state_dict(net, missing)
    # the weights of another genotype do not fit: an error, not a partial load
    torch.save(paper, tmp_path / "paper.pt")
    assert main(["convert-paper", str(tmp_path / "paper.pt"), str(tmp_path / "out.pt"),
                 "--genotype", "DARTS_V1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastnas: error: ") and "do not fit NetworkCIFAR" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out.pt").exists()
    assert DARTS_V1 != DARTS_V2


def test_a_search_supernet_loads_except_the_alphas():
    for cls in (fastnas.SearchNetwork, fastnas.FastSearchNetwork):
        original = randomized(cls(C=4, layers=3), seed=2)
        net = cls(C=4, layers=3)
        alphas = [a.detach().clone() for a in net.alphas()]
        # the ImageNet script's form: {"state_dict": ...} of a DataParallel model
        wrapped = {"state_dict": {f"module.{k}": v for k, v in to_paper(original).items()},
                   "epoch": 3}
        assert fastnas.load_paper_state_dict(net, wrapped) == ["alphas_normal", "alphas_reduce"]
        expected = original.state_dict()
        for name, value in net.state_dict().items():
            if name.startswith("alphas_") or name.endswith("num_batches_tracked"):
                continue
            assert torch.equal(value, expected[name]), name
        assert all(torch.equal(a, b) for a, b in zip(net.alphas(), alphas))


def test_imagenet_network_and_its_auxiliary_head():
    """The ImageNet head has no BN after its second conv (paper's features.5 is that conv)."""
    original = randomized(fastnas.NetworkImageNet(8, 10, 3, True, DARTS_V2), seed=3)
    paper = to_paper(original)
    assert "auxiliary_head.features.5.weight" in paper
    assert not any(k.startswith("auxiliary_head.features.6") for k in paper)
    net = fastnas.NetworkImageNet(8, 10, 3, True, DARTS_V2)
    assert fastnas.load_paper_state_dict(net, paper) == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.eval()(x)[0], original.eval()(x)[0])
