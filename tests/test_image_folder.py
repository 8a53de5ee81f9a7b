"""Image folders (fastnas.image_folder), CIFAR-100 and from_dataset (fastnas.data), on small
folders and files the tests write."""
import os

import numpy as np
import pytest
import torch
from fake_cifar import write_fake_cifar100
from fake_images import write_image, write_image_folder

from fastnas import data, image_folder
from fastnas.errors import UserError


@pytest.fixture(autouse=True)
def fresh_cache():
    image_folder.read_image_folder.cache_clear()
    yield
    image_folder.read_image_folder.cache_clear()


def _hwc(images):
    """uint8 [N, C, H, W] -> list of [H, W, C] arrays."""
    return list(images.permute(0, 2, 3, 1).numpy())


def _written(root, split_dirs=("train", "test")):
    """{class: {bytes of pixels}} per split, decoded independently with Pillow."""
    from PIL import Image

    out = {}
    for split in split_dirs:
        for name in sorted(os.listdir(os.path.join(root, split))):
            folder = os.path.join(root, split, name)
            out.setdefault(split, {})[name] = {
                np.asarray(Image.open(os.path.join(folder, f)).convert("RGB")).tobytes()
                for f in os.listdir(folder)}
    return out


# -- reading --------------------------------------------------------------------------------------
def test_train_test_layout_reads_every_image_with_its_class(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("cat", "dog", "fox"), per_class=8,
                              test_per_class=4)
    source = data.open_data("folder", root)
    info = source.info
    assert (info.in_channels, info.num_classes, info.image_size) == (3, 3, 20)
    images = source.images
    assert images.classes == ("cat", "dog", "fox")
    assert images.train_images.dtype == torch.uint8
    assert images.train_images.shape == (24, 3, 20, 20) and images.test_images.shape[0] == 12
    written = _written(root)
    for split, pixels, labels in (("train", images.train_images, images.train_labels),
                                  ("test", images.test_images, images.test_labels)):
        got = {}
        for image, label in zip(_hwc(pixels), labels.tolist()):
            got.setdefault(images.classes[label], set()).add(image.tobytes())
        assert got == written[split]   # PNG is lossless: the very pixels, under their class


def test_gray_rgb_rgba_and_jpeg_are_read_as_rgb(tmp_path):
    root = tmp_path / "mixed"
    gray = write_image(str(root / "train" / "a" / "0.png"), mode="L", seed=1)
    rgba = write_image(str(root / "train" / "b" / "0.png"), mode="RGBA", seed=2)
    jpeg = write_image(str(root / "train" / "c" / "0.jpg"), mode="RGB", seed=3)
    for name in "abc":
        write_image(str(root / "test" / name / "0.png"), mode="RGB", seed=4)
    images = image_folder.read_image_folder(str(root))
    assert images.in_channels == 3
    by_class = {images.classes[int(y)]: x.permute(1, 2, 0).numpy()
                for x, y in zip(images.train_images, images.train_labels)}
    assert np.array_equal(by_class["a"], np.repeat(gray[..., None], 3, axis=2))  # gray -> RGB
    assert np.array_equal(by_class["b"], rgba[..., :3])   # alpha dropped, as torchvision
    # JPEG is lossy: close to what was written, not equal
    assert np.abs(by_class["c"].astype(int) - jpeg.astype(int)).mean() < 12


def test_an_all_gray_folder_has_one_channel(tmp_path):
    root = write_image_folder(tmp_path / "g", mode="L", per_class=3, test_per_class=2)
    source = data.open_data("folder", root)
    assert source.info.in_channels == 1
    x, y = source.split("train")[0]
    assert x.shape == (1, 20, 20) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(source.normalization()[0]) == 1


