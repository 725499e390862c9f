"""DDGAN: Tackling the generative learning trilemma with denoising diffusion GANs (Xiao, Kreis, Vahdat,
ICLR 2022, arXiv 2112.07804).

Objective. A few (T = 2–4) large denoising steps, each a conditional GAN instead of a Gaussian. At a level t
with the level s below it (s = −1, clean, below the first level):

    real   x_{t−1} ~ q(x_{t−1} | x0),  x_t ~ q(x_t | x_{t−1})         (one forward step: a correlated pair)
    fake   x̂0 = G(x_t, t, c, z), z ~ N(0, I);  x'_{t−1} ~ q(x_{t−1} | x_t, x̂0)          (the posterior)
    D sees the PAIR: D(x_{t−1}, s, c, x_cond=x_t) — joint, x_t concatenated on channels.

    L_D = softplus(−D(x_{t−1}, x_t)) + softplus(D(x'_{t−1}, x_t)) + (γ/2)‖∇_{x_{t−1}} D(x_{t−1}, x_t)‖²
    L_G = softplus(−D(x'_{t−1}, x_t))                                   (no reconstruction term)

so D tells q(x_{t−1}, x_t) from p_θ(x_{t−1} | x_t)q(x_t): it matches the *conditional* denoising distribution.
At the clean end (s = −1) x_{t−1} is x0 itself and the fake is x̂0 (the posterior has variance 0 there).
One D step, then one G step on a fresh level and a fresh pair; Adam betas (0.5, 0.9); EMA of G for sampling.
The generator, levels, pair, posterior fake, phases and sampler are `PosteriorChainGAN`'s
(fastgen/methods/posterior_chain_gan.py); this file says what D sees and what the losses are.

Losses logged (`train/<key>`): d_real, d_fake (D phase), d_r1 (on lazy-R1 D steps only), g_adv (G phase), and refl
(G phase) with a `reward`: ReFL on G's x̂0 at a level of its own posterior chain (`PosteriorChainGAN.reward_student`).

Sampling: x_T = noise; at each of the T trained levels, from the top: x̂0 = G_ema(x_t, t, c, z) with a
fresh z, then x_{t−1} ~ q(x_{t−1} | x_t, x̂0); the last level returns x̂0. Exactly T steps: a 4-level DDGAN
is a different model from a 2-level one (supported_steps = (num_steps,)), one network evaluation per step.

Deviations / open choices (config fields; defaults from METHODS.md and NVlabs/denoising-diffusion-gan):
- Levels: the trailing grid of `num_steps` timesteps on the backbone's (SD) schedule, 4 → 249, 499, 749, 999,
  instead of the paper's own VP discretisation (`fastgen.core.ddgan_vp_alphas_cumprod`), so a pretrained
  SD-schedule UNet can initialise G and D. x_T ~ N(0, I) at t = 999 (ᾱ = 0.0047 on SD's schedule, not 0).
- z enters through the UNet's `time_cond_proj_dim` input (added to the sinusoidal time features; the paper
  uses a mapping MLP into its NCSN++'s AdaGN layers); nz = 32 (paper 100). cond_proj starts small-random
  (`z_init_scale` 0.1), not zero, so G's samples depend on z from the first step.
- G and D start from the backbone UNet (the teacher when the model config loads one); D is its encoder
  half with a logit head (`Backbone.build_discriminator(joint=True)`: `UNetEncoderDiscriminator` for a UNet),
  text-conditioned; the x_t input channels start at zero.
  D's time input is the noise level of x_{t−1} (0 at the clean end), as in the official code.
- R1 at the official strength: γ/2 on every r1_every-th D step, unscaled (`r1_lazy_scaling: true` gives
  StyleGAN2's γ/2·r1_every); γ = 0.02, every 15 as for CIFAR-10; with R1 on, D runs without gradient checkpointing (its double backward
  and checkpoint recomputation do not mix). `r1_sigma` > 0 replaces the double backward by a finite-difference
  estimate (`fastgen.core.r1_penalty_finite_difference`), for latents whose exact double backward through the
  math attention kernel does not fit in memory (SD1.5 at 512 px: benchmarks/RESULTS.md). No cosine LR decay.
  `max_grad_norm` (default off) clips both networks.
- `eval_teacher` keeps a frozen copy of the initial UNet as `teacher_unet` (not checkpointed) for the
  evaluation's DPM-Solver++ baseline rows, with CFG at `teacher_guidance_scale`.
"""

from __future__ import annotations

import torch

from fastgen.core import g_loss_softplus
from fastgen.methods.gan_phases import discriminator_losses
from fastgen.methods.posterior_chain_gan import PosteriorChainGAN


class DDGAN(PosteriorChainGAN):
    name = "ddgan"
    joint_discriminator = True  # D(x_{t−1}, s, c, x_cond=x_t): x_t enters as extra input channels

    def d_losses(self, x0: torch.Tensor, cond: torch.Tensor, r1_weight: float) -> dict[str, torch.Tensor]:
        """Real pair (x_{t−1}, x_t) vs fake pair (x'_{t−1}, x_t): the same x_t on both sides."""
        with torch.no_grad():
            pair = self.training_pair(x0, cond)
        return discriminator_losses(self.discriminator, pair.x_prev, pair.fake_prev, self.d_time(pair), cond,
                                    x_cond=pair.x_t, r1_weight=r1_weight, r1_sigma=self.hparams.r1_sigma)

    def g_losses(self, x0: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """Non-saturating adversarial loss on the fake pair; nothing else."""
        pair = self.training_pair(x0, cond)
        return {"g_adv": g_loss_softplus(self.discriminator(pair.fake_prev, self.d_time(pair), cond, x_cond=pair.x_t))}
