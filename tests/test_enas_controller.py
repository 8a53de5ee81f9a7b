"""ENAS controllers: sampling, teacher forcing, the REINFORCE gradient against a reference written
from the paper's code, and learning from a planted reward through ask/tell alone."""
import math

import pytest
import torch

from fastnas.enas import ENASOptimizer, MacroArch
from fastnas.enas.controller import bernoulli_kl
from fastnas.enas.micro import MICRO_OPS, genotype_from_choices


def tiny(space="micro", **overrides):
    cfg = dict(search_space=space, controller_hidden=6, num_nodes=2, channels=2, num_layers=4,
               in_channels=1, seed=0)
    cfg.update(overrides)
    return ENASOptimizer(cfg)


# -- a reference controller, written out from micro_controller.py / general_controller.py --------
def _lstm(p, x, h, c):
    gates = x @ p["lstm.weight_ih"].T + h @ p["lstm.weight_hh"].T
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _log_softmax(logits):
    return logits - torch.logsumexp(logits, dim=-1, keepdim=True)


def _shape(logits, c, temperature):
    if temperature is not None:
        logits = logits / temperature
    return c * torch.tanh(logits)


def reference_micro(p, choices, num_nodes, tanh_c, op_tanh_reduce, temperature, no_learn):
    """Sum of log-probs and of entropies of ``choices`` under the micro sampler."""
    H = p["g_emb"].shape[1]
    h = c = torch.zeros(1, H, dtype=p["g_emb"].dtype)
    choices = iter(choices)
    log_prob, entropy = 0, 0

    def decide(logits):
        nonlocal log_prob, entropy
        lp = _log_softmax(logits.view(-1))
        k = next(choices)
        log_prob = log_prob + lp[k]
        entropy = entropy + float(-(lp.exp() * lp).sum().detach())
        return k

    for cell in range(2):
        inputs = p["g_emb"]
        anchors, anchors_w = [], []
        for _ in range(2):
            h, c = _lstm(p, inputs, h, c)
            anchors.append(torch.zeros_like(h))
            anchors_w.append(h @ p["w_attn_1.weight"].T)
        for _ in range(num_nodes):
            for _ in range(2):
                h, c = _lstm(p, inputs, h, c)
                query = torch.tanh(torch.cat(anchors_w) + h @ p["w_attn_2.weight"].T)
                logits = (query @ p["v_attn.weight"].T).view(1, -1)
                inputs = anchors[decide(_shape(logits, tanh_c, temperature))]
            for _ in range(2):
                h, c = _lstm(p, inputs, h, c)
                logits = h @ p["w_soft.weight"].T + p["w_soft.bias"]
                logits = _shape(logits, tanh_c / op_tanh_reduce, temperature)
                if cell == 0:
                    logits = logits + no_learn
                inputs = p["w_emb.weight"][decide(logits)].view(1, -1)
            h, c = _lstm(p, inputs, h, c)
            anchors.append(h)
            anchors_w.append(h @ p["w_attn_1.weight"].T)
            inputs = p["g_emb"]
    return log_prob, entropy


def reference_macro(p, choices, num_layers, tanh_c, temperature, rho):
    """Sums of log-probs and entropies, and the skip penalty, of ``choices`` (macro sampler)."""
    H = p["g_emb"].shape[1]
    h = c = torch.zeros(1, H, dtype=p["g_emb"].dtype)
    choices = list(choices)
    pos, log_prob, entropy, penalties = 0, 0, 0, []
    inputs = p["g_emb"]
    anchors, anchors_w = [], []
    for layer in range(num_layers):
        h, c = _lstm(p, inputs, h, c)
        lp = _log_softmax(_shape(h @ p["w_soft.weight"].T, tanh_c, temperature).view(-1))
        op = choices[pos]
        pos += 1
        log_prob = log_prob + lp[op]
        entropy += float(-(lp.exp() * lp).sum().detach())
        inputs = p["w_emb.weight"][op].view(1, -1)
        h, c = _lstm(p, inputs, h, c)
        if layer > 0:
            q = torch.tanh(torch.cat(anchors_w) + h @ p["w_attn_2.weight"].T) @ p["v_attn.weight"].T
            logits = _shape(torch.cat([-q, q], dim=1), tanh_c, temperature)
            lp = _log_softmax(logits)
            bits = choices[pos: pos + layer]
            pos += layer
            for j, bit in enumerate(bits):
                log_prob = log_prob + lp[j, bit]
            entropy += float(-(lp.exp() * lp).sum().detach())
            ps = lp[:, 1].exp()
            penalties.append(sum(pj * math.log(1 / rho) + pj * torch.log(pj)
                                 + (1 - pj) * torch.log(1 - pj) - (1 - pj) * math.log(1 - rho)
                                 for pj in ps))
            s = torch.tensor(bits, dtype=h.dtype).view(1, -1)
            inputs = s @ torch.cat(anchors) / (1 + s.sum())
        else:
            inputs = p["g_emb"]
        anchors.append(h)
        anchors_w.append(h @ p["w_attn_1.weight"].T)
    return log_prob, entropy, sum(penalties) / len(penalties)


