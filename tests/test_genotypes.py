import json

import pytest

from fastnas import Genotype, genotypes
from fastnas.genotypes import DARTS_V1, DARTS_V2, PUBLISHED, AmoebaNet, NASNet, by_name

PAPER_PRINTED = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))"
)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_str_parse_round_trip(name):
    g = PUBLISHED[name]
    assert Genotype.parse(str(g)) == g
    assert Genotype.from_json(g.to_json()) == g
    assert by_name(name) is g


def test_parse_paper_printed_form_with_range():
    assert Genotype.parse(PAPER_PRINTED) == DARTS_V2
    assert genotypes.DARTS == DARTS_V2


def test_equality_and_hash_by_value():
    a = Genotype(normal=[["sep_conv_3x3", 0], ["skip_connect", 1]], normal_concat=range(2, 3),
                 reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1)], reduce_concat=[2])
    b = Genotype(normal=(("sep_conv_3x3", 0), ("skip_connect", 1)), normal_concat=(2,),
                 reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1)], reduce_concat=[2])
    assert a == b and hash(a) == hash(b)
    assert a != DARTS_V2


def test_any_number_of_nodes():
    # ENAS-style cell with 5 nodes and loose-end concat
    edges = [("sep_conv_3x3", 0), ("skip_connect", 1), ("avg_pool_3x3", 2), ("max_pool_3x3", 0),
             ("sep_conv_5x5", 3), ("skip_connect", 1), ("sep_conv_3x3", 4), ("sep_conv_3x3", 2),
             ("skip_connect", 5), ("avg_pool_3x3", 0)]
    g = Genotype(normal=edges, normal_concat=[6], reduce=edges, reduce_concat=[6])
    assert g.num_nodes == 5
    assert Genotype.parse(str(g)) == g


def test_save_load(tmp_path):
    path = tmp_path / "g.json"
    NASNet.save(str(path))
    assert json.loads(path.read_text())["reduce_concat"] == [4, 5, 6]
    assert Genotype.load(str(path)) == NASNet
    text = tmp_path / "g.txt"
    text.write_text(PAPER_PRINTED + "\n")
    assert Genotype.load(str(text)) == DARTS_V2


@pytest.mark.parametrize("text, message", [
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[], reduce_concat=[2])",
     "two \\(op, input\\) pairs"),
    (PAPER_PRINTED.replace("dil_conv_3x3", "conv_9x9"), "unknown operation 'conv_9x9'"),
    (PAPER_PRINTED.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 7)"),
     "node 3 cannot take input 7"),
    (PAPER_PRINTED.replace("('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0)",
                           "('sep_conv_3x3', 2), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0)", 1),
     "node 0 cannot take input 2"),
    (PAPER_PRINTED[:-1], "expected"),
    (PAPER_PRINTED + " + 1", "unexpected character|trailing"),
    ("__import__('os').system('echo pwned')", "unexpected character|expected 'Genotype'"),
    ("Genotype(normal=[('a', 0)], normal=[], reduce=[], reduce_concat=[])", "given twice|unknown"),
    (PAPER_PRINTED.replace("normal_concat", "extra"), "unknown field 'extra'"),
    (PAPER_PRINTED.replace("reduce_concat=range(2, 6)", "reduce_concat=[9]"),
     "reduce_concat: state 9 does not exist"),
    ("Genotype(normal=[], normal_concat=[], reduce=[], reduce_concat=[])", "two"),
    ("", "expected 'Genotype'"),
])
def test_parse_refuses_with_a_message(text, message):
    with pytest.raises(ValueError, match=message):
        Genotype.parse(text)


def test_parse_never_evaluates(monkeypatch):
    import builtins

    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec must not be used")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert Genotype.parse(PAPER_PRINTED) == DARTS_V2


@pytest.mark.parametrize("data, message", [
    ("[1, 2]", "must be an object"),
    ('{"normal": []}', "missing fields"),
    ("{not json", "does not parse"),
    ('{"normal": [["sep_conv_3x3", "0"], ["skip_connect", 1]], "normal_concat": [2], '
     '"reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]}', "integers"),
])
def test_from_json_refuses(data, message):
    with pytest.raises(ValueError, match=message):
        Genotype.from_json(data)


def test_unknown_published_name():
    with pytest.raises(ValueError, match="DARTS_V3"):
        by_name("DARTS_V3")
    assert {DARTS_V1, DARTS_V2, NASNet, AmoebaNet} == set(PUBLISHED.values())
