"""Scores checked against hand computations and finite differences (float64)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

import prunekit
from prunekit.methods.grasp import hessian_gradient_product


def _linear_chain(*weights):
    layers = [nn.Linear(w.shape[1], w.shape[0], bias=False) for w in weights]
    with torch.no_grad():
        for layer, w in zip(layers, weights):
            layer.weight.copy_(w)
    return nn.Sequential(*layers).double()


def sum_loss(outputs, targets):
    return outputs.sum()


W1 = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
W2 = torch.tensor([[2.0, -1.0]])


def test_snip_is_abs_weight_times_gradient_by_hand():
    net = _linear_chain(W1, W2)
    data = [(torch.tensor([[1.0, 2.0]]), torch.zeros(1))]
    s = prunekit.score(net, "snip", data=data, loss_fn=sum_loss)
    # h = W1 x = [-3, 4]; L = W2 h; dL/dW2 = h^T; dL/dW1 = W2^T x^T = [[2, 4], [-1, -2]]
    assert s["1.weight"].tolist() == [[6.0, 4.0]]
    assert s["0.weight"].tolist() == [[2.0, 8.0], [3.0, 1.0]]


def test_snip_averages_gradients_over_num_batches():
    net = _linear_chain(W1, W2)
    data = [(torch.tensor([[1.0, 2.0]]), torch.zeros(1)), (torch.tensor([[3.0, 0.0]]), torch.zeros(1))]
    s = prunekit.score(net, "snip", data=data, loss_fn=sum_loss, num_batches=2)
    # mean input [2, 1]: dL/dW1 = W2^T [2, 1] = [[4, 2], [-2, -1]]
    assert s["0.weight"].tolist() == [[4.0, 4.0], [6.0, 0.5]]


def test_magnitude_is_abs_weight():
    net = _linear_chain(W1, W2)
    s = prunekit.score(net, "magnitude")
    assert s["0.weight"].tolist() == W1.abs().tolist()
    assert s["1.weight"].tolist() == W2.abs().tolist()


def test_synflow_path_product_on_linear_chain_by_hand():
    a = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 3.0, 2.0]])
    b = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    c = torch.tensor([[-2.0, 1.0]])
    net = _linear_chain(a, b, c)
    s = prunekit.score(net, "synflow", input_shape=(3,))
    # R = 1^T |c||b||a| 1; |a|1 = [3.5, 6]; |b||a|1 = [9.5, 10]; 1^T|c| = [2, 1]; 1^T|c||b| = [4, 2.5]
    assert s["0.weight"].tolist() == [[4.0, 8.0, 2.0], [2.5, 7.5, 5.0]]
    assert s["1.weight"].tolist() == [[7.0, 12.0], [7.0, 3.0]]
    assert s["2.weight"].tolist() == [[19.0, 10.0]]
    assert s["0.weight"].dtype == torch.float64


def _smooth_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _batches(n, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def test_grasp_hessian_gradient_product_matches_finite_differences():
    net = _smooth_mlp()
    weights = [net[0].weight, net[2].weight]
    (x, y), = _batches(1)
    T = 3.0

    def loss_fn(out, t):
        return nn.functional.cross_entropy(out, t)

    g, hg = hessian_gradient_product(net, weights, [(x, y)], loss_fn, temperature=T)

    def grad_at(ws):
        with torch.no_grad():
            for p, w in zip(weights, ws):
                p.copy_(w)
        loss = loss_fn(net(x) / T, y)
        return [t.detach().clone() for t in torch.autograd.grad(loss, weights)]

    w0 = [p.detach().clone() for p in weights]
    eps = 1e-6
    plus = grad_at([w + eps * gi for w, gi in zip(w0, g)])
    minus = grad_at([w - eps * gi for w, gi in zip(w0, g)])
    grad_at(w0)
    for h, p, m in zip(hg, plus, minus):
        fd = (p - m) / (2 * eps)
        torch.testing.assert_close(h, fd, rtol=1e-6, atol=1e-10)
    # chunking changes nothing without BN
    _, hg3 = hessian_gradient_product(net, weights, list(zip(x.tensor_split(3), y.tensor_split(3))), loss_fn, temperature=T)
    for a, b in zip(hg, hg3):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_grasp_scores_are_theta_times_hg_with_official_sign():
    net = _smooth_mlp()
    data = _batches(1)
    s = prunekit.score(net, "grasp", data=data, samples_per_class=None, reinit_linear=False, temperature=2.0, num_chunks=1)
    weights = [net[0].weight, net[2].weight]
    _, hg = hessian_gradient_product(net, weights, data, lambda o, t: nn.functional.cross_entropy(o, t), temperature=2.0)
    torch.testing.assert_close(s["0.weight"], net[0].weight.detach() * hg[0])
    torch.testing.assert_close(s["2.weight"], net[2].weight.detach() * hg[1])
    assert (s["0.weight"] < 0).any()  # signed: GraSP keeps the largest theta*Hg, not the largest magnitude
    s_abs = prunekit.score(net, "grasp_abs", data=data, samples_per_class=None, reinit_linear=False, temperature=2.0, num_chunks=1)
    torch.testing.assert_close(s_abs["0.weight"], s["0.weight"].abs())


def _loss_after_inner_steps(net, masks_c, batches, steps, lr, momentum):
    """L(theta^(M); B_M) as a plain function of the mask c (reference for finite differences)."""
    params = {n: p.detach() for n, p in net.named_parameters()}
    theta = {n: (p * masks_c[n] if n in masks_c else p).clone() for n, p in params.items()}
    velocity = {n: torch.zeros_like(p) for n, p in theta.items()}

    def loss(th, batch):
        x, y = batch
        return nn.functional.cross_entropy(functional_call(net, th, (x,)), y)

    for k in range(steps):
        th = {n: t.requires_grad_(True) for n, t in theta.items()}
        grads = torch.autograd.grad(loss(th, batches[k]), list(th.values()))
        velocity = {n: momentum * velocity[n] + g for n, g in zip(th, grads)}
        theta = {n: (th[n] - lr * velocity[n]).detach() for n in th}
    return float(loss(theta, batches[steps]))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_prospr_meta_gradient_matches_finite_differences(momentum):
    net = _smooth_mlp(seed=1)
    batches = _batches(3, seed=2)
    lr = 0.5
    s = prunekit.score(net, "prospr", data=batches, inner_steps=2, inner_lr=lr, inner_momentum=momentum)
    ones = {n: torch.ones_like(p) for n, p in net.named_parameters() if n.endswith("weight")}
    eps = 1e-6
    for name in ones:
        fd = torch.zeros_like(ones[name])
        for idx in range(fd.numel()):
            cp = {n: c.clone() for n, c in ones.items()}
            cm = {n: c.clone() for n, c in ones.items()}
            cp[name].view(-1)[idx] += eps
            cm[name].view(-1)[idx] -= eps
            lp = _loss_after_inner_steps(net, cp, batches, 2, lr, momentum)
            lm = _loss_after_inner_steps(net, cm, batches, 2, lr, momentum)
            fd.view(-1)[idx] = (lp - lm) / (2 * eps)
        torch.testing.assert_close(s[name], fd.abs(), rtol=1e-5, atol=1e-9)


def test_prospr_micro_batches_give_the_same_meta_gradient():
    net = _smooth_mlp(seed=3)
    batches = _batches(4, seed=4)
    full = prunekit.score(net, "prospr", data=batches, inner_steps=3, inner_momentum=0.5)
    micro = prunekit.score(net, "prospr", data=batches, inner_steps=3, inner_momentum=0.5, micro_batch_size=5)
    for n in full:
        torch.testing.assert_close(full[n], micro[n], rtol=1e-10, atol=1e-13)


def test_prospr_first_order_is_snip_after_the_inner_steps():
    net = _smooth_mlp(seed=5)
    batches = _batches(3, seed=6)
    s = prunekit.score(net, "prospr", data=batches, inner_steps=2, first_order=True)
    # reference: two plain SGD steps on a copy, then |theta0 * grad L(theta_2; B_2)|
    theta0 = {n: p.detach().clone() for n, p in net.named_parameters()}
    ref = _smooth_mlp(seed=5)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for k in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(ref(batches[k][0]), batches[k][1]).backward()
        opt.step()
    opt.zero_grad()
    nn.functional.cross_entropy(ref(batches[2][0]), batches[2][1]).backward()
    for name, p in ref.named_parameters():
        if name.endswith("weight"):
            torch.testing.assert_close(s[name], (theta0[name] * p.grad).abs())


def test_grasp_hg_on_conv_relu_maxpool_net_matches_forward_over_reverse():
    from torch.func import grad, jvp

    from prunekit import models

    torch.manual_seed(0)
    net = models.create("lenet5", 10, (1, 28, 28), seed=0).double()
    x, y = torch.randn(16, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (16,))
    names = [n for n, _ in net.named_parameters() if n.endswith("weight")]
    params = dict(net.named_parameters())
    others = {n: p.detach() for n, p in params.items() if n not in names}

    def loss_fn(o, t):
        return nn.functional.cross_entropy(o, t)

    g, hg = hessian_gradient_product(net, [params[n] for n in names], [(x, y)], loss_fn, temperature=200.0)

    def loss(ws):
        return loss_fn(functional_call(net, {**others, **dict(zip(names, ws))}, (x,)) / 200.0, y)

    w0 = tuple(params[n].detach().clone() for n in names)
    _, reference = jvp(grad(loss), (w0,), (tuple(g),))
    for h, r in zip(hg, reference):
        torch.testing.assert_close(h, r, rtol=1e-10, atol=1e-18)
    # finite differences with a step small enough not to cross ReLU / max-pool switching points
    eps = 1e-6 / float(torch.sqrt(sum((gi**2).sum() for gi in g)))
    plus = grad(loss)(tuple(w + eps * gi for w, gi in zip(w0, g)))
    minus = grad(loss)(tuple(w - eps * gi for w, gi in zip(w0, g)))
    for h, p, m in zip(hg, plus, minus):
        torch.testing.assert_close(h, (p - m) / (2 * eps), rtol=1e-5, atol=1e-12)
