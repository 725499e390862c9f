"""Sampler oracles: a stub generator with a known x̂0(x, t, c[, z]) and one seeded generator per sample, so UFOGen's
and DDGAN/SIDDM's samples have exact expected values written out from the schedule. Re-noising to the wrong level,
with the wrong noise, a wrong posterior coefficient or variance, a stale z or the online (not EMA) generator fails."""

import copy

import pytest
import torch
from oracle_stubs import StubNet, acp_at, v_to_x0_eps

from fastgen.methods.ddgan import DDGAN
from fastgen.methods.siddm import SIDDM
from fastgen.methods.ufogen import UFOGen
from fastgen.networks.points import build_points_random

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

D, NZ, B = 2, 4, 3
PROMPTS = ["a point in the top row", "a point in the bottom row", "a point in the third row"]
GRIDS = {1: [999], 2: [999, 499], 4: [999, 749, 499, 249], 8: [999, 874, 749, 624, 499, 374, 249, 124]}


@pytest.fixture(scope="module")
def backbone():
    return build_points_random(D, hidden_dim=16, num_layers=1)  # v-prediction, zero terminal SNR (ᾱ_999 = 0)


def generators():
    return [torch.Generator().manual_seed(100 + b) for b in range(B)]


def x0_by_hand(net, x, t, cond, acp, z=None):
    return v_to_x0_eps(net.by_hand(x, torch.full((len(x),), t), cond, z), x, t, acp)[0]


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_ufogen_samples_predict_then_renoise_to_the_next_grid_time_with_fresh_noise(backbone, steps):
    """x̂0 = G_ema(x_t, t, c); x_{t'} = α_{t'} x̂0 + σ_{t'} ε (the marginal of the prediction, ε from the sample's own
    generator) for the next grid time t'; the last step returns x̂0."""
    m = UFOGen(copy.deepcopy(backbone), eval_teacher=False)
    m.ema_unet, m.backbone.unet = StubNet(0.6, 0.8, 0.4), StubNet(0.0, 0.0, 0.0)  # samples come from the EMA
    noise = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    got = m.sample(noise, PROMPTS, steps, generator=generators())

    cond = backbone.encode_prompts(PROMPTS)
    gens, x, acp = generators(), noise.double(), backbone.alphas_cumprod.double()
    grid = GRIDS[steps]
    for i, t in enumerate(grid):
        x0_hat = x0_by_hand(m.ema_unet, x, t, cond, acp)
        if i + 1 < len(grid):
            eps = torch.stack([torch.randn(D, generator=g) for g in gens]).double()
            x = acp_at(acp, grid[i + 1]).sqrt() * x0_hat + (1 - acp_at(acp, grid[i + 1])).sqrt() * eps
    torch.testing.assert_close(got.double(), x0_hat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [DDGAN, SIDDM])
def test_posterior_gan_samples_walk_the_posterior_chain_over_its_levels(backbone, cls):
    """Levels 999 → 749 → 499 → 249 (T = 4): x̂0 = G_ema(x_t, t, c, z) with a fresh z ~ N(0, I), then
    x_s ~ q(x_s | x_t, x̂0) = N(√ᾱ_s(1 − ᾱ_t/ᾱ_s)/(1 − ᾱ_t)·x̂0 + √(ᾱ_t/ᾱ_s)(1 − ᾱ_s)/(1 − ᾱ_t)·x_t,
    (1 − ᾱ_s)(1 − ᾱ_t/ᾱ_s)/(1 − ᾱ_t)) (Ho et al. 2020, eqs. 6–7 over a gap), z then the posterior noise drawn from the
    sample's own generator; x̂0 at the last level."""
    m = cls(copy.deepcopy(backbone), eval_teacher=False, nz=NZ, num_steps=4)
    m.ema_unet, m.backbone.unet = StubNet(0.6, 0.8, 0.4, 1.5), StubNet(0.0, 0.0, 0.0)
    noise = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    got = m.sample(noise, PROMPTS, 4, generator=generators())

    cond = backbone.encode_prompts(PROMPTS)
    gens, x, acp = generators(), noise.double(), backbone.alphas_cumprod.double()
    levels = [999, 749, 499, 249, -1]
    for t, s in zip(levels[:-1], levels[1:]):
        z = torch.stack([torch.randn(NZ, generator=g) for g in gens])
        x0_hat = x0_by_hand(m.ema_unet, x, t, cond, acp, z)
        if s < 0:
            break
        a_t, a_s = acp_at(acp, t), acp_at(acp, s)
        mean = a_s.sqrt() * (1 - a_t / a_s) / (1 - a_t) * x0_hat + (a_t / a_s).sqrt() * (1 - a_s) / (1 - a_t) * x
        var = (1 - a_s) * (1 - a_t / a_s) / (1 - a_t)
        x = mean + var.sqrt() * torch.stack([torch.randn(D, generator=g) for g in gens]).double()
    torch.testing.assert_close(got.double(), x0_hat, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="samples with \\(4,\\) steps only"):
        m.sample(noise, PROMPTS, 2)
