"""The DARTS paper's CIFAR-10 pipeline, written with fastnas's Python API.

    pip install -e . && python examples/cifar10_darts.py --data-dir data --download

1. Search: first-order DARTS (``--order 2`` for the paper's second order) for 50 epochs on a
   supernet of 8 cells and 16 channels, batch 64, the 50,000 training images split 50/50 into a
   weight half and an architecture half.
2. Final training: the found cell in a 20-cell, 36-channel network trained from scratch for 600
   epochs (batch 96, SGD lr 0.025 cosine to 0, momentum 0.9, weight decay 3e-4, auxiliary head
   weight 0.4, drop path 0.2, cutout 16, gradient clip 5), tested on the 10,000 test images.

Both stages run through ``fastnas.pipeline``, the same code as ``fastnas run --dataset cifar10``:
per-epoch atomic checkpoints (``--resume`` continues an interrupted run exactly), progress, and
``metrics.json`` files. ``--smoke`` shrinks every size so the script finishes in seconds.
"""
import argparse

from fastnas.pipeline import StageOptions, run_pipeline

SEARCH = dict(epochs=50, layers=8, channels=16, batch_size=64)
TRAIN = dict(epochs=600, layers=20, channels=36, batch_size=96)
SMOKE_SEARCH = dict(epochs=1, layers=3, channels=4, batch_size=4)
SMOKE_TRAIN = dict(epochs=1, layers=3, channels=4, batch_size=4)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--output", default="runs/cifar10-darts")
    parser.add_argument("--order", type=int, choices=(1, 2), default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a quick check")
    args = parser.parse_args(argv)

    options = StageOptions(dataset="cifar10", data_dir=args.data_dir, download=args.download,
                           limit=40 if args.smoke else None, workers=0 if args.smoke else None,
                           resume=args.resume)
    search = dict(SMOKE_SEARCH if args.smoke else SEARCH, order=args.order)
    train = SMOKE_TRAIN if args.smoke else TRAIN
    return run_pipeline(options, "darts", search, train, args.output)


if __name__ == "__main__":
    main()
