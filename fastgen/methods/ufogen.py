"""UFOGen: one-step text-to-image generation by diffusion-GAN fine-tuning (Xu, Zhao, Xiao, Hou, CVPR 2024,
arXiv 2311.09257).

Objective. A generator G_θ(x_t, t, c) → x̂0, initialised from the pretrained diffusion UNet (its ε or v output
converted to x̂0 by `Backbone.denoise`), is trained so that the *noised prediction* matches the *noised data*
at a smaller noise level s = t − Δ. For t ~ U{1..T−1}, s = max(t − Δ, 0) (Δ = `t_gap`, 250 of 1000):

    x_t  = q_sample(x0, t)                  real x_s = q_sample(x0, s)              (independent noises)
    x̂0   = G_θ(x_t, t, c)                  fake x'_s ~ q(x_s | x̂0) = N(α_s x̂0, σ_s² I)

    min_θ max_D  E[ log D(x_s, s, c) ] + E[ log(1 − D(x'_s, s, c)) ]  +  λ_rec · E[ γ_t ‖x0 − x̂0‖² ]

Why one step is valid. SIDDM/DDGAN draw the fake from the *posterior* q(x_s | x_t, x̂0), whose mean keeps a
share of x_t; at sampling time a one-step generator would then need the posterior chain to finish the
denoising. UFOGen draws the fake from the *forward marginal of the prediction* q(x_s | x̂0) (paper Sec. 4.1):
matching the marginals of x'_s and x_s at every s means matching x̂0 with x0 in distribution once the noise at
s is removed, and the reconstruction term moves to x0 itself. So x̂0 = G(x_T, T−1, c) is already a sample:
one step, and k steps by predicting x̂0, re-noising it to the next grid time with *fresh* noise (again the
marginal, not the posterior), and predicting again.

Discriminator D(x_s, s, c): the backbone network's discriminator (`Backbone.build_discriminator`; for a UNet,
`UNetEncoderDiscriminator`, the encoder half — conv_in, time embedding, down blocks, mid block — of the same
pretrained UNet plus a small logit head, text-conditioned through the UNet's cross-attention), so both G and D
start from the diffusion model (paper Sec. 4.2).

Losses logged (each is a term of the summed objective of its phase, logged as `train/<key>`):
    d_real  adversarial term on real x_s            d_fake  adversarial term on fake x'_s (G detached)
    d_r1    (γ_R1/2)·‖∇_{x_s} D(x_s)‖², lazily every `r1_every` D steps, when r1_gamma > 0
    g_adv   generator adversarial term on x'_s      g_rec   λ_rec · γ_t · ‖x0 − x̂0‖² (mean over elements)
    refl    reward feedback (ReFL) on G's x̂0 at a timestep in `reward_t_range`, in the G phase only, with
            `reward`, `reward_weight`, `reward_margin` (fastgen/methods/feedback.py); g_rec and g_adv stay on. x_t is
            G's own sampler chain (`reward_source: chain`): from noise on the trailing `reward_chain_steps`-step grid
            (default 4), re-noising G's x̂0 to the next time, the last step to t; online G, no_grad
GAN form (`gan_loss`): "softplus" (non-saturating, default) or "clamped_bce" — the author's BCE-with-logits
with logits clamped at a 0.5 margin (fastgen.core.gan_losses).

Sampling: trailing grid for 1, 2, 4 or 8 steps (1 → [999]); x̂0 = G_ema(x_t, t, c); re-noise to the next
grid time with fresh noise (drawn from the caller's generator, so sampling is deterministic given a seeded
generator); the last step returns x̂0. No classifier-free guidance: one network evaluation per step.

Deviations / open choices (config fields, defaults from METHODS.md and xuyanwu/SIDDMs-UFOGen, UFO_DiT):
- `gan_loss="softplus"` by default; the author's code uses "clamped_bce" (margin 0.5) — both available.
- `d_every=1`: one D update per G update; the author updates D every 2 G steps (`d_every: 2`).
- `rec_weighting`: "uniform" (γ_t = 1, the paper's ‖x0 − x̂0‖²) or "snr" (γ_t = α_t²/σ_t², which makes
  the term ‖ε − ε̂‖²: the author's code uses the plain ε-prediction diffusion loss). "snr" is computed in
  ε form, which is the same quantity without dividing by a near-zero σ_t at small t.
- `train_grid_steps`: null draws t ~ U{1..T−1} (the paper). An integer N draws t only from the trailing
  N-step sampling grid (N = 8 covers every time the 1/2/4/8-step sampler visits: 999, 874, ..., 124), as ADD
  (Sauer et al. 2023, Sec. 3.2) and DMD2 (Yin et al. 2024, Sec. 4.4) train their few-step students: a uniform
  t puts 0.1% of the updates at t = 999, the only time one-step sampling uses.
- Real and fake x_s use independent noises, and s = max(t − Δ, 0) is clamped at the first noise level
  (index 0, ᾱ_0 ≈ 0.999), as in the author's code.
- R1 (`r1_gamma`, lazy every `r1_every` D steps at γ/2; `r1_lazy_scaling` multiplies by the interval as
  StyleGAN2 does) is not in the paper; off by default.
  `r1_sigma` > 0 estimates it by finite differences instead of a double backward (as DDGAN's docstring says).
- Gradient-norm clipping at `max_grad_norm` (author: 1.0 on both networks); null disables it.
- EMA of the generator only (`ema_decay`, author 0.99), used by `sample`; D has no EMA.
- `lora_rank > 0`: peft LoRA on the generator UNet's attention projections (to_q, to_k, to_v, to_out.0)
  instead of full fine-tuning (the paper fine-tunes the whole UNet); D is always fully trained.
- `eval_teacher`: keep a frozen copy of the pretrained UNet as `teacher_unet` (not saved in checkpoints) so
  the evaluation can put the DPM-Solver++ baseline on the same teacher next to UFOGen's rows, with CFG at
  `teacher_guidance_scale`. UFOGen's training never reads it; switch it off to save one UNet of memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.core import (
    d_loss_clamped_bce,
    d_loss_softplus,
    g_loss_clamped_bce,
    g_loss_softplus,
    q_sample,
    randn_per_sample,
    trailing_timesteps,
)
from fastgen.methods.gan_phases import (
    adversarial_phase, check_r1_options, discriminator_losses, lazy_r1_weight, prepare_discriminator_for_r1,
)
from fastgen.methods.base import FewStepMethod
from fastgen.methods.feedback import DEFAULT_T_RANGE, RewardFeedback, Student
from fastgen.networks.lora import ATTENTION_TARGETS, add_lora

GAN_LOSSES = {"softplus": (d_loss_softplus, g_loss_softplus), "clamped_bce": (d_loss_clamped_bce, g_loss_clamped_bce)}
REC_WEIGHTINGS = ("uniform", "snr")


class UFOGen(FewStepMethod):
    name = "ufogen"
    supported_steps = (1, 2, 4, 8)
    guidance_scale = 0.0
    sharded_networks = ("backbone.unet", "ema_unet", "discriminator")

    @property
    def optimizer_steps_per_training_step(self) -> float:
        """A G step every training step, a D step every `d_every`-th (Lightning counts both): on average."""
        return 1 + 1 / self.hparams.d_every

    def __init__(
        self,
        backbone,
        t_gap: int = 250,
        train_grid_steps: int | None = None,
        lambda_rec: float = 1.0,
        rec_weighting: str = "uniform",
        gan_loss: str = "softplus",
        r1_gamma: float = 0.0,
        r1_every: int = 16,
        r1_lazy_scaling: bool = False,
        r1_sigma: float = 0.0,
        d_every: int = 1,
        lr_g: float = 1e-4,
        lr_d: float = 1e-4,
        betas_g: tuple[float, float] = (0.9, 0.999),
        betas_d: tuple[float, float] = (0.0, 0.999),
        ema_decay: float = 0.99,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        max_grad_norm: float | None = 1.0,
        eval_teacher: bool = True,
        teacher_guidance_scale: float = 7.5,
        reward: dict | None = None,
        reward_fn=None,
        reward_weight: float = 0.0,
        reward_t_range: tuple[int, int] = DEFAULT_T_RANGE,
        reward_margin: float | None = None,
        reward_source: str = "chain",
        reward_chain_steps: int = 4,
    ):
        super().__init__(backbone)
        self.save_hyperparameters(ignore=["backbone", "reward_fn"])
        self._check_config()
        self.feedback = RewardFeedback.from_config(reward, reward_fn, reward_weight, reward_t_range, reward_margin,
                                                   backbone.num_train_timesteps, reward_source, reward_chain_steps)
        self.automatic_optimization = False
        unet = backbone.unet
        # D and the teacher copy start from the pretrained UNet, before any LoRA adapter is injected
        self.discriminator = backbone.build_discriminator()
        prepare_discriminator_for_r1(self.discriminator, r1_gamma, r1_sigma)
        if eval_teacher:
            self.set_teacher(unet, teacher_guidance_scale)
        if lora_rank > 0:
            add_lora(unet, lora_rank, lora_alpha, ATTENTION_TARGETS, init="gaussian")
        self.ema_unet = self.make_ema(unet)  # with LoRA, only the adapters move (update_ema)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.d_loss_fn, self.g_loss_fn = GAN_LOSSES[gan_loss]

    def _check_config(self) -> None:
        hp = self.hparams
        T = self.backbone.num_train_timesteps
        if hp.gan_loss not in GAN_LOSSES:
            raise ValueError(f"method.gan_loss={hp.gan_loss!r} is not one of {sorted(GAN_LOSSES)}")
        if hp.rec_weighting not in REC_WEIGHTINGS:
            raise ValueError(f"method.rec_weighting={hp.rec_weighting!r} is not one of {list(REC_WEIGHTINGS)}")
        if not 1 <= hp.t_gap < T:
            raise ValueError(f"method.t_gap={hp.t_gap} must be in [1, {T - 1}] (timesteps of the backbone's schedule)")
        for key in ("d_every", "r1_every"):
            if hp[key] < 1:
                raise ValueError(f"method.{key}={hp[key]} must be a positive integer")
        if hp.train_grid_steps is not None and not 1 <= hp.train_grid_steps < T:
            raise ValueError(
                f"method.train_grid_steps={hp.train_grid_steps} must be null (t ~ U{{1..T-1}}) or a step count in [1, {T - 1}]"
            )
        check_r1_options(hp.r1_gamma, hp.r1_sigma)
        if hp.lora_rank < 0:
            raise ValueError(f"method.lora_rank={hp.lora_rank} must be 0 (full fine-tuning) or a positive rank")

    # -- the training pair --------------------------------------------------------------------------------------
    def draw_times(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """t ~ U{1..T−1} (or uniform over the `train_grid_steps` sampling grid) and s = max(t − Δ, 0)."""
        T, grid_steps = self.backbone.num_train_timesteps, self.hparams.train_grid_steps
        if grid_steps is None:
            t = torch.randint(1, T, (n,), device=device)
        else:
            grid = trailing_timesteps(grid_steps, T).to(device)
            t = grid[torch.randint(0, grid_steps, (n,), device=device)]
        return t, (t - self.hparams.t_gap).clamp(min=0)

    def fake_from(self, x0_hat: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x'_s ~ q(x_s | x̂0) = N(α_s x̂0, σ_s² I): the forward marginal of the prediction, with fresh noise."""
        return q_sample(x0_hat, s, torch.randn_like(x0_hat), self.backbone.alphas_cumprod)

    def predict_x0(self, x0: torch.Tensor, t: torch.Tensor, cond: torch.Tensor):
        """(x_t, x̂0 = G(x_t, t, c), ε, ε̂) for clean x0 noised to t with fresh noise."""
        noise = torch.randn_like(x0)
        x_t = q_sample(x0, t, noise, self.backbone.alphas_cumprod)
        x0_hat, eps_hat = self.backbone.denoise(self.backbone.unet, x_t, t, cond)
        return x_t, x0_hat, noise, eps_hat

    # -- the two phases' losses (dicts of named terms; each phase minimises their sum) --------------------------
    def d_losses(self, x0: torch.Tensor, cond: torch.Tensor, r1_weight: float = 0.0) -> dict[str, torch.Tensor]:
        """`d_real`, `d_fake` on real x_s vs fake x'_s ~ q(x_s | x̂0) (G under no_grad); `d_r1` when r1_weight > 0."""
        t, s = self.draw_times(x0.shape[0], x0.device)
        with torch.no_grad():
            _, x0_hat, _, _ = self.predict_x0(x0, t, cond)
            fake = self.fake_from(x0_hat, s)
        real = q_sample(x0, s, torch.randn_like(x0), self.backbone.alphas_cumprod)
        return discriminator_losses(self.discriminator, real, fake, s, cond, r1_weight=r1_weight, loss_fn=self.d_loss_fn,
                                    r1_sigma=self.hparams.r1_sigma)

    def g_losses(self, x0: torch.Tensor, cond: torch.Tensor, prompts=None) -> dict[str, torch.Tensor]:
        """`g_adv` on a fresh fake x'_s ~ q(x_s | x̂0), `g_rec` = λ_rec·γ_t·‖x0 − x̂0‖², and `refl` with feedback."""
        t, s = self.draw_times(x0.shape[0], x0.device)
        _, x0_hat, noise, eps_hat = self.predict_x0(x0, t, cond)
        g_adv = self.g_loss_fn(self.discriminator(self.fake_from(x0_hat, s), s, cond))
        if self.hparams.rec_weighting == "snr":  # α_t²/σ_t²·‖x0 − x̂0‖² = ‖ε − ε̂‖²
            rec = F.mse_loss(eps_hat, noise.float())
        else:
            rec = F.mse_loss(x0_hat, x0.float())
        losses = {"g_adv": g_adv, "g_rec": self.hparams.lambda_rec * rec}
        self.feedback.add(losses, self.backbone, x0, cond, prompts, self.reward_student())
        return losses

    def reward_student(self) -> Student:
        """The online G for feedback: x̂0 = G(x_t, t, c), its chain UFOGen's sampler (x̂0 re-noised to the next time
        with fresh noise) on the trailing `reward_chain_steps`-step grid."""
        bb = self.backbone
        grid = trailing_timesteps(self.feedback.chain_steps, bb.num_train_timesteps).tolist()
        return Student(lambda x, t, c: bb.denoise(bb.unet, x, t, c)[0], grid)

    # -- one optimisation phase each --------------------------------------------------------------------------
    def d_step(self, x0: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator update (G frozen), with lazy R1 on the real x_s when `r1_gamma` > 0."""
        hp = self.hparams
        r1_weight = lazy_r1_weight(hp.r1_gamma, hp.r1_every, int(self.train_steps) // hp.d_every,
                                   hp.r1_lazy_scaling)
        d_opt = self.optimizers()[1]
        return adversarial_phase(self, d_opt, lambda: self.d_losses(x0, cond, r1_weight), hp.max_grad_norm)

    def g_step(self, x0: torch.Tensor, cond: torch.Tensor, prompts=None) -> dict[str, torch.Tensor]:
        """One generator update (D frozen) on a fresh t and fresh noise, then the EMA update."""
        g_opt = self.optimizers()[0]
        losses = adversarial_phase(self, g_opt, lambda: self.g_losses(x0, cond, prompts), self.hparams.max_grad_norm)
        self.update_ema(self.ema_unet, self.backbone.unet, self.hparams.ema_decay)
        return losses

    def training_step(self, batch, batch_idx):
        bb = self.backbone
        # 1. data in model space and its text conditioning (frozen encoders, or the latent cache)
        x0, cond = bb.batch_to_x0(batch), bb.batch_to_cond(batch)
        losses = {}
        # 2. discriminator phase every `d_every` training steps: real x_s vs fake x'_s ~ q(x_s | x̂0)
        if int(self.train_steps) % self.hparams.d_every == 0:
            losses.update(self.d_step(x0, cond))
        # 3. generator phase on a fresh t and noise: adversarial + reconstruction (+ reward feedback); EMA of G
        losses.update(self.g_step(x0, cond, batch.get("prompt")))
        # 4. bookkeeping: steps, images seen, named losses
        self.train_steps += 1
        self.count_images(x0.shape[0])
        self.log_losses(losses, x0.shape[0])

    def configure_optimizers(self):
        hp = self.hparams
        g_params = [p for p in self.backbone.unet.parameters() if p.requires_grad]
        g_opt = torch.optim.Adam(g_params, lr=hp.lr_g, betas=tuple(hp.betas_g))
        d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr_d, betas=tuple(hp.betas_d))
        return [g_opt, d_opt]

    # -- sampling -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, noise, prompts, steps, generator=None, t_start=None):
        """x̂0 = G_ema(x_t, t, c) on the trailing grid, re-noised to the next grid time with fresh noise; from
        `t_start` (image-to-image: one step is G_ema(x_{t_start}, t_start, c))."""
        self.check_steps(steps)
        bb = self.backbone
        cond = bb.encode_prompts(prompts)
        grid = trailing_timesteps(steps, (bb.num_train_timesteps - 1 if t_start is None else t_start) + 1).tolist()
        x = noise.float()
        for i, t in enumerate(grid):
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            x0_hat, _ = bb.denoise(self.ema_unet, x, t_batch, cond)
            if i + 1 < len(grid):
                x = q_sample(x0_hat, grid[i + 1], randn_per_sample(x.shape, generator, x.device), bb.alphas_cumprod)
        return x0_hat