def test_image_size_equals_torchvision_resize_and_centre_crop(tmp_path):
    from PIL import Image
    from torchvision.transforms import v2

    root = tmp_path / "sizes"
    sizes = {"a": [(20, 20), (37, 23)], "b": [(16, 40), (64, 48)]}
    for name, shapes in sizes.items():
        for i, size in enumerate(shapes):
            write_image(str(root / name / f"{i}.png"), size=size, seed=10 * i + len(name))
    images = image_folder.read_image_folder(str(root), 16, 0.5)
    assert images.size == (16, 16)
    reference = v2.Compose([v2.Resize(16), v2.CenterCrop(16)])
    expected = set()
    for name in sizes:
        for f in os.listdir(root / name):
            pil = Image.open(root / name / f).convert("RGB")
            expected.add(np.asarray(reference(pil)).tobytes())
    got = {image.tobytes() for image in _hwc(torch.cat([images.train_images,
                                                         images.test_images]))}
    assert got == expected


def test_test_fraction_splits_each_class_seeded_and_stratified(tmp_path):
    root = write_image_folder(tmp_path / "one", classes=("a", "b", "c"), per_class=0,
                              test_per_class=10, split=False)
    for i in range(10, 15):   # class b gets 15 images, a and c 10
        write_image(str(tmp_path / "one" / "b" / f"{i:03d}.png"), seed=100 + i)
    images = image_folder.read_image_folder(root, None, 0.3)
    counts = torch.bincount(images.test_labels, minlength=3).tolist()
    assert counts == [3, round(0.3 * 15), 3]
    assert torch.bincount(images.train_labels).tolist() == [7, 15 - round(0.3 * 15), 7]
    train = {x.tobytes() for x in _hwc(images.train_images)}
    test = {x.tobytes() for x in _hwc(images.test_images)}
    assert not train & test and len(train | test) == 35   # disjoint, together everything
    # the same folder elsewhere splits the same way (the seed, not the path, decides)
    import shutil
    shutil.copytree(root, tmp_path / "copy")
    image_folder.read_image_folder.cache_clear()
    again = image_folder.read_image_folder(str(tmp_path / "copy"), None, 0.3)
    assert torch.equal(again.train_images, images.train_images)
    assert torch.equal(again.test_labels, images.test_labels)


@pytest.mark.parametrize("sizes", [(5, 5, 5), (30, 7, 3), (1, 9, 2, 17)])
def test_every_prefix_of_the_interleaved_order_holds_each_class_in_proportion(sizes):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    np.random.default_rng(0).shuffle(labels)
    order = image_folder.interleaved_order(labels)
    assert sorted(order.tolist()) == list(range(len(labels)))   # a permutation
    ordered = labels[order]
    total = len(labels)
    for k in range(1, total + 1):
        counts = np.bincount(ordered[:k], minlength=len(sizes))
        assert np.abs(counts - k * np.asarray(sizes) / total).max() <= 1.0 + 1e-9, k


def test_the_search_halves_of_a_folder_hold_every_class(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=10)
    split = data.open_data("folder", root).search_data()
    for half in (split.weights, split.arch):
        labels = torch.stack([half[i][1] for i in range(len(half))])
        assert torch.bincount(labels, minlength=3).tolist() == [5, 5, 5]


# -- normalization --------------------------------------------------------------------------------
def test_channel_stats_match_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 5, 7), generator=g, dtype=torch.uint8)
    images[:, 2] = 77   # a constant channel
    mean, std = image_folder.channel_stats(images, chunk=8)
    scaled = images.double() / 255
    ref_mean = scaled.mean(dim=(0, 2, 3))
    ref_std = scaled.std(dim=(0, 2, 3), unbiased=False)
    assert np.allclose(mean, ref_mean.numpy(), rtol=0, atol=1e-15)
    assert np.allclose(std[:2], ref_std[:2].numpy(), rtol=1e-13, atol=0)
    assert std[2] == 1.0 and mean[2] == 77 / 255   # no variation: only centred


