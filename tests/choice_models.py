"""A tiny user model with three ``Choice``s and one ``InputChoice`` and fixed batches, shared by
tests/test_choice.py and its subprocess worker tests/choice_worker.py."""
import torch
import torch.nn as nn

import fastnas


class OwnNet(nn.Module):
    """stem -> a (conv 3x3 | conv 5x5 | identity) -> b (relu | tanh) -> c (conv 1x1 | conv 3x3 +
    BN); InputChoice of 2 among (stem, b, c) -> mean pool -> linear."""

    def __init__(self, width=4, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width))
        self.a = fastnas.Choice({"conv3": nn.Conv2d(width, width, 3, padding=1),
                                 "conv5": nn.Conv2d(width, width, 5, padding=2),
                                 "identity": nn.Identity()})
        self.b = fastnas.Choice([nn.ReLU(), nn.Tanh()])
        self.c = fastnas.Choice({"conv1": nn.Conv2d(width, width, 1),
                                 "conv3bn": nn.Sequential(nn.Conv2d(width, width, 3, padding=1),
                                                          nn.BatchNorm2d(width))})
        self.merge = fastnas.InputChoice(3, 2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x0 = self.stem(x)
        x1 = self.b(self.a(x0))
        x2 = self.c(x1)
        return self.head(self.merge([x0, x1, x2]).mean((2, 3)))


def batches(seed, n=8, count=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 6, 6, generator=g, dtype=dtype),
             torch.randint(0, 3, (n,), generator=g)) for _ in range(count)]


CONFIG = dict(precision="fp64", device="cpu", seed=0, order=2, grad_clip=None,
              learning_rate_alpha=0.05, hessian_r=1e-5)
