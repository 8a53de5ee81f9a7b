"""Datasets, splits, transforms and loaders for the search and the final training.

``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 1 channel, 10
classes; no download). A fixed stratified 80/20 train/test split (seed ``DIGITS_SPLIT_SEED``,
independent of the run's seed, so every run is scored on the same 360 test images); pixels are
scaled from 0..16 to [0, 1], then normalized with the train split's mean and std. No augmentation.

``cifar10``: the standard ``cifar-10-batches-py`` folder (the pickles torchvision downloads) under
``data_dir``, with the paper's augmentation: random crop 32 with padding 4, horizontal flip,
normalization, and for final training cutout 16 (applied after normalization, as the paper's
code). The pickles are read by an unpickler that builds numpy arrays and nothing else.

``cifar100``: the ``cifar-100-python`` folder (``train`` and ``test`` pickles, 100 fine labels),
read and augmented as CIFAR-10, normalized with CIFAR-100's published mean and std.

``folder``: images in torchvision's ImageFolder layout (``fastnas.image_folder``), decoded once
into memory as uint8, augmented as CIFAR (random crop with padding 1/8 of the side, horizontal
flip) and normalized with the mean and std of their own train split.

Any other map-style ``Dataset`` pair enters through :func:`from_dataset`. The pipeline reads
every dataset through a :class:`DataSource` (:func:`open_data`), whose ``record()`` is what a
checkpoint and ``model.pt`` store: the classes, the normalization and how to read it again.

The search never sees a test split: it splits the train split 50/50 as the paper (first half
trains the weights, second half the alphas).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .errors import UserError
from .image_folder import channel_stats, image_pixels, interleaved_order, read_image_folder


@dataclass(frozen=True)
class DatasetInfo:
    """What a network needs to know about a dataset (``image_size``: the images' height, their
    side when square)."""

    name: str
    in_channels: int
    num_classes: int
    image_size: int


DATASETS = {
    "digits": DatasetInfo("digits", in_channels=1, num_classes=10, image_size=8),
    "cifar10": DatasetInfo("cifar10", in_channels=3, num_classes=10, image_size=32),
    "cifar100": DatasetInfo("cifar100", in_channels=3, num_classes=100, image_size=32),
}
FOLDER = "folder"
DATASET_NAMES = (*DATASETS, FOLDER)   # what --dataset takes

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
CIFAR_FOLDERS = {"cifar10": CIFAR10_FOLDER, "cifar100": CIFAR100_FOLDER}
CIFAR_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def dataset_info(name: str) -> DatasetInfo:
    """A built-in dataset's shape; a folder's depends on its images (``open_data(...).info``)."""
    try:
        return DATASETS[name]
    except KeyError:
        if name == FOLDER:
            raise UserError("--dataset folder is read through fastnas.data.open_data (its "
                            "classes and channels come from the images)") from None
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}") from None


# -- datasets and transforms ----------------------------------------------------------------------
class ArrayDataset(Dataset):
    """``(transform(images[i]), labels[i])`` over in-memory tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


class Cutout:
    """Zero a ``length x length`` square (clipped at the border; odd lengths lose one, as in the
    paper's code) centred on a uniformly random pixel of a ``[C, H, W]`` tensor (DeVries &
    Taylor, 2017). Draws from torch's generator, so loader workers get distinct, reproducible
    squares."""

    def __init__(self, length: int):
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"cutout length must be a positive integer, got {length!r}")
        self.length = length

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.length // 2
        image = image.clone()
        image[..., max(cy - half, 0):min(cy + half, h), max(cx - half, 0):min(cx + half, w)] = 0
        return image

    def __repr__(self) -> str:
        return f"Cutout({self.length})"


