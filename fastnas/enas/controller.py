"""The ENAS controllers: LSTMs that emit an architecture one decision at a time.

Every decision ``t`` has logits ``l_t``, shaped as the reference code does:

    l <- l / temperature            (if a temperature is set)
    l <- c * tanh(l)                (c = tanh_constant; micro op decisions use c / op_tanh_reduce)

and is drawn from ``softmax(l_t)``. One pass returns the choices, ``sum_t log p_t(a_t)`` (with
its graph) and the summed entropies ``sum_t H(softmax(l_t))`` (detached). A pass can also be
*forced*: given the choices of an existing architecture (teacher forcing), it computes their
log-probability without sampling, which is how ``ENASOptimizer.tell`` scores any architecture,
including one loaded from disk.

The LSTM is one bias-free layer (the reference's ``stack_lstm`` with ``lstm_num_layers=1``, as its
``main.py`` builds it); all parameters start uniform in [-0.1, 0.1] as the reference's.
The controllers stay on the CPU: a batch-1 LSTM gains nothing from an accelerator, and the
sampled architectures then never depend on the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ControllerPass:
    """The outcome of one pass: flat choices, their log-probability, entropy and skip penalty,
    and per decision the probabilities ``softmax(l_t)`` of its options (plain floats)."""

    choices: List[int]
    log_prob: torch.Tensor
    entropy: torch.Tensor
    skip_penalty: torch.Tensor
    probabilities: List[List[float]] = field(default_factory=list)


class _Decisions:
    """Takes decisions from logits (sampled, greedy or forced) and sums their statistics."""

    def __init__(self, forced: Optional[Sequence[int]], greedy: bool,
                 generator: Optional[torch.Generator]):
        self._forced: Optional[Iterator[int]] = iter(forced) if forced is not None else None
        self.greedy = greedy
        self.generator = generator
        self.choices: List[int] = []
        self.log_probs: List[torch.Tensor] = []
        self.entropies: List[torch.Tensor] = []
        self.probabilities: List[List[float]] = []

    def take(self, logits: torch.Tensor) -> torch.Tensor:
        """One decision per row of ``logits`` ``[rows, k]``; returns the indices ``[rows]``."""
        log_p = F.log_softmax(logits, dim=-1)
        if self._forced is not None:
            try:
                picked = [next(self._forced) for _ in range(logits.shape[0])]
            except StopIteration:
                raise ValueError("the architecture has fewer decisions than the search "
                                 "space") from None
            for value in picked:
                if not 0 <= value < logits.shape[1]:
                    raise ValueError(f"decision {value} out of range 0..{logits.shape[1] - 1}")
            index = torch.tensor(picked, dtype=torch.long)
        elif self.greedy:
            index = log_p.argmax(dim=-1)
        else:
            index = torch.multinomial(log_p.detach().exp(), 1, generator=self.generator).view(-1)
        self.choices.extend(index.tolist())
        self.log_probs.append(log_p.gather(1, index.view(-1, 1)).sum())
        with torch.no_grad():
            p = log_p.exp()
            self.entropies.append(-(p * log_p).sum())
            self.probabilities.extend(p.tolist())
        return index

    def finish(self, skip_penalty: torch.Tensor) -> ControllerPass:
        if self._forced is not None and next(self._forced, None) is not None:
            raise ValueError("the architecture has more decisions than the search space")
        return ControllerPass(self.choices, torch.stack(self.log_probs).sum(),
                              torch.stack(self.entropies).sum(), skip_penalty,
                              self.probabilities)


# The public name, for controllers in other modules (``fastnas.enas.cells``).
Decisions = _Decisions


class _LSTMController(nn.Module):
    """LSTM, start embedding and the attention used to point at earlier steps (anchors)."""

    def __init__(self, num_ops: int, hidden: int, tanh_constant: float,
                 temperature: Optional[float]):
        super().__init__()
        self.hidden = hidden
        self.tanh_constant = tanh_constant
        self.temperature = temperature
        self.lstm = nn.LSTMCell(hidden, hidden, bias=False)
        self.g_emb = nn.Parameter(torch.empty(1, hidden))
        self.w_emb = nn.Embedding(num_ops, hidden)
        self.w_attn_1 = nn.Linear(hidden, hidden, bias=False)
        self.w_attn_2 = nn.Linear(hidden, hidden, bias=False)
        self.v_attn = nn.Linear(hidden, 1, bias=False)

    def reset_parameters(self):
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)

    def shape(self, logits: torch.Tensor, tanh_constant: float) -> torch.Tensor:
        """``tanh_constant * tanh(logits / temperature)``."""
        if self.temperature is not None:
            logits = logits / self.temperature
        return tanh_constant * torch.tanh(logits)

    def attend(self, anchors_w_1: List[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """``v^T tanh(W_1 h_j + W_2 h)`` for every anchor ``j``: a column ``[len(anchors), 1]``."""
        return self.v_attn(torch.tanh(torch.cat(anchors_w_1, dim=0) + self.w_attn_2(h)))

    def zero_state(self):
        z = torch.zeros(1, self.hidden, dtype=self.g_emb.dtype, device=self.g_emb.device)
        return z, z.clone()


class MicroController(_LSTMController):
    """The reference's ``MicroController``: the normal cell, then the reduction cell.

    Per node, four decisions: two inputs, each by attention over the anchors (zeros for the cell
    inputs, the LSTM output after each earlier node), then two ops from ``w_soft(h) + b_soft``.
    ``b_soft`` starts at ``[10, 10, 0, ...]`` and the normal cell's op logits get the fixed
    ``[0.25, 0.25, -0.25, ...]`` after shaping: both favour the first two ops (the separable
    convolutions) from the start, as in the reference. The reduction cell continues the LSTM state
    left by the normal cell.

    Choices are flat: per cell, per node ``[input_a, input_b, op_a, op_b]``.
    """

    def __init__(self, num_nodes: int, num_ops: int, hidden: int = 100,
                 tanh_constant: float = 1.10, op_tanh_reduce: float = 2.5,
                 temperature: Optional[float] = None):
        super().__init__(num_ops, hidden, tanh_constant, temperature)
        self.num_nodes = num_nodes
        self.num_ops = num_ops
        self.op_tanh_reduce = op_tanh_reduce
        self.w_soft = nn.Linear(hidden, num_ops, bias=True)
        favoured = [0.25, 0.25] + [-0.25] * (num_ops - 2)
        self.register_buffer("b_soft_no_learn", torch.tensor(favoured[:num_ops]).view(1, -1))
        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        with torch.no_grad():
            self.w_soft.bias.zero_()
            self.w_soft.bias[:2] = 10.0

    @property
    def num_decisions(self) -> int:
        return 2 * 4 * self.num_nodes

    def forward(self, forced: Optional[Sequence[int]] = None, greedy: bool = False,
                generator: Optional[torch.Generator] = None) -> ControllerPass:
        decisions = _Decisions(forced, greedy, generator)
        state = self.zero_state()
        for normal in (True, False):
            state = self._cell(decisions, state, use_bias=normal)
        return decisions.finish(torch.zeros((), dtype=self.g_emb.dtype))

    def _cell(self, decisions: _Decisions, state, use_bias: bool):
        h, c = state
        anchors, anchors_w_1 = [], []
        inputs = self.g_emb
        for _ in range(2):
            h, c = self.lstm(inputs, (h, c))
            anchors.append(torch.zeros_like(h))
            anchors_w_1.append(self.w_attn_1(h))
        op_tanh = self.tanh_constant / self.op_tanh_reduce
        for _ in range(self.num_nodes):
            for _ in range(2):
                h, c = self.lstm(inputs, (h, c))
                logits = self.shape(self.attend(anchors_w_1, h).view(1, -1), self.tanh_constant)
                index = int(decisions.take(logits))
                inputs = anchors[index]
            for _ in range(2):
                h, c = self.lstm(inputs, (h, c))
                logits = self.shape(self.w_soft(h), op_tanh)
                if use_bias:
                    logits = logits + self.b_soft_no_learn
                op = decisions.take(logits)
                inputs = self.w_emb(op)
            h, c = self.lstm(inputs, (h, c))
            anchors.append(h)
            anchors_w_1.append(self.w_attn_1(h))
            inputs = self.g_emb
        return h, c


class MacroController(_LSTMController):
    """The reference's ``GeneralController`` (``search_whole_channels``): per layer an op, then
    one skip bit for each earlier layer.

    The skip logits of layer ``l`` are ``[-q_j, q_j]`` with ``q_j = v^T tanh(W_1 h_j + W_2 h_l)``
    over the anchors ``h_j`` of layers ``j < l``, so ``P(skip_j = 1) = softmax([-q_j, q_j])_1``
    after shaping. The next input is the mean of the anchors of the chosen skips,
    ``(sum_j s_j h_j) / (1 + sum_j s_j)``.

    Skip penalty (returned as ``skip_penalty``), with ``p_lj`` that probability and ``rho`` the
    target density:

        penalty = mean_{l=1..L-1} sum_{j<l} KL(Bernoulli(p_lj) || Bernoulli(rho)).

    The reference computes its KL from ``sigmoid`` of the shaped logits, which is not the
    probability it samples with; we use the sampling probability, as the paper describes. Its
    entropy term is ``-p log p`` of the sampled choice only; we sum the full entropies, as its
    micro controller does.

    Choices are flat: per layer ``[op, skip_0, ..., skip_{l-1}]``.
    """

    def __init__(self, num_layers: int, num_ops: int, hidden: int = 100,
                 tanh_constant: float = 1.5, temperature: Optional[float] = None,
                 skip_target: float = 0.4):
        super().__init__(num_ops, hidden, tanh_constant, temperature)
        self.num_layers = num_layers
        self.num_ops = num_ops
        self.skip_target = skip_target
        self.w_soft = nn.Linear(hidden, num_ops, bias=False)
        self.reset_parameters()

    @property
    def num_decisions(self) -> int:
        return self.num_layers + self.num_layers * (self.num_layers - 1) // 2

    def forward(self, forced: Optional[Sequence[int]] = None, greedy: bool = False,
                generator: Optional[torch.Generator] = None) -> ControllerPass:
        decisions = _Decisions(forced, greedy, generator)
        h, c = self.zero_state()
        anchors, anchors_w_1, penalties = [], [], []
        inputs = self.g_emb
        for layer in range(self.num_layers):
            h, c = self.lstm(inputs, (h, c))
            op = decisions.take(self.shape(self.w_soft(h), self.tanh_constant))
            inputs = self.w_emb(op)
            h, c = self.lstm(inputs, (h, c))
            if layer > 0:
                q = self.attend(anchors_w_1, h)
                logits = self.shape(torch.cat([-q, q], dim=1), self.tanh_constant)
                skips = decisions.take(logits).to(h.dtype).view(1, -1)
                p_skip = F.softmax(logits, dim=-1)[:, 1]
                penalties.append(bernoulli_kl(p_skip, self.skip_target).sum())
                inputs = skips @ torch.cat(anchors, dim=0) / (1.0 + skips.sum())
            else:
                inputs = self.g_emb
            anchors.append(h)
            anchors_w_1.append(self.w_attn_1(h))
        penalty = (torch.stack(penalties).mean() if penalties
                   else torch.zeros((), dtype=self.g_emb.dtype))
        return decisions.finish(penalty)


def bernoulli_kl(p: torch.Tensor, rho: float) -> torch.Tensor:
    """``KL(Bernoulli(p) || Bernoulli(rho)) = p log(p / rho) + (1 - p) log((1 - p) / (1 - rho))``,
    elementwise, with ``0 log 0 = 0``."""
    return (torch.xlogy(p, p) - p * torch.log(torch.tensor(rho, dtype=p.dtype))
            + torch.xlogy(1 - p, 1 - p) - (1 - p) * torch.log(torch.tensor(1 - rho, dtype=p.dtype)))


__all__ = ["ControllerPass", "Decisions", "MicroController", "MacroController", "bernoulli_kl"]
