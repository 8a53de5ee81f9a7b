"""NAS-Bench-201: the cell value type, the shipped table, and the final network against an
independent re-implementation of xautodl's TinyNetwork and against hand-derived weight counts."""
import bz2
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import os

import pytest
import torch
import torch.nn as nn

from fastnas.errors import UserError
from fastnas.nb201 import (
    NB201_CELLS,
    NB201_EDGES,
    NB201_OPS,
    NB201Cell,
    NB201Network,
    Table,
    lookup,
    resolve_cell,
)
from fastnas.nb201.table import SHIPPED

BEST = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
        "+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|")
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|" \
           "skip_connect~2|"
MIXED = "|avg_pool_3x3~0|+|nor_conv_1x1~0|none~1|+|none~0|skip_connect~1|nor_conv_3x3~2|"
SHARED_CSV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                          "shared", "data", "nas-bench-201", "test-accuracy-200-epochs.csv")
SHIPPED_SHA256 = "13b60b03319ea59d77a6d22e150aca6334275131d61a7684d7d182d175953f1b"


# -- the cell -------------------------------------------------------------------------------------
def test_the_space_has_6_edges_of_5_ops():
    assert NB201_EDGES == ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
    assert NB201_OPS == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    assert NB201_CELLS == 15625


def test_string_parse_and_index():
    cell = NB201Cell.parse(BEST)
    assert str(cell) == BEST
    assert cell.ops == ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect",
                        "nor_conv_3x3", "nor_conv_1x1")
    assert cell.index == int("333132", 5)
    assert NB201Cell.from_index(cell.index) == cell
    assert NB201Cell.parse("  " + BEST + "\n") == cell
    assert hash(cell) == hash(NB201Cell.parse(BEST))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cell.ops = ()
    indices = [c.index for c in NB201Cell.all()]
    assert indices == list(range(NB201_CELLS))


@pytest.mark.parametrize("text,says", [
    ("", "3 nodes"),
    ("|none~0|+|none~0|none~1|", "3 nodes"),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|", "needs 3 edge"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "op~0"),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none2|", "op~2"),
    ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv'"),
    ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "|op~source|"),
    ("|__import__('os')~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op"),
    ("|" * 2000, "under 1000"),
])
def test_bad_strings_say_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=None) as e:
        NB201Cell.parse(text)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_derivation_takes_the_strongest_op_per_edge_none_included():
    weights = [[0.0] * 5 for _ in range(6)]
    for edge, op in enumerate((0, 3, 1, 4, 2, 0)):
        weights[edge][op] = 1.0
    weights[5][1] = 1.0  # a tie: the first op wins
    assert NB201Cell.derive(weights).ops == ("none", "nor_conv_3x3", "skip_connect",
                                             "avg_pool_3x3", "nor_conv_1x1", "none")
    assert NB201Cell.derive(torch.eye(6, 5)).ops[:5] == NB201_OPS
    with pytest.raises(ValueError, match="6 x 5"):
        NB201Cell.derive([[1.0] * 5] * 5)


def test_bad_values():
    with pytest.raises(ValueError, match="6 edges"):
        NB201Cell(("none",) * 5)
    with pytest.raises(ValueError, match="unknown NB201 op 'max_pool_3x3' on edge 3<-2"):
        NB201Cell(("none",) * 5 + ("max_pool_3x3",))
    with pytest.raises(ValueError, match="sequence"):
        NB201Cell("none")
    with pytest.raises(ValueError, match="0..15624"):
        NB201Cell.from_index(15625)


def test_json_files_and_resolve(tmp_path):
    cell = NB201Cell.parse(MIXED)
    path = tmp_path / "genotype.json"
    cell.save(str(path))
    assert json.loads(path.read_text()) == {"space": "nb201", "cell": MIXED}
    assert NB201Cell.load(str(path)) == cell
    assert resolve_cell(str(path)) == cell
    assert resolve_cell(str(tmp_path)) == cell  # a search or tune folder
    assert resolve_cell(MIXED) == cell
    (tmp_path / "plain.txt").write_text(MIXED + "\n")
    assert resolve_cell(str(tmp_path / "plain.txt")) == cell
    (tmp_path / "bad.json").write_text('{"space": "darts", "cell": "x"}')
    with pytest.raises(ValueError, match="bad.json"):
        resolve_cell(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="neither"):
        resolve_cell(str(tmp_path / "missing.json"))


