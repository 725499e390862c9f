"""DMD: one-step generation by distribution matching distillation (Yin et al., CVPR 2024, arXiv 2311.18828), with
DMD2's improvements (Yin et al., NeurIPS 2024, arXiv 2405.14867): no regression needed, a two-time-scale update
of the fake score, and an optional GAN classifier on the fake score's encoder.

Generator. x̂0 = G_θ(z, T−1, c) for z ~ N(0, I): the backbone UNet at the last timestep (`generator_timestep`,
DMD2's `conditioning_timestep` 999), its ε/v output converted to x̂0, initialised from the teacher.

Distribution matching (DMD eqs. 7–8, DMD2 Sec. 4.1). The gradient of KL(p_G ‖ p_real) is the difference of the
two distributions' scores at the noised sample. For t ~ U{t_min..t_max} (0.02T..0.98T) and x_t = q_sample(x̂0, t):

    real  x̂0_real = μ_real(x_t, t, c)   the frozen teacher with CFG: uncond + w·(cond − uncond), w = real_guidance_scale
    fake  x̂0_fake = μ_fake(x_t, t, c)   a trainable copy of the teacher, conditional only (DMD2: fake guidance 1)
    grad  = (x̂0_fake − x̂0_real) / mean_{C,H,W} |x̂0 − x̂0_real|            (`distribution_matching_gradient`)
    dm    = 0.5 · mean((x̂0 − sg(x̂0 − grad))²)                              (∂dm/∂x̂0 = grad / numel)

Fake score (DMD eq. 6). μ_fake tracks the generator's current distribution: the teacher's own denoising loss on
G's detached samples, t ~ U{0..T−1}, regressing the backbone's prediction target (ε, v or x0).

Two time scales (DMD2 Sec. 4.2). Each training step takes one batch: one fake-score update, and every
`fake_updates_per_g`-th step (5; DMD2's `dfake_gen_update_ratio`, 10 for SD1.5) first one generator update. One
generator forward per step serves both (DMD2's order: the G update, then the fake update on the same samples).

Optional terms (off by default):
- `gan_weight` > 0 (DMD2 Sec. 4.3): a classifier — a logit head (`EncoderLogitHead`) on the *fake-score network's*
  encoder features (a UNet's mid-block output, the points MLP's trunk), both samples noised to t ~ U{0..gan_max_t−1}
  (DMD2's `diffusion_gan`) — trained in the fake phase with `gan_d_weight`·(softplus(−D(real)) + softplus(D(fake)))
  on the batch's real data, and the generator with `gan_weight`·softplus(−D(x̂0)). The head trains with the fake
  score's optimiser, and its gradient moves the fake network's encoder too, as in DMD2.
- `regression_weight` > 0 (DMD Sec. 3.3): `regression_weight`·mean((x̂0 − x_ref)²), x_ref the teacher's
  DPM-Solver++ output (`regression_steps`, CFG at `real_guidance_scale`) from the same noise z.
- `reward` with `reward_weight`, `reward_margin`: reward feedback (ReFL, fastgen/methods/feedback.py) on the
  generator's sample G(z) — its whole one-step chain, so no t range — in the generator phase, as Hyper-SD's one-step
  DMD stage adds it; the distribution-matching term stays on.

Losses logged (`train/<key>`): `dm`, `g_gan`, `g_reg`, `refl` (generator phase, on its steps), `fake_denoise`, `d_real`,
`d_fake` (fake phase). Sampling: one step, x̂0 = G_ema(z, T−1, c); no CFG, one network evaluation.

Deviations / open choices:
- DMD1's regression uses LPIPS on a precomputed set of noise–image pairs; here the MSE to the teacher's ODE output
  is computed on the fly for the same noise (so it costs `regression_steps` teacher solves per generator step).
- The classifier's head is a GroupNorm/SiLU/1x1-conv head averaged over space (the UFOGen discriminator's), not
  DMD2's stride-2 convolution stack for 64x64 SD latents, so it fits any resolution.
- EMA of the generator (`ema_decay`, updated after each generator step) is used for sampling; DMD2's SD code
  samples the online generator (`ema_decay: 0` is the same).
- The GAN classifier calls into the fake UNet's blocks without its forward, which FSDP2 does not gather: under
  `trainer.strategy=fsdp` `gan_weight` must be 0 (refused with what to set).
- One-step only (DMD2's multi-step generator with backward simulation is not implemented).
- `eval_teacher`-style switch: the teacher is always kept (it is the real score); the evaluation's DPM-Solver++
  baseline rows put it at `teacher_guidance_scale`, the teacher's own sampling CFG (not `real_guidance_scale`).
"""

from __future__ import annotations

import copy

import torch

