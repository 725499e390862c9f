"""Oracles for every method's objective wiring: a stub discriminator with known logits and a denoiser that returns
a fixed x̂0, so each named loss term has an exact expected value, and the teacher's guided DDIM step written out
by hand. Swapping real and fake, flipping a sign, judging the wrong time or dropping a term fails here."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.core import alpha_sigma, q_posterior_mean_var
from fastgen.methods.consistency_distillation import teacher_solver_step
from fastgen.methods.ddgan import DDGAN
from fastgen.methods.siddm import SIDDM
from fastgen.methods.ufogen import UFOGen
from fastgen.networks import build_random

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

X0, X0_HAT = 0.5, -0.5  # data and the generator's fixed prediction: far apart, so real and fake are told apart


class StubDiscriminator(nn.Module):
    """logits = 3·mean(x) − mean(x_cond) + 0.1: a known function of what D is shown; records every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    @staticmethod
    def logits(x, x_cond=None):
        dims = tuple(range(1, x.ndim))
        out = 3 * x.mean(dims) + 0.1
        return out - x_cond.mean(dims) if x_cond is not None else out

    def forward(self, x, t, cond, x_cond=None):
        self.calls.append((x.detach().clone(), t.clone(), None if x_cond is None else x_cond.detach().clone()))
        return self.logits(x, x_cond)


@pytest.fixture(scope="module")
def backbone():
    return build_random("mnist_pixel")


def batch_x0(n=64):
    return torch.full((n, 1, 32, 32), X0)


def standardised(x, mean, std):
    """(x − mean)/std pooled over a batch: N(0, 1) when x ~ N(mean, std²)."""
    z = ((x - mean) / std).flatten()
    return z.mean().item(), z.var().item()


def assert_standard_normal(x, mean, std):
    m, v = standardised(x, mean, std)
    assert abs(m) < 0.02 and abs(v - 1) < 0.03, (m, v)


def stub_ufogen(backbone, monkeypatch, **kw):
    m = UFOGen(copy.deepcopy(backbone), eval_teacher=False, t_gap=250, **kw)
    m.discriminator = StubDiscriminator()
    monkeypatch.setattr(m.backbone, "denoise", lambda unet, x_t, t, cond, **k: (torch.full_like(x_t, X0_HAT), torch.zeros_like(x_t)))
    return m


def test_ufogen_discriminator_terms(backbone, monkeypatch):
    """D is shown [real x_s; fake x'_s] at s = t − Δ: real ~ N(α_s x0, σ_s²), fake ~ N(α_s x̂0, σ_s²) (the marginal of
    the prediction), d_real = softplus(−D(real)), d_fake = softplus(D(fake))."""
    m = stub_ufogen(backbone, monkeypatch)
    torch.manual_seed(0)
    x0 = batch_x0()
    losses = m.d_losses(x0, cond=None)
    (x, s, _), = m.discriminator.calls
    real, fake = x.chunk(2)
    s_real, s_fake = s.chunk(2)
    assert torch.equal(s_real, s_fake) and s_real.max() <= 999 - 250
    alpha, sigma = alpha_sigma(m.backbone.alphas_cumprod, s_real, x0.ndim)
    assert_standard_normal(real, alpha * X0, sigma)
    assert_standard_normal(fake, alpha * X0_HAT, sigma)
    torch.testing.assert_close(losses["d_real"], F.softplus(-StubDiscriminator.logits(real)).mean())
    torch.testing.assert_close(losses["d_fake"], F.softplus(StubDiscriminator.logits(fake)).mean())
    assert set(losses) == {"d_real", "d_fake"}


@pytest.mark.parametrize("lambda_rec", [1.0, 20.0])
def test_ufogen_generator_terms(backbone, monkeypatch, lambda_rec):
    """g_adv = softplus(−D(x'_s)) on a fake from the prediction's marginal; g_rec = λ_rec·‖x0 − x̂0‖² exactly."""
    m = stub_ufogen(backbone, monkeypatch, lambda_rec=lambda_rec)
    torch.manual_seed(0)
    losses = m.g_losses(batch_x0(), cond=None)
    (fake, s, _), = m.discriminator.calls
    alpha, sigma = alpha_sigma(m.backbone.alphas_cumprod, s, fake.ndim)
    assert_standard_normal(fake, alpha * X0_HAT, sigma)
    torch.testing.assert_close(losses["g_adv"], F.softplus(-StubDiscriminator.logits(fake)).mean())
    torch.testing.assert_close(losses["g_rec"], torch.tensor(lambda_rec * (X0 - X0_HAT) ** 2))
    assert set(losses) == {"g_adv", "g_rec"}


def stub_posterior_gan(cls, backbone, monkeypatch):
    m = cls(copy.deepcopy(backbone), eval_teacher=False, nz=4)
    m.discriminator = StubDiscriminator()
    monkeypatch.setattr(m, "generate", lambda unet, x_t, t, cond, z: torch.full_like(x_t, X0_HAT))
    return m


