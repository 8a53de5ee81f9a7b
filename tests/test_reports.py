"""Seeing the search: alphas.json, the figures in plots/, ``fastnas plot`` and TensorBoard events.

One small ``fastnas run --dataset digits --tensorboard`` (2 search epochs, 1 training epoch, tiny
networks) is shared by the tests that read its folder.
"""
import json
import os
import struct
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastnas.cli import main
from fastnas.genotypes import Genotype
from fastnas.ops import PRIMITIVES
from fastnas.reports import AlphaHistory, cell_dot
from fastnas.reports.figures import alphas_figure, controller_figure
from fastnas.reports.plots import alpha_history, stage_folders

TINY_RUN = ["run", "--dataset", "digits", "--limit", "64", "--search-epochs", "2",
            "--search-layers", "3", "--search-channels", "4", "--train-epochs", "1",
            "--train-layers", "3", "--train-channels", "4", "--quiet"]
TINY_SEARCH = ["search", "--limit", "64", "--layers", "3", "--channels", "4", "--quiet"]
SEARCH_FIGURES = ("cell_normal", "cell_reduce", "alphas", "curves")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports") / "run"
    threads = torch.get_num_threads()
    assert main([*TINY_RUN, "--output", str(out), "--tensorboard"]) == 0
    assert torch.get_num_threads() == threads
    return out


def png_size(path):
    """``(width, height)`` from the PNG signature and IHDR chunk; AssertionError if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def check_png(path):
    width, height = png_size(path)
    assert 300 <= width <= 4000 and 200 <= height <= 4000, (path, width, height)
    assert 5_000 < os.path.getsize(path) < 2_000_000, path
    import matplotlib.image

    pixels = matplotlib.image.imread(path)  # decodes: not a truncated file
    assert pixels.shape[:2] == (height, width) and pixels.std() > 0.01, path  # not blank


# -- plots/ after fastnas run ---------------------------------------------------------------------
def test_run_leaves_the_figures_in_plots(run_dir):
    search, train = run_dir / "search" / "plots", run_dir / "train" / "plots"
    assert sorted(os.listdir(search)) == sorted(
        [f"{name}.{ext}" for name in SEARCH_FIGURES for ext in ("png", "svg")]
        + ["cell_normal.dot", "cell_reduce.dot"])
    assert sorted(os.listdir(train)) == ["curves.png", "curves.svg"]
    for folder, names in ((search, SEARCH_FIGURES), (train, ("curves",))):
        for name in names:
            check_png(folder / f"{name}.png")
            assert ET.parse(folder / f"{name}.svg").getroot().tag.endswith("svg")
    genotype = Genotype.load(str(run_dir / "search" / "genotype.json"))
    for cell in ("normal", "reduce"):
        dot = (search / f"cell_{cell}.dot").read_text()
        assert dot == cell_dot(genotype, cell)
        assert dot.startswith(f"digraph cell_{cell} {{") and dot.count("[label=") == 8


def test_cell_dot_lists_every_edge_and_the_output():
    from fastnas.genotypes import DARTS_V2

    dot = cell_dot(DARTS_V2, "reduce")
    assert '"c_{k-2}" -> "0" [label="max_pool_3x3"];' in dot
    assert '"0" -> "2" [label="skip_connect"];' in dot  # state 2 is node 0
    assert all(f'"{n}" -> "c_{{k}}" [color=gray];' in dot for n in range(4))
    assert "rankdir=LR" in dot


def test_alpha_figure_shows_the_softmax_of_the_saved_alphas(run_dir):
    """Every line of the alpha figure is one op's weight on one edge per epoch: the softmax of
    the alphas the checkpoint saved after that epoch (its history), the last epoch also the
    softmax of the final alphas in the checkpoint's model."""
    folder = run_dir / "search"
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    history = alpha_history(str(folder))
    assert history.epochs == [0, 1] and history.method == "darts"
    fig = alphas_figure(history)
    lines = {line.get_gid(): np.asarray(line.get_ydata(), dtype=np.float64)
             for ax in fig.axes for line in ax.get_lines() if line.get_gid()}
    assert len(lines) == 2 * 14 * len(PRIMITIVES)
    final = {cell: F.softmax(state["model"][f"alphas_{cell}"], dim=-1)
             for cell in ("normal", "reduce")}
    edge = 0
    for node in range(4):
        for j in range(node + 2):
            source = ("k-2", "k-1")[j] if j < 2 else str(j - 2)
            for cell in ("normal", "reduce"):
                for k, op in enumerate(PRIMITIVES):
                    data = lines[f"{cell}/{node}_from_{source}/{op}"]
                    saved = [record[f"alphas_{cell}"][edge, k].double().item()
                             for record in state["history"]]
                    assert data.tolist() == saved
                    assert data[-1] == final[cell][edge, k].double().item()
            edge += 1
    # and alphas.json holds exactly these numbers
    on_disk = AlphaHistory.read(str(folder / "alphas.json"))
    assert on_disk.weights == history.weights
    assert on_disk.panels[0].options == tuple(PRIMITIVES)


