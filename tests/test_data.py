"""Datasets, splits, transforms and loaders (fastnas.data)."""
import os
import pickle

import numpy as np
import pytest
import torch
from fake_cifar import write_fake_cifar10

from fastnas import data
from fastnas.errors import UserError

CPU = torch.device("cpu")


# -- digits ---------------------------------------------------------------------------------------
def test_digits_splits_are_fixed_stratified_and_normalized():
    torch.manual_seed(123)  # the split must not depend on the global generators
    train, test = data.load_split("digits", "train"), data.load_split("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(train.images.mean())) < 1e-5 and abs(float(train.images.std()) - 1) < 1e-3
    assert torch.bincount(test.labels, minlength=10).min() >= 35  # stratified: 36 per class
    torch.manual_seed(7)
    again = data.load_split("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    # no image of the test split is in the train split
    train_rows = {tuple(r) for r in train.images.flatten(1).tolist()}
    overlap = sum(tuple(r) in train_rows for r in test.images.flatten(1).tolist())
    assert overlap == 0


def test_digits_search_split_is_the_train_split_halved():
    split = data.search_data("digits")
    assert (len(split.weights), len(split.arch), len(split.arch_eval)) == (718, 719, 719)
    train = data.load_split("digits", "train")
    first = torch.stack([split.weights[i][0] for i in range(len(split.weights))])
    second = torch.stack([split.arch[i][0] for i in range(len(split.arch))])
    assert torch.equal(torch.cat([first, second]), train.images)
    assert torch.equal(split.arch_eval[5][0], split.arch[5][0])


def test_limit_keeps_the_first_images():
    limited = data.load_split("digits", "train", limit=10)
    assert len(limited) == 10
    assert torch.equal(limited[9][0], data.load_split("digits", "train")[9][0])
    assert len(data.load_split("digits", "test", limit=10_000)) == 360
    assert len(data.search_data("digits", limit=20).arch) == 10


def test_digits_cutout_is_applied_when_asked():
    torch.manual_seed(0)
    plain = data.load_split("digits", "train")
    cut = data.load_split("digits", "train", cutout=4)
    diffs = [int((cut[i][0] != plain[i][0]).sum()) for i in range(20)]
    assert max(diffs) > 0 and all(d <= 16 for d in diffs)


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        data.load_split("mnist", "train")
    with pytest.raises(ValueError, match="split must be"):
        data.load_split("digits", "valid")
    assert data.dataset_info("cifar10").in_channels == 3


# -- transforms -----------------------------------------------------------------------------------
@pytest.mark.parametrize("length, size", [(16, 32), (4, 8), (1, 5), (40, 8)])
def test_cutout_zeroes_one_clipped_square(length, size):
    torch.manual_seed(1)
    image = torch.ones(3, size, size)
    for _ in range(20):
        out = data.Cutout(length)(image)
        zeros = (out == 0).all(dim=0)
        rows, cols = zeros.any(1).nonzero().flatten(), zeros.any(0).nonzero().flatten()
        if len(rows):  # the square is a contiguous box no bigger than length x length
            box = zeros[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all() and box.shape[0] <= length and box.shape[1] <= length
            assert int(zeros.sum()) == box.numel()
        assert (out[:, ~zeros] == 1).all()  # the rest is untouched
    assert torch.equal(image, torch.ones(3, size, size))  # out of place


def test_cutout_is_reproducible_and_rejects_bad_lengths():
    torch.manual_seed(3)
    a = data.Cutout(4)(torch.ones(1, 8, 8))
    torch.manual_seed(3)
    assert torch.equal(a, data.Cutout(4)(torch.ones(1, 8, 8)))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            data.Cutout(bad)
    assert repr(data.Cutout(16)) == "Cutout(16)"


def test_cifar10_transform_normalizes_and_augments():
    image = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    plain = data.cifar10_transform(augment=False)(image)
    mean = torch.tensor(data.CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(data.CIFAR10_STD).view(3, 1, 1)
    assert torch.allclose(plain, (128 / 255 - mean) / std, atol=1e-6)
    torch.manual_seed(0)
    crops = [data.cifar10_transform(augment=True)(image) for _ in range(10)]
    assert all(c.shape == (3, 32, 32) for c in crops)
    # padding 4 brings black (0) borders in: some crops differ from the plain image
    assert any(not torch.allclose(c, plain) for c in crops)
    cut = data.cifar10_transform(augment=False, cutout=16)(image)
    assert int((cut == 0).all(0).sum()) >= 64


# -- CIFAR-10 files -------------------------------------------------------------------------------
def test_cifar10_reader_matches_torchvision(tmp_path, monkeypatch):
    import torchvision

    write_fake_cifar10(tmp_path, per_batch=6, test_size=4)
    train = data.load_split("cifar10", "train", str(tmp_path))
    test = data.load_split("cifar10", "test", str(tmp_path))
    assert (len(train), len(test)) == (30, 4)
    # the files are not the real ones, so torchvision's md5 checks are switched off
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    reference = torchvision.datasets.CIFAR10(str(tmp_path), train=True, download=False)
    assert np.array_equal(train.images.permute(0, 2, 3, 1).numpy(), reference.data)
    assert train.labels.tolist() == reference.targets


def test_cifar10_data_dir_may_be_the_batches_folder(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    assert data.cifar10_folder(folder) == folder
    assert len(data.load_split("cifar10", "test", folder)) == 8
    split = data.search_data("cifar10", str(tmp_path))
    assert (len(split.weights), len(split.arch)) == (20, 20)
    x, y = split.weights[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_cifar10_missing_folder_names_the_path(tmp_path):
    with pytest.raises(UserError, match=r"CIFAR-10 not found: .*nothing.*cifar-10-batches-py"):
        data.load_split("cifar10", "train", str(tmp_path / "nothing"))


def test_cifar10_missing_batch(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    os.remove(os.path.join(folder, "data_batch_3"))
    with pytest.raises(UserError, match="incomplete: data_batch_3 is missing"):
        data.load_split("cifar10", "train", str(tmp_path))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "bad_labels", "not_dict"])
def test_cifar10_corrupt_batch_names_the_file(tmp_path, damage):
    folder = write_fake_cifar10(tmp_path)
    path = os.path.join(folder, "test_batch")
    if damage == "truncate":
        blob = open(path, "rb").read()
        open(path, "wb").write(blob[: len(blob) // 2])
    elif damage == "garbage":
        open(path, "wb").write(b"this is not a pickle")
    else:
        entry = {"wrong_shape": {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]},
                 "bad_labels": {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]},
                 "not_dict": [1, 2, 3]}[damage]
        open(path, "wb").write(pickle.dumps(entry, protocol=2))
    with pytest.raises(UserError, match=f"CIFAR-10 file {path} is corrupt") as info:
        data.load_split("cifar10", "test", str(tmp_path))
    assert "\n" not in str(info.value)


def test_cifar10_pickles_cannot_run_code(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({"data": Exploit(), "labels": []}, f, protocol=2)
    with pytest.raises(UserError, match="unexpected object"):
        data.load_split("cifar10", "test", str(tmp_path))
    assert not marker.exists()


def test_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_fake_cifar10(root)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    data.download_cifar10(str(tmp_path))
    assert calls == [(str(tmp_path), True, True)]
    assert len(data.load_split("cifar10", "test", str(tmp_path))) == 8

    def offline(root, train, download):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError, match="downloading CIFAR-10 into .* failed: <urlopen"):
        data.download_cifar10(str(tmp_path / "elsewhere"))


# -- loaders --------------------------------------------------------------------------------------
def _order(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_epoch_loader_order_depends_only_on_seed_stream_and_epoch():
    dataset = data.ArrayDataset(torch.zeros(40, 1, 2, 2), torch.arange(40))
    loader = data.make_loader(dataset, 8, shuffle=True, device=torch.device("cpu"), seed=5)
    loader.set_epoch(3)
    torch.manual_seed(0)
    first = _order(loader)
    loader.set_epoch(3)
    torch.manual_seed(99)  # the global generator does not matter
    assert _order(loader) == first
    loader.set_epoch(4)
    assert _order(loader) != first and sorted(_order(loader)) == list(range(40))
    other = data.make_loader(dataset, 8, shuffle=True, device=torch.device("cpu"), seed=5,
                             stream=1)
    data.set_epoch([other], 3)
    assert _order(other) != first
    fixed = data.make_loader(dataset, 8, shuffle=False, device=torch.device("cpu"))
    assert _order(fixed) == list(range(40))
    assert not loader.pin_memory


def test_loader_with_workers_is_reproducible():
    dataset = data.ArrayDataset(torch.ones(12, 1, 8, 8), torch.arange(12), data.Cutout(4))
    loader = data.make_loader(dataset, 4, shuffle=True, device=torch.device("cpu"), seed=1,
                              num_workers=1)
    loader.set_epoch(2)
    a = [x for x, _ in loader]
    loader.set_epoch(2)
    b = [x for x, _ in loader]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_pinned_memory_on_cuda_and_default_workers():
    dataset = data.ArrayDataset(torch.zeros(4, 1, 2, 2), torch.arange(4))
    assert data.make_loader(dataset, 2, shuffle=False, device=torch.device("cuda")).pin_memory
    assert data.default_workers("digits") == 0
    assert 1 <= data.default_workers("cifar10") <= 4
    with pytest.raises(ValueError, match="3 images but 4 labels"):
        data.ArrayDataset(torch.zeros(3, 1, 2, 2), torch.arange(4))


def test_a_last_training_batch_of_one_is_dropped():
    dataset = data.ArrayDataset(torch.zeros(9, 1, 2, 2), torch.arange(9))
    sizes = [len(y) for _, y in data.make_loader(dataset, 4, shuffle=True, device=CPU)]
    assert sizes == [4, 4]
    sizes = [len(y) for _, y in data.make_loader(dataset, 4, shuffle=False, device=CPU)]
    assert sizes == [4, 4, 1]  # evaluation sees every image
