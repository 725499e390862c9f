"""Latent Consistency Models (Luo et al. 2023, arXiv 2310.04378) and LCM-LoRA (Luo et al. 2023, arXiv 2311.05556).

The student is a consistency function of the teacher's parameterisation (LCM eq. 9):
    f_θ(x, t, ω, c) = c_skip(t)·x + c_out(t)·x̂0_θ(x, t, ω, c),
    c_skip = σ_d²/((10t)² + σ_d²), c_out = 10t/sqrt((10t)² + σ_d²), σ_d = 0.5,
so f_θ(x, 0) = x. Consistency distillation with a guided teacher solver (LCM eq. 10, Alg. 1):
    x_{t_{n+k}} ~ q(x_t | x0),  x̂_{t_n} = DDIM_teacher^ω(x_{t_{n+k}}, t_{n+k} → t_n)   (CFG inside the solver),
    L = d( f_θ(x_{t_{n+k}}, t_{n+k}, ω, c),  f_θ⁻(x̂_{t_n}, t_n, ω, c) ),
on the 50-step DDIM grid {19, 39, ..., 999} with skipping step k = 20 (t_n = max(t_{n+k} − 20, 0)) and d the L2
distance (`loss: l2`, the default of diffusers' LCM and LCM-LoRA scripts) or the element-wise pseudo-Huber
distance (`loss: huber`, c = `huber_c` = 0.001) — an L1 loss wherever the residuals exceed c — averaged over the
batch unweighted (`timestep_weighting: none`, LCM and diffusers) or weighted by λ(t_{n+k}) so that the residual is
measured in the network's own output units (`prediction`, core.prediction_unit_weights; see Deviations).

Variants (one class, chosen by config):
- Full LCM (`lora_rank: null`): ω is drawn per sample and the student is conditioned on it — a new UNet with
  `time_cond_proj_dim` = `guidance_embed_dim` (256) whose `time_embedding.cond_proj` adds the sinusoidal
  embedding of 1000·ω to the time embedding; the teacher's weights are loaded around it. The target f_θ⁻ is an
  EMA of the student (decay 0.95).
- LCM-LoRA (`lora_rank: 64`): a peft LoRA on the UNet's attention projections, feed-forward layers, convs and
  `time_emb_proj` is the only thing trained; ω is fixed (no ω input), and there is no separate target — the
  online network, under no_grad, gives f_θ⁻ (`target_ema_decay: null`). At the end of training the LoRA is
  written to `export_dir` in the format `StableDiffusionPipeline.load_lora_weights(export_dir)` reads.

Guidance convention: configs give CFG *scales* s (uncond + s·(cond − uncond), as every fastgen method and
diffusers pipeline), LCM's ω = s − 1 (the teacher x̂0_c + ω(x̂0_c − x̂0_u)). The student embeds ω = s − 1, in
training and in sampling, which is what diffusers' `LatentConsistencyModelPipeline` does with its
`guidance_scale` (it embeds guidance_scale − 1): a model trained here samples in that pipeline with the same s.
The scales by name: `guidance_min`/`guidance_max` (config) bound the s drawn per training sample for the teacher's
solver step and the student's ω; `sample_guidance` (config) is the s the student samples with (LoRA: `guidance_max`,
its one training scale). The contract attributes follow from it: `teacher_guidance_scale` (the control's and the
DPM-Solver++ rows' CFG) is that s; `guidance_scale` (the leaderboard's guidance column) is that s for the
ω-conditioned student and 0 for LoRA, whose one scale is distilled into its weights.

Loss keys logged: `consistency`, and `refl` with reward feedback (`reward`, `reward_weight`, `reward_t_range`,
`reward_margin`: ReFL on the student's consistency output at a timestep in the range, fastgen/methods/feedback.py,
with the consistency loss kept on; x_t is the online student's own chain, `reward_source: chain`: this sampler on the
`reward_chain_steps`-step grid (default 4), at the training step's ω, its last step re-noising to t). Sampling: LCM's multistep consistency sampler (LCMScheduler): timesteps
`lcm_timesteps(N)` on the 50-point grid (1 → [999], 2 → [999, 499], 4 → [999, 759, 499, 259]); each step
takes the consistency output and, except at the last step, re-noises it to the next timestep with fresh noise.
One network evaluation per step (ω is an input, not CFG). The full variant samples with the EMA target (the
network diffusers' script exports), the LoRA variant with the online network. The untrained control `lcm@init`
(`control()`) is the teacher with CFG at the sampling scale (what the student distils) through this sampler:
two evaluations per step.

Deviations / open choices:
- `time_embedding.cond_proj` is zero-initialised, so the student starts exactly equal to the teacher
  (diffusers' script leaves PyTorch's default random init).
- The teacher's unconditional branch is the empty prompt's embedding (how fastgen teachers drop prompts).
- ω defaults: s ∈ [6, 16] (ω ∈ [5, 15], the diffusers script; the paper uses ω ∈ [2, 14]); LoRA s = 8.5 (ω = 7.5).
- `timestep_weighting: prediction` (off by default) weights each sample's distance by λ(t_{n+k}), mean 1 over the
  solver grid, that turns the x0-space residual into the network's own output units: σ⁻² for v-prediction
  (x̂0 = α_t x_t − σ_t v̂), α²/σ² (the SNR) for ε-prediction, 1 for sample prediction. Unweighted, the residual
  discounts small t by that factor, so the student underfits the low-t end of the chain, where the boundary anchors
  it, and its error there propagates to every t; samplers that end at a lower t (more steps) then get worse
  (the points testbed's rows: benchmarks/RESULTS.md).
- `teacher_dtype: bf16` runs the frozen teacher in bf16 (the diffusers script casts it to the mixed-precision
  dtype); the student and its EMA stay fp32.
"""