def test_the_train_split_is_normalized_with_its_own_statistics(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=6)
    source = data.open_data("folder", root)
    train = source.split("train")
    x = torch.stack([train[i][0] for i in range(len(train))]).double()
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.double), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.double),
                          atol=1e-5)
    record = source.record()
    assert record["mean"] == list(image_folder.channel_stats(source.images.train_images)[0])
    # --limit: the statistics of the images that train
    limited = data.open_data("folder", root, limit=5)
    assert len(limited.split("train")) == len(limited.split("test")) == 5
    assert limited.record()["mean"] == list(image_folder.channel_stats(
        source.images.train_images[:5])[0])


def test_a_record_reopens_the_same_data_with_its_stored_normalization(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=4, test_per_class=2)
    record = data.open_data("folder", root).record()
    stored = dict(record, mean=[0.5, 0.25, 0.125], std=[2.0, 4.0, 8.0])
    source = data.open_data(data_dir=root, record=stored)
    assert source.normalization() == ([0.5, 0.25, 0.125], [2.0, 4.0, 8.0])
    x, _ = source.split("test")[0]
    raw = source.images.test_images[0].double() / 255
    expected = (raw - torch.tensor([0.5, 0.25, 0.125]).view(3, 1, 1)) / torch.tensor(
        [2.0, 4.0, 8.0]).view(3, 1, 1)
    assert torch.allclose(x.double(), expected, atol=1e-6)
    # the folder changed under the run: one line saying what
    write_image(str(tmp_path / "d" / "train" / "cat" / "extra.png"), seed=99)
    image_folder.read_image_folder.cache_clear()
    with pytest.raises(UserError, match="train_images 13, but the run it continues was made "
                                        "with 12"):
        data.open_data(data_dir=root, record=record)


def test_folder_flags_apply_to_folders_only():
    with pytest.raises(UserError, match="--image-size applies to --dataset folder, not digits"):
        data.open_data("digits", image_size=8)
    with pytest.raises(UserError, match="--test-fraction must be in"):
        data.open_data("folder", "x", test_fraction=1.5)
    assert "folder" in data.DATASET_NAMES and "cifar100" in data.DATASET_NAMES


