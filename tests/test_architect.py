"""The bi-level formulas against independent references, in float64."""
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastnas import Architect, SearchNetwork


def tiny_problem(seed=0):
    torch.manual_seed(seed)
    net = SearchNetwork(C=4, num_classes=3, layers=3, num_nodes=2, in_channels=1).double()
    with torch.no_grad():  # alphas away from uniform so every term matters
        for a in net.alphas():
            a.normal_(0, 0.5)
    train = (torch.randn(6, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (6,)))
    val = (torch.randn(6, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (6,)))
    return net, train, val


def sgd_with_momentum(net, batch):
    """An SGD optimizer whose momentum buffers are populated by one real step."""
    opt = torch.optim.SGD(net.weights(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    loss = F.cross_entropy(net(batch[0]), batch[1])
    loss.backward(inputs=list(net.weights()))
    opt.step()
    opt.zero_grad()
    return opt


def exact_hvp(net, batch, vector):
    """grad_a (grad_w L(w, a) . v) by double backward."""
    names, weights = zip(*net.named_weights())
    loss = F.cross_entropy(net(batch[0]), batch[1])
    g = torch.autograd.grad(loss, weights, create_graph=True)
    dot = sum((gi * vi).sum() for gi, vi in zip(g, vector))
    return torch.autograd.grad(dot, net.alphas())


def rel_err(a, b):
    num = torch.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b)))
    den = torch.sqrt(sum((y ** 2).sum() for y in b))
    return (num / den).item()


def test_finite_difference_hvp_matches_double_backward():
    # A small radius: ReLU and max-pool kinks make any finite difference of a gradient noisy once
    # the perturbation crosses them (the paper's r = 0.01 does on this tiny net); the formula is
    # what is checked here.
    r, tol = 1e-5, 1e-6
    net, train, _ = tiny_problem()
    architect = Architect(net, lr=3e-4, order=2)
    torch.manual_seed(1)
    vector = [torch.randn_like(w) for w in net.weights()]
    fd = architect.hessian_vector_product(vector, train, r=r)
    exact = exact_hvp(net, train, vector)
    assert rel_err(fd, exact) < tol
    # The misplaced-parenthesis formula shipped by several implementations, p - m / (2R),
    # is far from the exact product: this test would catch it.
    names, weights = zip(*net.named_weights())
    norm = torch.sqrt(sum((v ** 2).sum() for v in vector))
    R = r / norm
    def grad_at(sign):
        shifted = {n: w.detach() + sign * R * v for n, w, v in zip(names, weights, vector)}
        shifted.update({n: b.clone() for n, b in net.named_buffers()})
        loss = F.cross_entropy(functional_call(net, shifted, (train[0],)), train[1])
        return torch.autograd.grad(loss, net.alphas())
    p, m = grad_at(1.0), grad_at(-1.0)
    wrong = [pi - mi / (2 * R) for pi, mi in zip(p, m)]
    assert rel_err(wrong, exact) > 100 * tol


def exact_unrolled_gradient(net, train, val, xi, opt, momentum=0.9, wd=3e-4):
    """grad_a L_val(w'(a), a) by autograd through w' = w - xi (m buf + grad_w L_train + wd w)."""
    names, weights = zip(*net.named_weights())
    loss = F.cross_entropy(net(train[0]), train[1])
    g = torch.autograd.grad(loss, weights, create_graph=True)
    virtual = {}
    for n, w, gi in zip(names, weights, g):
        buf = opt.state[w]["momentum_buffer"]
        virtual[n] = w.detach() - xi * (momentum * buf + gi + wd * w.detach())
    virtual.update({n: b.clone() for n, b in net.named_buffers()})
    val_loss = F.cross_entropy(functional_call(net, virtual, (val[0],)), val[1])
    return torch.autograd.grad(val_loss, net.alphas())


def test_unrolled_arch_gradient_matches_exact_autograd():
    net, train, val = tiny_problem()
    opt = sgd_with_momentum(net, train)
    xi = 0.1
    architect = Architect(net, lr=3e-4, order=2, momentum=0.9, network_weight_decay=3e-4,
                          hessian_r=1e-5)
    grads, _, _ = architect.unrolled_gradient(train, val, xi, opt)
    exact = exact_unrolled_gradient(net, train, val, xi, opt)
    assert rel_err(grads, exact) < 1e-6
    # and the second-order term is not negligible here: dropping it (or flipping its sign)
    # moves the gradient far outside the tolerance
    virtual = architect.virtual_weights(train, xi, opt)
    loss, _ = architect.loss(*val, weights=virtual)
    first_order_at_virtual = torch.autograd.grad(loss, net.alphas())
    assert rel_err(first_order_at_virtual, exact) > 1e-3


def test_unrolled_step_changes_only_alphas_and_virtual_passes_leave_bn_statistics():
    net, train, val = tiny_problem()
    opt = sgd_with_momentum(net, train)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    Architect(net, lr=3e-4, order=2).step(train, val, 0.1, opt)
    after = {k: v.clone() for k, v in net.state_dict().items()}
    # the only pass that may move BN statistics is the real one at w on the training batch
    net.load_state_dict(before)
    net(train[0])
    expected = net.state_dict()
    for k, v in after.items():
        if k.startswith("alphas"):
            assert not torch.equal(v, before[k])
        else:
            assert torch.equal(v, expected[k]), k


def test_first_order_step_is_adam_on_the_validation_gradient():
    net, train, val = tiny_problem()
    opt = sgd_with_momentum(net, train)
    alphas0 = [a.detach().clone().requires_grad_() for a in net.alphas()]
    loss = F.cross_entropy(net(val[0]), val[1])
    g = torch.autograd.grad(loss, net.alphas())
    ref_opt = torch.optim.Adam(alphas0, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    for a, gi in zip(alphas0, g):
        a.grad = gi.clone()
    ref_opt.step()
    architect = Architect(net, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3, order=1)
    assert architect.step(train, val, 0.1, opt)[2]
    for a, ref in zip(net.alphas(), alphas0):
        torch.testing.assert_close(a.detach(), ref.detach(), rtol=1e-12, atol=1e-12)