def test_plot_command_redraws_a_finished_run(run_dir, tmp_path, capsys):
    assert stage_folders(str(run_dir)) == [str(run_dir / "search"), str(run_dir / "train")]
    os.remove(run_dir / "train" / "plots" / "curves.png")
    assert main(["plot", str(run_dir / "train")]) == 0
    assert "2 files in" in capsys.readouterr().out
    check_png(run_dir / "train" / "plots" / "curves.png")
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


# -- alphas.json ----------------------------------------------------------------------------------
def test_alpha_history_and_tensorboard_resume_exactly(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    straight, resumed, logs = tmp_path / "straight", tmp_path / "resumed", tmp_path / "logs"
    assert main([*TINY_SEARCH, "--epochs", "2", "--no-plots", "--output", str(straight)]) == 0
    assert main([*TINY_SEARCH, "--epochs", "1", "--no-plots", "--output", str(resumed),
                 "--log-dir", str(logs)]) == 0
    assert AlphaHistory.read(str(resumed / "alphas.json")).epochs == [0]
    assert main(["search", "--epochs", "2", "--resume", "--no-plots", "--quiet", "--output",
                 str(resumed), "--log-dir", str(logs)]) == 0
    assert ((resumed / "alphas.json").read_text() == (straight / "alphas.json").read_text())
    events = EventAccumulator(str(logs / "search"))  # --log-dir DIR: DIR/<stage>
    events.Reload()
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2]
    assert not (resumed / "tensorboard").exists()


def test_alpha_history_refuses_a_malformed_file(tmp_path):
    path = tmp_path / "alphas.json"
    history = AlphaHistory.from_search("darts", {"num_nodes": 2}, [
        {"epoch": 0, "alphas_normal": torch.full((5, 8), 0.125),
         "alphas_reduce": torch.full((5, 8), 0.125)}])
    history.write(str(path))
    assert AlphaHistory.read(str(path)).weights == history.weights
    data = json.loads(path.read_text())
    data["weights"][0][3] = [0.5, 0.5]  # 2 weights for 8 ops
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="alphas.json is not an alpha history.*8 finite"):
        AlphaHistory.read(str(path))
    with pytest.raises(ValueError, match="no 'alphas_reduce'"):
        AlphaHistory.from_search("darts", {"num_nodes": 2}, [{"epoch": 0, "alphas_normal": []}])
    # an ENAS checkpoint from before decision_probs was recorded resumes without them
    old = AlphaHistory.from_search("enas", {"num_nodes": 2}, [{"epoch": 0, "arch": "..."}])
    assert old.epochs == [] and old.weights == [] and len(old.panels) == 2 * 2 * 4


def test_enas_records_the_controller_probabilities_and_plots_them(tmp_path):
    from fastnas import data
    from fastnas.enas import ENASOptimizer
    from fastnas.enas.micro import genotype_from_choices

    split = data.search_data("digits", limit=32)
    loader = data.make_loader(split.weights, 16, shuffle=True, device="cpu", stream=0)
    opt = ENASOptimizer({"num_steps": 1, "num_layers": 3, "channels": 4, "in_channels": 1,
                         "controller_steps": 2, "derive_samples": 2, "device": "cpu"})
    opt.search(loader, loader)
    for record in opt.history:
        probs = record["decision_probs"]
        assert len(probs) == 2 * 5 * 4  # 2 cells x 5 nodes x (2 inputs, 2 ops)
        assert all(abs(sum(p) - 1) < 1e-6 for p in probs)
        # the record's greedy architecture takes the most likely option of every decision
        assert record["arch"] == str(genotype_from_choices([int(np.argmax(p)) for p in probs],
                                                           5))
    assert opt.history[-1]["arch"] == str(opt.ask(greedy=True))
    history = AlphaHistory.from_search("enas", opt.config.to_dict(), opt.history)
    assert history.weights == [r["decision_probs"] for r in opt.history]
    assert history.panels[2].title == "node 0 op a" and len(history.panels[0].options) == 2
    lines = {line.get_gid(): line.get_ydata().tolist()
             for ax in alphas_figure(history).axes for line in ax.get_lines()}
    assert lines["reduce/4_input_b/3"] == [r["decision_probs"][20 + 4 * 4 + 1][5]
                                           for r in opt.history]  # node 3 is state 5
    controller_figure(opt.history).savefig(tmp_path / "controller.png", dpi=80)
    check_png(tmp_path / "controller.png")