from __future__ import annotations

import torch

from fastgen.core import (
    append_dims, consistency_output, guidance_scale_embedding, lcm_solver_grid, lcm_timesteps, prediction_unit_weights,
    mse, pseudo_huber, q_sample,
)
from fastgen.methods.consistency_distillation import (
    ConsistencyDistillation,
    empty_prompt_cond,
    sampling_noise,
    solver_grid_pairs,
    teacher_solver_step,
)
from fastgen.methods.feedback import DEFAULT_T_RANGE, RewardFeedback, Student
from fastgen.networks.surgery import add_time_cond_input

LOSSES = ("huber", "l2")
TIMESTEP_WEIGHTINGS = ("none", "prediction")


class LCM(ConsistencyDistillation):
    name = "lcm"

    def __init__(
        self,
        backbone,
        lr: float = 1e-6,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        grad_clip: float = 1.0,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        guidance_min: float = 6.0,
        guidance_max: float = 16.0,
        guidance_embed_dim: int | None = 256,
        sample_guidance: float = 9.0,
        target_ema_decay: float | None = 0.95,
        num_ddim_timesteps: int = 50,
        loss: str = "l2",
        huber_c: float = 0.001,
        timestep_weighting: str = "none",
        sigma_data: float = 0.5,
        timestep_scaling: float = 10.0,
        teacher_dtype: str = "fp32",
        export_dir: str | None = None,
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
        self.feedback = RewardFeedback.from_config(reward, reward_fn, reward_weight, reward_t_range, reward_margin,
                                                   backbone.num_train_timesteps, reward_source, reward_chain_steps)
        if reward_chain_steps > num_ddim_timesteps:
            raise ValueError(f"method.reward_chain_steps={reward_chain_steps} must be at most method.num_ddim_timesteps="
                             f"{num_ddim_timesteps} (LCM's sampler grid lies on the solver grid)")
        if loss not in LOSSES:
            raise ValueError(f"method.loss={loss!r} is not one of {LOSSES}")
        if timestep_weighting not in TIMESTEP_WEIGHTINGS:
            raise ValueError(f"method.timestep_weighting={timestep_weighting!r} is not one of {TIMESTEP_WEIGHTINGS}")
        if not 1.0 <= guidance_min <= guidance_max:
            raise ValueError(f"need 1 <= method.guidance_min <= method.guidance_max (CFG scales), got {guidance_min}, {guidance_max}")
        if lora_rank is not None and guidance_embed_dim:
            raise ValueError("LCM-LoRA has no ω input (a stock SD pipeline could not load it): set method.guidance_embed_dim=null")
        # sampling: ω is an input (one evaluation per step); the baseline compares with the teacher at that scale
        self.sample_guidance = sample_guidance if guidance_embed_dim else guidance_max
        self.guidance_scale = self.sample_guidance if guidance_embed_dim else 0.0
        self.init_networks(
            self.sample_guidance, teacher_dtype, lora_rank, lora_alpha, target_ema_decay,
            make_student=(lambda unet: add_time_cond_input(unet, guidance_embed_dim, init_std=0.0)) if guidance_embed_dim else None,
        )
        if self.lora:
            self.name = "lcm_lora"

    # -- the consistency function ----------------------------------------------------------------------
    def guidance_embedding(self, scale: torch.Tensor) -> torch.Tensor | None:
        """Embedding of ω = scale − 1 for the ω-conditioned student (None without ω input)."""
        dim = self.hparams.guidance_embed_dim
        return guidance_scale_embedding(scale - 1.0, dim) if dim else None

    @staticmethod
    def omega_input(unet, w_emb) -> dict:
        """The student's extra input: the ω-embedding as `timestep_cond` in the UNet's dtype (none without ω)."""
        return {"timestep_cond": w_emb.to(next(unet.parameters()).dtype)} if w_emb is not None else {}

    def consistency(self, unet, x_t, t, cond, w_emb):
        """f(x_t, t) = c_skip(t)·x_t + c_out(t)·x̂0(x_t, t) (LCM eq. 9)."""
        x0_hat, _ = self.backbone.denoise(unet, x_t, t, cond, **self.omega_input(unet, w_emb))
        return consistency_output(x_t.float(), x0_hat, t, self.hparams.sigma_data, self.hparams.timestep_scaling)

    def distance(self, a, b, t=None):
        """Mean over elements of (a − b)² (l2) or sqrt((a − b)² + c²) − c (huber), each sample weighted by λ(t) under
        `timestep_weighting: prediction` (`t`: the samples' start times [B])."""
        hp = self.hparams
        d = pseudo_huber(a, b, hp.huber_c, reduce=False) if hp.loss == "huber" else mse(a, b, reduce=False)
        if hp.get("timestep_weighting", "none") == "none":
            return d.mean()
        grid = lcm_solver_grid(self.backbone.num_train_timesteps, hp.num_ddim_timesteps)
        weights = prediction_unit_weights(t, self.backbone.alphas_cumprod, grid, self.backbone.prediction_type)
        return (append_dims(weights, d.ndim) * d).mean()

    # -- training ------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        bb, hp = self.backbone, self.hparams
        # 1. data in model space; prompt and empty-prompt embeddings (the teacher's CFG branches)
        x0 = bb.batch_to_x0(batch).float()
        cond = bb.batch_to_cond(batch)
        uncond = empty_prompt_cond(bb, cond)
        # 2. t_{n+k} on the solver grid, t_n = max(t_{n+k} − k, 0); x_{t_{n+k}} ~ q(x_t | x0)
        t_start, t_prev = solver_grid_pairs(x0.shape[0], bb.num_train_timesteps, hp.num_ddim_timesteps, x0.device)
        x_t = q_sample(x0, t_start, torch.randn_like(x0), bb.alphas_cumprod)
        # 3. a CFG scale per sample (fixed when min = max) and the student's ω-embedding of it
        scale = hp.guidance_min + (hp.guidance_max - hp.guidance_min) * torch.rand(x0.shape[0], device=x0.device)
        w_emb = self.guidance_embedding(scale)
        # 4. the student's consistency output at t_{n+k}
        pred = self.consistency(bb.unet, x_t, t_start, cond, w_emb)
        with torch.no_grad():
            # 5. the teacher's guided DDIM step t_{n+k} → t_n
            x_prev = teacher_solver_step(bb, self.teacher_unet, x_t, t_start, t_prev, cond, uncond, scale)
            # 6. the target at t_n: EMA student, or the online network under no_grad (LoRA)
            target = self.consistency(self.sampling_unet, x_prev, t_prev, cond, w_emb)
        # 7. L2 (or pseudo-Huber) between the two; 8. optional reward feedback (ReFL) on the student's output
        losses = {"consistency": self.distance(pred, target, t_start)}
        loss = losses["consistency"] + self.feedback.add(losses, bb, x0, cond, batch.get("prompt"), self.reward_student(w_emb))
        self.count_images(x0.shape[0])
        self.log_losses(losses, x0.shape[0])
        return loss

    def reward_student(self, w_emb) -> Student:
        """The online student for feedback at the ω of `w_emb`: its consistency output f_θ(x_t, t), its chain LCM's
        sampler (f_θ re-noised to the next time with fresh noise) on the `reward_chain_steps`-step LCM grid."""
        bb, hp = self.backbone, self.hparams
        grid = lcm_timesteps(self.feedback.chain_steps, bb.num_train_timesteps, hp.num_ddim_timesteps).tolist()
        return Student(lambda x, t, c: self.consistency(bb.unet, x, t, c, w_emb), grid)

    def optimizer_step(self, *args, **kwargs):
        """The optimizer step, then the target's EMA (before the checkpoint and evaluation callbacks run)."""
        super().optimizer_step(*args, **kwargs)
        self.update_target()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    # -- sampling ------------------------------------------------------------------------------------
    def start_time(self, strength: float) -> int:
        """The highest solver-grid point at or below round(strength·T) − 1 (−1 below the lowest)."""
        t = super().start_time(strength)
        grid = lcm_solver_grid(self.backbone.num_train_timesteps, self.hparams.num_ddim_timesteps)
        return int(grid[grid <= t].max()) if (grid <= t).any() else -1

    @torch.no_grad()
    def sample(self, noise, prompts, steps, generator=None, t_start=None):
        """LCM multistep sampling (LCMScheduler): consistency output, re-noised to the next timestep; from `t_start`
        (a solver-grid point: `start_time`) for image-to-image. Under `control()` the consistency output of the
        teacher's CFG x̂0 at the student's sampling scale."""
        bb = self.backbone
        timesteps = lcm_timesteps(steps, bb.num_train_timesteps, self.hparams.num_ddim_timesteps, start=t_start)
        timesteps = timesteps.to(noise.device)
        cond = bb.encode_prompts(prompts)
        w_emb = self.guidance_embedding(torch.full((noise.shape[0],), self.sample_guidance, device=noise.device))
        kwargs = self.omega_input(self.sampling_unet, w_emb)
        x = noise.float()
        for i, t in enumerate(timesteps):
            t_batch = t.expand(x.shape[0])
            x0_hat, _ = self.sampling_denoise(x, t_batch, cond, **kwargs)  # the student (or the control's CFG teacher)
            x = consistency_output(x, x0_hat, t_batch, self.hparams.sigma_data, self.hparams.timestep_scaling)
            if i + 1 < len(timesteps):
                x = q_sample(x, timesteps[i + 1], sampling_noise(x, generator), bb.alphas_cumprod)
        return x
