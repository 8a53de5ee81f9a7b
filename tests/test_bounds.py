"""Bounded inputs (issue 21): every command of the probe reproduces here and ends, within 30 s and
2 GiB (``limited_run``), in a correct result or one ``fastnas: error:`` line with exit 2 (bad
input) or 1 (a system error such as a full disk)."""
import json
import os
import sqlite3

import pytest
import torch
from limited_run import REPO, assert_one_line, run_fastnas, run_python
from run_folders import alphas_data, paper_state_dict, search_metrics, write_search_folder

from fastnas import checkpoint, cli, limits
from fastnas.darts import DARTSOptimizer
from fastnas.enas import ENASOptimizer
from fastnas.errors import CheckpointWriteError, UserError
from fastnas.genotypes import DARTS_V2, Genotype
from fastnas.training import FinalTrainer, TrainConfig


# -- resource exhaustion from a small input -------------------------------------------------------
def test_a_panel_row_of_a_billion_is_refused_before_the_figure_is_sized(tmp_path):
    alphas = alphas_data()
    alphas["panels"][0]["row"] = 10 ** 9
    folder = write_search_folder(tmp_path / "s", alphas=alphas)
    assert os.path.getsize(os.path.join(folder, "alphas.json")) < 20_000
    assert_one_line(run_fastnas(["plot", folder]), 2, "alphas.json",
                    "14 panels on a 1000000001 x 5 grid")


def test_a_cell_key_of_index_1e8_is_refused_before_the_network_is_built(tmp_path):
    state = paper_state_dict()
    state["cells.100000000.preprocess0.op.1.weight"] = torch.zeros(4, 12, 1, 1)
    torch.save(state, tmp_path / "x.pt")
    done = run_fastnas(["convert-paper", str(tmp_path / "x.pt"), str(tmp_path / "o.pt"),
                        "--genotype", "DARTS_V2"])
    assert_one_line(done, 2, "holds tensors for 4 cells numbered up to 100000000; cell 3 has "
                             "none")
    assert not (tmp_path / "o.pt").exists()


def test_a_stride_0_stem_claiming_50000_channels_is_refused(tmp_path):
    state = paper_state_dict()
    state["stem.0.weight"] = torch.zeros(1, 1, 1, 1).expand(150000, 3, 3, 3)
    torch.save(state, tmp_path / "x.pt")
    assert os.path.getsize(tmp_path / "x.pt") < 200_000
    done = run_fastnas(["convert-paper", str(tmp_path / "x.pt"), str(tmp_path / "o.pt"),
                        "--genotype", "DARTS_V2"])
    assert_one_line(done, 2, "stem.0.weight claims shape (150000, 3, 3, 3) but its storage "
                             "holds 1 values")


@pytest.mark.parametrize("config,message", [
    ({"layers": 10 ** 6}, "layers must be <= 100, got 1000000"),
    ({"channels": 10 ** 6}, "channels must be <= 1024, got 1000000"),
    ({"layers": 100, "channels": 1024}, "billion weights; the limit is 1.1 billion"),
    ({"num_classes": 10 ** 9}, "num_classes must be <= 100000"),
])
def test_the_python_api_and_the_cli_refuse_the_same_sizes_with_the_same_words(config, message,
                                                                                capsys, tmp_path):
    with pytest.raises(ValueError) as raised:
        DARTSOptimizer(config)
    assert message in str(raised.value)
    if set(config) <= {"layers", "channels"}:
        flags = [f for k, v in config.items() for f in (f"--{k}", str(v))]
        assert cli.main(["search", *flags, "--output", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err.strip() == f"fastnas: error: {raised.value}"


def test_enas_and_final_training_configs_are_bounded_too():
    with pytest.raises(ValueError, match="num_layers must be <= 100"):
        ENASOptimizer({"num_layers": 10 ** 6})
    with pytest.raises(ValueError, match="channels must be <= 1024"):
        ENASOptimizer({"search_space": "macro", "channels": 10 ** 6})
    with pytest.raises(ValueError, match="layers must be <= 100"):
        TrainConfig(layers=10 ** 6)
    with pytest.raises(ValueError, match="billion weights"):
        FinalTrainer(DARTS_V2, {"layers": 100, "channels": 1024, "device": "cpu"})


def test_the_network_estimate_is_near_the_real_count():
    """The estimate that guards the limit is within a factor 2 of the parameters it stands for
    (DARTS supernet), and above the final network's (the conservative k = 14)."""
    import fastnas

    for C, layers in ((8, 5), (16, 8)):
        real = sum(p.numel() for p in fastnas.SearchNetwork(C, 10, layers).parameters())
        estimate = limits.network_weights(C, layers, 4, limits.supernet_edges(4),
                                          limits.SUPERNET_EDGE_WEIGHTS)
        assert real / 2 < estimate < 2 * real
    real = sum(p.numel() for p in fastnas.NetworkCIFAR(36, 10, 20, False, DARTS_V2).parameters())
    assert limits.network_weights(36, 20, 4, 8, limits.FINAL_EDGE_WEIGHTS) > real


def test_a_genotype_of_10000_edges_is_refused(tmp_path):
    edges = [["skip_connect", 0]] * 10_000
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"normal": edges, "normal_concat": list(range(2, 5002)),
                                "reduce": edges, "reduce_concat": [2]}))
    done = run_fastnas(["train", "--genotype", str(path), "--output", str(tmp_path / "o")])
    assert_one_line(done, 2, "normal: 5000 nodes; a cell has at most 16")


