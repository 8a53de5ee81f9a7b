"""Images in torchvision's ImageFolder layout, decoded once into memory for the pipeline.

Two layouts: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``, or ``DIR/<class>/*`` split into
train and test by ``test_fraction``. Classes are the class folders' names, sorted (label ``i`` is
the ``i``-th); a class folder's images are every file below it (sub-folders included) whose
extension is one of ``IMAGE_EXTENSIONS``, as torchvision's ``ImageFolder`` reads; other files
are ignored.

- **Channels.** A folder whose images are all grayscale (Pillow modes ``1``, ``L``, ``LA``,
  ``I``, ``I;16``, ``F``) is read as 1 channel; any other mix (RGB, RGBA, palette, CMYK, gray
  among colour) as 3 channels, RGB. Alpha is dropped, as torchvision's loader does
  (``convert("RGB")``). 16-bit grayscale is scaled to 8 bits (``round(v / 257)``), where
  Pillow's conversion would clip it; 32-bit (``I``, ``F``) images are converted by Pillow,
  which clips them to 0..255.
- **Size.** With ``image_size`` S every image is scaled (bilinear, Pillow's antialiased resize)
  so that its shorter side is S, then centre-cropped to S x S: torchvision's ``Resize(S)`` and
  ``CenterCrop(S)`` on a PIL image, pixel for pixel. Without it all images must already have
  one size.
- **Split.** ``test_fraction`` f puts ``round(f * n_c)`` images of each class c (at least 1, at
  most ``n_c - 1``) into the test split, chosen by a seeded permutation (``SPLIT_SEED``,
  independent of the run's seed): the same folder always splits the same way.
- **Order.** Each split is stored interleaved: the ``j``-th image (of a seeded permutation) of
  class c, out of ``n_c``, sorts at ``(j + 0.5) / n_c``. Every prefix then holds each class in
  proportion (within one image), so ``--limit N`` and the search's 50/50 halves are stratified.
- **Statistics.** :func:`channel_stats` is the per-channel mean and population std of the pixels
  scaled to [0, 1], from exact integer sums.

Everything wrong with a folder is a :class:`UserError` of one line naming the file or class: a
missing folder, no class folders, a single class folder, an empty class, a class missing from
the test split (or only in it), an unreadable image, mixed sizes without ``image_size``.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
SPLIT_SEED = 0


@dataclass(frozen=True)
class FolderImages:
    """Both splits of an image folder: uint8 ``[N, C, H, W]`` images, int64 labels (indices
    into ``classes``), each split in the interleaved order."""

    root: str
    classes: Tuple[str, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def size(self) -> Tuple[int, int]:
        """``(height, width)`` of every image."""
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])


# -- the files ------------------------------------------------------------------------------------
def _class_files(folder: str) -> Dict[str, List[str]]:
    """``{class: sorted image paths}`` of the class folders directly under ``folder``."""
    try:
        names = sorted(e.name for e in os.scandir(folder)
                       if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise UserError(f"cannot list image folder {folder}: {e.strerror or e}") from None
    if not names:
        raise UserError(f"image folder {folder} holds no class folders (expected "
                        f"{os.path.join(folder, '<class>', '<image>')})")
    files = {}
    for name in names:
        paths = []
        for top, dirs, filenames in os.walk(os.path.join(folder, name), followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            paths += [os.path.join(top, f) for f in sorted(filenames)
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        if not paths:
            raise UserError(f"class {name!r} has no images ({os.path.join(folder, name)} holds "
                            f"no {', '.join(IMAGE_EXTENSIONS)} file)")
        files[name] = paths
    return files


def _check_classes(folder: str, classes: Sequence[str]) -> None:
    if len(classes) < 2:
        raise UserError(f"image folder {folder} has one class folder ({classes[0]!r}); a "
                        "classifier needs at least 2")


def _split_files(root: str, test_fraction: Optional[float]
                 ) -> Tuple[Tuple[str, ...], List[List[str]], List[List[str]]]:
    """``(classes, train files per class, test files per class)`` of either layout."""
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    has_train, has_test = os.path.isdir(train_dir), os.path.isdir(test_dir)
    if has_train and has_test:
        if test_fraction is not None:
            raise UserError(f"--test-fraction splits a folder of class folders, but {root} "
                            "already has train/ and test/; drop --test-fraction")
        train, test = _class_files(train_dir), _class_files(test_dir)
        for name in test:
            if name not in train:
                raise UserError(f"class {name!r} of {test_dir} has no folder in {train_dir}")
        for name in train:
            if name not in test:
                raise UserError(f"class {name!r} is missing from the test split (no folder "
                                f"{os.path.join(test_dir, name)})")
        classes = tuple(train)
        _check_classes(train_dir, classes)
        return classes, [train[c] for c in classes], [test[c] for c in classes]
    if has_train or has_test:
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise UserError(f"image folder {root} has {present}/ but no {absent}/ folder")
    if test_fraction is None:
        raise UserError(f"image folder {root} has no train/ and test/ folders; pass "
                        "--test-fraction F to split its class folders into train and test")
    files = _class_files(root)
    rng = np.random.default_rng(SPLIT_SEED)
    classes, train, test = tuple(files), [], []
    _check_classes(root, classes)
    for name in classes:
        paths = files[name]
        if len(paths) < 2:
            raise UserError(f"class {name!r} has {len(paths)} image; --test-fraction needs at "
                            "least 2 per class (one to train, one to test)")
        chosen = rng.permutation(len(paths))
        cut = min(max(int(round(test_fraction * len(paths))), 1), len(paths) - 1)
        test.append(sorted(paths[i] for i in chosen[:cut]))
        train.append(sorted(paths[i] for i in chosen[cut:]))
    return classes, train, test


# -- the pixels -----------------------------------------------------------------------------------
def _open(path: str):
    from PIL import Image

    try:
        return Image.open(path)
    except Exception as e:  # not an image, a truncated header, a decompression bomb
        raise UserError(f"cannot read image {path}: {_reason(e)}") from None


def _reason(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return text or type(error).__name__


def _headers(paths: Sequence[str]) -> Tuple[Dict[str, Tuple[int, int]], bool]:
    """``({path: (width, height)}, all grayscale)`` from the files' headers alone."""
    sizes, gray = {}, True
    for path in paths:
        with _open(path) as image:
            sizes[path] = image.size
            gray = gray and image.mode in GRAY_MODES
    return sizes, gray


