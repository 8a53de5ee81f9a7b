"""Datasets, splits, transforms and loaders for the search and the final training.

``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 1 channel, 10
classes; no download). A fixed stratified 80/20 train/test split (seed ``DIGITS_SPLIT_SEED``,
independent of the run's seed, so every run is scored on the same 360 test images); pixels are
scaled from 0..16 to [0, 1], then normalized with the train split's mean and std. No augmentation.

``cifar10``: the standard ``cifar-10-batches-py`` folder (the pickles torchvision downloads) under
``data_dir``, with the paper's augmentation: random crop 32 with padding 4, horizontal flip,
normalization, and for final training cutout 16 (applied after normalization, as the paper's
code). The pickles are read by an unpickler that builds numpy arrays and nothing else.

The search never sees a test split: it splits the train split 50/50 as the paper (first half
trains the weights, second half the alphas).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    """What a network needs to know about a dataset."""

    name: str
    in_channels: int
    num_classes: int
    image_size: int


DATASETS = {
    "digits": DatasetInfo("digits", in_channels=1, num_classes=10, image_size=8),
    "cifar10": DatasetInfo("cifar10", in_channels=3, num_classes=10, image_size=32),
}

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


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


def cifar10_transform(augment: bool, cutout: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 ``[3, 32, 32]`` -> normalized float; ``augment`` adds the paper's crop and flip."""
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if augment else []
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    if cutout:
        steps.append(Cutout(cutout))
    return v2.Compose(steps)


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

    return tensors(x_train, y_train), tensors(x_test, y_test)


def digits_split(split: str, cutout: int = 0) -> ArrayDataset:
    """The fixed ``train`` (1,437 images) or ``test`` (360) split, ``[1, 8, 8]`` normalized."""
    train, test = _digits_tensors()
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


def cifar10_folder(data_dir: str) -> str:
    """``data_dir/cifar-10-batches-py``, or ``data_dir`` itself if it is that folder."""
    data_dir = os.path.expanduser(str(data_dir))
    if os.path.basename(os.path.normpath(data_dir)) == CIFAR10_FOLDER:
        return data_dir
    return os.path.join(data_dir, CIFAR10_FOLDER)


def _read_cifar_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        entry = _ArrayUnpickler(f, encoding="latin1").load()
    if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
        raise ValueError("not a CIFAR-10 batch (expected a dict with 'data' and 'labels')")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"data must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"labels must be {len(data)} integers in 0..9")
    return data, labels


@functools.lru_cache(maxsize=4)
def _cifar10_tensors(folder: str, train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    if not os.path.isdir(folder):
        raise UserError(f"CIFAR-10 not found: {folder} does not exist (pass --download to fetch "
                        f"it, or --data-dir a folder holding {CIFAR10_FOLDER})")
    images, labels = [], []
    for name in CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES:
        path = os.path.join(folder, name)
        try:
            data, targets = _read_cifar_batch(path)
        except FileNotFoundError:
            raise UserError(f"CIFAR-10 folder {folder} is incomplete: {name} is missing") from None
        except Exception as e:  # any failure to read a batch means a corrupt file
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"CIFAR-10 file {path} is corrupt: {reason}") from None
        images.append(data)
        labels.append(targets)
    images = torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32))
    return images, torch.from_numpy(np.concatenate(labels))


def cifar10_split(data_dir: str, split: str, augment: bool = False,
                  cutout: int = 0) -> ArrayDataset:
    """The 50,000-image ``train`` or 10,000-image ``test`` split as uint8 tensors in memory."""
    images, labels = _cifar10_tensors(cifar10_folder(data_dir), split == "train")
    return ArrayDataset(images, labels, cifar10_transform(augment, cutout))


def download_cifar10(data_dir: str) -> None:
    """Fetch and unpack CIFAR-10 into ``data_dir`` through torchvision (needs a network)."""
    import torchvision

    try:
        torchvision.datasets.CIFAR10(root=os.path.expanduser(str(data_dir)), train=True,
                                     download=True)
    except Exception as e:  # network and disk failures alike: report, do not trace back
        raise UserError(f"downloading CIFAR-10 into {data_dir} failed: {e}") from None


# -- splits ---------------------------------------------------------------------------------------
def load_split(name: str, split: str, data_dir: Optional[str] = None, augment: bool = False,
               cutout: int = 0, limit: Optional[int] = None) -> Dataset:
    """The ``train`` or ``test`` split of dataset ``name``. ``augment`` is CIFAR-10's crop and
    flip, ``cutout`` the side of the cut-out square (0: none), ``limit`` keeps the first images."""
    dataset_info(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        dataset = digits_split(split, cutout)
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


# -- loaders --------------------------------------------------------------------------------------
def default_workers(name: str) -> int:
    """Loader processes: none for digits (a worker's start-up costs more than the whole tiny
    epoch), up to 4 for CIFAR-10 so augmentation runs beside the model."""
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
    "ArrayDataset", "CIFAR10_FOLDER", "CIFAR10_MEAN", "CIFAR10_STD", "Cutout", "DATASETS",
    "DatasetInfo", "EpochLoader", "SearchData", "ShardSampler", "cifar10_folder", "cifar10_split",
    "cifar10_transform", "dataset_info", "default_workers", "digits_split", "download_cifar10",
    "load_split", "make_loader", "search_data", "set_epoch",
]
