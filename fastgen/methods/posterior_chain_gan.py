"""The DDGAN family's base (DDGAN, SIDDM): `PosteriorChainGAN`, a generator G(x_t, t, z) → x̂0 over T levels,
fakes drawn from the posterior q(x_{t−1} | x_t, x̂0), alternating D and G phases (`gan_phases`), and
posterior-chain sampling. A subclass says what its discriminator sees and what its losses are
(`joint_discriminator`, `d_losses`, `g_losses`).
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import torch
from torch import nn

from fastgen.core import q_posterior_sample, q_sample, q_step, randn_per_sample, trailing_timesteps
from fastgen.methods.base import FewStepMethod
from fastgen.methods.feedback import RewardFeedback, Student
from fastgen.methods.gan_phases import (
    adversarial_phase, check_r1_options, lazy_r1_weight, prepare_discriminator_for_r1,
)
from fastgen.networks.surgery import add_time_cond_input


class LevelPair(NamedTuple):
    """One training pair at consecutive levels s < t, and the generator's fake at s."""

    t: torch.Tensor  # [B] timestep of x_t (a level of the grid)
    s: torch.Tensor  # [B] timestep of x_{t−1}: the previous level, −1 (clean) below the first
    x_prev: torch.Tensor  # real x_{t−1} ~ q(x_{t−1} | x0)
    x_t: torch.Tensor  # real x_t ~ q(x_t | x_{t−1}): one forward step from x_prev
    fake_prev: torch.Tensor  # fake x'_{t−1} ~ q(x_{t−1} | x_t, x̂0), x̂0 = G(x_t, t, c, z)