def image_transform(size: Tuple[int, int], mean: Sequence[float], std: Sequence[float],
                    augment: bool, cutout: int = 0, padding: int = 4
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 ``[C, H, W]`` -> float ``(x / 255 - mean) / std`` per channel; ``augment`` first
    adds a random ``size`` crop of the image padded by ``padding`` (zeros) and a horizontal
    flip; ``cutout`` > 0 a cut-out square after normalization."""
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(list(size), padding=padding), v2.RandomHorizontalFlip()] \
        if augment else []
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if cutout:
        steps.append(Cutout(cutout))
    return v2.Compose(steps)


def cifar10_transform(augment: bool, cutout: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 ``[3, 32, 32]`` -> normalized float; ``augment`` adds the paper's crop and flip."""
    return image_transform((32, 32), CIFAR10_MEAN, CIFAR10_STD, augment, cutout)


# -- digits ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_tensors():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED,
        stratify=labels)
    mean, std = x_train.mean(), x_train.std()

    def tensors(x, y):
        return torch.from_numpy((x - mean) / std).unsqueeze(1), torch.from_numpy(y)

    return tensors(x_train, y_train), tensors(x_test, y_test), (float(mean), float(std))


def digits_split(split: str, cutout: int = 0) -> ArrayDataset:
    """The fixed ``train`` (1,437 images) or ``test`` (360) split, ``[1, 8, 8]`` normalized."""
    train, test, _ = _digits_tensors()
    images, labels = {"train": train, "test": test}[split]
    return ArrayDataset(images, labels, Cutout(cutout) if cutout else None)


