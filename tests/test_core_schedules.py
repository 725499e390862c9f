"""Schedules and timestep grids agree with diffusers' schedulers."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler

from fastgen.core import (
    cosine_alphas_cumprod,
    ddgan_vp_alphas_cumprod,
    lcm_solver_grid,
    lcm_timesteps,
    linear_alphas_cumprod,
    make_alphas_cumprod,
    scaled_linear_alphas_cumprod,
    trailing_timesteps,
)


@pytest.mark.parametrize(
    "fn, diffusers_kw",
    [
        (scaled_linear_alphas_cumprod, dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),
        (linear_alphas_cumprod, dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
        (cosine_alphas_cumprod, dict(beta_schedule="squaredcos_cap_v2")),
    ],
)
def test_schedule_matches_diffusers(fn, diffusers_kw):
    ours = fn()
    ref = DDPMScheduler(num_train_timesteps=1000, **diffusers_kw).alphas_cumprod.double()
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_make_alphas_cumprod_dispatches_and_rejects_unknown():
    torch.testing.assert_close(make_alphas_cumprod("scaled_linear"), scaled_linear_alphas_cumprod())
    torch.testing.assert_close(make_alphas_cumprod("linear", T=10, beta_end=0.1), linear_alphas_cumprod(10, 1e-4, 0.1))
    torch.testing.assert_close(make_alphas_cumprod("cosine", T=50), cosine_alphas_cumprod(50))
    with pytest.raises(ValueError, match="scaled_linear"):
        make_alphas_cumprod("sigmoid")


def test_ddgan_schedule_matches_continuous_vp():
    acp = ddgan_vp_alphas_cumprod(4)
    assert acp.shape == (5,)
    # telescoping product of DDGAN's betas: (1 - 1e-8) * alpha_bar(t_i) / alpha_bar(t_0)
    t = torch.tensor([i / 4 * (1 - 1e-3) + 1e-3 for i in range(5)], dtype=torch.float64)
    alpha_bar = torch.exp(-0.25 * t**2 * (20.0 - 0.1) * 2 - 0.1 * t)
    torch.testing.assert_close(acp, (1 - 1e-8) * alpha_bar / alpha_bar[0], atol=1e-12, rtol=1e-10)
    expected = torch.tensor([1.0, 0.5217, 0.07868, 0.003429, 4.319e-5], dtype=torch.float64)
    torch.testing.assert_close(acp, expected, rtol=1e-3, atol=0)
    assert torch.all(acp[1:] < acp[:-1])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 7, 8, 10, 25, 50, 1000])
def test_trailing_timesteps_match_ddim_trailing(n):
    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    sched.set_timesteps(n)
    assert torch.equal(trailing_timesteps(n), sched.timesteps)


def test_trailing_timesteps_values():
    assert trailing_timesteps(1).tolist() == [999]
    assert trailing_timesteps(2).tolist() == [999, 499]
    assert trailing_timesteps(4).tolist() == [999, 749, 499, 249]
    assert trailing_timesteps(8).tolist() == [999, 874, 749, 624, 499, 374, 249, 124]
    assert trailing_timesteps(4).dtype == torch.long
    with pytest.raises(ValueError):
        trailing_timesteps(0)


def test_lcm_timesteps_match_lcm_scheduler():
    sched = LCMScheduler(num_train_timesteps=1000, original_inference_steps=50)
    for n in range(1, 51):
        sched.set_timesteps(n)
        assert torch.equal(lcm_timesteps(n), sched.timesteps), n
    assert lcm_timesteps(1).tolist() == [999]
    assert lcm_timesteps(2).tolist() == [999, 499]
    assert lcm_timesteps(4).tolist() == [999, 759, 499, 259]
    with pytest.raises(ValueError, match="original_steps"):
        lcm_timesteps(51)


def test_lcm_solver_grid():
    grid = lcm_solver_grid()
    assert grid.tolist() == list(range(19, 1000, 20))
    assert lcm_solver_grid(1000, 4).tolist() == [249, 499, 749, 999]
    assert lcm_solver_grid(1000, 50).diff().eq(20).all()


def test_zero_terminal_snr_matches_diffusers():
    """Lin et al. 2024, Alg. 1: ᾱ_T = 0, ᾱ_0 kept; equal to diffusers' rescale_betas_zero_snr schedule."""
    from fastgen.core import rescale_zero_terminal_snr

    acp = make_alphas_cumprod("scaled_linear", rescale_betas_zero_snr=True)
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                        rescale_betas_zero_snr=True).alphas_cumprod.double()
    torch.testing.assert_close(acp, ref, atol=1e-6, rtol=1e-5)
    assert acp[-1] == 0 and acp[0] == scaled_linear_alphas_cumprod()[0]
    assert torch.all(acp[1:] < acp[:-1])  # still strictly decreasing
    torch.testing.assert_close(rescale_zero_terminal_snr(acp), acp)  # idempotent
