"""Pure tensor math shared by every method: schedules, the VP process, losses, EMA (imports torch only); files.py
writes every file atomically and reads checkpoints strictly."""
from fastgen.core.consistency import (
    consistency_output, guidance_scale_embedding, prediction_unit_weights, lcm_boundary_scalings,
)
from fastgen.core.diffusion import (
    PREDICTION_TYPES,
    alpha_sigma,
    append_dims,
    ddim_step,
    eps_to_x0,
    prediction_target,
    prediction_to_x0_eps,
    q_posterior_mean_var,
    q_posterior_sample,
    q_sample,
    q_step,
    v_to_eps,
    v_to_x0,
    x0_to_eps,
)
from fastgen.core.distribution_matching import distribution_matching_gradient, distribution_matching_loss
from fastgen.core.distances import mse, pseudo_huber
from fastgen.core.ema import copy_params_, ema_update_
from fastgen.core.gan_losses import (
    d_loss_clamped_bce,
    d_loss_softplus,
    g_loss_clamped_bce,
    g_loss_softplus,
    r1_penalty,
    r1_penalty_finite_difference,
)
from fastgen.core.guidance import classifier_free_guidance
from fastgen.core.noise import randn_per_sample
from fastgen.core.schedules import (
    cosine_alphas_cumprod,
    ddgan_vp_alphas_cumprod,
    lcm_solver_grid,
    lcm_timesteps,
    linear_alphas_cumprod,
    make_alphas_cumprod,
    rescale_zero_terminal_snr,
    scaled_linear_alphas_cumprod,
    strength_timestep,
    trailing_timesteps,
)

__all__ = [
    "PREDICTION_TYPES",
    "alpha_sigma",
    "append_dims",
    "classifier_free_guidance",
    "consistency_output",
    "prediction_unit_weights",
    "copy_params_",
    "cosine_alphas_cumprod",
    "d_loss_clamped_bce",
    "d_loss_softplus",
    "ddgan_vp_alphas_cumprod",
    "ddim_step",
    "distribution_matching_gradient",
    "distribution_matching_loss",
    "ema_update_",
    "eps_to_x0",
    "g_loss_clamped_bce",
    "g_loss_softplus",
    "guidance_scale_embedding",
    "lcm_boundary_scalings",
    "lcm_solver_grid",
    "lcm_timesteps",
    "linear_alphas_cumprod",
    "make_alphas_cumprod",
    "mse",
    "prediction_target",
    "prediction_to_x0_eps",
    "pseudo_huber",
    "q_posterior_mean_var",
    "q_posterior_sample",
    "q_sample",
    "q_step",
    "r1_penalty",
    "r1_penalty_finite_difference",
    "randn_per_sample",
    "rescale_zero_terminal_snr",
    "scaled_linear_alphas_cumprod",
    "strength_timestep",
    "trailing_timesteps",
    "v_to_eps",
    "v_to_x0",
    "x0_to_eps",
]
