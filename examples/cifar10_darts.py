"""The DARTS paper's CIFAR-10 pipeline on one GPU, written with fastnas's Python API.

    pip install -e . && python examples/cifar10_darts.py --data-dir data --download

1. Search: first-order DARTS (``--order 2`` for the paper's second order) for 50 epochs on a
   supernet of 8 cells and 16 channels, batch 64, the 50,000 training images split 50/50 into a
   weight half and an architecture half.
2. Final training: the found cell in a 20-cell, 36-channel network trained from scratch for 600
   epochs (batch 96, SGD lr 0.025 cosine to 0, momentum 0.9, weight decay 3e-4, auxiliary head
   weight 0.4, drop path 0.2, cutout 16, gradient clip 5), tested on the 10,000 test images.

The command line runs the same pipeline, with progress bars and resumable checkpoints:

    fastnas run --dataset cifar10 --data-dir data --download --output runs/cifar10

``--smoke`` shrinks every size so the script finishes in seconds (for a quick check of a setup).
"""
import argparse
import os
import time

import torch

from fastnas import data
from fastnas.darts import DARTSOptimizer
from fastnas.training import FinalTrainer, TrainConfig

SEARCH = dict(num_steps=50, layers=8, channels=16, batch_size=64, seed=2)
TRAIN = dict(epochs=600, layers=20, channels=36, batch_size=96, seed=0)
SMOKE_SEARCH = dict(num_steps=1, layers=3, channels=4, batch_size=4, seed=2)
SMOKE_TRAIN = dict(epochs=1, layers=3, channels=4, batch_size=4, seed=0)


def search(args, device, workers):
    settings = SMOKE_SEARCH if args.smoke else SEARCH
    split = data.search_data("cifar10", args.data_dir, limit=40 if args.smoke else None)
    loader = dict(device=device, seed=settings["seed"], num_workers=workers)
    train = data.make_loader(split.weights, settings["batch_size"], shuffle=True, stream=0,
                             **loader)
    val = data.make_loader(split.arch, settings["batch_size"], shuffle=True, stream=1, **loader)
    optimizer = DARTSOptimizer(dict(settings, order=args.order, device=str(device)))

    def after_epoch(opt, record):
        data.set_epoch([train, val], opt.epoch)  # the next epoch's shuffle
        opt.save(os.path.join(args.output, "search.pt"))
        print(f"search {opt.epoch}/{opt.total_epochs}: train acc {record['train_acc']:.3f}, "
              f"val acc {record['val_acc']:.3f}, {record['seconds']:.0f}s", flush=True)

    genotype = optimizer.search(train, val, callback=after_epoch)
    genotype.save(os.path.join(args.output, "genotype.json"))
    return genotype


def train(args, genotype, device, workers):
    config = TrainConfig(**(SMOKE_TRAIN if args.smoke else TRAIN), device=str(device))
    limit = 8 if args.smoke else None
    train_set = data.load_split("cifar10", "train", args.data_dir, augment=True,
                                cutout=config.cutout, limit=limit)
    test_set = data.load_split("cifar10", "test", args.data_dir, limit=limit)
    train_loader = data.make_loader(train_set, config.batch_size, shuffle=True, device=device,
                                    seed=config.seed, num_workers=workers)
    test_loader = data.make_loader(test_set, 256, shuffle=False, device=device,
                                   num_workers=workers)
    trainer = FinalTrainer(genotype, config)

    def after_epoch(t, record):
        t.save(os.path.join(args.output, "train.pt"))
        print(f"train {t.epoch}/{config.epochs}: train acc {record['train_acc']:.3f}, "
              f"test acc {record['test_acc']:.4f}, {record['seconds']:.0f}s", flush=True)

    metrics = trainer.fit(train_loader, test_loader, callback=after_epoch)
    trainer.save_model(os.path.join(args.output, "model.pt"))
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--output", default="runs/cifar10-darts")
    parser.add_argument("--order", type=int, choices=(1, 2), default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a quick check")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = 0 if args.smoke else data.default_workers("cifar10")
    os.makedirs(args.output, exist_ok=True)
    if args.download:
        data.download_cifar10(args.data_dir)
    start = time.time()
    genotype = search(args, device, workers)
    print(f"genotype: {genotype}")
    metrics = train(args, genotype, device, workers)
    print(f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['params'] / 1e6:.2f}M "
          f"parameters, {metrics['multiply_adds'] / 1e6:.0f}M multiply-adds, "
          f"{(time.time() - start) / 3600:.1f} hours; files in {args.output}")
    return metrics


if __name__ == "__main__":
    main()
