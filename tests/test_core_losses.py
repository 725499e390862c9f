"""GAN losses, R1, distances and EMA against their closed forms."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastgen.core import (
    copy_params_,
    d_loss_clamped_bce,
    d_loss_softplus,
    ema_update_,
    g_loss_clamped_bce,
    g_loss_softplus,
    mse,
    pseudo_huber,
    r1_penalty,
    r1_penalty_finite_difference,
)

LOG2 = math.log(2.0)


def test_softplus_losses_closed_forms():
    zeros = torch.zeros(4)
    real, fake = d_loss_softplus(zeros, zeros)
    assert math.isclose(real.item(), LOG2, rel_tol=1e-6) and math.isclose(fake.item(), LOG2, rel_tol=1e-6)
    assert math.isclose(g_loss_softplus(zeros).item(), LOG2, rel_tol=1e-6)
    real, fake = d_loss_softplus(torch.full((3,), 30.0), torch.full((3,), -30.0))  # a perfect discriminator
    assert real.item() < 1e-12 and fake.item() < 1e-12
    assert math.isclose(g_loss_softplus(torch.full((2,), -30.0)).item(), 30.0, rel_tol=1e-6)
    real, fake = d_loss_softplus(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0]))
    assert math.isclose(real.item(), (math.log1p(math.exp(-1)) + math.log1p(math.exp(2))) / 2, rel_tol=1e-6)
    assert math.isclose(fake.item(), (math.log1p(math.exp(0.5)) + math.log1p(math.exp(3))) / 2, rel_tol=1e-6)


def test_clamped_bce_margin():
    zeros = torch.zeros(2)
    for loss in (*d_loss_clamped_bce(zeros, zeros), g_loss_clamped_bce(zeros)):
        assert math.isclose(loss.item(), LOG2, rel_tol=1e-6)
    real = torch.tensor([3.0, 0.2], requires_grad=True)
    fake = torch.tensor([-3.0, -0.2], requires_grad=True)
    loss_real, loss_fake = d_loss_clamped_bce(real, fake, margin=0.5)
    expected = (F.softplus(torch.tensor(-0.5)) + F.softplus(torch.tensor(-0.2))) / 2  # symmetric inputs
    torch.testing.assert_close(loss_real, expected)
    torch.testing.assert_close(loss_fake, expected)
    (loss_real + loss_fake).backward()
    assert real.grad[0] == 0 and fake.grad[0] == 0  # confident beyond the margin: no gradient
    assert real.grad[1] < 0 and fake.grad[1] > 0
    g_fake = torch.tensor([2.0, 0.0], requires_grad=True)
    g_loss = g_loss_clamped_bce(g_fake, margin=0.5)
    torch.testing.assert_close(g_loss, (F.softplus(torch.tensor(-0.5)) + LOG2) / 2)
    g_loss.backward()
    assert g_fake.grad[0] == 0 and g_fake.grad[1] < 0


def test_r1_penalty_linear_discriminator():
    w = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    x = torch.randn(5, 3, 4, 4).requires_grad_(True)
    logits = (x * w).flatten(1).sum(1) + 1.0
    penalty = r1_penalty(logits, x)
    torch.testing.assert_close(penalty, w.pow(2).sum())
    penalty.backward()  # create_graph=True: the penalty trains D
    torch.testing.assert_close(w.grad, 2 * w.detach())


def test_finite_difference_r1_estimates_the_gradient_norm():
    """Linear D: E_ε[(w·ε)²] = ‖w‖² for any σ; a smooth nonlinear D: the exact R1 as σ -> 0."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 4, generator=g)
    x = torch.randn(1, 3, 4, 4, generator=g).expand(40_000, -1, -1, -1)
    eps = torch.randn(x.shape, generator=g)
    linear = lambda inputs: (inputs * w).flatten(1).sum(1) + 1.0  # noqa: E731
    estimate = r1_penalty_finite_difference(linear(x), linear(x + 0.5 * eps), 0.5)
    torch.testing.assert_close(estimate, w.pow(2).sum(), rtol=0.04, atol=0)

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    net = net.double()
    x, eps = x.double(), eps.double()
    x_leaf = x[:1].clone().requires_grad_(True)
    exact = r1_penalty(net(x_leaf), x_leaf)
    estimate = r1_penalty_finite_difference(net(x), net(x + 1e-3 * eps), 1e-3)
    torch.testing.assert_close(estimate, exact.detach(), rtol=0.04, atol=0)
    with pytest.raises(ValueError, match="sigma > 0"):
        r1_penalty_finite_difference(net(x), net(x), 0.0)


def test_r1_penalty_requires_grad_inputs():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(x.sum(1), x)


def test_pseudo_huber_limits():
    c = 0.001
    a = torch.zeros(1000, dtype=torch.float64)  # float64: sqrt(d² + c²) − c cancels in float32 for d << c
    small = torch.full((1000,), 1e-5, dtype=torch.float64)
    assert math.isclose(pseudo_huber(small, a, c).item(), 1e-10 / (2 * c), rel_tol=1e-3)  # quadratic near 0
    large = torch.full((1000,), 3.0, dtype=torch.float64)
    assert math.isclose(pseudo_huber(large, a, c).item(), 3.0 - c, rel_tol=1e-6)  # linear far away
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    torch.testing.assert_close(pseudo_huber(x, y, 0.1), torch.mean(torch.sqrt((x - y) ** 2 + 0.01) - 0.1))
    assert pseudo_huber(x.bfloat16(), y.bfloat16()).dtype == torch.float32


def test_mse():
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    torch.testing.assert_close(mse(x, y), F.mse_loss(x, y))
    assert mse(x.half(), y.half()).dtype == torch.float32


def test_ema_update_and_copy():
    target = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    source = [torch.full((3,), 3.0), torch.full((2, 2), -1.0)]
    ema_update_(target, source, decay=0.9)
    torch.testing.assert_close(target[0].detach(), torch.full((3,), 0.9 + 0.3))
    torch.testing.assert_close(target[1].detach(), torch.full((2, 2), -0.1))
    assert target[0].grad_fn is None
    ema_update_(target, iter(source), decay=0.0)
    torch.testing.assert_close(target[1].detach(), source[1])
    copy_params_(target, [torch.full((3,), 7.0), torch.full((2, 2), 8.0)])
    assert target[0].detach().eq(7).all() and target[1].detach().eq(8).all()
    with pytest.raises(ValueError, match="source has 1"):
        ema_update_(target, source[:1], decay=0.5)