from fastgen.core import (
    d_loss_softplus, distribution_matching_gradient, distribution_matching_loss, g_loss_softplus, mse,
    prediction_target, q_sample,
)
from fastgen.methods.gan_phases import adversarial_phase
from fastgen.methods.base import FewStepMethod
from fastgen.methods.consistency_distillation import empty_prompt_cond
from fastgen.methods.dpm_solver import dpm_solver_sample
from fastgen.methods.feedback import DEFAULT_T_RANGE, RewardFeedback
from fastgen.networks.encoder_heads import EncoderLogitHead


class DistributionMatching:
    """The parts of DMD that a stage of another method reuses (TSCD's one-step stage, `method.final_stage=dmd`):
    the real score (the frozen `teacher_unet` with CFG at `real_guidance_scale`), the fake score `fake_unet` (a
    trainable copy of the teacher, `init_fake_score`), the normalised distribution-matching gradient at
    t ~ U{t_min..t_max}, the fake score's denoising loss, and DMD's regression target. Mixed into a FewStepMethod
    (it reads `backbone` and `teacher_unet`)."""

    def init_fake_score(self, unet, real_guidance_scale: float, min_t_fraction: float = 0.02,
                        max_t_fraction: float = 0.98) -> None:
        """fake_unet ← a trainable copy of `unet` (the teacher's weights); the real score's CFG and the t range."""
        T = self.backbone.num_train_timesteps
        self.real_guidance_scale = float(real_guidance_scale)
        self.t_min, self.t_max = int(min_t_fraction * T), min(int(max_t_fraction * T), T - 1)
        self.fake_unet = copy.deepcopy(unet).requires_grad_(True)  # the fake score, from the teacher

    def real_x0(self, x_t, t, cond, uncond) -> torch.Tensor:
        """The teacher's x̂0 with classifier-free guidance (CFG is affine, so guiding x̂0 is guiding ε or v)."""
        bb, w = self.backbone, self.real_guidance_scale
        if w == 1.0:
            return bb.denoise(self.teacher_unet, x_t, t, cond)[0]
        x0 = bb.denoise(self.teacher_unet, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]))[0]
        x0_c, x0_u = x0.chunk(2)
        return x0_u + w * (x0_c - x0_u)

    def draw_dm_times(self, n: int, device) -> torch.Tensor:
        """t ~ U{t_min..t_max} (DMD2: 0.02T..0.98T)."""
        return torch.randint(self.t_min, self.t_max + 1, (n,), device=device)

    def dm_gradient(self, x0_gen, cond, uncond) -> torch.Tensor:
        """The normalised distribution-matching gradient at a fresh t and noise (no graph)."""
        with torch.no_grad():
            t = self.draw_dm_times(x0_gen.shape[0], x0_gen.device)
            x_t = q_sample(x0_gen, t, torch.randn_like(x0_gen), self.backbone.alphas_cumprod)
            fake = self.backbone.denoise(self.fake_unet, x_t, t, cond)[0]
            real = self.real_x0(x_t, t, cond, uncond)
            return distribution_matching_gradient(x0_gen, real, fake)

    def regression_target(self, z: torch.Tensor, prompts, steps: int) -> torch.Tensor:
        """The teacher's DPM-Solver++ output (`steps` steps, CFG at the real score's scale) from the generator's own
        noise z (DMD's paired ODE target)."""
        if prompts is None:
            raise ValueError("the regression (MSE) term solves the teacher's ODE from the batch's prompts: the batch "
                             "has none (a latent cache with text embeddings only); set method.regression_weight=0 "
                             "(dmd) or method.dmd_mse_weight=0 (tscd)")
        return dpm_solver_sample(self.backbone, self.teacher_unet, z, prompts, steps, self.real_guidance_scale)

    def fake_denoise_loss(self, x0_gen, cond) -> torch.Tensor:
        """The teacher's denoising loss on the detached generator samples (t ~ U{0..T−1}), regressing the backbone's
        prediction target (ε, v or x0) with the fake network (DMD eq. 6)."""
        bb = self.backbone
        x0_gen = x0_gen.detach()
        t = torch.randint(0, bb.num_train_timesteps, (x0_gen.shape[0],), device=x0_gen.device)
        noise = torch.randn_like(x0_gen)
        x_t = q_sample(x0_gen, t, noise, bb.alphas_cumprod)
        dtype = next(self.fake_unet.parameters()).dtype
        out = self.fake_unet(x_t.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample.float()
        return mse(out, prediction_target(x0_gen, noise, t, bb.alphas_cumprod, bb.prediction_type))


class DMD(DistributionMatching, FewStepMethod):
    name = "dmd"
    supported_steps = (1,)
    guidance_scale = 0.0
    sharded_networks = ("backbone.unet", "ema_unet", "fake_unet", "gan_head")

    @property
    def optimizer_steps_per_training_step(self) -> float:
        """A fake-score update every training step, a generator update every `fake_updates_per_g`-th: on average."""
        return 1 + 1 / self.hparams.fake_updates_per_g

    def __init__(
        self,
        backbone,
        real_guidance_scale: float = 1.75,
        min_t_fraction: float = 0.02,
        max_t_fraction: float = 0.98,
        generator_timestep: int | None = None,
        fake_updates_per_g: int = 5,
        gan_weight: float = 0.0,
        gan_d_weight: float = 1e-2,
        gan_max_t: int | None = None,
        regression_weight: float = 0.0,
        regression_steps: int = 25,
        lr_g: float = 1e-5,
        lr_fake: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.01,
        max_grad_norm: float | None = 10.0,
        ema_decay: float = 0.99,
        teacher_guidance_scale: float = 7.5,
        reward: dict | None = None,
        reward_fn=None,
        reward_weight: float = 0.0,
        reward_margin: float | None = None,
    ):
        super().__init__(backbone)
        self.save_hyperparameters(ignore=["backbone", "reward_fn"])
        self._check_config()
        # ReFL on the generator's one-step sample G(z) (its whole chain: as Hyper-SD's one-step DMD stage)
        self.feedback = RewardFeedback.from_config(reward, reward_fn, reward_weight, DEFAULT_T_RANGE, reward_margin,
                                                   backbone.num_train_timesteps, chain_steps=1)
        self.automatic_optimization = False
        T = backbone.num_train_timesteps
        self.generator_timestep = T - 1 if generator_timestep is None else generator_timestep
        unet = backbone.unet
        self.set_teacher(unet, teacher_guidance_scale)  # the real score (not checkpointed)
        self.init_fake_score(unet, real_guidance_scale, min_t_fraction, max_t_fraction)
        self.gan_head = EncoderLogitHead(unet) if gan_weight > 0 else None
        self.ema_unet = self.make_ema(unet)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))

    def _check_config(self) -> None:
        hp = self.hparams
        T = self.backbone.num_train_timesteps
        if not 0.0 <= hp.min_t_fraction <= hp.max_t_fraction <= 1.0:
            raise ValueError(f"method.min_t_fraction={hp.min_t_fraction} and method.max_t_fraction={hp.max_t_fraction} "
                             "must satisfy 0 <= min <= max <= 1 (DMD2: 0.02, 0.98)")
        if hp.generator_timestep is not None and not 0 <= hp.generator_timestep < T:
            raise ValueError(f"method.generator_timestep={hp.generator_timestep} must be null (T-1) or in [0, {T - 1}]")
        if hp.gan_max_t is not None and not 1 <= hp.gan_max_t <= T:
            raise ValueError(f"method.gan_max_t={hp.gan_max_t} must be null (T) or in [1, {T}]")
        for key in ("fake_updates_per_g", "regression_steps"):
            if hp[key] < 1:
                raise ValueError(f"method.{key}={hp[key]} must be a positive integer")
        for key in ("gan_weight", "gan_d_weight", "regression_weight"):
            if hp[key] < 0:
                raise ValueError(f"method.{key}={hp[key]} must be >= 0 (0 = off)")
        if hp.real_guidance_scale < 1:
            raise ValueError(f"method.real_guidance_scale={hp.real_guidance_scale} must be >= 1 (1 = no CFG)")

    def configure_model(self) -> None:
        if self.device_mesh is not None and self.hparams.gan_weight > 0:
            raise ValueError("DMD's GAN classifier (method.gan_weight > 0) does not run under trainer.strategy=fsdp: "
                             "set method.gan_weight=0 or trainer.strategy=ddp")
        super().configure_model()

    # -- the three networks' outputs -------------------------------------------------------------------------------
    def generate(self, unet, z: torch.Tensor, cond: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """x̂0 = G(z, t, c): the network's ε/v output at `timestep` (None: the generator timestep, T−1) converted
        to x0."""
        t = torch.full((z.shape[0],), self.generator_timestep if timestep is None else timestep, dtype=torch.long,
                       device=z.device)
        return self.backbone.denoise(unet, z, t, cond)[0]

    def classifier_logits(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The GAN classifier on the fake network's encoder, at x noised to t ~ U{0..gan_max_t−1} (DMD2's diffusion GAN)."""
        T = self.backbone.num_train_timesteps
        t = torch.randint(0, self.hparams.gan_max_t or T, (x.shape[0],), device=x.device)
        x_t = q_sample(x, t, torch.randn_like(x), self.backbone.alphas_cumprod)
        return self.gan_head(self.fake_unet, x_t, t, cond)

    # -- the two phases' losses ---------------------------------------------------------------------------------------
    def g_losses(self, x0_gen, z, x0, cond, uncond, prompts=None) -> dict[str, torch.Tensor]:
        """`dm` on the generator's sample (with its graph); `g_gan`, `g_reg` and `refl` (the reward feedback on that
        sample) when their weights are set."""
        hp = self.hparams
        losses = {"dm": distribution_matching_loss(x0_gen, self.dm_gradient(x0_gen.detach(), cond, uncond))}
        if hp.gan_weight:
            losses["g_gan"] = hp.gan_weight * g_loss_softplus(self.classifier_logits(x0_gen, cond))
        if hp.regression_weight:
            losses["g_reg"] = hp.regression_weight * mse(x0_gen, self.regression_target(z, prompts, hp.regression_steps))
        if self.feedback:
            losses["refl"] = self.feedback.loss(self.backbone, x0_gen, prompts)
        return losses

    def fake_losses(self, x0_gen, x0, cond) -> dict[str, torch.Tensor]:
        """`fake_denoise` (`fake_denoise_loss`, on the detached samples); with the GAN on, the classifier's `d_real`
        (batch data) and `d_fake` (generator samples) terms."""
        hp = self.hparams
        losses = {"fake_denoise": self.fake_denoise_loss(x0_gen, cond)}
        if hp.gan_weight:
            x0_gen = x0_gen.detach()
            d_real, d_fake = d_loss_softplus(self.classifier_logits(x0.float(), cond), self.classifier_logits(x0_gen, cond))
            losses.update(d_real=hp.gan_d_weight * d_real, d_fake=hp.gan_d_weight * d_fake)
        return losses

    # -- one phase each -----------------------------------------------------------------------------------------------
    def g_step(self, x0_gen, z, x0, cond, uncond, prompts=None) -> dict[str, torch.Tensor]:
        """One generator update (fake score and classifier frozen), then the EMA update."""
        hp = self.hparams
        losses = adversarial_phase(self, self.optimizers()[0], lambda: self.g_losses(x0_gen, z, x0, cond, uncond, prompts),
                                   hp.max_grad_norm)
        self.update_ema(self.ema_unet, self.backbone.unet, hp.ema_decay)
        return losses

    def fake_step(self, x0_gen, x0, cond) -> dict[str, torch.Tensor]:
        """One fake-score (and classifier) update on the detached generator samples (generator frozen)."""
        return adversarial_phase(self, self.optimizers()[1], lambda: self.fake_losses(x0_gen, x0, cond),
                                 self.hparams.max_grad_norm)

    def training_step(self, batch, batch_idx):
        bb, hp = self.backbone, self.hparams
        # 1. data (real images only for the GAN classifier), prompts, and the empty prompt for the real score's CFG
        x0, cond = bb.batch_to_x0(batch), bb.batch_to_cond(batch)
        uncond = empty_prompt_cond(bb, cond) if hp.real_guidance_scale != 1.0 else None
        # 2. the generator's one-step samples from fresh noise (with their graph on a generator step)
        generator_turn = int(self.train_steps) % hp.fake_updates_per_g == 0
        z = torch.randn_like(x0, dtype=torch.float32)
        with torch.set_grad_enabled(generator_turn):
            x0_gen = self.generate(bb.unet, z, cond)
        losses = {}
        # 3. every fake_updates_per_g-th step: the generator update (distribution matching, + GAN, + regression)
        if generator_turn:
            losses.update(self.g_step(x0_gen, z, x0, cond, uncond, batch.get("prompt")))
        # 4. every step: the fake score's denoising update on the same (detached) samples, + the classifier
        losses.update(self.fake_step(x0_gen, x0, cond))
        # 5. bookkeeping
        self.train_steps += 1
        self.count_images(x0.shape[0])
        self.log_losses(losses, x0.shape[0])

    def configure_optimizers(self):
        hp = self.hparams
        fake_params = list(self.fake_unet.parameters()) + (list(self.gan_head.parameters()) if self.gan_head else [])
        g_opt = torch.optim.AdamW(self.backbone.unet.parameters(), lr=hp.lr_g, betas=tuple(hp.betas),
                                  weight_decay=hp.weight_decay)
        fake_opt = torch.optim.AdamW(fake_params, lr=hp.lr_fake, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        return [g_opt, fake_opt]

    # -- sampling ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, noise, prompts, steps, generator=None, t_start=None):
        """x̂0 = G_ema(noise, T−1, c): one step, no further random draws; image-to-image (`t_start`): G_ema(x_t,
        t_start, c), the generator read at the start time as UFOGen's is."""
        self.check_steps(steps)
        return self.generate(self.ema_unet, noise.float(), self.backbone.encode_prompts(prompts), t_start)