def _scale_and_crop(image, side: int):
    """Shorter side to ``side`` (the longer one ``int(side * long / short)``), then the centre
    ``side x side`` (offsets ``round((extent - side) / 2)``), as torchvision's PIL path."""
    from PIL import Image

    width, height = image.size
    if (width, height) == (side, side):
        return image
    if width <= height:
        size = (side, int(side * height / width))
    else:
        size = (int(side * width / height), side)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = int(round((size[0] - side) / 2.0)), int(round((size[1] - side) / 2.0))
    return image.crop((left, top, left + side, top + side))


def image_pixels(image, in_channels: int, image_size: Optional[int] = None) -> np.ndarray:
    """uint8 ``[C, H, W]`` pixels of a PIL ``image`` as a folder's images are read: to gray
    (``in_channels`` 1) or RGB (3), then scaled and centre-cropped to ``image_size``."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT:   # Pillow's own conversion would clip 256..65535 to 255
        values = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.rint(values / 257), 0, 255).astype(np.uint8))
    image = image.convert("L" if in_channels == 1 else "RGB")
    if image_size is not None:
        image = _scale_and_crop(image, image_size)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _decode(path: str, in_channels: int, image_size: Optional[int]) -> np.ndarray:
    with _open(path) as image:
        try:
            return image_pixels(image, in_channels, image_size)
        except Exception as e:  # a truncated or corrupt body shows only when decoded
            raise UserError(f"cannot read image {path}: {_reason(e)}") from None


def interleaved_order(labels: Sequence[int], seed: int = SPLIT_SEED) -> np.ndarray:
    """Indices of ``labels`` such that every prefix holds each class in proportion: the ``j``-th
    member (of a seeded permutation) of class c, out of ``n_c``, sorts at ``(j + 0.5) / n_c``,
    ties by class."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    keys = np.zeros(len(labels))
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        keys[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((labels, keys))


def _stack(files: Sequence[Sequence[str]], in_channels: int, image_size: Optional[int]
           ) -> Tuple[torch.Tensor, torch.Tensor]:
    labels = np.concatenate([np.full(len(paths), c, dtype=np.int64)
                             for c, paths in enumerate(files)])
    paths = [p for group in files for p in group]
    order = interleaved_order(labels)
    images = np.stack([_decode(paths[i], in_channels, image_size) for i in order])
    return torch.from_numpy(images), torch.from_numpy(labels[order])


@functools.lru_cache(maxsize=2)
def read_image_folder(root: str, image_size: Optional[int] = None,
                      test_fraction: Optional[float] = None) -> FolderImages:
    """Read the image folder ``root`` (see the module docstring); cached per process, so that the
    search and the training of one run decode it once."""
    root = os.path.expanduser(str(root))
    if not os.path.isdir(root):
        raise UserError(f"image folder {root} does not exist")
    classes, train, test = _split_files(root, test_fraction)
    sizes, gray = _headers([p for group in train + test for p in group])
    if image_size is None:
        first, size = next(iter(sizes.items()))
        for path, other in sizes.items():
            if other != size:
                raise UserError(f"images differ in size: {first} is {size[0]}x{size[1]} but "
                                f"{path} is {other[0]}x{other[1]}; pass --image-size N to "
                                "scale and crop them all to NxN")
    channels = 1 if gray else 3
    train_images, train_labels = _stack(train, channels, image_size)
    test_images, test_labels = _stack(test, channels, image_size)
    return FolderImages(root, classes, train_images, train_labels, test_images, test_labels)


def channel_stats(images: torch.Tensor, chunk: int = 1024
                  ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and population std of uint8 ``[N, C, H, W]`` images scaled to [0, 1]:
    with ``S1 = sum x``, ``S2 = sum x^2`` over the ``n = N H W`` pixels of a channel (exact in
    int64), ``mean = S1 / (255 n)`` and ``std = sqrt(n S2 - S1^2) / (255 n)``. A channel
    without variation gets std 1 (normalization then only centres it)."""
    channels = images.shape[1]
    s1 = torch.zeros(channels, dtype=torch.int64)
    s2 = torch.zeros(channels, dtype=torch.int64)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].to(torch.int64).transpose(0, 1).flatten(1)
        s1 += block.sum(1)
        s2 += (block * block).sum(1)
    n = images.numel() // channels
    means, stds = [], []
    for total, squares in zip(s1.tolist(), s2.tolist()):  # Python integers: exact
        spread = n * squares - total * total                 # = var * (255 n)^2
        means.append(total / (255 * n))
        stds.append(spread ** 0.5 / (255 * n) if spread > 0 else 1.0)
    return tuple(means), tuple(stds)


__all__ = ["FolderImages", "GRAY_MODES", "IMAGE_EXTENSIONS", "SIXTEEN_BIT", "SPLIT_SEED",
           "channel_stats", "image_pixels", "interleaved_order", "read_image_folder"]
