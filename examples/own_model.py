"""DARTS inside your own model: a small ResNet on the digits whose blocks choose their ops.

    python examples/own_model.py                 # ~3 search epochs, then trains the result

Each residual block of ``TinyResNet`` holds three ``fastnas.Choice``s: the kernel size of its
conv (3x3 or 5x5), its activation (ReLU or SiLU) and the width of its pointwise bottleneck
(half or twice the channels); an ``InputChoice`` picks which two of the three block outputs
feed the classifier. ``DARTSOptimizer(config, model=net)`` finds the choices and searches
them with the bi-level DARTS step (the weights on one half of the training split, the alphas on
the other); ``export()`` names the chosen candidate of each choice, and ``fixed_model()`` is the
plain ResNet with those candidates, trained here for a few epochs on the whole training split and
tested on the test split.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import fastnas
from fastnas.data import digits_split


def conv_bn(c: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c))


def bottleneck(c: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                         nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))


class Block(nn.Module):
    """``x + bottleneck(act(conv(x)))``, each of the three a choice."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = fastnas.Choice({"3x3": conv_bn(c, 3), "5x5": conv_bn(c, 5)})
        self.act = fastnas.Choice({"relu": nn.ReLU(), "silu": nn.SiLU()})
        self.width = fastnas.Choice({"half": bottleneck(c, c // 2), "double": bottleneck(c, 2 * c)})

    def forward(self, x):
        return x + self.width(self.act(self.conv(x)))


class TinyResNet(nn.Module):
    def __init__(self, c: int = 16, blocks: int = 3, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU())
        self.blocks = nn.ModuleList(Block(c) for _ in range(blocks))
        self.features = fastnas.InputChoice(blocks, n_chosen=2)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        x, outs = self.stem(x), []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return self.head(self.features(outs).mean((2, 3)))


def accuracy(model: nn.Module, loader) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    model.train()
    return hits / len(loader.dataset)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="search epochs")
    parser.add_argument("--train-epochs", type=int, default=5, help="epochs of the fixed model")
    parser.add_argument("--limit", type=int, default=None, help="use the first N training images")
    parser.add_argument("--order", type=int, choices=(1, 2), default=1)
    parser.add_argument("--save", default=None,
                        help="torch.save the trained fixed model's state_dict here")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (a model this small runs fastest on one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    train, test = digits_split("train"), digits_split("test")
    if args.limit:
        train = Subset(train, range(min(args.limit, len(train))))
    half = len(train) // 2
    g = torch.Generator().manual_seed(0)
    weights_half = DataLoader(Subset(train, range(half)), 64, shuffle=True, generator=g)
    alphas_half = DataLoader(Subset(train, range(half, len(train))), 64, shuffle=True,
                             generator=g)

    net = TinyResNet()
    config = dict(num_steps=args.epochs, order=args.order, learning_rate_w=0.05, lr_min=0.001,
                  learning_rate_alpha=3e-3, device="cpu", seed=0)
    search = fastnas.DARTSOptimizer(config, model=net)
    start = time.perf_counter()
    search.search(weights_half, alphas_half, progress="lines")
    print(f"search: {time.perf_counter() - start:.1f}s")
    print("chosen:", json.dumps(search.export()))

    model = search.fixed_model()   # a plain nn.Module: the chosen candidates, searched weights
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    loader = DataLoader(train, 64, shuffle=True, generator=g)
    test_loader = DataLoader(test, 256)
    for epoch in range(args.train_epochs):
        for x, y in loader:
            sgd.zero_grad()
            F.cross_entropy(model(x), y).backward()
            sgd.step()
        print(f"fixed model epoch {epoch + 1}: test accuracy {accuracy(model, test_loader):.3f}")
    if args.save:   # the choices' candidates are plain submodules now: no fastnas name inside
        torch.save(model.state_dict(), args.save)
    return search.export(), model


if __name__ == "__main__":
    main()