def _leaf_params(opt):
    return {n: p.detach().clone().requires_grad_(True)
            for n, p in opt.controller.named_parameters()}


# -- sampling and teacher forcing -----------------------------------------------------------------
def test_every_sampled_micro_architecture_is_valid():
    opt = ENASOptimizer({"controller_hidden": 16, "channels": 2, "num_layers": 3, "seed": 1})
    for _ in range(100):
        g = opt.ask()
        for kind in ("normal", "reduce"):
            edges = getattr(g, kind)
            assert len(edges) == 2 * 5
            for pos, (op, index) in enumerate(edges):
                assert op in MICRO_OPS and 0 <= index <= pos // 2 + 1
            used = {i for _, i in edges}
            assert list(getattr(g, f"{kind}_concat")) == [s for s in range(2, 7) if s not in used]
        assert opt.choices(g) and genotype_from_choices(opt.choices(g), 5) == g


def test_teacher_forcing_gives_the_sampled_log_prob():
    for space in ("micro", "macro"):
        opt = tiny(space)
        sampled = opt.controller(generator=opt.generator)
        forced = opt.controller(forced=sampled.choices)
        assert forced.choices == sampled.choices
        torch.testing.assert_close(forced.log_prob, sampled.log_prob)
        torch.testing.assert_close(forced.entropy, sampled.entropy)


def test_forcing_rejects_wrong_lengths_and_values():
    opt = tiny()
    n = opt.controller.num_decisions
    with pytest.raises(ValueError, match="fewer decisions"):
        opt.controller(forced=[0] * (n - 1))
    with pytest.raises(ValueError, match="more decisions"):
        opt.controller(forced=[0] * (n + 1))
    with pytest.raises(ValueError, match="out of range"):
        opt.controller(forced=[9] * n)


def test_greedy_draws_no_random_numbers():
    opt = tiny()
    state = opt.generator.get_state()
    assert opt.ask(greedy=True) == opt.ask(greedy=True)
    assert torch.equal(opt.generator.get_state(), state)


def test_macro_sampling():
    opt = tiny("macro", num_layers=6, controller_hidden=16)
    densities = []
    for _ in range(50):
        arch = opt.ask()
        assert isinstance(arch, MacroArch) and arch.num_layers == 6
        assert [len(r) for r in arch.skips] == list(range(6))
        assert MacroArch.from_choices(arch.to_choices(), 6) == arch
        densities.append(arch.skip_density)
    assert 0.0 < sum(densities) / len(densities) < 1.0


# -- the REINFORCE gradient -----------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [None, 5.0])
def test_micro_reinforce_gradient_matches_reference(temperature):
    opt = tiny(entropy_weight=0.1, baseline_decay=0.9, temperature=temperature)
    opt.controller.double()
    opt.tell(opt.ask(), 0.3)  # the first reward only sets the baseline
    b = opt.baseline
    arch = opt.ask()
    params = _leaf_params(opt)
    log_prob, entropy = reference_micro(params, opt.choices(arch), 2, 1.10, 2.5, temperature,
                                        opt.controller.b_soft_no_learn)
    reward = 0.7 + 0.1 * entropy
    b_new = b - (1 - 0.9) * (b - reward)
    loss = -(reward - b_new) * log_prob
    expected = torch.autograd.grad(loss, list(params.values()))

    stats = opt.tell(arch, 0.7)
    assert stats["baseline"] == pytest.approx(b_new, rel=1e-12)
    assert opt.baseline == stats["baseline"]
    assert stats["controller_loss"] == pytest.approx(loss.item(), rel=1e-10)
    for (name, p), g in zip(opt.controller.named_parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12, msg=name)


