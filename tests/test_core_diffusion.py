"""The VP process helpers agree with diffusers' DDPM/DDIM schedulers and with closed forms."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from fastgen.core import (
    alpha_sigma,
    ddim_step,
    eps_to_x0,
    prediction_to_x0_eps,
    q_posterior_mean_var,
    q_posterior_sample,
    q_sample,
    q_step,
    scaled_linear_alphas_cumprod,
    v_to_eps,
    v_to_x0,
    x0_to_eps,
)

ACP = scaled_linear_alphas_cumprod()
DT = torch.float64


def _sd_scheduler(cls, **kw):
    return cls(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **kw)


def test_alpha_sigma_shapes_and_clean_level():
    t = torch.tensor([-1, 0, 999])
    alpha, sigma = alpha_sigma(ACP, t, ndim=4, dtype=torch.float32)
    assert alpha.shape == (3, 1, 1, 1) and alpha.dtype == torch.float32
    assert alpha[0].item() == 1.0 and sigma[0].item() == 0.0
    torch.testing.assert_close(alpha.flatten()[1:] ** 2 + sigma.flatten()[1:] ** 2, torch.ones(2))
    torch.testing.assert_close(alpha[2].flatten().double(), ACP[999:].sqrt().float().double())
    a_int, s_int = alpha_sigma(ACP, 500, ndim=3)
    assert a_int.shape == (1, 1, 1) and a_int.dtype == torch.float64
    assert torch.isclose(s_int.flatten(), (1 - ACP[500]).sqrt())


@pytest.mark.parametrize("bad", [1000, -2, torch.tensor([3, 1000]), torch.tensor([0.5])])
def test_bad_timesteps_raise(bad):
    with pytest.raises(ValueError, match="timesteps"):
        alpha_sigma(ACP, bad, ndim=2)


def test_q_sample_matches_add_noise():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    ref = _sd_scheduler(DDPMScheduler).add_noise(x0, noise, t)
    out = q_sample(x0, t, noise, ACP)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q_sample(x0, -1, noise, ACP), x0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_step_matches_ddim_trailing(prediction_type):
    """One eta=0 DDIMScheduler step on the 4-step trailing grid (set_alpha_to_one: the last step lands on x0)."""
    sched = _sd_scheduler(
        DDIMScheduler,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
        prediction_type=prediction_type,
    )
    sched.alphas_cumprod = ACP.clone()  # float64 on both sides: compare formulas, not float32 rounding
    sched.set_timesteps(4)
    grid = sched.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    for i, t in enumerate(grid):
        s = grid[i + 1] if i + 1 < len(grid) else -1
        x_t = torch.randn(2, 4, 8, 8, generator=g, dtype=DT)
        out = torch.randn(2, 4, 8, 8, generator=g, dtype=DT)
        ref = sched.step(out, t, x_t, eta=0.0).prev_sample
        x0_hat, eps_hat = prediction_to_x0_eps(out, x_t, torch.full((2,), t), ACP, prediction_type)
        torch.testing.assert_close(ddim_step(x0_hat, eps_hat, s, ACP), ref)


def test_prediction_conversions_are_consistent():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(3, 2, 4, generator=g, dtype=DT), torch.randn(3, 2, 4, generator=g, dtype=DT)
    t = torch.tensor([0, 400, 999])
    x_t = q_sample(x0, t, eps, ACP)
    alpha, sigma = alpha_sigma(ACP, t, 3)
    v = alpha * eps - sigma * x0
    torch.testing.assert_close(eps_to_x0(eps, x_t, t, ACP), x0)
    torch.testing.assert_close(x0_to_eps(x0, x_t, t, ACP), eps)
    torch.testing.assert_close(v_to_x0(v, x_t, t, ACP), x0)
    torch.testing.assert_close(v_to_eps(v, x_t, t, ACP), eps)
    for kind, out in [("epsilon", eps), ("v_prediction", v), ("sample", x0)]:
        got_x0, got_eps = prediction_to_x0_eps(out, x_t, t, ACP, kind)
        torch.testing.assert_close(got_x0, x0)
        torch.testing.assert_close(got_eps, eps)
    with pytest.raises(ValueError, match="v_prediction"):
        prediction_to_x0_eps(eps, x_t, t, ACP, "flow")
    # eta = 0 DDIM to the same time re-creates x_t; to s = -1 it returns x0_hat
    torch.testing.assert_close(ddim_step(x0, eps, t, ACP), x_t)
    torch.testing.assert_close(ddim_step(x0, eps, -1, ACP), x0)


def _ddpm_sample_scheduler():
    """DDPMScheduler predicting x0, run in float64 on our (identical, see test_core_schedules) schedule so the
    comparison checks the posterior formula rather than float32 cancellation in 1 - ᾱ_t/ᾱ_s."""
    sched = _sd_scheduler(DDPMScheduler, prediction_type="sample", clip_sample=False, variance_type="fixed_small")
    sched.alphas_cumprod = ACP.clone()
    return sched


def test_posterior_gap_one_matches_ddpm_step():
    """q(x_{t-1} | x_t, x0) equals DDPMScheduler.step (fixed_small, sample prediction) with the same noise."""
    sched = _ddpm_sample_scheduler()
    for t in [0, 1, 37, 500, 999]:
        g = torch.Generator().manual_seed(t)
        x0, x_t = torch.randn(2, 3, 4, 4, generator=g, dtype=DT), torch.randn(2, 3, 4, 4, generator=g, dtype=DT)
        ref = sched.step(x0, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
        noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(7), dtype=DT)
        out = q_posterior_sample(x0, x_t, torch.full((2,), t), torch.full((2,), t - 1), noise, ACP)
        torch.testing.assert_close(out, ref)
        if t > 0:
            _, var = q_posterior_mean_var(x0, x_t, t, t - 1, ACP)
            torch.testing.assert_close(var.flatten(), sched._get_variance(t).reshape(1))


def test_posterior_large_gap_matches_ddpm_custom_timesteps():
    sched = _ddpm_sample_scheduler()
    sched.set_timesteps(timesteps=[999, 749, 499, 249])
    for t, s in [(999, 749), (749, 499), (499, 249)]:
        g = torch.Generator().manual_seed(t)
        x0, x_t = torch.randn(2, 3, 4, 4, generator=g, dtype=DT), torch.randn(2, 3, 4, 4, generator=g, dtype=DT)
        ref = sched.step(x0, t, x_t, generator=torch.Generator().manual_seed(3)).prev_sample
        noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=DT)
        torch.testing.assert_close(q_posterior_sample(x0, x_t, t, s, noise, ACP), ref)


@pytest.mark.parametrize("t, s", [(999, 749), (500, 0), (300, 299), (999, -1), (20, -1)])
def test_posterior_is_bayes_of_forward_kernels(t, s):
    """Conjugate-Gaussian posterior of prior q(x_s|x0) = N(a_s x0, 1-ᾱ_s) and likelihood q(x_t|x_s)."""
    x0, x_t = torch.tensor([[0.7], [-1.2]], dtype=DT), torch.tensor([[0.3], [2.0]], dtype=DT)
    a_s = ACP[s] if s >= 0 else torch.tensor(1.0, dtype=DT)
    a_ts = ACP[t] / a_s
    mean, var = q_posterior_mean_var(x0, x_t, t, s, ACP)
    if s == -1:
        torch.testing.assert_close(mean, x0)
        assert var.abs().max() == 0
        return
    prec = 1 / (1 - a_s) + a_ts / (1 - a_ts)
    ref_mean = (a_s.sqrt() * x0 / (1 - a_s) + a_ts.sqrt() * x_t / (1 - a_ts)) / prec
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(var.flatten(), (1 / prec).reshape(1))


def test_forward_kernels_compose_monte_carlo():
    """q_step after q_sample has q(x_t|x0)'s marginal; the posterior after q_sample(x0, t) has q(x_s|x0)'s."""
    g = torch.Generator().manual_seed(0)
    n, x0 = 200_000, torch.full((200_000, 1), 0.8, dtype=DT)
    s, t = 249, 749
    x_s = q_sample(x0, s, torch.randn(n, 1, generator=g, dtype=DT), ACP)
    x_t = q_step(x_s, s, t, torch.randn(n, 1, generator=g, dtype=DT), ACP)
    assert abs(x_t.mean().item() - 0.8 * ACP[t].sqrt().item()) < 0.01
    assert abs(x_t.var().item() - (1 - ACP[t]).item()) < 0.01
    x_t = q_sample(x0, t, torch.randn(n, 1, generator=g, dtype=DT), ACP)
    x_s = q_posterior_sample(x0, x_t, t, s, torch.randn(n, 1, generator=g, dtype=DT), ACP)
    assert abs(x_s.mean().item() - 0.8 * ACP[s].sqrt().item()) < 0.01
    assert abs(x_s.var().item() - (1 - ACP[s]).item()) < 0.01
    torch.testing.assert_close(q_step(x0, -1, t, x_t * 0, ACP), x0 * ACP[t].sqrt())


def test_v_prediction_at_zero_terminal_snr_is_finite():
    """At ᾱ_T = 0 a v-prediction gives x̂0 = −v̂ and ε̂ = x_T exactly (no division by α_T)."""
    from fastgen.core import make_alphas_cumprod, prediction_to_x0_eps

    acp = make_alphas_cumprod("scaled_linear", rescale_betas_zero_snr=True)
    v, x_t = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    x0, eps = prediction_to_x0_eps(v, x_t, 999, acp, "v_prediction")
    torch.testing.assert_close(x0, -v)
    torch.testing.assert_close(eps, x_t)