# -- bad folders: one line naming the file or class -----------------------------------------------
def _bad_folders(tmp):
    def folder(name, **kwargs):
        return write_image_folder(tmp / name, per_class=2, test_per_class=1, **kwargs)

    empty_class = folder("empty_class")
    for f in os.listdir(os.path.join(empty_class, "train", "dog")):
        os.remove(os.path.join(empty_class, "train", "dog", f))
    no_test_class = folder("no_test_class")
    import shutil
    shutil.rmtree(os.path.join(no_test_class, "test", "fox"))
    extra_test_class = folder("extra_test_class")
    write_image(os.path.join(extra_test_class, "test", "owl", "0.png"))
    unreadable = folder("unreadable")
    garbage = os.path.join(unreadable, "train", "dog", "junk.png")
    with open(garbage, "wb") as f:
        f.write(b"not a png at all")
    truncated = folder("truncated")
    cut = os.path.join(truncated, "test", "cat", "000.png")
    blob = open(cut, "rb").read()
    open(cut, "wb").write(blob[:len(blob) // 2])
    mixed = folder("mixed")
    odd = os.path.join(mixed, "train", "fox", "big.png")
    write_image(odd, size=(24, 20))
    only_train = folder("only_train")
    shutil.rmtree(os.path.join(only_train, "test"))
    flat = write_image_folder(tmp / "flat", per_class=1, test_per_class=0, split=False)
    one_class = write_image_folder(tmp / "one_class", classes=("cat",), per_class=2)
    (tmp / "no_classes").mkdir()
    return [
        (str(tmp / "nowhere"), [], f"image folder {tmp / 'nowhere'} does not exist"),
        (str(tmp / "no_classes"), ["--test-fraction", "0.5"],
         f"image folder {tmp / 'no_classes'} holds no class folders"),
        (empty_class, [],
         f"class 'dog' has no images ({os.path.join(empty_class, 'train', 'dog')}"),
        (no_test_class, [], "class 'fox' is missing from the test split (no folder "
                            f"{os.path.join(no_test_class, 'test', 'fox')})"),
        (extra_test_class, [], f"class 'owl' of {os.path.join(extra_test_class, 'test')} has no "
                               "folder in"),
        (unreadable, [], f"cannot read image {garbage}: cannot identify image file"),
        (truncated, [], f"cannot read image {cut}:"),
        (mixed, [], f"images differ in size: {os.path.join(mixed, 'train', 'cat', '000.png')} "
                    f"is 20x20 but {odd} is 24x20; pass --image-size N"),
        (only_train, [], f"image folder {only_train} has train/ but no test/ folder"),
        (flat, [], f"image folder {flat} has no train/ and test/ folders; pass --test-fraction"),
        (flat, ["--test-fraction", "0.5"], "class 'cat' has 1 image; --test-fraction needs at "
                                           "least 2 per class"),
        (empty_class, ["--test-fraction", "0.5"], "--test-fraction splits a folder of class "
                                                  "folders, but"),
        (one_class, [], "has one class folder ('cat'); a classifier needs at least 2"),
    ]


def test_every_bad_folder_is_one_line_and_exit_status_2(tmp_path, capsys):
    from fastnas.cli import main

    for root, flags, message in _bad_folders(tmp_path):
        image_folder.read_image_folder.cache_clear()
        argv = ["run", "--dataset", "folder", "--data-dir", root, *flags,
                "--output", str(tmp_path / "out"), "--quiet", "--no-plots"]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("fastnas: error: ") and message in err, (message, err)
    assert not os.path.exists(tmp_path / "out")


# -- CIFAR-100 ------------------------------------------------------------------------------------
def test_cifar100_reader_matches_torchvision(tmp_path, monkeypatch):
    import torchvision

    folder = write_fake_cifar100(tmp_path, train_size=12, test_size=6)
    train = data.load_split("cifar100", "train", str(tmp_path))
    test = data.load_split("cifar100", "test", folder)   # the folder itself also works
    assert (len(train), len(test)) == (12, 6)
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    for split, ours in (("train", train), ("test", test)):
        reference = torchvision.datasets.CIFAR100(str(tmp_path), train=split == "train",
                                                  download=False)
        assert np.array_equal(ours.images.permute(0, 2, 3, 1).numpy(), reference.data)
        assert ours.labels.tolist() == reference.targets   # the fine labels
    x, _ = test[0]
    mean = torch.tensor(data.CIFAR100_MEAN).view(3, 1, 1)
    std = torch.tensor(data.CIFAR100_STD).view(3, 1, 1)
    assert torch.allclose(x, (test.images[0] / 255 - mean) / std, atol=1e-6)
    assert data.dataset_info("cifar100").num_classes == 100


def test_cifar100_bad_files_are_one_line(tmp_path):
    folder = write_fake_cifar100(tmp_path)
    with open(os.path.join(folder, "test"), "wb") as f:
        f.write(b"\x80\x02garbage")
    with pytest.raises(UserError, match=r"CIFAR-100 file .*test is corrupt"):
        data.load_split("cifar100", "test", str(tmp_path))
    with pytest.raises(UserError, match=r"CIFAR-100 not found: .*cifar-100-python does not "
                                        "exist"):
        data.load_split("cifar100", "train", str(tmp_path / "nothing"))


# -- from_dataset ---------------------------------------------------------------------------------
class _Squares(torch.utils.data.Dataset):
    """A map-style dataset without a labels attribute: image i is filled with i / n."""

    def __init__(self, n, classes=3, channels=2, side=6):
        self.n, self.classes, self.channels, self.side = n, classes, channels, side

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((self.channels, self.side, self.side), i / self.n), i % self.classes


def test_from_dataset_infers_the_shape_and_interleaves_the_classes():
    source = data.from_dataset(_Squares(30), _Squares(9))
    info = source.info
    assert (info.in_channels, info.num_classes, info.image_size) == (2, 3, 6)
    split = source.search_data()
    for half in (split.weights, split.arch):
        labels = [int(half[i][1]) for i in range(len(half))]
        assert sorted(np.bincount(labels).tolist()) == [5, 5, 5]
    train = source.split("train")
    assert sorted(int(train[i][0][0, 0, 0] * 30 + 0.5) for i in range(30)) == list(range(30))
    assert data.from_dataset(_Squares(30), _Squares(9), num_classes=5).info.num_classes == 5
    record = source.record()
    assert record["dataset"] == "custom" and record["mean"] is None
    with pytest.raises(UserError, match="given from Python"):
        data.open_data(record=record)


def test_from_dataset_refuses_what_the_pipeline_cannot_read():
    tensors = torch.utils.data.TensorDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 3]))
    with pytest.raises(UserError, match="label 3, but num_classes is 2"):
        data.from_dataset(tensors, tensors, num_classes=2)

    class Pil(_Squares):
        def __getitem__(self, i):
            from PIL import Image
            return Image.new("RGB", (4, 4)), 0

    with pytest.raises(UserError, match=r"the image of train\[0\] is a PIL.Image.Image; the "
                                        "pipeline needs a float tensor"):
        data.from_dataset(Pil(3), Pil(3))
    with pytest.raises(UserError, match="the test dataset is empty"):
        data.from_dataset(_Squares(3), _Squares(0))