# -- CIFAR-10 -------------------------------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """Builds the numpy arrays, lists and dicts of CIFAR's pickles and refuses anything else, so
    a tampered file cannot run code. numpy 1 pickles its internals as ``numpy.core``, numpy 2 as
    ``numpy._core``; either is read with whichever this numpy has."""

    _CORE = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"
    _ALLOWED = {(f"{_CORE}.multiarray", "_reconstruct"), (f"{_CORE}.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        for core in ("numpy._core", "numpy.core"):
            if module.startswith(core + "."):
                module = self._CORE + module[len(core):]
                break
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def cifar_folder(name: str, data_dir: str) -> str:
    """``data_dir/<the pickles' folder>`` of ``cifar10`` or ``cifar100``, or ``data_dir`` itself
    if it is that folder."""
    data_dir = os.path.expanduser(str(data_dir))
    if os.path.basename(os.path.normpath(data_dir)) == CIFAR_FOLDERS[name]:
        return data_dir
    return os.path.join(data_dir, CIFAR_FOLDERS[name])


def cifar10_folder(data_dir: str) -> str:
    """``data_dir/cifar-10-batches-py``, or ``data_dir`` itself if it is that folder."""
    return cifar_folder("cifar10", data_dir)


def _read_cifar_batch(path: str, label_key: str = "labels",
                      num_classes: int = 10) -> Tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        entry = _ArrayUnpickler(f, encoding="latin1").load()
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        raise ValueError(f"not a CIFAR batch (expected a dict with 'data' and '{label_key}')")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"data must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    top = num_classes - 1
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) > top:
        raise ValueError(f"labels must be {len(data)} integers in 0..{top}")
    return data, labels


# Per dataset: train files, test files, label key (CIFAR-100: the 100 fine labels).
_CIFAR_FILES = {
    "cifar10": (CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILES, "labels"),
    "cifar100": (("train",), ("test",), "fine_labels"),
}


@functools.lru_cache(maxsize=4)
def _cifar_tensors(name: str, folder: str, train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    title = CIFAR_TITLES[name]
    train_files, test_files, label_key = _CIFAR_FILES[name]
    if not os.path.isdir(folder):
        raise UserError(f"{title} not found: {folder} does not exist (pass --download to fetch "
                        f"it, or --data-dir a folder holding {CIFAR_FOLDERS[name]})")
    images, labels = [], []
    for file in train_files if train else test_files:
        path = os.path.join(folder, file)
        try:
            data, targets = _read_cifar_batch(path, label_key, DATASETS[name].num_classes)
        except FileNotFoundError:
            raise UserError(f"{title} folder {folder} is incomplete: {file} is missing") from None
        except Exception as e:  # any failure to read a batch means a corrupt file
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{title} file {path} is corrupt: {reason}") from None
        images.append(data)
        labels.append(targets)
    images = torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32))
    return images, torch.from_numpy(np.concatenate(labels))


def cifar10_split(data_dir: str, split: str, augment: bool = False,
                  cutout: int = 0) -> ArrayDataset:
    """The 50,000-image ``train`` or 10,000-image ``test`` split as uint8 tensors in memory."""
    images, labels = _cifar_tensors("cifar10", cifar10_folder(data_dir), split == "train")
    return ArrayDataset(images, labels, cifar10_transform(augment, cutout))


def cifar100_split(data_dir: str, split: str, augment: bool = False,
                   cutout: int = 0) -> ArrayDataset:
    """CIFAR-100's 50,000-image ``train`` or 10,000-image ``test`` split (fine labels), read and
    augmented as CIFAR-10, normalized with ``CIFAR100_MEAN``, ``CIFAR100_STD``."""
    images, labels = _cifar_tensors("cifar100", cifar_folder("cifar100", data_dir),
                                    split == "train")
    return ArrayDataset(images, labels, image_transform((32, 32), CIFAR100_MEAN, CIFAR100_STD,
                                                        augment, cutout))


def download_cifar(name: str, data_dir: str) -> None:
    """Fetch and unpack CIFAR-10 or CIFAR-100 into ``data_dir`` through torchvision (needs a
    network)."""
    import torchvision

    title = CIFAR_TITLES[name]
    source = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[name]
    try:
        getattr(torchvision.datasets, source)(root=os.path.expanduser(str(data_dir)),
                                              train=True, download=True)
    except Exception as e:  # network and disk failures alike: report, do not trace back
        raise UserError(f"downloading {title} into {data_dir} failed: {e}") from None


def download_cifar10(data_dir: str) -> None:
    """Fetch and unpack CIFAR-10 into ``data_dir`` through torchvision (needs a network)."""
    download_cifar("cifar10", data_dir)


# -- splits ---------------------------------------------------------------------------------------
def load_split(name: str, split: str, data_dir: Optional[str] = None, augment: bool = False,
               cutout: int = 0, limit: Optional[int] = None) -> Dataset:
    """The ``train`` or ``test`` split of the built-in dataset ``name``. ``augment`` is CIFAR's
    crop and flip, ``cutout`` the side of the cut-out square (0: none), ``limit`` keeps the
    first images."""
    dataset_info(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        dataset = digits_split(split, cutout)
    elif name == "cifar100":
        dataset = cifar100_split(data_dir or "data", split, augment, cutout)
    else:
        dataset = cifar10_split(data_dir or "data", split, augment, cutout)
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    return dataset


@dataclass
class SearchData:
    """The paper's search split of the train split: ``weights`` trains the network weights,
    ``arch`` the alphas (both augmented as for training), ``arch_eval`` is ``arch`` without
    augmentation, for the final supernet accuracy."""

    weights: Dataset
    arch: Dataset
    arch_eval: Dataset


def search_data(name: str, data_dir: Optional[str] = None,
                limit: Optional[int] = None) -> SearchData:
    train = load_split(name, "train", data_dir, augment=True, limit=limit)
    plain = load_split(name, "train", data_dir, augment=False, limit=limit)
    half = len(train) // 2
    first, second = range(half), range(half, len(train))
    return SearchData(Subset(train, first), Subset(train, second), Subset(plain, second))


# -- data sources ---------------------------------------------------------------------------------
class DataSource:
    """A dataset as the pipeline stages read it.

    ``name``; ``info`` (channels, classes, image height); ``split("train" | "test", augment,
    cutout)`` with ``limit`` applied; ``search_data()``, the train split halved (first half for
    the weights, second for the alphas); ``workers``, the default number of loader processes;
    and ``record()``, the plain values (``dataset``, ``limit``, ``in_channels``,
    ``num_classes``, ``mean``, ``std``, and a folder's ``classes``, ``size``, ...) that a
    checkpoint and ``model.pt`` keep and from which :func:`open_data` reads the same data,
    normalized the same way, again."""

    name: str
    limit: Optional[int] = None
    workers: int = 0

    @property
    def info(self) -> DatasetInfo:
        raise NotImplementedError

    def split(self, split: str, augment: bool = False, cutout: int = 0) -> Dataset:
        raise NotImplementedError

    def normalization(self) -> Tuple[Optional[List[float]], Optional[List[float]]]:
        """``(mean, std)`` per channel that the splits are normalized with (None: not known)."""
        return None, None

    def search_data(self) -> SearchData:
        train = self.split("train", augment=True)
        plain = self.split("train")
        half = len(train) // 2
        first, second = range(half), range(half, len(train))
        return SearchData(Subset(train, first), Subset(train, second), Subset(plain, second))

    def record(self) -> dict:
        mean, std = self.normalization()
        info = self.info
        return {"dataset": self.name, "limit": self.limit, "in_channels": info.in_channels,
                "num_classes": info.num_classes, "mean": mean, "std": std}


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


class BuiltinData(DataSource):
    """digits, cifar10 or cifar100 (:func:`load_split`)."""

    def __init__(self, name: str, data_dir: Optional[str] = "data", limit: Optional[int] = None):
        self.name, self.data_dir, self.limit = name, data_dir, limit
        self.workers = default_workers(name)
        dataset_info(name)

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.name]

    def split(self, split: str, augment: bool = False, cutout: int = 0) -> Dataset:
        return load_split(self.name, split, self.data_dir, augment, cutout, self.limit)

    def search_data(self) -> SearchData:
        return search_data(self.name, self.data_dir, self.limit)

    def normalization(self):
        if self.name == "digits":
            mean, std = _digits_tensors()[2]
            return [mean], [std]
        if self.name == "cifar10":
            return list(CIFAR10_MEAN), list(CIFAR10_STD)
        return list(CIFAR100_MEAN), list(CIFAR100_STD)


class FolderData(DataSource):
    """An image folder (``fastnas.image_folder.read_image_folder``), normalized with the mean
    and std of its (limited) train split, or with ``stored`` ones (a checkpoint's or
    ``model.pt``'s record, whose classes, channels, size and image counts must match the
    folder's).
    Augmentation as CIFAR: a random crop padded by 1/8 of the shorter side (4 for 32), and a
    horizontal flip."""

    name = FOLDER

    def __init__(self, data_dir: str, image_size: Optional[int] = None,
                 test_fraction: Optional[float] = None, limit: Optional[int] = None,
                 stored: Optional[Mapping[str, Any]] = None):
        self.images = read_image_folder(data_dir, image_size, test_fraction)
        self.image_size, self.test_fraction, self.limit = image_size, test_fraction, limit
        self.workers = default_workers(FOLDER)
        self.found = {"classes": list(self.images.classes),
                      "in_channels": self.images.in_channels, "size": list(self.images.size),
                      "train_images": len(self.images.train_labels),
                      "test_images": len(self.images.test_labels)}
        if stored is not None:
            for key, value in self.found.items():
                if stored.get(key) != value:
                    raise UserError(f"image folder {self.images.root} has {key} {value}, but the "
                                    f"run it continues was made with {stored.get(key)}")
            self.mean, self.std = list(stored["mean"]), list(stored["std"])
        else:
            self.mean, self.std = map(list, channel_stats(self.images.train_images[:limit]))

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(FOLDER, self.images.in_channels, len(self.images.classes),
                           self.images.size[0])

    def normalization(self):
        return self.mean, self.std

    def split(self, split: str, augment: bool = False, cutout: int = 0) -> Dataset:
        _check_split(split)
        images, labels = ((self.images.train_images, self.images.train_labels) if split == "train"
                          else (self.images.test_images, self.images.test_labels))
        size = self.images.size
        transform = image_transform(size, self.mean, self.std, augment, cutout,
                                    padding=max(1, round(min(size) / 8)))
        return ArrayDataset(images[:self.limit], labels[:self.limit], transform)

    def record(self) -> dict:
        return {**super().record(), "data_dir": os.path.abspath(self.images.root),
                "image_size": self.image_size, "test_fraction": self.test_fraction,
                **self.found}


def image_input(record: Mapping[str, Any], image) -> torch.Tensor:
    """A PIL ``image`` as the network trained on an image folder takes it, from the ``data``
    record of its ``model.pt``: read as the folder's images (channels, ``--image-size``), then
    normalized with the stored mean and std. Returns float ``[C, H, W]``; a size the network was
    not trained on (no ``--image-size`` and another size) is a UserError."""
    if record.get("dataset") != FOLDER:
        raise UserError(f"image_input reads images as an image folder's; this record is "
                        f"{record.get('dataset')!r}")
    pixels = np.array(image_pixels(image, record["in_channels"], record["image_size"]))
    if list(pixels.shape[1:]) != list(record["size"]):
        raise UserError(f"the image is {pixels.shape[2]}x{pixels.shape[1]} (width x height); the "
                        f"network was trained on {record['size'][1]}x{record['size'][0]}")
    normalize = image_transform(record["size"], record["mean"], record["std"], augment=False)
    return normalize(torch.from_numpy(pixels))


class _Transformed(Dataset):
    """``(transform(x), y)`` for each item ``(x, y)`` of ``dataset``."""

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        x, y = self.dataset[index]
        return self.transform(x), y


def labels_of(dataset: Dataset) -> np.ndarray:
    """The labels of a map-style dataset: its ``targets`` or ``labels`` (torchvision's datasets
    and :class:`ArrayDataset` have one; ``Subset`` chains are followed), else every item's."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attribute in ("targets", "labels"):
        labels = getattr(dataset, attribute, None)
        if labels is not None and len(labels) == len(dataset):
            return np.asarray(labels.tolist() if isinstance(labels, torch.Tensor) else labels,
                              dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


class CustomData(DataSource):
    """Any pair of map-style datasets of ``(float tensor [C, H, W], int label)`` items, used as
    they are (their own transforms augment and normalize). The train split is reordered once,
    interleaving the classes (``fastnas.image_folder.interleaved_order``), so that ``limit``
    and the search's halves hold every class in proportion; ``cutout`` wraps it."""

    def __init__(self, train: Dataset, test: Dataset, num_classes: Optional[int] = None,
                 name: str = "custom", limit: Optional[int] = None):
        for which, dataset in (("train", train), ("test", test)):
            if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
                raise UserError(f"the {which} dataset is not a map-style Dataset (it needs "
                                "__getitem__ and __len__)")
            if len(dataset) == 0:
                raise UserError(f"the {which} dataset is empty")
        x, y = _first_item(train, "train")
        _first_item(test, "test")
        labels = labels_of(train)
        if labels.min() < 0:
            raise UserError(f"the train dataset has label {int(labels.min())}; labels are "
                            "0..num_classes-1")
        if num_classes is None:
            num_classes = int(labels.max()) + 1
        elif int(labels.max()) >= num_classes:
            raise UserError(f"the train dataset has label {int(labels.max())}, but "
                            f"num_classes is {num_classes}")
        self.train, self.test, self.name, self.limit = train, test, name, limit
        self.order = interleaved_order(labels).tolist()
        self._info = DatasetInfo(name, int(x.shape[0]), int(num_classes), int(x.shape[1]))

    @property
    def info(self) -> DatasetInfo:
        return self._info

    def split(self, split: str, augment: bool = False, cutout: int = 0) -> Dataset:
        _check_split(split)
        if split == "test":
            return self.test if self.limit is None else Subset(
                self.test, range(min(self.limit, len(self.test))))
        dataset = _Transformed(self.train, Cutout(cutout)) if cutout else self.train
        return Subset(dataset, self.order[:self.limit])


def _first_item(dataset: Dataset, which: str):
    item = dataset[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise UserError(f"{which}[0] is a {type(item).__name__}; the pipeline needs (image, "
                        "label) pairs")
    x, y = item
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 3):
        what = (f"a {x.dtype} tensor of shape {list(x.shape)}" if isinstance(x, torch.Tensor)
                else f"a {type(x).__module__}.{type(x).__name__}")
        raise UserError(f"the image of {which}[0] is {what}; the pipeline needs a float tensor "
                        "[C, H, W] (add a ToTensor, or ToImage and ToDtype, transform)")
    if isinstance(y, bool) or not isinstance(y, (int, np.integer)) and not (
            isinstance(y, torch.Tensor) and y.dim() == 0 and not y.is_floating_point()):
        raise UserError(f"the label of {which}[0] is {y!r}; the pipeline needs an integer")
    return x, y


def from_dataset(train: Dataset, test: Dataset, *, num_classes: Optional[int] = None,
                 name: str = "custom") -> CustomData:
    """Wrap two map-style datasets of ``(float tensor [C, H, W], int label)`` for the pipeline:
    pass the result as ``StageOptions(dataset=...)`` to ``fastnas.pipeline.search_stage``,
    ``train_stage`` or ``run_pipeline``. Channels come from ``train[0]``; the class count is
    ``num_classes``, or the largest train label + 1 (labels are read from a ``targets`` or
    ``labels`` attribute if there is one, else by reading every item once)."""
    return CustomData(train, test, num_classes, name)


def open_data(dataset: Union[str, DataSource, None] = "digits", data_dir: Optional[str] = "data",
              limit: Optional[int] = None, image_size: Optional[int] = None,
              test_fraction: Optional[float] = None,
              record: Optional[Mapping[str, Any]] = None) -> DataSource:
    """The :class:`DataSource` of ``dataset`` (a name of ``DATASET_NAMES``, or a source, used as
    it is). With ``record`` (a ``DataSource.record()``, from a checkpoint or ``model.pt``) the
    same data again: its dataset, limit, image size and split, and a folder's stored
    normalization, read from ``data_dir``, or from the record's own folder if ``data_dir`` is
    none (a folder whose classes, channels, size or image counts differ is an error)."""
    if isinstance(dataset, DataSource):
        return dataset
    if record is not None:
        dataset, limit = record["dataset"], record.get("limit")
        image_size, test_fraction = record.get("image_size"), record.get("test_fraction")
        if dataset not in DATASET_NAMES:
            raise UserError(f"the run was made with the data source {dataset!r} given from "
                            "Python (fastnas.data.from_dataset); pass it again")
    dataset = dataset or "digits"
    if image_size is not None and (isinstance(image_size, bool) or
                                   not isinstance(image_size, int) or image_size < 1):
        raise UserError(f"--image-size must be a positive integer, got {image_size!r}")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise UserError(f"--test-fraction must be in (0, 1), got {test_fraction!r}")
    if dataset == FOLDER:
        data_dir = data_dir or "data"
        if record is not None and not os.path.isdir(os.path.expanduser(data_dir)):
            data_dir = record.get("data_dir") or data_dir   # where the folder was
        return FolderData(data_dir, image_size, test_fraction, limit, stored=record)
    for flag, value in (("--image-size", image_size), ("--test-fraction", test_fraction)):
        if value is not None:
            raise UserError(f"{flag} applies to --dataset folder, not {dataset}")
    return BuiltinData(dataset, data_dir, limit)


# -- loaders --------------------------------------------------------------------------------------
def default_workers(name: str) -> int:
    """Loader processes: none for digits (a worker's start-up costs more than the whole tiny
    epoch), up to 4 for CIFAR and image folders so augmentation runs beside the model."""
    return 0 if name == "digits" else min(4, os.cpu_count() or 1)


def _mix(*values: int) -> int:
    return int(np.random.SeedSequence([v % 2**32 for v in values]).generate_state(1)[0])


class ShardSampler(Sampler):
    """Rank ``rank``'s share of a dataset of ``n`` items split over ``world`` ranks: the
    permutation (a shuffle from ``generator``, or ``0..n-1``), padded with its own first items to
    a multiple of ``world`` when ``pad`` (so every rank has as many batches: the collectives of a
    step need it), then every ``world``-th item from ``rank`` on. With a per-rank batch ``b``,
    rank ``r``'s batch ``k`` covers positions ``k*b*world + r + world*j``: the ranks' batches
    ``k`` together are the one-process batch ``k`` of size ``b * world``."""

    def __init__(self, n: int, rank: int, world: int, shuffle: bool,
                 generator: torch.Generator, pad: bool):
        self.n, self.rank, self.world = n, rank, world
        self.shuffle, self.generator, self.pad = shuffle, generator, pad

    def _order(self) -> List[int]:
        order = (torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle
                 else list(range(self.n)))
        if self.pad and self.n % self.world:
            extra = self.world - self.n % self.world
            order += (order * (extra // max(self.n, 1) + 1))[:extra]
        return order

    def __iter__(self):
        return iter(self._order()[self.rank::self.world])

    def __len__(self) -> int:
        total = -(-self.n // self.world) * self.world if self.pad else self.n
        return len(range(self.rank, total, self.world))


class EpochLoader(DataLoader):
    """A DataLoader whose shuffle order and worker seeds depend only on ``(seed, stream, epoch)``.

    Call ``set_epoch(e)`` before epoch ``e``: a resumed run then sees the batches the
    uninterrupted run would have seen, whatever else drew from the global generators.
    ``shard=(rank, world)`` makes it read rank ``rank``'s share (``ShardSampler``); shuffled
    shards are padded so that every rank has as many batches.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                 stream: int = 0, num_workers: int = 0, pin_memory: bool = False,
                 drop_last: bool = False, shard: Tuple[int, int] = (0, 1)):
        self.seed, self.stream = seed, stream
        generator = torch.Generator()
        rank, world = shard
        sampler = None
        if world > 1:
            sampler = ShardSampler(len(dataset), rank, world, shuffle, generator, pad=shuffle)
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                         sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                         drop_last=drop_last, generator=generator)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(_mix(self.seed, self.stream, epoch))


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, device: torch.device,
                seed: int = 0, stream: int = 0, num_workers: int = 0,
                shard: Tuple[int, int] = (0, 1)) -> EpochLoader:
    """An :class:`EpochLoader` with pinned memory on CUDA, reading ``shard=(rank, world)``'s
    share of ``dataset`` in batches of ``batch_size`` (per rank). A shuffled (training) loader
    drops a last batch of a single image, on which BatchNorm cannot train."""
    rank, world = shard
    share = -(-len(dataset) // world) if shuffle else len(range(rank, len(dataset), world))
    return EpochLoader(dataset, batch_size, shuffle=shuffle, seed=seed, stream=stream,
                       num_workers=num_workers, pin_memory=torch.device(device).type == "cuda",
                       drop_last=shuffle and share % batch_size == 1, shard=shard)


def set_epoch(loaders: Sequence[EpochLoader], epoch: int) -> None:
    for loader in loaders:
        loader.set_epoch(epoch)


__all__ = [
    "ArrayDataset", "BuiltinData", "CIFAR100_FOLDER", "CIFAR100_MEAN", "CIFAR100_STD",
    "CIFAR10_FOLDER", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR_FOLDERS", "CIFAR_TITLES",
    "CustomData", "Cutout", "DATASETS", "DATASET_NAMES", "DataSource", "DatasetInfo",
    "EpochLoader", "FOLDER", "FolderData", "SearchData", "ShardSampler", "cifar100_split",
    "cifar10_folder", "cifar10_split", "cifar10_transform", "cifar_folder", "dataset_info",
    "default_workers", "digits_split", "download_cifar", "download_cifar10", "from_dataset",
    "image_input", "image_transform", "labels_of", "load_split", "make_loader", "open_data",
    "search_data", "set_epoch",
]