def test_micro_reinforce_gradient_matches_finite_differences():
    """Central differences (float64) of the loss tell() minimizes, against its gradient."""
    opt = tiny(entropy_weight=0.0)  # the entropy bonus is a constant of the gradient, not of FD
    opt.controller.double()
    opt.tell(opt.ask(), 0.2)
    arch = opt.ask()
    b_new = opt.baseline - 0.01 * (opt.baseline - 0.9)
    snapshot = {n: p.detach().clone() for n, p in opt.controller.named_parameters()}
    opt.tell(arch, 0.9)
    grads = {n: p.grad.clone() for n, p in opt.controller.named_parameters()}
    params = dict(opt.controller.named_parameters())
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(snapshot[n])

        def loss_after_nudge(name, index, delta):
            params[name][index] += delta
            out = -(0.9 - b_new) * opt.controller_pass(arch).log_prob.item()
            params[name][index] -= delta
            return out

        eps = 1e-6
        for name, index in [("w_soft.bias", (k,)) for k in range(len(MICRO_OPS))] + [
                ("w_attn_1.weight", (0, 1)), ("v_attn.weight", (0, 2)), ("g_emb", (0, 3)),
                ("lstm.weight_hh", (5, 4)), ("w_emb.weight", (2, 0))]:
            fd = (loss_after_nudge(name, index, eps)
                  - loss_after_nudge(name, index, -eps)) / (2 * eps)
            assert grads[name][index].item() == pytest.approx(fd, rel=1e-5, abs=1e-8), name


def test_macro_reinforce_gradient_includes_the_skip_penalty():
    opt = tiny("macro", num_layers=5, entropy_weight=0.05, skip_weight=0.8, skip_target=0.4)
    opt.controller.double()
    opt.tell(opt.ask(), 0.4)
    b = opt.baseline
    arch = opt.ask()
    params = _leaf_params(opt)
    log_prob, entropy, penalty = reference_macro(params, arch.to_choices(), 5, 1.5, None, 0.4)
    reward = 0.6 + 0.05 * entropy
    b_new = b - (1 - 0.99) * (b - reward)
    loss = -(reward - b_new) * log_prob + 0.8 * penalty
    expected = torch.autograd.grad(loss, list(params.values()))

    stats = opt.tell(arch, 0.6)
    assert stats["skip_penalty"] == pytest.approx(penalty.item(), rel=1e-10)
    assert stats["skip_density"] == arch.skip_density
    for (name, p), g in zip(opt.controller.named_parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12, msg=name)


def test_averaging_over_samples():
    """A list update averages the per-sample losses, the baseline moving sample by sample."""
    opt = tiny(entropy_weight=0.0, baseline_decay=0.5)
    opt.controller.double()
    opt.tell(opt.ask(), 0.5)
    archs = [opt.ask() for _ in range(3)]
    rewards = [0.1, 0.9, 0.4]
    b, expected = opt.baseline, 0
    for a, r in zip(archs, rewards):
        b = b - 0.5 * (b - r)
        expected = expected - (r - b) * opt.controller_pass(a).log_prob / 3
    loss, baseline, _ = opt.reinforce_loss(archs, rewards)
    torch.testing.assert_close(loss, expected)
    assert baseline == pytest.approx(b)


def test_bernoulli_kl():
    p = torch.tensor([0.0, 0.4, 0.9, 1.0], dtype=torch.float64)
    kl = bernoulli_kl(p, 0.4)
    manual = [math.log(1 / 0.6), 0.0, 0.9 * math.log(0.9 / 0.4) + 0.1 * math.log(0.1 / 0.6),
              math.log(1 / 0.4)]
    torch.testing.assert_close(kl, torch.tensor(manual, dtype=torch.float64))


# -- learning from a planted reward ---------------------------------------------------------------
def _sep5_share(g):
    ops = [op for op, _ in g.normal + g.reduce]
    return sum(op == "sep_conv_5x5" for op in ops) / len(ops)


def test_controller_learns_a_planted_reward_through_ask_and_tell():
    """Reward = share of ``sep_conv_5x5`` ops. The reference's logit shaping caps every op logit
    at +-tanh_constant/op_tanh_reduce = +-0.44 on purpose (to keep exploring), which bounds how far
    any op's share can move; this test loosens it to see REINFORCE learn."""
    torch.manual_seed(0)
    opt = ENASOptimizer({"controller_hidden": 16, "num_nodes": 2, "channels": 2, "num_layers": 3,
                         "seed": 0, "tanh_constant": 2.5, "op_tanh_reduce": 1.0,
                         "temperature": 5.0, "controller_lr": 0.02})

    def share(n=100):
        return sum(_sep5_share(opt.ask()) for _ in range(n)) / n

    initial = share()
    for _ in range(200):
        g = opt.ask()
        opt.tell(g, _sep5_share(g))
    learned = share()
    assert learned > initial + 0.3 and learned > 0.8, (initial, learned)