# -- optional packages ----------------------------------------------------------------------------
def test_without_matplotlib_the_run_succeeds_and_says_what_to_install(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert main([*TINY_SEARCH, "--epochs", "1", "--output", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "plots skipped" in line]
    assert skipped == ['plots skipped: plotting needs matplotlib, which is not installed: '
                       'pip install matplotlib (a dependency of fastnas: pip install -e . '
                       'installs it)']
    assert sorted(os.listdir(tmp_path / "plots")) == ["cell_normal.dot", "cell_reduce.dot"]
    assert main(["plot", str(tmp_path)]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_tensorboard_without_the_package_is_one_line_before_any_work(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert main([*TINY_SEARCH, "--tensorboard", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ('fastnas: error: --tensorboard needs tensorboard, which is not installed: '
                   'pip install -e ".[tensorboard]" (or pip install tensorboard)')
    assert not (tmp_path / "out").exists()


# -- TensorBoard ----------------------------------------------------------------------------------
def test_tensorboard_events_read_back(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    search = EventAccumulator(str(run_dir / "search" / "tensorboard"))
    search.Reload()
    tags = search.Tags()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr",
            "time/epoch_seconds"} <= set(tags["scalars"])
    alphas = [t for t in tags["scalars"] if t.startswith("alphas/")]
    assert len(alphas) == 2 * 14 * len(PRIMITIVES)
    assert "genotype/text_summary" in tags["tensors"] and "result/text_summary" in tags["tensors"]
    history = AlphaHistory.read(str(run_dir / "search" / "alphas.json"))
    events = search.Scalars("alphas/reduce/3_from_1/skip_connect")
    panel = [p.key for p in history.panels].index("3_from_1", 14)
    assert [e.step for e in events] == [1, 2]
    assert [e.value for e in events] == pytest.approx(
        [w[panel][PRIMITIVES.index("skip_connect")] for w in history.weights], abs=1e-7)
    metrics = json.loads((run_dir / "search" / "metrics.json").read_text())
    assert [e.value for e in search.Scalars("loss/val")] == pytest.approx(
        [r["val_loss"] for r in metrics["history"]], rel=1e-6)
    text = search.Tensors("genotype/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert text == metrics["history"][-1]["genotype"]

    train = EventAccumulator(str(run_dir / "train" / "tensorboard"))
    train.Reload()
    assert {"loss/train", "loss/test", "accuracy/test", "lr"} <= set(train.Tags()["scalars"])


# -- where the cell figure puts its op labels -----------------------------------------------------
def _label_test_cells():
    """The published cells, and 40 seeded random DARTS cells."""
    import random

    from fastnas.genotypes import PUBLISHED

    cells = [(name, g, cell) for name, g in PUBLISHED.items() for cell in ("normal", "reduce")]
    rng = random.Random(0)
    ops = [p for p in PRIMITIVES if p != "none"]
    for number in range(40):
        edges = [(rng.choice(ops), j) for i in range(4) for j in rng.sample(range(i + 2), 2)]
        g = Genotype(normal=edges, normal_concat=[2, 3, 4, 5], reduce=edges,
                     reduce_concat=[2, 3, 4, 5])
        cells.append((f"random {number}", g, "normal"))
    return cells


def _distance(point, points):
    return float(np.sqrt(((np.asarray(points) - point) ** 2).sum(1)).min())


@pytest.mark.parametrize("name,genotype,cell", _label_test_cells(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_each_op_label_sits_on_its_own_edge_away_from_the_others(name, genotype, cell):
    """A label's centre lies on its edge, and no other edge (op edge or grey edge into the
    output) passes within 0.15 of it: more than half a label's height (0.125), so no edge
    crosses a label through its middle (the old middle-of-the-edge rule put NASNet's labels
    0.011 from a crossing edge)."""
    from fastnas.reports.cells import cell_layout, label_half_size

    layout = cell_layout(genotype, cell)
    assert label_half_size("skip_connect")[1] < 0.15
    for k, (path, anchor) in enumerate(zip(layout.paths, layout.labels)):
        assert _distance(anchor, path) < 1e-9, (name, layout.ops[k])
        others = [p for i, p in enumerate(layout.paths) if i != k] + layout.concat_paths
        clearance = min(_distance(anchor, p) for p in others)
        assert clearance >= 0.15, (name, k, layout.edges[k], layout.ops[k], clearance)