# -- the table ------------------------------------------------------------------------------------
def _shipped_rows():
    with io.TextIOWrapper(bz2.open(SHIPPED, "rb"), encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_the_shipped_file_is_the_documented_csv():
    with bz2.open(SHIPPED, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == SHIPPED_SHA256
    notice = open(os.path.join(os.path.dirname(SHIPPED), "TABLE.md"), encoding="utf-8").read()
    assert SHIPPED_SHA256 in notice and "Xuanyi Dong" in notice and "MIT" in notice


def test_string_round_trip_and_values_over_every_row():
    rows = _shipped_rows()
    assert rows[0] == ["arch", "cifar10", "cifar100", "imagenet16_120"]
    assert len(rows) - 1 == NB201_CELLS
    table = Table.load()
    assert table.complete and len(table) == NB201_CELLS
    seen = set()
    for arch, *values in rows[1:]:
        cell = NB201Cell.parse(arch)
        assert str(cell) == arch
        seen.add(cell.index)
        entry = table.lookup(cell)
        assert (entry.cifar10, entry.cifar100, entry.imagenet16_120) == tuple(
            float(v) for v in values)
    assert seen == set(range(NB201_CELLS))


@pytest.mark.skipif(not os.path.exists(SHARED_CSV), reason="the project's shared data folder "
                    "is not next to this checkout (the sha256 test checks the same bytes)")
def test_the_shipped_file_equals_the_shared_csv():
    with open(SHARED_CSV, "rb") as f, bz2.open(SHIPPED, "rb") as g:
        assert f.read() == g.read()


def test_published_figures():
    best = lookup(BEST)
    assert round(best.cifar10, 2) == 94.37 and best.accuracy == best.cifar10
    assert Table.load().best("cifar10").cell == NB201Cell.parse(BEST)
    assert round(Table.load().best("cifar100").cifar100, 2) == 73.51
    assert round(Table.load().best("imagenet16_120").imagenet16_120, 2) == 47.31
    skip = lookup(NB201Cell.parse(ALL_SKIP), dataset="cifar100")
    assert round(skip.cifar10, 2) == 54.30 and skip.accuracy == skip.cifar100
    assert best.summary() == ("NB201 table: CIFAR-10 94.37, CIFAR-100 73.22, "
                              "ImageNet16-120 46.71")


def test_lookup_errors_are_one_line():
    for call, says in [(lambda: lookup("|x~0|"), "3 nodes"),
                       (lambda: lookup(BEST, dataset="imagenet"), "unknown NB201 table dataset"),
                       (lambda: lookup(BEST, table="/nonexistent.csv"), "does not exist")]:
        with pytest.raises(UserError) as e:
            call()
        assert says in str(e.value) and "\n" not in str(e.value)


def _write(path, text, compress=None):
    data = text.encode()
    if compress == "gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return str(path)


def test_a_user_table_replaces_the_shipped_one(tmp_path):
    text = ("cifar100,arch,cifar10,imagenet16_120\n"
            f"1.5,{BEST},2.5,3.5\n"
            f"10,{ALL_SKIP},20,30\n")
    for compress, name in ((None, "t.csv"), ("gz", "t.csv.gz")):
        table = Table.load(_write(tmp_path / name, text, compress))
        assert len(table) == 2 and not table.complete
        entry = lookup(BEST, "cifar100", table)
        assert (entry.cifar10, entry.cifar100, entry.imagenet16_120, entry.accuracy) == (
            2.5, 1.5, 3.5, 1.5)
        assert lookup(ALL_SKIP, table=str(tmp_path / name)).cifar10 == 20
        with pytest.raises(UserError, match="is not in the NB201 table"):
            table.lookup(MIXED)


@pytest.mark.parametrize("text,says", [
    ("", "is empty"),
    ("arch,cifar10\n", "columns must be"),
    ("arch,cifar10,cifar100,imagenet16_120\n", "no rows"),
    (f"arch,cifar10,cifar100,imagenet16_120\n{BEST},1,2\n", "line 2: 3 fields"),
    (f"arch,cifar10,cifar100,imagenet16_120\n{BEST},1,x,3\n", "cifar100 'x' is not a number"),
    (f"arch,cifar10,cifar100,imagenet16_120\n{BEST},1,nan,3\n", "accuracy in [0, 100]"),
    (f"arch,cifar10,cifar100,imagenet16_120\n{BEST},1,2,300\n", "accuracy in [0, 100]"),
    ("arch,cifar10,cifar100,imagenet16_120\n|x~0|,1,2,3\n", "line 2: NB201 cell"),
    (f"arch,cifar10,cifar100,imagenet16_120\n{BEST},1,2,3\n{BEST},1,2,3\n", "line 3: cell"),
])
def test_malformed_tables_are_one_line_errors(tmp_path, text, says):
    with pytest.raises(UserError) as e:
        Table.from_csv(_write(tmp_path / "t.csv", text))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_corrupt_compressed_table_is_one_line(tmp_path):
    path = tmp_path / "t.csv.bz2"
    path.write_bytes(b"not bz2 at all")
    with pytest.raises(UserError) as e:
        Table.from_csv(str(path))
    assert "cannot read NB201 table" in str(e.value) and "\n" not in str(e.value)


# -- the network against xautodl ------------------------------------------------------------------
# A re-implementation that follows xautodl (models/cell_operations.py, cell_infers/cells.py,
# cell_infers/tiny_network.py) line by line, with its module names; fastnas's network must hold
# the same tensors in the same order and compute the same function.
class XReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine,
                 track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=not affine),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats))

    def forward(self, x):
        return self.op(x)


