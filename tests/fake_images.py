"""Small image folders in torchvision's ImageFolder layout, written with Pillow for the tests.

Each class has its own colour, so that a network can tell the classes apart in one epoch, plus
seeded noise so that no two images are equal.
"""
import os

import numpy as np


def write_image(path, size=(20, 20), mode="RGB", seed=0, base=(200, 40, 40), fmt=None):
    """One ``size`` (width, height) image of Pillow ``mode`` at ``path`` (PNG or JPEG by the
    extension, or ``fmt``): ``base`` plus noise in 0..39. Returns the pixels written (for
    JPEG, before compression)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    rgb = np.clip(np.asarray(base, dtype=np.int64) + rng.integers(0, 40, (height, width, 3)),
                  0, 255).astype(np.uint8)
    if mode == "L":
        pixels = rgb[..., 0]
    elif mode == "RGBA":
        pixels = np.concatenate([rgb, rng.integers(0, 256, (height, width, 1),
                                                   dtype=np.uint8)], axis=2)
    else:
        pixels = rgb
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)   # mode from the shape: L, RGB or RGBA
    return pixels


COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]


def write_image_folder(root, classes=("cat", "dog", "fox"), per_class=8, test_per_class=4,
                       size=(20, 20), mode="RGB", ext=".png", split=True, seed=0):
    """``root/train/<class>/<i><ext>`` and ``root/test/<class>/<i><ext>`` (``split``), or
    ``root/<class>/<i><ext>`` holding ``per_class + test_per_class`` images. Returns ``root``."""
    root = str(root)
    for c, name in enumerate(classes):
        base = COLOURS[c % len(COLOURS)]
        if split:
            groups = [("train", per_class), ("test", test_per_class)]
        else:
            groups = [("", per_class + test_per_class)]
        for g, (sub, count) in enumerate(groups):
            for i in range(count):
                path = os.path.join(root, sub, name, f"{i:03d}{ext}")
                write_image(path, size, mode, seed=[seed, c, g, i], base=base)
    return root
