"""A tiny ``cifar-10-batches-py`` folder in the real format, for tests that must not download.

The real batches are Python 2 pickles (protocol 2) of dicts holding a uint8 ``data`` array of
shape [N, 3072] (R, G, B planes of 32x32 images), a ``labels`` list, ``batch_label`` and
``filenames``; numpy 1 wrote its arrays under the name ``numpy.core.multiarray``, as here.
"""
import os
import pickle

import numpy as np

LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def _dump(obj, path):
    blob = pickle.dumps(obj, protocol=2)
    blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    with open(path, "wb") as f:
        f.write(blob)


def write_fake_cifar10(root, per_batch=8, test_size=8, seed=0):
    """Write ``root/cifar-10-batches-py`` with 5 train batches of ``per_batch`` images and a
    test batch of ``test_size``; labels cycle through the 10 classes. Returns the folder."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(str(root), "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        n = test_size if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [(index * n + i) % 10 for i in range(n)]
        _dump({"batch_label": f"{name} of 6", "labels": labels, "data": data,
               "filenames": [f"img_{index}_{i}.png" for i in range(n)]},
              os.path.join(folder, name))
    _dump({"num_cases_per_batch": per_batch, "label_names": LABEL_NAMES, "num_vis": 3072},
          os.path.join(folder, "batches.meta"))
    return folder


def write_fake_cifar100(root, train_size=20, test_size=10, seed=0):
    """Write ``root/cifar-100-python`` as the real one: ``train`` and ``test`` pickles of dicts
    holding ``data`` (uint8 [N, 3072]), ``fine_labels`` (0..99), ``coarse_labels`` (0..19),
    ``filenames`` and ``batch_label``, and ``meta`` with the label names. Fine labels step by
    7 through the 100 classes. Returns the folder."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(str(root), "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for index, (name, n) in enumerate((("train", train_size), ("test", test_size))):
        fine = [(7 * (index * 1000 + i)) % 100 for i in range(n)]
        _dump({"filenames": [f"img_{index}_{i}.png" for i in range(n)],
               "batch_label": f"{name}ing batch 1 of 1", "fine_labels": fine,
               "coarse_labels": [f // 5 for f in fine],
               "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)},
              os.path.join(folder, name))
    _dump({"fine_label_names": [f"fine_{i}" for i in range(100)],
           "coarse_label_names": [f"coarse_{i}" for i in range(20)]},
          os.path.join(folder, "meta"))
    return folder