class XPooling(nn.Module):
    def __init__(self, C_in, C_out, stride, affine=True, track_running_stats=True):
        super().__init__()
        self.preprocess = None if C_in == C_out else XReLUConvBN(
            C_in, C_out, 1, 1, 0, 1, affine, track_running_stats)
        self.op = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    def forward(self, x):
        return self.op(self.preprocess(x) if self.preprocess else x)


class XZero(nn.Module):
    def forward(self, x):
        return x.mul(0.0)


class XIdentity(nn.Module):
    def forward(self, x):
        return x


X_OPS = {
    "none": lambda C_in, C_out, stride, affine, trs: XZero(),
    "avg_pool_3x3": lambda C_in, C_out, stride, affine, trs: XPooling(C_in, C_out, stride,
                                                                      affine, trs),
    "nor_conv_3x3": lambda C_in, C_out, stride, affine, trs: XReLUConvBN(
        C_in, C_out, (3, 3), (stride, stride), (1, 1), (1, 1), affine, trs),
    "nor_conv_1x1": lambda C_in, C_out, stride, affine, trs: XReLUConvBN(
        C_in, C_out, (1, 1), (stride, stride), (0, 0), (1, 1), affine, trs),
    "skip_connect": lambda C_in, C_out, stride, affine, trs: XIdentity(),  # stride 1, C_in == C_out
}


class XResNetBasicblock(nn.Module):
    def __init__(self, inplanes, planes, stride, affine=True, track_running_stats=True):
        super().__init__()
        self.conv_a = XReLUConvBN(inplanes, planes, 3, stride, 1, 1, affine, track_running_stats)
        self.conv_b = XReLUConvBN(planes, planes, 3, 1, 1, 1, affine, track_running_stats)
        assert stride == 2
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=1, padding=0, bias=False))
        self.out_dim = planes

    def forward(self, inputs):
        basicblock = self.conv_b(self.conv_a(inputs))
        return self.downsample(inputs) + basicblock


class XInferCell(nn.Module):
    def __init__(self, genotype, C_in, C_out, stride):
        super().__init__()
        self.layers = nn.ModuleList()
        self.node_IN, self.node_IX = [], []
        for i in range(1, len(genotype) + 1):
            cur_index, cur_innod = [], []
            for op_name, op_in in genotype[i - 1]:
                if op_in == 0:
                    layer = X_OPS[op_name](C_in, C_out, stride, True, True)
                else:
                    layer = X_OPS[op_name](C_out, C_out, 1, True, True)
                cur_index.append(len(self.layers))
                cur_innod.append(op_in)
                self.layers.append(layer)
            self.node_IX.append(cur_index)
            self.node_IN.append(cur_innod)
        self.out_dim = C_out

    def forward(self, inputs):
        nodes = [inputs]
        for node_layers, node_innods in zip(self.node_IX, self.node_IN):
            nodes.append(sum(self.layers[_il](nodes[_ii])
                             for _il, _ii in zip(node_layers, node_innods)))
        return nodes[-1]


class XTinyNetwork(nn.Module):
    def __init__(self, C, N, genotype, num_classes):
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
                cell = XInferCell(genotype, C_prev, C_curr, 1)
            self.cells.append(cell)
            C_prev = cell.out_dim
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, inputs):
        feature = self.stem(inputs)
        for cell in self.cells:
            feature = cell(feature)
        out = self.global_pooling(self.lastact(feature))
        out = out.view(out.size(0), -1)
        return out, self.classifier(out)


