"""The ``fastnas`` command line, run in-process through ``main([...])`` (and once as a process)."""
import io
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from fake_cifar import write_fake_cifar10

from fastnas import checkpoint, cli, genotypes, pipeline
from fastnas.cli import main
from fastnas.console import Progress
from fastnas.darts import DARTSOptimizer
from fastnas.errors import UserError
from fastnas.genotypes import Genotype
from fastnas.training import FinalTrainer, load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a supernet and a network small enough for a step in a few milliseconds
SMALL_SEARCH = ["--limit", "96", "--layers", "3", "--channels", "4", "--batch-size", "16",
                "--quiet", "--no-plots"]
SMALL_TRAIN = ["--limit", "64", "--layers", "3", "--channels", "4", "--batch-size", "16",
               "--quiet", "--no-plots"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads  # main restores what it changed


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _strip_seconds(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def _same_weights(path_a, path_b):
    a = torch.load(path_a, weights_only=True)["model"]
    b = torch.load(path_b, weights_only=True)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _error_line(capsys, after_logs=False):
    """The one ``fastnas:`` line on stderr (after the progress log lines if ``after_logs``)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 or after_logs, err
    assert [line.startswith("fastnas:") for line in lines].count(True) == 1, err
    return lines[-1]


# -- the integration test of the issue ------------------------------------------------------------
def test_digits_search_then_train_reaches_90_percent(tmp_path, capsys):
    """search --epochs 2 --layers 5 --channels 8, then train 6 epochs: >= 0.90 test accuracy."""
    search_dir, train_dir = tmp_path / "search", tmp_path / "train"
    assert main(["search", "--method", "darts", "--dataset", "digits", "--epochs", "2",
                 "--layers", "5", "--channels", "8", "--output", str(search_dir),
                 "--quiet", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "search finished" in out and str(search_dir / "genotype.json") in out
    genotype = Genotype.load(str(search_dir / "genotype.json"))
    searched = _read_json(search_dir / "metrics.json")
    assert searched["complete"] and searched["genotype"] == str(genotype)
    assert 0.3 < searched["val_accuracy"] <= 1   # chance: 0.1
    assert [r["epoch"] for r in searched["history"]] == [0, 1]
    for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "genotype", "seconds"):
        assert key in searched["history"][0]
    assert len(searched["history"][0]["alphas_normal"]) == 14  # softmaxed alphas, as lists
    assert os.path.exists(search_dir / "checkpoint.pt")

    assert main(["train", "--genotype", str(search_dir / "genotype.json"), "--epochs", "6",
                 "--output", str(train_dir), "--quiet", "--no-plots"]) == 0
    out = capsys.readouterr().out
    trained = _read_json(train_dir / "metrics.json")
    print(f"searched val accuracy {searched['val_accuracy']:.4f}, "
          f"trained test accuracy {trained['test_accuracy']:.4f}", file=sys.stderr)
    assert trained["test_accuracy"] >= 0.90
    assert trained["complete"] and len(trained["history"]) == 6
    assert trained["params"] > 0 and trained["multiply_adds"] > 0 and trained["seconds"] > 0
    assert "test accuracy" in out and "multiply-adds" in out
    model, loaded, config = load_model(str(train_dir / "model.pt"))
    assert loaded == genotype and config.epochs == 6 and config.in_channels == 1


# -- resume ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def straight_search(tmp_path_factory):
    """An uninterrupted two-epoch search, the reference for the resumed ones."""
    out = tmp_path_factory.mktemp("straight")
    assert main(["search", "--epochs", "2", *SMALL_SEARCH, "--output", str(out)]) == 0
    return out


def _assert_same_search(a, b):
    assert Genotype.load(str(a / "genotype.json")) == Genotype.load(str(b / "genotype.json"))
    ma, mb = _read_json(a / "metrics.json"), _read_json(b / "metrics.json")
    assert _strip_seconds(ma["history"]) == _strip_seconds(mb["history"])
    assert ma["val_accuracy"] == mb["val_accuracy"]
    assert _same_weights(a / "checkpoint.pt", b / "checkpoint.pt")


def test_search_resumed_with_more_epochs_equals_a_straight_search(tmp_path, straight_search):
    assert main(["search", "--epochs", "1", *SMALL_SEARCH, "--output", str(tmp_path)]) == 0
    assert _read_json(tmp_path / "metrics.json")["epochs"] == 1
    torch.manual_seed(321)  # nothing drawn between the runs may matter
    assert main(["search", "--epochs", "2", "--resume", "--output", str(tmp_path),
                 "--quiet"]) == 0
    _assert_same_search(straight_search, tmp_path)


def test_ctrl_c_keeps_the_last_epoch_and_resume_finishes_it(tmp_path, straight_search, capsys,
                                                            monkeypatch):
    step, calls = DARTSOptimizer.step, []

    def interrupted_step(self, *args):
        calls.append(1)
        if len(calls) == 5:  # the second step of the second epoch (3 steps per epoch)
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(DARTSOptimizer, "step", interrupted_step)
    argv = ["search", "--epochs", "2", *SMALL_SEARCH, "--output", str(tmp_path)]
    assert main(argv) == 130
    line = _error_line(capsys, after_logs=True)
    checkpoint = tmp_path / "checkpoint.pt"
    assert f"the last checkpoint {checkpoint} holds 1 finished epoch" in line
    assert line.endswith("--resume") and "resume with: fastnas search --epochs 2" in line
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    assert not os.path.exists(f"{checkpoint}.tmp")

    monkeypatch.setattr(DARTSOptimizer, "step", step)
    assert main(argv + ["--resume"]) == 0
    _assert_same_search(straight_search, tmp_path)


def test_a_killed_search_resumes_from_its_last_checkpoint(tmp_path, straight_search):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = ["search", "--epochs", "2", *SMALL_SEARCH, "--output", str(tmp_path)]
    process = subprocess.Popen([sys.executable, "-m", "fastnas", *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()  # SIGKILL: no handler runs, as when the machine goes away
    process.wait()
    assert checkpoint.exists()
    assert main(argv + ["--resume"]) == 0
    _assert_same_search(straight_search, tmp_path)


def test_ctrl_c_before_the_first_checkpoint(tmp_path, capsys, monkeypatch):
    def interrupted_step(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(DARTSOptimizer, "step", interrupted_step)
    assert main(["search", *SMALL_SEARCH, "--output", str(tmp_path)]) == 130
    line = _error_line(capsys, after_logs=True)
    assert "before any checkpoint was written" in line and "--resume" not in line


def test_resume_without_a_checkpoint_starts_anew(tmp_path, capsys):
    assert main(["search", "--epochs", "1", *SMALL_SEARCH, "--output", str(tmp_path),
                 "--resume"]) == 0
    assert f"no checkpoint at {tmp_path / 'checkpoint.pt'}" in capsys.readouterr().err
    assert _read_json(tmp_path / "metrics.json")["complete"]


def test_resume_refuses_contradicting_flags(tmp_path, capsys):
    assert main(["search", "--epochs", "1", *SMALL_SEARCH, "--output", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["search", "--resume", "--layers", "4", "--output", str(tmp_path)]) == 2
    assert "--layers 4 does not match the checkpoint" in _error_line(capsys)
    assert main(["search", "--resume", "--seed", "9", "--output", str(tmp_path)]) == 2
    assert "--seed 9 does not match the checkpoint" in _error_line(capsys)
    assert main(["search", "--resume", "--dataset", "cifar10", "--output", str(tmp_path)]) == 2
    assert "--dataset cifar10 does not match the checkpoint" in _error_line(capsys)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    assert main(["search", "--resume", "--output", str(tmp_path)]) == 2
    assert "is unreadable" in _error_line(capsys)
    torch.save({"something": "else"}, tmp_path / "checkpoint.pt")
    assert main(["search", "--resume", "--output", str(tmp_path)]) == 2
    assert "is not a fastnas checkpoint" in _error_line(capsys)


def test_training_interrupted_and_resumed_equals_a_straight_run(tmp_path, capsys, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    argv = ["train", "--genotype", "DARTS_V1", "--epochs", "2", *SMALL_TRAIN]
    assert main(argv + ["--output", str(straight)]) == 0

    train_epoch, calls = FinalTrainer.train_epoch, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_epoch(self, *args, **kwargs)

    monkeypatch.setattr(FinalTrainer, "train_epoch", interrupted)
    assert main(argv + ["--output", str(resumed)]) == 130
    assert "training interrupted in epoch 2/2" in _error_line(capsys, after_logs=True)
    monkeypatch.setattr(FinalTrainer, "train_epoch", train_epoch)
    # the genotype comes from the checkpoint when it is not given again
    assert main(["train", "--resume", "--output", str(resumed), "--quiet"]) == 0
    a, b = _read_json(straight / "metrics.json"), _read_json(resumed / "metrics.json")
    assert _strip_seconds(a["history"]) == _strip_seconds(b["history"])
    assert _same_weights(straight / "model.pt", resumed / "model.pt")
    capsys.readouterr()
    assert main(["train", "--genotype", "DARTS_V2", "--resume", "--output", str(resumed)]) == 2
    assert "differs from the one being trained" in _error_line(capsys)


# -- CIFAR-10 -------------------------------------------------------------------------------------
TINY_CIFAR_RUN = ["--search-epochs", "1", "--search-layers", "3", "--search-channels", "4",
                  "--search-batch-size", "4", "--train-epochs", "1", "--train-layers", "3",
                  "--train-channels", "4", "--train-batch-size", "4", "--workers", "1",
                  "--threads", "1", "--quiet"]


def test_cifar10_pipeline_end_to_end(tmp_path, capsys):
    write_fake_cifar10(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["run", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
            *TINY_CIFAR_RUN, "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pipeline finished" in printed
    searched = _read_json(out / "search" / "metrics.json")
    trained = _read_json(out / "train" / "metrics.json")
    assert searched["dataset"] == trained["dataset"] == "cifar10"
    assert searched["config"]["in_channels"] == 3
    # the paper's final-training recipe is the cifar10 default
    config = trained["config"]
    assert (config["auxiliary"], config["cutout"], config["drop_path_prob"]) == (True, 16, 0.2)
    assert trained["params_with_auxiliary"] > trained["params"]
    model, genotype, _ = load_model(str(out / "train" / "model.pt"))
    assert genotype == Genotype.load(str(out / "search" / "genotype.json"))
    logits, _ = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    # resuming a finished run redoes nothing and reports the same result
    assert main(argv + ["--resume"]) == 0
    assert _read_json(out / "train" / "metrics.json")["history"] == trained["history"]


def test_cifar10_corrupt_or_missing_folder_is_one_line(tmp_path, capsys):
    folder = write_fake_cifar10(tmp_path / "data")
    batch = os.path.join(folder, "data_batch_2")
    blob = open(batch, "rb").read()
    open(batch, "wb").write(blob[:100])
    argv = ["search", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--output",
            str(tmp_path / "out")]
    assert main(argv) == 2
    assert _error_line(capsys).startswith(f"fastnas: error: CIFAR-10 file {batch} is corrupt")
    argv[4] = str(tmp_path / "elsewhere")
    assert main(argv) == 2
    assert f"{tmp_path / 'elsewhere' / 'cifar-10-batches-py'} does not exist" in _error_line(capsys)


def test_download_flag_fetches_through_torchvision(tmp_path, capsys, monkeypatch):
    import torchvision

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append(download)
            write_fake_cifar10(root)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    data_dir = tmp_path / "fresh"
    argv = ["search", "--dataset", "cifar10", "--data-dir", str(data_dir), "--download",
            "--epochs", "1", "--layers", "3", "--channels", "4", "--batch-size", "4",
            "--limit", "8", "--threads", "1", "--quiet", "--output", str(tmp_path / "out")]
    assert main(argv) == 0
    assert calls == [True] and "downloading CIFAR-10" in capsys.readouterr().err
    assert main(argv) == 0 and calls == [True]  # already there: no second download


# -- bad input: one line on stderr, exit status 2 -------------------------------------------------
def _bad_inputs(tmp):
    missing = str(tmp / "missing.json")
    not_json = tmp / "not_json.json"
    not_json.write_text("{not json")
    bad_op = tmp / "bad_op.txt"
    bad_op.write_text(str(genotypes.DARTS_V2).replace("sep_conv_3x3", "conv_9x9"))
    a_file = tmp / "a_file"
    a_file.write_text("")
    return [
        (["train", "--genotype", missing], f"genotype file {missing} does not exist"),
        (["train", "--genotype", str(not_json)], f"cannot read genotype file {not_json}: "
                                                 "genotype JSON does not parse"),
        (["train", "--genotype", str(bad_op)], "unknown operation 'conv_9x9'"),
        (["train", "--genotype", "DARTS_V9"], "unknown genotype 'DARTS_V9'"),
        (["train", "--genotype", "Genotype(normal=["], "cannot parse the --genotype text"),
        (["train"], "train needs --genotype"),
        (["search", "--epochs", "0"], "argument --epochs: must be a positive integer, got '0'"),
        (["search", "--epochs", "-2"], "argument --epochs: must be a positive integer"),
        (["train", "--genotype", "DARTS_V2", "--epochs", "0"], "must be a positive integer"),
        (["run", "--train-epochs", "-1"], "argument --train-epochs: must be a positive"),
        (["search", "--epochs", "two"], "must be a positive integer, got 'two'"),
        (["search", "--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
        (["search", "--method", "random"], "argument --method: invalid choice: 'random'"),
        (["search", "--method", "enas", "--order", "2"], "--order does not apply to --method enas"),
        (["search", "--dataset", "cifar10", "--data-dir", str(tmp / "nodata")],
         f"CIFAR-10 not found: {tmp / 'nodata' / 'cifar-10-batches-py'} does not exist"),
        (["search", "--output", str(a_file / "out")],
         f"cannot write to output directory {a_file / 'out'}"),
        (["search", "--device", "abacus"], "--device abacus:"),
        (["train", "--genotype", "DARTS_V2", "--drop-path", "1.5"], "must be in [0, 1)"),
        (["train", "--genotype", "DARTS_V2", "--learning-rate", "0"], "must be in (0, inf)"),
        (["train", "--genotype", "DARTS_V2", "--momentum", "nan"], "must be in [0, 1)"),
        (["train", "--genotype", "DARTS_V2", "--weight-decay", "lots"], "must be a number"),
        (["train", "--genotype", "DARTS_V2", "--layers", "2", "--output", str(tmp / "o")],
         "layers must be >= 3"),
        (["search", "--limit", "2", "--output", str(tmp / "o2")], "--limit 2 leaves 1 image"),
        (["search", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "missing command, one of: search, train, run"),
    ]


def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # where the default output folders would go
    for argv, message in _bad_inputs(tmp_path):
        assert main(argv) == 2, argv
        line = _error_line(capsys)
        assert line.startswith("fastnas: error: ") and message in line, (argv, line)
    assert os.listdir(cwd) == []  # bad input leaves no output folder behind


def test_console_entry_reports_errors_without_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "fastnas", "train", "--genotype",
                           "missing.json"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "fastnas: error: genotype file missing.json does not exist"
    assert done.stdout == ""


def test_other_failures_are_one_line_too(tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.data, "search_data", interrupt)
    assert main(["search", "--output", str(tmp_path)]) == 130
    assert _error_line(capsys, after_logs=True) == "fastnas: interrupted"
    monkeypatch.undo()

    def disk_full(obj, path):
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    assert main(["search", "--epochs", "1", *SMALL_SEARCH, "--output", str(tmp_path)]) == 1
    line = _error_line(capsys, after_logs=True)
    assert "cannot write" in line and "No space left on device" in line


def test_python_dash_m_runs_main(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["fastnas", "--version"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("fastnas", run_name="__main__")
    assert exit_info.value.code == 0 and "fastnas" in capsys.readouterr().out


def test_help_and_version(capsys):
    assert main(["--version"]) == 0
    assert "fastnas" in capsys.readouterr().out
    for command in ("search", "train", "run"):
        assert main([command, "--help"]) == 0
        assert "--output" in capsys.readouterr().out


def test_commands_are_easy_to_add(monkeypatch, capsys):
    def add_hello(sub):
        p = sub.add_parser("hello")
        p.set_defaults(handler=lambda args: print("hi") or 0)

    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, add_hello])
    assert main(["hello"]) == 0 and capsys.readouterr().out == "hi\n"


# -- progress -------------------------------------------------------------------------------------
def test_progress_bars_and_plain_lines():
    stream = io.StringIO()
    with Progress("train", total_epochs=2, steps_per_epoch=2, bars=True, stream=stream) as p:
        for epoch in range(2):
            p.step(1.0, 0.5)
            p.step(0.5, 1.0)
            if epoch == 0:  # the batch bar shows the epoch's running means
                assert p._batches.postfix == "loss=0.750, acc=0.750"
            p.epoch(epoch, "loss 0.750")
    text = stream.getvalue()
    assert "epoch 1" in text and "2/2" in text and "loss 0.750" in text

    stream = io.StringIO()  # closed in the middle of an epoch (Ctrl-C)
    with Progress("train", total_epochs=2, steps_per_epoch=2, bars=True, stream=stream) as p:
        p.step(1.0, 0.5)
    assert p._batches is None and p._epochs is None

    stream = io.StringIO()  # not a terminal: one plain line per epoch
    progress = Progress("search", total_epochs=3, done_epochs=1, stream=stream)
    progress.step(1.0, 0.5)
    progress.epoch(1, "val acc 0.9")
    progress.close()
    assert stream.getvalue() == "search epoch 2/3  val acc 0.9\n"


def test_cifar10_example_script_runs(tmp_path, capsys):
    import importlib.util

    write_fake_cifar10(tmp_path / "data")
    spec = importlib.util.spec_from_file_location(
        "cifar10_darts", os.path.join(REPO, "examples", "cifar10_darts.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = example.main(["--data-dir", str(tmp_path / "data"), "--smoke", "--output",
                                str(tmp_path / "out")])
    finally:
        torch.set_num_threads(threads)
    assert 0 <= metrics["train"]["test_accuracy"] <= 1
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "search", "train"]
    assert sorted(os.listdir(tmp_path / "out" / "search")) == [
        "alphas.json", "checkpoint.pt", "config.json", "genotype.json", "metrics.json"]
    assert sorted(os.listdir(tmp_path / "out" / "train")) == ["checkpoint.pt", "config.json",
                                                              "metrics.json", "model.pt"]
    assert "test accuracy" in capsys.readouterr().out


def test_enas_search_then_train_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "enas"
    assert main(["search", "--method", "enas", "--epochs", "1", *SMALL_SEARCH,
                 "--output", str(out)]) == 0
    genotype = Genotype.load(str(out / "genotype.json"))
    assert genotype.num_nodes == 5  # the ENAS micro cell
    metrics = _read_json(out / "metrics.json")
    assert metrics["method"] == "enas" and metrics["complete"]
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and len(metrics["history"]) == 1
    assert Genotype.parse(metrics["genotype"]) == genotype
    # resuming with the other method is refused with one line
    assert main(["search", "--method", "darts", "--resume", *SMALL_SEARCH,
                 "--output", str(out)]) == 2
    assert "resume it with --method enas" in _error_line(capsys, after_logs=True)
    assert main(["train", "--genotype", str(out / "genotype.json"), "--epochs", "1",
                 *SMALL_TRAIN, "--output", str(tmp_path / "train")]) == 0
    assert _read_json(tmp_path / "train" / "metrics.json")["test_accuracy"] >= 0.0


# -- one folder per search method -----------------------------------------------------------------
def test_each_search_method_and_run_has_its_own_default_folder():
    parser = cli.build_parser()
    for argv, folder in ((["search"], "digits-darts-search"),
                         (["search", "--method", "enas"], "digits-enas-search"),
                         (["search", "--method", "enas", "--dataset", "cifar10"],
                          "cifar10-enas-search"),
                         (["run"], "digits-darts-run"), (["run", "--method", "enas"],
                                                         "digits-enas-run"),
                         (["train"], "digits-train"), (["tune"], "digits-tune")):
        args = parser.parse_args(argv)
        assert cli._default_output(args, args.command) == os.path.join("runs", folder), argv
    args = parser.parse_args(["search", "--output", "mine"])
    assert cli._default_output(args, "search") == "mine"


def test_a_search_refuses_another_methods_folder_unless_asked(tmp_path, capsys):
    out = tmp_path / "enas"
    small = [a for a in SMALL_SEARCH if a != "--no-plots"]
    assert main(["search", "--method", "enas", "--epochs", "1", *small,
                 "--output", str(out)]) == 0
    assert os.path.exists(out / "plots" / "controller.png")
    before = {name: os.path.getmtime(out / name) for name in os.listdir(out)}
    capsys.readouterr()
    # a training or the other method: one line, exit 2, nothing touched
    assert main(["search", "--epochs", "1", *small, "--output", str(out)]) == 2
    assert _error_line(capsys) == (
        f"fastnas: error: {out} holds an enas search (see its metrics.json), which a darts "
        "search would overwrite: give another --output, or --no-resume to replace it")
    assert main(["train", "--genotype", "DARTS_V2", *SMALL_TRAIN, "--output", str(out)]) == 2
    assert "holds an enas search" in _error_line(capsys)
    assert {name: os.path.getmtime(out / name) for name in os.listdir(out)} == before
    # asked: the enas files go, none of its figures is left behind
    assert main(["search", "--epochs", "1", *small, "--no-resume", "--output", str(out)]) == 0
    assert f"replacing the enas search in {out} (--no-resume)" in capsys.readouterr().err
    assert _read_json(out / "metrics.json")["method"] == "darts"
    assert checkpoint.load_checkpoint(str(out / "checkpoint.pt"))["fastnas_checkpoint"][
        "method"] == "darts"
    figures = sorted(os.listdir(out / "plots"))
    assert not [f for f in figures if f.startswith("controller")] and "curves.png" in figures
    # fastnas plot also drops a figure its stage does not draw
    (out / "plots" / "controller.png").write_bytes(b"stale")
    assert main(["plot", str(out)]) == 0
    assert sorted(os.listdir(out / "plots")) == figures
    # the same method starts anew over its own folder, as before
    assert main(["search", "--epochs", "1", *SMALL_SEARCH, "--output", str(out)]) == 0


def test_an_automatic_resume_of_the_wrong_kind_says_it_was_automatic(tmp_path):
    out = tmp_path / "darts"
    assert main(["search", "--epochs", "1", *SMALL_SEARCH, "--output", str(out)]) == 0
    options = pipeline.StageOptions(limit=96, resume=True, resume_automatic=True, quiet=True)
    with pytest.raises(UserError) as caught:
        pipeline.search_stage(options, "enas", {"epochs": 1}, str(out))
    assert str(caught.value) == (
        f"{out}/checkpoint.pt is a darts search, not an enas search: resume it with --method "
        "darts (resuming is automatic under torchrun: --no-resume starts anew over it, --output "
        "DIR writes elsewhere)")