@pytest.mark.parametrize("cls", [DDGAN, SIDDM])
def test_posterior_gan_discriminator_terms(cls, backbone, monkeypatch):
    """D is shown [real x_{t−1}; fake x'_{t−1} ~ q(x_{t−1} | x_t, x̂0)] at the time of x_{t−1}; DDGAN's joint D also
    gets x_t for both halves, SIDDM's marginal D never does."""
    m = stub_posterior_gan(cls, backbone, monkeypatch)
    torch.manual_seed(0)
    x0 = batch_x0(256)
    losses = m.d_losses(x0, cond=None, r1_weight=0.0)
    (x, t_d, x_cond), = m.discriminator.calls
    real, fake = x.chunk(2)
    x_t = None  # what a joint D is shown next to x_{t−1}
    if cls is DDGAN:
        x_t, x_t_again = x_cond.chunk(2)
        assert torch.equal(x_t, x_t_again)
    else:
        assert x_cond is None
    acp = m.backbone.alphas_cumprod
    for level, t in zip(m.prev_levels.tolist(), m.levels.tolist()):
        sel = t_d.chunk(2)[0] == max(level, 0)
        if level < 0:  # the clean end: real x0, fake x̂0
            assert torch.all(real[sel] == X0) and torch.all(fake[sel] == X0_HAT)
            continue
        alpha, sigma = alpha_sigma(acp, level, x0.ndim)
        assert_standard_normal(real[sel], alpha * X0, sigma)
        if cls is DDGAN:
            mean, var = q_posterior_mean_var(torch.full_like(fake[sel], X0_HAT), x_t[sel], t, level, acp)
            assert_standard_normal(fake[sel], mean, var.sqrt())
    torch.testing.assert_close(losses["d_real"], F.softplus(-StubDiscriminator.logits(real, x_t)).mean())
    torch.testing.assert_close(losses["d_fake"], F.softplus(StubDiscriminator.logits(fake, x_t)).mean())
    assert set(losses) == {"d_real", "d_fake"}


@pytest.mark.parametrize("cls", [DDGAN, SIDDM])
def test_posterior_gan_generator_terms(cls, backbone, monkeypatch):
    """g_adv = softplus(−D(x'_{t−1}[, x_t])); DDGAN has no other term, SIDDM adds λ_AFD·AFD with fresh noise."""
    m = stub_posterior_gan(cls, backbone, monkeypatch)
    torch.manual_seed(0)
    losses = m.g_losses(batch_x0(), cond=None)
    (fake, _, x_cond), = m.discriminator.calls
    torch.testing.assert_close(losses["g_adv"], F.softplus(-StubDiscriminator.logits(fake, x_cond)).mean())
    if cls is DDGAN:
        assert x_cond is not None and set(losses) == {"g_adv"}
    else:
        assert x_cond is None and set(losses) == {"g_adv", "g_afd"} and losses["g_afd"] > 0


class LinearEps(nn.Module):
    """A stub eps-network: ε̂ = 0.3·x + mean(cond) (so the prompt and the empty prompt give different outputs)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, encoder_hidden_states):
        out = 0.3 * x + encoder_hidden_states.mean(dim=(1, 2)).view(-1, *([1] * (x.ndim - 1)))
        return type("Out", (), {"sample": out})()


def x0_eps_by_hand(out, x_t, t, acp, prediction_type):
    """(x̂0, ε̂) of a network output, written out: ε: x̂0 = (x_t − σ_t ε̂)/α_t; v: x̂0 = α_t x_t − σ_t v̂, ε̂ = σ_t x_t + α_t v̂."""
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    alpha, sigma = acp[t].sqrt().view(shape), (1 - acp[t]).sqrt().view(shape)
    if prediction_type == "epsilon":
        return (x_t - sigma * out) / alpha, out
    return alpha * x_t - sigma * out, sigma * x_t + alpha * out


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scale", [2.0, "per-sample"])
def test_teacher_solver_step_is_the_guided_ddim_step(scale, prediction_type, backbone):
    """LCM/TSCD's target step (LCM eq. 8): x̂0^w = x̂0_u + w(x̂0_c − x̂0_u), ε̂^w likewise, x_s = α_s x̂0^w + σ_s ε̂^w —
    written out here for an ε- or v-network with a known output."""
    bb = copy.deepcopy(backbone)
    bb.prediction_type = prediction_type
    acp = bb.alphas_cumprod.double()
    torch.manual_seed(0)
    x_t = torch.randn(3, 1, 4, 4)
    cond, uncond = torch.randn(3, 5, 8), torch.zeros(3, 5, 8)
    t, s = torch.tensor([999, 519, 39]), torch.tensor([979, 499, 19])
    w = torch.tensor([1.5, 2.0, 7.5]) if scale == "per-sample" else torch.tensor(scale)
    got = teacher_solver_step(bb, LinearEps(), x_t, t, s, cond, uncond, w if scale == "per-sample" else scale)

    def by_hand(c):
        out = 0.3 * x_t.double() + c.double().mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return x0_eps_by_hand(out, x_t.double(), t, acp, prediction_type)

    (x0_c, eps_c), (x0_u, eps_u) = by_hand(cond), by_hand(uncond)
    w = w.double().view(-1, 1, 1, 1)
    x0_w, eps_w = x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u)
    expected = acp[s].sqrt().view(-1, 1, 1, 1) * x0_w + (1 - acp[s]).sqrt().view(-1, 1, 1, 1) * eps_w
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)
