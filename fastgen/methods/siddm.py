"""SIDDM: Semi-implicit denoising diffusion models (Xu et al., NeurIPS 2023, arXiv 2306.12511).

Objective. DDGAN's joint q(x_{t−1}, x_t) = q(x_t | x_{t−1}) q(x_{t−1}) is split: the marginal q(x_{t−1}) is
matched adversarially, the conditional q(x_t | x_{t−1}) explicitly (auxiliary forward diffusion, AFD). At a
level t with the level s below it (s = −1, clean, below the first level):

    real   x_{t−1} ~ q(x_{t−1} | x0),  x_t = q_step(x_{t−1}, ε)           (one forward step with noise ε)
    fake   x̂0 = G(x_t, t, c, z), z ~ N(0, I);  x'_{t−1} ~ q(x_{t−1} | x_t, x̂0)          (the posterior, as DDGAN)
    D sees x_{t−1} ONLY: D(x_{t−1}, s, c) — marginal, no x_t.
    AFD    x'_t = q_step(x'_{t−1}, ε'): the fake re-noised one forward step with FRESH noise ε' (paper eq. 11)

    L_D = softplus(−D(x_{t−1})) + softplus(D(x'_{t−1})) + (γ/2)‖∇_{x_{t−1}} D(x_{t−1})‖²
    L_G = softplus(−D(x'_{t−1})) + λ_AFD·‖x'_t − x_t‖²                 (λ_AFD = 1.0, the paper's best)

At the clean end (s = −1) x_{t−1} is x0 and the fake is x̂0. One D step, then one G step on a fresh level
and pair; EMA of G for sampling. The generator, levels, pair, posterior fake, phases and sampler are
`PosteriorChainGAN`'s (fastgen/methods/posterior_chain_gan.py), shared with DDGAN; this file says what D sees and
what the losses are.

Losses logged (`train/<key>`): d_real, d_fake (D phase), d_r1 (lazy-R1 D steps only), g_adv, g_afd (G phase), and
refl (G phase) with a `reward`, as DDGAN.

Sampling: as DDGAN — the posterior chain over exactly the T trained levels, x̂0 at the last one.

Deviations / open choices (config fields; defaults as in fastgen/methods/ddgan.py, plus):
- ‖·‖² is the mean over elements. ε' is independent of the real pair's step noise ε, as in the author's toy
  code: with ε' = ε the term would collapse to ᾱ_{t|s}‖x'_{t−1} − x_{t−1}‖², an x0 regression in disguise
  (x_t carries ε, and x'_{t−1} depends on x_t, so the two forms differ in expected gradient).
- The paper's UNet discriminator with an auxiliary denoising head is not used: D is the same
  `Backbone.build_discriminator` network as UFOGen's (marginal) and DDGAN's (joint); R1 γ = 0.02 every 15, as DDGAN.
- Levels on the trailing grid of the backbone's schedule; z through `time_cond_proj_dim` (see ddgan.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.core import g_loss_softplus, q_step
from fastgen.methods.gan_phases import discriminator_losses
from fastgen.methods.posterior_chain_gan import PosteriorChainGAN


class SIDDM(PosteriorChainGAN):
    name = "siddm"
    joint_discriminator = False  # marginal D(x_{t−1}, s, c): it never sees x_t

    def __init__(self, backbone, lambda_afd: float = 1.0, **kwargs):
        if lambda_afd < 0:
            raise ValueError(f"method.lambda_afd={lambda_afd} must be >= 0 (0 = no auxiliary forward diffusion)")
        super().__init__(backbone, **kwargs)

    def d_losses(self, x0: torch.Tensor, cond: torch.Tensor, r1_weight: float) -> dict[str, torch.Tensor]:
        """Real x_{t−1} vs fake x'_{t−1}, each alone."""
        with torch.no_grad():
            pair = self.training_pair(x0, cond)
        return discriminator_losses(self.discriminator, pair.x_prev, pair.fake_prev, self.d_time(pair), cond,
                                    r1_weight=r1_weight, r1_sigma=self.hparams.r1_sigma)

    def g_losses(self, x0: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """Adversarial loss on the marginal of x'_{t−1}, plus AFD: x'_{t−1} re-noised one step must give back x_t."""
        pair = self.training_pair(x0, cond)
        g_adv = g_loss_softplus(self.discriminator(pair.fake_prev, self.d_time(pair), cond))
        return {"g_adv": g_adv, "g_afd": self.hparams.lambda_afd * self.afd(pair)}

    def afd(self, pair, noise: torch.Tensor | None = None) -> torch.Tensor:
        """‖x'_t − x_t‖² (mean over elements), x'_t = q_step(x'_{t−1}, s, t, ε') with fresh noise ε' (`noise`, else
        drawn here): the fake's forward step must land where the real one does, in distribution."""
        noise = torch.randn_like(pair.fake_prev) if noise is None else noise
        fake_t = q_step(pair.fake_prev, pair.s, pair.t, noise, self.backbone.alphas_cumprod)
        return F.mse_loss(fake_t, pair.x_t.float())