def test_plot_of_a_genotype_of_400_nodes_is_refused(tmp_path):
    edges = [["skip_connect", 0]] * 800
    folder = write_search_folder(tmp_path / "s", genotype={
        "normal": edges, "normal_concat": [2], "reduce": edges, "reduce_concat": [2]})
    assert_one_line(run_fastnas(["plot", folder]), 2, "400 nodes; a cell has at most 16")


def test_profile_threads_are_capped_like_the_other_commands(capsys):
    assert cli.main(["profile", "--threads", "1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastnas: error: argument --threads: 1000 threads is more than this "
                          "machine can use") and "\n" not in err


# -- a false success ------------------------------------------------------------------------------
TINY_PROFILE = ["profile", "--channels", "4", "--layers", "3", "--image-size", "8",
                "--batch-size", "2", "--steps", "1", "--warmup", "0", "--device", "cpu"]


def test_profile_trace_into_a_missing_folder_fails_before_profiling(tmp_path, capsys):
    assert cli.main([*TINY_PROFILE, "--trace", "/nonexistent/x.json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing measured, nothing claimed
    assert captured.err.strip() == ("fastnas: error: cannot write /nonexistent/x.json: the "
                                     "folder /nonexistent does not exist")


def test_profile_trace_onto_a_folder_leaves_nothing_behind(tmp_path, capsys):
    folder = tmp_path / "traces"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    assert cli.main([*TINY_PROFILE, "--trace", str(folder)]) == 1
    assert "trace" not in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["traces"]


def test_profile_trace_is_written_atomically(tmp_path, capsys):
    trace = tmp_path / "t.json"
    assert cli.main([*TINY_PROFILE, "--trace", str(trace)]) == 0
    assert f"{trace} (open in ui.perfetto.dev)" in capsys.readouterr().out
    assert json.loads(trace.read_text())["traceEvents"]
    assert sorted(os.listdir(tmp_path)) == ["t.json"]


# -- tune storage ---------------------------------------------------------------------------------
pytest.importorskip("optuna")


def _tune(tmp_path, storage, capsys, search=None):
    status = cli.main(["tune", "--search", str(search or tmp_path / "no-search"),
                       "--storage", storage, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return status, err


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://", "sqlite:///:memory:",
                                 "sqlite:///file:x?mode=memory&uri=true"])
def test_an_in_memory_sqlite_storage_is_refused(tmp_path, url, capsys):
    status, err = _tune(tmp_path, url, capsys)
    assert status == 2 and "an in-memory SQLite database keeps nothing after the run" in err


def test_a_binary_journal_is_refused(tmp_path, capsys):
    (tmp_path / "j.log").write_bytes(bytes(range(256)) * 20)
    status, err = _tune(tmp_path, f"journal:{tmp_path}/j.log", capsys)
    assert status == 2 and "is not an Optuna journal" in err


@pytest.mark.parametrize("url,module,advice", [
    ("postgresql://u:se/cret@localhost/db", "psycopg", 'pip install "psycopg[binary]"'),
    ("postgresql+psycopg2://u:secret@localhost/db", "psycopg2", "pip install psycopg2-binary"),
    ("mysql://u:secret@localhost/db", "MySQLdb", "pip install PyMySQL"),
])
def test_a_missing_database_driver_is_named_with_its_install_line(url, module, advice):
    from fastnas.tune import study as studies

    try:
        __import__(module)
        pytest.skip(f"{module} is installed here")
    except ImportError:
        pass
    with pytest.raises(UserError) as raised:
        studies.open_storage(url)
    message = str(raised.value)
    assert f"SQLAlchemy needs the Python module {module} for this URL" in message
    assert advice in message and "secret" not in message and "se/cret" not in message


def test_the_readme_driver_advice_installs_the_module_sqlalchemy_imports():
    """SQLAlchemy's default PostgreSQL dialect imports ``psycopg`` (3); the README's extra and
    the error's advice install that package."""
    from sqlalchemy.dialects import registry

    from fastnas.tune.storage import DRIVERS

    dialect = registry.load("postgresql")
    assert dialect.driver == "psycopg"
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        setup = f.read()
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert '"postgres": ["psycopg[binary]' in setup
    assert 'pip install -e ".[postgres]"' in readme and ".[postgres]" in DRIVERS["psycopg"]


@pytest.mark.parametrize("url,secret", [
    ("postgresql://user:pa/ss@host/db", "pa/ss"),
    ("postgresql://:pw0rd@host/db", "pw0rd"),
    ("postgresql://host/db?user=u&password=pw0rd", "pw0rd"),
    ("mysql+pymysql://u:p:w?x@host:3306/db", "p:w?x"),
    ("postgresql://u:a@b@host/db", "a@b"),
    ("postgresql://u@host/db?sslmode=require&PASSWORD=pw0rd", "pw0rd"),
])
def test_passwords_are_redacted_in_every_url_form(url, secret, tmp_path, capsys):
    from fastnas.tune.storage import redact

    assert secret not in redact(url) and "***" in redact(url)
    status, err = _tune(tmp_path, url, capsys)
    assert status in (1, 2) and secret not in err


def test_redaction_keeps_urls_without_a_password():
    from fastnas.tune.storage import redact

    for url in ("sqlite:///a/b:c@d.db", "journal:/x/y.log", "postgresql://u@host/db"):
        assert redact(url) == url


def _study_db(path, trials=30):
    import optuna

    from fastnas.tune import study as studies

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = studies.open_storage(f"sqlite:///{path}", 1)
    study, _ = studies.open_study(storage, "s", studies.make_sampler("random", 0, 0),
                                  studies.make_pruner("none", 1, 0), {})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
    storage.engine.dispose()


def test_a_corrupted_sqlite_page_is_one_line_naming_the_corruption(tmp_path):
    from fastnas.tune import study as studies
    from fastnas.tune.storage import storage_errors

    _study_db(tmp_path / "good.db")
    data = bytearray((tmp_path / "good.db").read_bytes())
    g = torch.Generator().manual_seed(0)
    for page in range(4096, len(data), 4096):  # every page but the header's
        data[page:page + 4096] = torch.randint(0, 256, (4096,), generator=g,
                                               dtype=torch.uint8).numpy().tobytes()
    (tmp_path / "bad.db").write_bytes(bytes(data))
    url = f"sqlite:///{tmp_path}/bad.db"
    with pytest.raises(UserError, match="the SQLite database is corrupt") as raised:
        with storage_errors(url):
            storage = studies.open_storage(url, 1)
            study, _ = studies.open_study(storage, "s", studies.make_sampler("random", 0, 0),
                                          studies.make_pruner("none", 1, 0), {})
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert "\n" not in str(raised.value)


def test_a_full_disk_under_sqlite_is_exit_1_disk_full():
    """SQLite reports a full disk as an OperationalError; the line says "disk full" and the
    exit status is the README's 1 (a CheckpointWriteError)."""
    from sqlalchemy.exc import OperationalError

    from fastnas.tune.storage import explain

    try:
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
    except OperationalError as e:
        error = explain(e, "sqlite:///x.db")
    assert isinstance(error, CheckpointWriteError) and "disk full" in str(error)


def test_a_truncated_search_metrics_json_is_one_line(tmp_path, capsys):
    search = tmp_path / "out" / "search"
    search.mkdir(parents=True)
    text = json.dumps(search_metrics())
    (search / "metrics.json").write_text(text[: len(text) // 2])
    assert cli.main(["tune", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "metrics.json is not a fastnas metrics file: invalid JSON" in err and "\n" not in err


# -- full disks: ENOSPC from the operating system (/dev/full) -------------------------------------
def _full_disk_at(path):
    """The next write through ``path.tmp`` goes to /dev/full: the OS answers ENOSPC."""
    os.symlink("/dev/full", f"{path}.tmp")


def test_enospc_under_torch_save_reads_disk_full(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    _full_disk_at(path)
    with pytest.raises(CheckpointWriteError) as raised:
        checkpoint.save_checkpoint({"x": torch.zeros(10_000)}, path)
    assert str(raised.value) == (f"cannot write {path}: disk full (No space left on device)")
    assert os.listdir(tmp_path) == []


def test_a_full_disk_during_a_search_is_exit_1_disk_full(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    _full_disk_at(out / "checkpoint.pt")
    done = run_fastnas(["search", "--limit", "64", "--layers", "3", "--channels", "4",
                        "--epochs", "1", "--quiet", "--no-plots", "--output", str(out)],
                       timeout=60)
    assert done.status == 1, done.stderr
    assert done.lines[-1] == (f"fastnas: error: cannot write {out / 'checkpoint.pt'}: disk full "
                              "(No space left on device)")


def test_a_full_disk_during_plots_leaves_no_truncated_figure(tmp_path):
    folder = write_search_folder(tmp_path / "s")
    os.makedirs(os.path.join(folder, "plots"))
    _full_disk_at(os.path.join(folder, "plots", "cell_reduce.png"))
    assert_one_line(run_fastnas(["plot", folder]), 1, "cell_reduce.png: disk full")
    assert not os.path.exists(os.path.join(folder, "plots", "cell_reduce.png"))
    assert not os.path.lexists(os.path.join(folder, "plots", "cell_reduce.png.tmp"))


# -- wrong types and user text in the run folder --------------------------------------------------
def _bad_metrics(change):
    metrics = search_metrics()
    change(metrics)
    return metrics


@pytest.mark.parametrize("files,fragment", [
    ({"metrics": _bad_metrics(lambda m: m["history"][0].update(train_loss="abc"))},
     "metrics.json is not a fastnas metrics file: history[0].train_loss: expected a finite "
     "number, got 'abc'"),
    ({"metrics": _bad_metrics(lambda m: m.update(history=[1, 2, 3]))},
     "history[0]: expected an object, got 1"),
    ({"alphas": dict(alphas_data(), panels=[])}, "0 panels, expected 1 to 6000"),
    ({"metrics": "[" * 200_000 + "]" * 200_000}, "nested too deeply"),
    ({"alphas": b"\xff\xfe\x00binary"}, "not UTF-8 text"),
    ({"genotype": '{"normal": [["$\\\\frac{$", 0]]}'}, "cannot read the genotype"),
])
def test_wrong_typed_run_files_are_one_line(tmp_path, files, fragment, capsys):
    folder = write_search_folder(tmp_path / "s", **files)
    assert cli.main(["plot", folder]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastnas: error: ") and fragment in err and "\n" not in err


def test_mathtext_in_user_text_is_drawn_literally(tmp_path):
    folder = write_search_folder(tmp_path / "s", metrics=search_metrics(dataset="$\\frac{$"))
    assert cli.main(["plot", folder]) == 0
    svg = open(os.path.join(folder, "plots", "curves.svg"), encoding="utf-8").read()
    assert "darts search on $\\frac{$" in svg  # the title, as text (svg.fonttype "path" draws
    #                                            glyphs; the text is kept in a comment)


# -- convert-paper --------------------------------------------------------------------------------
@pytest.mark.parametrize("change,fragment", [
    (lambda s: s.update({"stem.0.weight": torch.tensor(1.0)}), "stem.0.weight has shape ()"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("cells.")], "holds no cells.*"),
    (lambda s: s["cells.0._ops.0.op.1.weight"].view(-1).__setitem__(0, float("nan")),
     "cells.0._ops.0.op.1.weight holds NaN or Inf values"),
])
def test_convert_paper_refuses_what_no_paper_checkpoint_holds(tmp_path, capsys, change,
                                                              fragment):
    state = paper_state_dict()
    change(state)
    torch.save(state, tmp_path / "x.pt")
    assert cli.main(["convert-paper", str(tmp_path / "x.pt"), str(tmp_path / "o.pt"),
                     "--genotype", "DARTS_V2"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err and not (tmp_path / "o.pt").exists()


def test_convert_paper_still_converts_a_valid_checkpoint(tmp_path, capsys):
    torch.save(paper_state_dict(), tmp_path / "x.pt")
    assert cli.main(["convert-paper", str(tmp_path / "x.pt"), str(tmp_path / "o.pt"),
                     "--genotype", "DARTS_V2"]) == 0
    assert "NetworkCIFAR(C=4, layers=3, classes=10" in capsys.readouterr().out


# -- messages -------------------------------------------------------------------------------------
def test_top_k_0_says_what_it_needs(capsys):
    assert cli.main(["tune", "--top-k", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("fastnas: error: argument --top-k: must be an "
                                               "integer >= 2, got '0'")


@pytest.mark.parametrize("marker", [checkpoint.describe("search", "enas"),
                                    checkpoint.describe("train")])
def test_darts_load_of_another_kind_gives_the_cli_message(tmp_path, marker, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    path = str(folder / "checkpoint.pt")
    torch.save({**marker, "config": {"num_layers": 3}, "run": {"dataset": "digits"}}, path)
    with pytest.raises(ValueError) as raised:
        DARTSOptimizer.load(path)
    assert cli.main(["search", "--resume", "--output", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == f"fastnas: error: {raised.value}"


def test_a_plain_pickle_is_refused_with_its_own_line_only(tmp_path):
    import pickle

    out = tmp_path / "run"
    out.mkdir()
    with open(out / "checkpoint.pt", "wb") as f:
        pickle.dump({"weights": [1, 2, 3], "note": "a plain pickle"}, f, protocol=4)
    done = run_fastnas(["train", "--genotype", "DARTS_V2", "--resume", "--output", str(out)])
    assert_one_line(done, 2, "is unreadable (corrupt or not a checkpoint)")


def test_the_torchrun_resume_hint_has_the_torchrun_prefix(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    assert cli._resume_command(["search", "--output", "o"]) == (
        "torchrun --nnodes=2 --nproc_per_node=2 -m fastnas search --output o --resume")
    monkeypatch.delenv("RANK")
    assert cli._resume_command(["search"]) == "fastnas search --resume"


# -- the limits are documented --------------------------------------------------------------------
def test_the_readme_lists_every_limit():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## Interruptions and failures"):]
    section = section[:section.index("\n## ", 5)]
    for name in ("MAX_LAYERS", "MAX_CHANNELS", "MAX_NODES", "MAX_CLASSES", "MAX_IN_CHANNELS",
                 "MAX_IMAGE_SIZE", "MAX_PANELS", "MAX_OPTIONS", "MAX_FIGURE_PANELS"):
        value = getattr(limits, name)
        assert f"{value:,}" in section or str(value) in section, name
    assert "1 MiB" in section and "32 MiB" in section and "1.1 billion" in section


def test_genotype_parse_refuses_a_huge_text_quickly():
    with pytest.raises(ValueError, match="at most 1048576"):
        Genotype.parse("Genotype(" + " " * (2 << 20) + ")")


def test_the_limited_runner_really_limits_memory(tmp_path):
    """The harness is honest: a 3 GB allocation fails under it."""
    done = run_python(["-c", "import torch; torch.zeros(750_000_000)"])
    assert done.status != 0 and "allocate" in done.stderr