class PosteriorChainGAN(FewStepMethod):
    """Denoising diffusion GAN over `num_steps` levels of the backbone's schedule (the trailing grid, e.g.
    T = 4: 249, 499, 749, 999, with −1 = clean below the first). G(x_t, t, c, z) → x̂0 is the backbone UNet
    with a latent input (`networks.surgery.add_time_cond_input`), initialised from the backbone's weights (the pretrained teacher
    when the model config loads one, random otherwise); D is the backbone's (`Backbone.build_discriminator`), from
    the same network, joint (it also sees x_t) when the subclass says so."""

    supported_steps: tuple[int, ...] = ()
    guidance_scale = 0.0
    optimizer_steps_per_training_step = 2  # one D and one G update
    sharded_networks = ("backbone.unet", "ema_unet", "discriminator")
    joint_discriminator: bool  # D(x_{t−1}, t, c, x_cond=x_t) (DDGAN), or D(x_{t−1}, t, c) (SIDDM)

    def __init__(
        self,
        backbone,
        num_steps: int = 4,
        nz: int = 32,
        z_init_scale: float = 0.1,
        r1_gamma: float = 0.02,
        r1_every: int = 15,
        r1_lazy_scaling: bool = False,
        r1_sigma: float = 0.0,
        lr_g: float = 1.6e-4,
        lr_d: float = 1.25e-4,
        betas_g: tuple[float, float] = (0.5, 0.9),
        betas_d: tuple[float, float] = (0.5, 0.9),
        ema_decay: float = 0.999,
        max_grad_norm: float | None = None,
        eval_teacher: bool = True,
        teacher_guidance_scale: float = 7.5,
        reward: dict | None = None,
        reward_fn=None,
        reward_weight: float = 0.0,
        reward_t_range: tuple[int, int] | None = None,
        reward_margin: float | None = None,
        reward_source: str = "chain",
    ):
        super().__init__(backbone)
        self.save_hyperparameters(ignore=["backbone", "reward_fn"])
        self._check_config()
        self.automatic_optimization = False
        self.supported_steps = (num_steps,)
        pretrained = backbone.unet
        if eval_teacher:  # the evaluation's DPM-Solver++ baseline rows run on this copy; training never reads it
            self.set_teacher(pretrained, teacher_guidance_scale)
        self.discriminator = backbone.build_discriminator(joint=self.joint_discriminator)
        prepare_discriminator_for_r1(self.discriminator, r1_gamma, r1_sigma)
        backbone.unet = add_time_cond_input(pretrained, nz, z_init_scale)  # z as `timestep_cond`
        self.ema_unet = self.make_ema(backbone.unet)
        levels = trailing_timesteps(num_steps, backbone.num_train_timesteps).flip(0)  # ascending t_1..t_T
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("prev_levels", torch.cat([levels.new_tensor([-1]), levels[:-1]]), persistent=False)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.feedback = self._feedback(reward, reward_fn, reward_weight, reward_t_range, reward_margin, reward_source)

    def _feedback(self, reward, reward_fn, weight, t_range, margin, source) -> RewardFeedback:
        """ReFL on G's x̂0 at a trained level of its own chain; the default range holds only the lowest level, whose
        x̂0 is the chain's sample (G is defined at its levels only, so t is drawn from the levels in the range)."""
        levels = self.levels.tolist()
        t_range = [levels[0], levels[0]] if t_range is None else list(t_range)
        feedback = RewardFeedback.from_config(reward, reward_fn, weight, t_range, margin, self.backbone.num_train_timesteps,
                                              source, chain_steps_default="the trained levels")
        if feedback and not len(feedback.scored_times(self.reward_student())):
            raise ValueError(f"method.reward_t_range={t_range} holds none of the generator's levels {levels}: G's x̂0 is "
                             "defined only there (null: the lowest level, the chain's sample)")
        return feedback

    def _check_config(self) -> None:
        hp = self.hparams
        T = self.backbone.num_train_timesteps
        if not 1 <= hp.num_steps <= T:
            raise ValueError(f"method.num_steps={hp.num_steps} must be in [1, {T}] (levels of the backbone's schedule)")
        for key in ("nz", "r1_every"):
            if hp[key] < 1:
                raise ValueError(f"method.{key}={hp[key]} must be a positive integer")
        check_r1_options(hp.r1_gamma, hp.r1_sigma)

    # -- what a subclass defines (and `joint_discriminator`) ------------------------------------------------------
    @abc.abstractmethod
    def d_losses(self, x0: torch.Tensor, cond: torch.Tensor, r1_weight: float) -> dict[str, torch.Tensor]:
        """Named discriminator-phase loss terms."""

    @abc.abstractmethod
    def g_losses(self, x0: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named generator-phase loss terms."""

    # -- generator, levels, training pair -----------------------------------------------------------------------
    def generate(self, unet: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, z: torch.Tensor):
        """x̂0 = G(x_t, t, c, z) (the backbone's ε/v output converted to x0)."""
        z = z.to(next(unet.parameters()).dtype)
        return self.backbone.denoise(unet, x_t, t, cond, timestep_cond=z)[0]

    def draw_levels(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t uniform over the T levels and s the level below it (−1 = clean below the first)."""
        k = torch.randint(0, len(self.levels), (n,), device=self.levels.device)
        return self.levels[k], self.prev_levels[k]

    def training_pair(self, x0: torch.Tensor, cond: torch.Tensor) -> LevelPair:
        """Real x_{t−1} ~ q(x_{t−1}|x0), x_t ~ q(x_t|x_{t−1}) (one forward step: a correlated pair); fake
        x'_{t−1} ~ q(x_{t−1} | x_t, x̂0) with x̂0 = G(x_t, t, c, z), z ~ N(0, I). At the clean end (s = −1) the
        real x_{t−1} is x0 itself and the posterior collapses to x̂0 (mean x̂0, variance 0)."""
        acp = self.backbone.alphas_cumprod
        t, s = self.draw_levels(x0.shape[0])
        x_prev = q_sample(x0, s, torch.randn_like(x0), acp)
        x_t = q_step(x_prev, s, t, torch.randn_like(x0), acp)
        z = torch.randn(x0.shape[0], self.hparams.nz, device=x0.device)
        x0_hat = self.generate(self.backbone.unet, x_t, t, cond, z)
        fake_prev = q_posterior_sample(x0_hat, x_t, t, s, torch.randn_like(x0_hat), acp)
        return LevelPair(t, s, x_prev, x_t, fake_prev)

    def reward_student(self) -> Student:
        """The online G as the feedback term sees it: x̂0 = G(x_t, t, c, z) with fresh z, its chain the posterior steps
        between its levels (the sampler's), scored only at its levels."""
        def predict(x, t, c):
            return self.generate(self.backbone.unet, x, t, c, torch.randn(x.shape[0], self.hparams.nz, device=x.device))

        def step(x, t, s, c):
            return q_posterior_sample(predict(x, t, c), x, t, s, torch.randn_like(x), self.backbone.alphas_cumprod)

        levels = self.levels.tolist()
        return Student(predict, levels[::-1], step, times=levels)

    def generator_losses(self, x0: torch.Tensor, cond: torch.Tensor, prompts=None) -> dict[str, torch.Tensor]:
        """The subclass's G terms, plus the feedback term `refl` when a reward is set."""
        losses = self.g_losses(x0, cond)
        self.feedback.add(losses, self.backbone, x0, cond, prompts, self.reward_student())
        return losses

    @staticmethod
    def d_time(pair: LevelPair) -> torch.Tensor:
        """D's time input: the noise level of the sample it judges, x_{t−1} (0 for the clean end)."""
        return pair.s.clamp(min=0)

    # -- training: one D phase, then one G phase on a fresh pair --------------------------------------------------
    def training_step(self, batch, batch_idx):
        bb, hp = self.backbone, self.hparams
        g_opt, d_opt = self.optimizers()
        # 1. data in model space and its text conditioning
        x0, cond = bb.batch_to_x0(batch), bb.batch_to_cond(batch)
        # 2. discriminator phase (G frozen): real pair vs posterior fake; lazy R1 on the real x_{t−1}
        r1_weight = lazy_r1_weight(hp.r1_gamma, hp.r1_every, int(self.train_steps), hp.r1_lazy_scaling)
        losses = adversarial_phase(self, d_opt, lambda: self.d_losses(x0, cond, r1_weight), hp.max_grad_norm)
        # 3. generator phase (D frozen) on a fresh level and pair (+ reward feedback); then the EMA of G
        losses |= adversarial_phase(self, g_opt, lambda: self.generator_losses(x0, cond, batch.get("prompt")),
                                    hp.max_grad_norm)
        self.update_ema(self.ema_unet, bb.unet, hp.ema_decay)
        # 4. bookkeeping
        self.train_steps += 1
        self.count_images(x0.shape[0])
        self.log_losses(losses, x0.shape[0])

    def configure_optimizers(self):
        hp = self.hparams
        g_opt = torch.optim.Adam(self.backbone.unet.parameters(), lr=hp.lr_g, betas=tuple(hp.betas_g))
        d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr_d, betas=tuple(hp.betas_d))
        return [g_opt, d_opt]

    # -- sampling: the posterior chain over the trained levels -----------------------------------------------------
    def start_time(self, strength: float) -> int:
        """The highest trained level at or below round(strength·T) − 1 (−1 below the first level)."""
        t = super().start_time(strength)
        return max([level for level in self.levels.tolist() if level <= t], default=-1)

    @torch.no_grad()
    def sample(self, noise, prompts, steps, generator=None, t_start=None):
        """x_T = noise; at each level x̂0 = G_ema(x_t, t, c, z) with fresh z, then x_{t−1} ~ q(x_{t−1} | x_t, x̂0);
        the last level returns x̂0. z and the posterior noise come from `generator` (base.py: one per sample or one).
        Image-to-image starts at the trained level `t_start` (`start_time`) and runs the levels below it."""
        self.check_steps(steps)
        bb = self.backbone
        cond = bb.encode_prompts(prompts)
        draw = lambda *shape: randn_per_sample(shape, generator, noise.device)  # noqa: E731
        x = noise.float()
        for t, s in zip(self.levels.tolist()[::-1], self.prev_levels.tolist()[::-1]):
            if t_start is not None and t > t_start:
                continue
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            x0_hat = self.generate(self.ema_unet, x, t_batch, cond, draw(x.shape[0], self.hparams.nz))
            if s < 0:
                return x0_hat
            x = q_posterior_sample(x0_hat, x, t, s, draw(*x.shape), bb.alphas_cumprod)
