"""BatchNorm(affine=False) over channel blocks that belong to several ``BatchNorm2d`` modules.

The fast supernet normalizes the outputs of many ops (one BatchNorm module each) in one call:

- ``stacked_batch_norm(x, bns)``: ``x = [N, sum_b C_b, H, W]`` holds one channel block per
  module; each block is normalized with (training) the batch statistics, which then update that
  module's running statistics, or (eval) that module's running statistics.
- ``shared_batch_norm(x, groups)``: in training, several module groups normalize the *same*
  tensor (the pools of one cell state, read by every later node): the output is computed once
  and each group's running statistics are updated as if it had normalized ``x`` itself.

``write_back_running_stats`` is the one place where statistics computed over concatenated
channels are written back to the modules they belong to.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def write_back_running_stats(bns: Sequence[nn.BatchNorm2d], running_mean: torch.Tensor,
                             running_var: torch.Tensor) -> None:
    """Copy the concatenated statistics back into ``bns`` (block by block) and count the batch."""
    with torch.no_grad():
        sizes = [b.num_features for b in bns]
        torch._foreach_copy_([b.running_mean for b in bns], list(running_mean.split(sizes)))
        torch._foreach_copy_([b.running_var for b in bns], list(running_var.split(sizes)))
        torch._foreach_add_([b.num_batches_tracked for b in bns], 1)


def concatenated_stats(bns: Sequence[nn.BatchNorm2d]):
    """``(running_mean, running_var)`` of ``bns`` concatenated over channels (copies)."""
    return (torch.cat([b.running_mean for b in bns]), torch.cat([b.running_var for b in bns]))


def stacked_batch_norm(x: torch.Tensor, bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """BatchNorm(affine=False) of ``x: [N, sum C_b, H, W]`` with the statistics of ``bns`` (one
    per channel block), as one call; running statistics are updated as each module would."""
    bn = bns[0]
    running_mean, running_var = concatenated_stats(bns)
    if bn.training:
        y = F.batch_norm(x, running_mean, running_var, None, None, True, bn.momentum, bn.eps)
        write_back_running_stats(bns, running_mean, running_var)
        return y
    return F.batch_norm(x, running_mean, running_var, None, None, False, 0.0, bn.eps)


def shared_batch_norm(x: torch.Tensor, groups: Sequence[Sequence[nn.BatchNorm2d]]) -> torch.Tensor:
    """Training-mode BatchNorm(affine=False) of ``x`` computed once for several module groups
    that all normalize ``x`` (one group per edge); every group's running statistics are updated
    as if each group had normalized ``x`` itself:

        running <- (1 - momentum) * running + momentum * batch statistic  (unbiased variance)
    """
    bn = groups[0][0]
    dtype = bn.running_mean.dtype
    # momentum 1 leaves the batch mean and unbiased variance in the scratch buffers.
    mean = torch.zeros(x.shape[1], dtype=dtype, device=x.device)
    var = torch.ones(x.shape[1], dtype=dtype, device=x.device)
    y = F.batch_norm(x, mean, var, None, None, True, 1.0, bn.eps)
    with torch.no_grad():
        m = bn.momentum
        sizes = [b.num_features for b in groups[0]]
        means, vars_ = list(mean.split(sizes)), list(var.split(sizes))
        for group in groups:
            rms = [b.running_mean for b in group]
            rvs = [b.running_var for b in group]
            torch._foreach_mul_(rms, 1 - m)
            torch._foreach_add_(rms, means, alpha=m)
            torch._foreach_mul_(rvs, 1 - m)
            torch._foreach_add_(rvs, vars_, alpha=m)
        torch._foreach_add_([b.num_batches_tracked for g in groups for b in g], 1)
    return y


__all__ = ["concatenated_stats", "shared_batch_norm", "stacked_batch_norm",
           "write_back_running_stats"]