def test_image_input_prepares_a_new_image_as_the_folder_was_prepared(tmp_path):
    from PIL import Image

    root = tmp_path / "sizes"
    for i, size in enumerate([(20, 20), (37, 23), (16, 40), (64, 48)]):
        write_image(str(root / "ab"[i % 2] / f"{i}.png"), size=size, seed=i)
    record = data.open_data("folder", str(root), image_size=16, test_fraction=0.5).record()
    source = data.open_data(data_dir=str(root), record=record)
    inputs = [data.image_input(record, Image.open(root / name / f))
              for name in "ab" for f in os.listdir(root / name)]
    for split in ("train", "test"):
        dataset = source.split(split)
        for k in range(len(dataset)):
            x, _ = dataset[k]
            assert x.shape == (3, 16, 16)
            assert any(torch.equal(x, y) for y in inputs)   # the same arithmetic
    exact = write_image_folder(tmp_path / "exact", per_class=2, test_per_class=1)
    record = data.open_data("folder", exact).record()
    with pytest.raises(UserError, match="the image is 24x20 .*trained on 20x20"):
        data.image_input(record, Image.new("RGB", (24, 20)))
    with pytest.raises(UserError, match="this record is 'digits'"):
        data.image_input(data.open_data("digits").record(), Image.new("L", (8, 8)))


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    values = np.array([[0, 128, 257, 1000], [30000, 40000, 65278, 65535]], dtype=np.uint16)
    for c, name in enumerate(("a", "b")):
        for split in ("train", "test"):
            os.makedirs(tmp_path / "d" / split / name, exist_ok=True)
            Image.fromarray(values + c).save(tmp_path / "d" / split / name / "0.png")
    assert Image.open(tmp_path / "d" / "train" / "a" / "0.png").mode == "I;16"
    images = image_folder.read_image_folder(str(tmp_path / "d"))
    assert images.in_channels == 1
    got = images.train_images[images.train_labels == 0][0, 0].numpy()
    expected = np.floor(values.astype(np.float64) / 257 + 0.5)   # round half up: no ties here
    assert np.array_equal(got, expected.astype(np.uint8))
    assert got.max() == 255 and got[0, 3] == 4   # 1000 / 257 = 3.89