def xautodl_genotype(text):
    """xautodl's CellStructure.str2structure, as plain tuples: per node ((op, input), ...)."""
    nodes = []
    for node in text.split("+"):
        nodes.append(tuple((e.split("~")[0], int(e.split("~")[1]))
                           for e in node.strip("|").split("|")))
    return nodes


def hand_count(text, C=16, N=5, classes=10):
    """Weights counted by hand: conv k x k from a to b holds k*k*a*b, an affine BN 2*b."""
    ops = NB201Cell.parse(text).ops
    per_cell = {c: sum({"nor_conv_1x1": c * c + 2 * c, "nor_conv_3x3": 9 * c * c + 2 * c}
                       .get(op, 0) for op in ops) for c in (C, 2 * C, 4 * C)}
    block = {(a, b): 9 * a * b + 2 * b + 9 * b * b + 2 * b + a * b
             for a, b in ((C, 2 * C), (2 * C, 4 * C))}
    return (27 * C + 2 * C + N * sum(per_cell.values()) + sum(block.values())
            + 2 * 4 * C + 4 * C * classes + classes)


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("text", [BEST, ALL_SKIP, MIXED,
                                  "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"])
def test_weight_count_equals_xautodl(text):
    ours = NB201Network(NB201Cell.parse(text))
    theirs = XTinyNetwork(16, 5, xautodl_genotype(text), 10)
    assert count(ours) == count(theirs) == hand_count(text)


@pytest.mark.parametrize("text", [BEST, MIXED])
def test_same_function_as_xautodl_in_float64(text):
    torch.manual_seed(0)
    C, N = 4, 2
    theirs = XTinyNetwork(C, N, xautodl_genotype(text), 10).double()
    ours = NB201Network(NB201Cell.parse(text), C, N, 10).double()
    theirs_state, ours_state = theirs.state_dict(), ours.state_dict()
    assert [v.shape for v in theirs_state.values()] == [v.shape for v in ours_state.values()]
    with torch.no_grad():  # random BN affine and statistics too, so they matter
        for p in theirs.parameters():
            p.uniform_(-0.5, 0.5)
        for name, b in theirs.named_buffers():
            if "running_var" in name:
                b.uniform_(0.5, 1.5)
            elif "running_mean" in name:
                b.uniform_(-0.2, 0.2)
    ours.load_state_dict(dict(zip(ours_state, theirs.state_dict().values())))
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    for train in (True, False):
        theirs.train(train)
        ours.train(train)
        torch.testing.assert_close(ours(x), theirs(x)[1], rtol=1e-12, atol=1e-12)


def test_network_on_one_channel_images():
    net = NB201Network(NB201Cell.parse(MIXED), C=4, N=1, num_classes=3, in_channels=1)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 3)


# -- the space layer ------------------------------------------------------------------------------
def test_nb201_space_is_the_benchmarks_cell():
    from fastnas.nb201 import is_nb201_space, nb201_space
    from fastnas.ops import make_op
    from fastnas.space import darts_space

    space = nb201_space()
    assert space.ops == NB201_OPS and space.shape == (6, 5) and space.cell_types == ("cell",)
    assert [(e.node + 1, e.state) for e in space.edges] == list(NB201_EDGES)
    assert space.concat == [3] and space.keep is None and space.never_derived == ()
    assert is_nb201_space(space) and not is_nb201_space(darts_space())
    for name in ("nor_conv_1x1", "nor_conv_3x3"):  # ReLU -> conv -> BN, shape kept
        op = make_op(name, 4, 1, affine=False)
        assert [type(m).__name__ for m in op] == ["ReLU", "Conv2d", "BatchNorm2d"]
        assert op(torch.randn(2, 4, 5, 5)).shape == (2, 4, 5, 5)


def test_the_space_derives_nb201_cells_none_included():
    from fastnas.nb201 import nb201_space

    strengths = torch.zeros(6, 5)
    for edge, op in enumerate((0, 3, 1, 4, 2, 0)):
        strengths[edge, op] = 1.0
    cell = nb201_space().derive({"cell": strengths})
    assert isinstance(cell, NB201Cell)
    assert cell.ops == ("none", "nor_conv_3x3", "skip_connect", "avg_pool_3x3", "nor_conv_1x1",
                        "none")
    assert NB201Cell.derive(strengths) == cell
