"""Your own data through the pipeline: ``--dataset folder``, ``--dataset cifar100`` and
``fastnas.data.from_dataset``, on folders and files the tests write (tiny settings)."""
import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from fake_cifar import write_fake_cifar100
from fake_images import write_image, write_image_folder

from fastnas import data, image_folder
from fastnas.cli import main
from fastnas.errors import UserError
from fastnas.genotypes import Genotype
from fastnas.pipeline import StageOptions, run_pipeline
from fastnas.training import load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--layers", "3", "--channels", "4", "--batch-size", "8", "--workers", "0",
        "--threads", "1", "--quiet", "--no-plots"]
TINY_RUN = ["--search-epochs", "1", "--search-layers", "3", "--search-channels", "4",
            "--search-batch-size", "8", "--train-epochs", "1", "--train-layers", "3",
            "--train-channels", "4", "--train-batch-size", "8", "--workers", "0",
            "--threads", "1", "--quiet", "--no-plots"]


@pytest.fixture(autouse=True)
def fresh_cache():
    image_folder.read_image_folder.cache_clear()
    threads = torch.get_num_threads()
    yield
    image_folder.read_image_folder.cache_clear()
    assert torch.get_num_threads() == threads


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _same_weights(a, b):
    a = torch.load(a, weights_only=True)["model"]
    b = torch.load(b, weights_only=True)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_on_a_folder_of_rgb_pngs_in_three_classes(tmp_path, capsys):
    """The issue's done-when: fastnas run --dataset folder --data-dir D on 20x20 RGB PNGs."""
    folder = write_image_folder(tmp_path / "D", classes=("cat", "dog", "fox"), per_class=8,
                                test_per_class=4, size=(20, 20), mode="RGB", ext=".png")
    out = tmp_path / "run"
    argv = ["run", "--dataset", "folder", "--data-dir", folder, *TINY_RUN, "--output", str(out)]
    assert main(argv) == 0
    assert "pipeline finished" in capsys.readouterr().out
    searched = _json(out / "search" / "metrics.json")
    trained = _json(out / "train" / "metrics.json")
    assert searched["dataset"] == trained["dataset"] == "folder"
    assert (searched["config"]["in_channels"], searched["config"]["num_classes"]) == (3, 3)
    assert (trained["config"]["in_channels"], trained["config"]["num_classes"]) == (3, 3)
    assert (trained["config"]["auxiliary"], trained["config"]["cutout"]) == (False, 0)
    # the training split's statistics, in the checkpoints and model.pt
    mean, std = image_folder.channel_stats(image_folder.read_image_folder(folder).train_images)
    saved = torch.load(out / "train" / "model.pt", weights_only=True)
    assert saved["data"]["classes"] == ["cat", "dog", "fox"]
    assert (saved["data"]["mean"], saved["data"]["std"]) == (list(mean), list(std))
    assert saved["data"]["size"] == [20, 20] and saved["data"]["in_channels"] == 3
    for stage in ("search", "train"):
        state = torch.load(out / stage / "checkpoint.pt", weights_only=True)
        assert state["run"]["data"] == saved["data"]
    model, genotype, _ = load_model(str(out / "train" / "model.pt"))
    assert genotype == Genotype.load(str(out / "search" / "genotype.json"))
    logits, _ = model(torch.randn(2, 3, 20, 20))
    assert logits.shape == (2, 3)
    # a new image, prepared as the folder's were (the README's recipe)
    from PIL import Image
    x = data.image_input(saved["data"], Image.open(os.path.join(folder, "test", "dog", "000.png")))
    logits, _ = model(x[None])
    assert logits.shape == (1, 3) and saved["data"]["classes"][int(logits.argmax())] in (
        "cat", "dog", "fox")
    # a finished run resumed redoes nothing
    assert main(argv + ["--resume"]) == 0
    assert _json(out / "train" / "metrics.json")["history"] == trained["history"]


def test_a_folder_search_resumes_exactly(tmp_path, capsys, monkeypatch):
    folder = write_image_folder(tmp_path / "D", per_class=8, test_per_class=2)
    common = ["search", "--dataset", "folder", "--data-dir", folder, *TINY]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*common, "--epochs", "2", "--output", str(straight)]) == 0
    assert main([*common, "--epochs", "1", "--output", str(resumed)]) == 0
    torch.manual_seed(5)   # nothing drawn between the runs may matter
    image_folder.read_image_folder.cache_clear()
    # the resumed search takes the dataset, and the folder, from its checkpoint
    monkeypatch.chdir(tmp_path)   # where no data/ folder is
    assert main(["search", "--resume", "--epochs", "2", "--workers", "0", "--quiet",
                 "--no-plots", "--output", str(resumed)]) == 0
    a, b = _json(straight / "metrics.json"), _json(resumed / "metrics.json")
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b["history"]]
    assert _same_weights(straight / "checkpoint.pt", resumed / "checkpoint.pt")
    capsys.readouterr()
    assert main([*common, "--image-size", "16", "--resume", "--output", str(resumed)]) == 2
    assert "--image-size 16 does not match the checkpoint" in capsys.readouterr().err


def test_one_folder_split_by_test_fraction_with_mixed_sizes_and_modes(tmp_path, capsys):
    root = tmp_path / "flat"
    for c, name in enumerate(("ant", "bee")):
        for i in range(6):
            size = (18 + 3 * i, 16 + 2 * c)
            mode, ext = [("RGB", ".png"), ("L", ".png"), ("RGBA", ".png"), ("RGB", ".jpg")][i % 4]
            write_image(str(root / name / f"{i}{ext}"), size=size, mode=mode, seed=[c, i])
    flags = ["--dataset", "folder", "--data-dir", str(root), "--test-fraction", "0.25",
             "--image-size", "12"]
    assert main(["search", *flags, "--epochs", "1", *TINY, "--output",
                 str(tmp_path / "s")]) == 0
    record = _json(tmp_path / "s" / "metrics.json")["data"]
    assert (record["train_images"], record["test_images"]) == (8, 4)   # round(0.25 * 6) = 2
    assert record["size"] == [12, 12] and record["in_channels"] == 3
    # a separate training on the same folder reads the same split, normalized the same way
    assert main(["train", "--genotype", str(tmp_path / "s" / "genotype.json"), *flags,
                 "--epochs", "1", *TINY, "--output", str(tmp_path / "t")]) == 0
    assert torch.load(tmp_path / "t" / "model.pt", weights_only=True)["data"] == record


def test_from_dataset_through_the_pipeline_api(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    images = torch.randn(40, 2, 10, 10, generator=g) + labels.view(-1, 1, 1, 1).float()
    train = data.ArrayDataset(images[:32], labels[:32])
    test = data.ArrayDataset(images[32:], labels[32:])
    options = StageOptions(dataset=data.from_dataset(train, test), quiet=True, threads=1)
    small = {"epochs": 1, "layers": 3, "channels": 4, "batch_size": 8}
    result = run_pipeline(options, "darts", small, small, str(tmp_path / "run"))
    assert result["search"]["dataset"] == result["train"]["dataset"] == "custom"
    assert result["train"]["config"]["in_channels"] == 2
    assert result["train"]["config"]["num_classes"] == 4
    # a resumed run takes the same source again (finished: nothing is redone); a name given
    # instead is refused
    resumed = run_pipeline(dataclasses.replace(options, resume=True), "darts", small, small,
                           str(tmp_path / "run"))
    assert resumed["train"]["history"] == result["train"]["history"]
    again = StageOptions(dataset="digits", resume=True, quiet=True)
    with pytest.raises(UserError, match="--dataset digits does not match the checkpoint"):
        run_pipeline(again, "darts", small, small, str(tmp_path / "run"))


def test_cifar100_search_from_the_command_line_and_download(tmp_path, capsys, monkeypatch):
    import torchvision

    calls = []

    class FakeCIFAR100:
        def __init__(self, root, train, download):
            calls.append(download)
            write_fake_cifar100(root, train_size=24, test_size=8)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    argv = ["search", "--dataset", "cifar100", "--data-dir", str(tmp_path / "data"),
            "--download", "--epochs", "1", *TINY, "--output", str(tmp_path / "s")]
    assert main(argv) == 0
    assert calls == [True] and "downloading CIFAR-100" in capsys.readouterr().err
    config = _json(tmp_path / "s" / "metrics.json")["config"]
    assert (config["num_classes"], config["in_channels"], config["layers"]) == (100, 3, 3)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_folder_search_under_torchrun_reads_one_shard_a_rank(tmp_path):
    folder = write_image_folder(tmp_path / "D", per_class=8, test_per_class=2)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "fastnas",
               "search", "--dataset", "folder", "--data-dir", folder, "--epochs", "1", *TINY,
               "--dist-timeout", "60", "--output", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert len(state["rng"]["per_rank"]) == 2
    # 12 weight images, 6 a rank, a global batch of 8 is 4 a rank: 2 steps
    assert state["history"][0]["steps"] == 2
    assert state["run"]["data"]["classes"] == ["cat", "dog", "fox"]


def test_tune_says_it_does_not_read_folders_yet(tmp_path, capsys):
    pytest.importorskip("optuna")
    assert main(["tune", "--dataset", "folder", "--data-dir", str(tmp_path), "--output",
                 str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.strip() == ("fastnas: error: fastnas tune reads digits and "
                                               "cifar10, not folder (not yet: use fastnas run "
                                               "for it)")
    assert not os.path.exists(tmp_path / "t")
