"""Trajectory Segmented Consistency Distillation — the consistency stage of Hyper-SD (Ren et al., NeurIPS 2024,
arXiv 2404.13686, Sec. 3.1), on top of TCD's DDIM-map parameterisation (Zheng et al. 2024, arXiv 2402.19159).

[0, T] is split into k equal segments and consistency distillation happens *inside* each one: every point is
mapped to the lower boundary t_b of its segment, not to t = 0. Per sample:
    t_n uniform on the DDIM solver grid {19, 39, ..., 999} (skip Δ = T/50 = 20),
    t_b = the lower boundary of t_n's segment,  t_{n−1} = max(t_n − Δ, t_b),
    x_{t_n} ~ q(x_t | x0),  x̂_{t_{n−1}} = DDIM_teacher^CFG(x_{t_n}, t_n → t_{n−1}),
    Φ(x, t → s) = α_s x̂0(x, t) + σ_s ε̂(x, t)                   (the DDIM map with the network's x̂0, ε̂),
    L_consistency = ‖Φ_θ(x_{t_n}, t_n → t_e) − Φ_θ⁻(x̂_{t_{n−1}}, t_{n−1} → t_e)‖²   (MSE),
with t_e = t_b, or t_e ~ U{t_b, ..., t_{n−1}} in the soft variant (`soft_end_time`). Φ(x, s → s) = x, so when the
teacher's step lands on the boundary the target is the teacher's x̂_{t_b} itself (and at t_e = −1 the map is x̂0).
θ⁻ is an EMA of the student (0.95), or the online student under no_grad (`target_ema_decay: null`).

Progressive stages: `segments: [8, 4, 2, 1]` with `stage_kimg` (thousands of images per stage) in one run; each
stage continues from the previous stage's weights; after the last listed stage ends the run stays in it. The
current stage and k are buffers (`stage`, `segments_now`, saved in checkpoints: a resumed run continues in its
stage) and k is logged as `train/segments`. When a stage ends, the sampling network's trained weights (the whole
UNet, or its LoRA) are written beside the checkpoints as `tscd_stage<i>_k<k>.pt` (atomically; a resumed run keeps
the files of the stages it finished, and one resumed from another folder's checkpoint copies them from there).

Evaluation rows (`row_sources`), as Hyper-SD evaluates: N steps with the model of the stage trained for k = N
segments — a finished stage's snapshot, or the current weights for the current stage and for an N no stage reached
— as `tscd`, and the final model (the current weights) at every N as `tscd@final` (its own leaderboard series).
Periodic evaluations during training do the same with what has finished so far. `python -m fastgen.evaluate
ckpt=...` reads the snapshots beside the checkpoint; a missing one leaves its row out with a warning. The
untrained control `tscd@init` (`control()`) is the teacher with CFG at `teacher_guidance_scale` through this sampler.

Timestep index convention (exact): a timestep index t ∈ [0, T−1] is the point τ = t + 1 ∈ [1, T] of the
trailing grid (whose N-step timesteps are round(T − i·T/N) − 1). Segment boundaries are τ_j = round(j·T/k),
j = 0..k; the segment of t is the j with τ_j < t + 1 ≤ τ_{j+1}, and its boundary timestep is t_b = τ_j − 1, with
t_b = −1 ("clean") for the lowest segment. For T/k an integer this is t_b = floor(t/(T/k))·(T/k) − 1: for k = 8,
t = 999 → 874, t = 874 → 749, t = 124 → −1. So the boundaries are exactly the N = k-step trailing sampling grid,
and a point on a boundary belongs to the segment below it (the sampler's next step starts there).

Optional terms (off by default):
- `adv_weights` (one weight per stage, e.g. rising as k falls): a non-saturating GAN term on Φ_θ(x_{t_n} → t_e)
  against real q(x_{t_e} | x0), judged by the backbone's D (`Backbone.build_discriminator`; for a UNet the teacher
  UNet's encoder, conditioned on t_e and the prompt), trained alongside with its own AdamW; logged as `adv` (and
  `d_real`, `d_fake`).
- `reward` (a reward model's spec, fastgen/eval/rewards.py) with `reward_weight`, `reward_t_range`, `reward_margin`:
  Hyper-SD's human-feedback term (Sec. 3.3), ReFL on the student's x̂0 at a timestep in the range
  (fastgen/methods/feedback.py), added to the consistency loss (which stays on); logged as `refl`.

Sampling: DDIM on the trailing grid with N steps (any N ≥ 1; N = k of a stage is what that stage was trained
for), the last step to the clean sample; guidance 0 (one evaluation per step). `sample_eta` = γ > 0 gives TCD's
stochastic step: DDIM to s = floor((1 − γ)·t_next), then forward-noise to t_next (γ = 1: the LCM-style sampler).

Deviations / open choices:
- The teacher's step is clamped at the boundary (t_{n−1} = max(t_n − Δ, t_b)) so it never leaves the segment;
  the 50-step solver grid does not contain the boundaries for k = 8 (multiples of 125).
- Sampling ends at the clean sample (t = −1); diffusers' DDIMScheduler for SD1.5 (`set_alpha_to_one=False`) and
  TCDScheduler end at t = 0 (σ_0 ≈ 0.03).
- Teacher CFG scale `teacher_guidance_scale` 7.5 (SD1.5's default; Hyper-SD does not state it); the
  unconditional branch is the empty prompt. Stage lengths and the adversarial/reward weights are config values.
- The one-step DMD stage of Hyper-SD is not implemented.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from pathlib import Path

import torch

from fastgen.atomic_write import save_torch_atomic
from fastgen.core import append_dims, d_loss_softplus, ddim_step, g_loss_softplus, mse, q_sample, q_step, trailing_timesteps
from fastgen.methods.base import FINAL_MODEL, RowSource
from fastgen.methods.feedback import RewardFeedback, decode_with_grad  # noqa: F401 (decode_with_grad: re-exported)
from fastgen.methods.consistency_common import (
    ConsistencyDistillation,
    empty_prompt_cond,
    sampling_noise,
    solver_grid_pairs,
    teacher_solver_step,
)
from fastgen.methods.sharding import whole_network


def segment_boundary(t: torch.Tensor, k: int, T: int = 1000) -> torch.Tensor:
    """Lower-boundary timestep t_b of the segment of each t among k equal segments of [0, T] (see module doc):
    τ_j = round(j·T/k); t_b = τ_j − 1 for τ_j < t + 1 ≤ τ_{j+1}; −1 (clean) in the lowest segment."""
    tau = torch.tensor([round(j * T / k) for j in range(k + 1)], device=t.device)
    j = torch.bucketize(t + 1, tau, right=False) - 1
    return tau[j] - 1


def load_full_state(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole (unsharded) tensors into some of `network`'s weights, sharded by FSDP or not."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(network, FSDPModule):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(network, state, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    result = network.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"weights not in the network: {result.unexpected_keys[:3]}")


class TSCD(ConsistencyDistillation):
    name = "tscd"
    sharded_networks = ("backbone.unet", "target_unet", "discriminator")

    @property
    def optimizer_steps_per_training_step(self) -> int:
        """The student's step, plus the discriminator's in a stage whose adversarial weight is not zero."""
        return 2 if self.adv_weights and self.adv_weights[int(self.stage)] else 1

    def __init__(
        self,
        backbone,
        lr: float = 1e-6,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        grad_clip: float = 1.0,
        segments: tuple[int, ...] = (8, 4, 2, 1),
        stage_kimg: tuple[float, ...] = (100.0, 100.0, 100.0, 100.0),
        soft_end_time: bool = False,
        teacher_guidance_scale: float = 7.5,
        num_ddim_timesteps: int = 50,
        target_ema_decay: float | None = 0.95,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        adv_weights: tuple[float, ...] | None = None,
        disc_lr: float = 1e-5,
        reward: dict | None = None,
        reward_fn=None,
        reward_weight: float = 0.0,
        reward_t_range: tuple[int, int] = (0, 999),
        reward_margin: float | None = None,
        sample_eta: float = 0.0,
        teacher_dtype: str = "fp32",
        export_dir: str | None = None,
    ):
        super().__init__(backbone)
        self.save_hyperparameters(ignore=["backbone", "reward_fn"])
        self.automatic_optimization = False
        self.segments, self.stage_ends = self._check_stages(segments, stage_kimg, adv_weights)
        if not 0.0 <= sample_eta <= 1.0:
            raise ValueError(f"method.sample_eta (TCD's gamma) must be in [0, 1], got {sample_eta}")
        self.feedback = RewardFeedback.from_config(reward, reward_fn, reward_weight, reward_t_range, reward_margin,
                                                   backbone.num_train_timesteps)
        self.adv_weights = list(adv_weights) if adv_weights else None
        if self.adv_weights:
            self.discriminator = backbone.build_discriminator()  # the teacher's encoder, fp32, trainable
        self.init_networks(teacher_guidance_scale, teacher_dtype, lora_rank, lora_alpha, target_ema_decay)
        self.guidance_scale = 0.0
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))
        self.register_buffer("segments_now", torch.tensor(self.segments[0], dtype=torch.long))

    @staticmethod
    def _check_stages(segments, stage_kimg, adv_weights):
        segments, stage_kimg = [int(k) for k in segments], [float(s) for s in stage_kimg]
        if not segments or any(k < 1 for k in segments):
            raise ValueError(f"method.segments must be a non-empty list of positive integers, e.g. [8, 4, 2, 1]; got {segments}")
        if len(stage_kimg) != len(segments) or any(s <= 0 for s in stage_kimg):
            raise ValueError(f"method.stage_kimg needs one positive length (kimg) per stage of method.segments={segments}; got {stage_kimg}")
        if adv_weights and len(adv_weights) != len(segments):
            raise ValueError(f"method.adv_weights needs one weight per stage of method.segments={segments}; got {list(adv_weights)}")
        return segments, [sum(stage_kimg[: i + 1]) for i in range(len(stage_kimg))]

    # -- stages --------------------------------------------------------------------------------------
    def advance_stage(self) -> int:
        """Move to the stage the images seen so far fall in (never back), keeping the weights of each stage that
        ends (`save_stage`); returns the current stage's number of segments k."""
        stage = int(self.stage)
        while stage + 1 < len(self.segments) and self.kimg >= self.stage_ends[stage]:
            self.save_stage(stage)
            stage += 1
            print(f"[fastgen] tscd: stage {stage + 1}/{len(self.segments)} at {self.kimg:g} kimg, k = {self.segments[stage]} segments")
        self.stage.fill_(stage)
        self.segments_now.fill_(self.segments[stage])
        return self.segments[stage]

    # -- stage snapshots: the weights each finished stage ended with --------------------------------------
    def stage_file(self, stage: int) -> str:
        return f"tscd_stage{stage + 1}_k{self.segments[stage]}.pt"

    @property
    def stage_dir(self) -> Path | None:
        """Where stage snapshots live: beside the checkpoint the method was loaded from, else the run's checkpoint
        folder (the trainer's ModelCheckpoint); None without either."""
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir)
        callback = self._trainer.checkpoint_callback if self._trainer is not None else None
        return Path(callback.dirpath) if callback is not None and callback.dirpath else None

    def trained_names(self) -> set[str]:
        """State-dict names of the sampling network that training changes (the whole UNet, or its LoRA)."""
        return {name for name, p in self.backbone.unet.named_parameters() if p.requires_grad}

    def save_stage(self, stage: int) -> None:
        """Write the sampling network's trained weights as they are at the end of `stage` to
        `<stage_dir>/tscd_stage<i>_k<k>.pt` (atomically; collective under FSDP, rank 0 writes)."""
        network = whole_network(self.sampling_unet)
        if network is None or (self._trainer is not None and not self.trainer.is_global_zero):
            return
        if self.stage_dir is None:
            warnings.warn(f"tscd: no checkpoint folder (callbacks.checkpoint), so stage {stage + 1}'s weights "
                          f"(k = {self.segments[stage]}) are not kept: its rows will be left out", stacklevel=2)
            return
        trained = self.trained_names()
        state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items() if k in trained}
        save_torch_atomic({"stage": stage, "segments": self.segments[stage], "kimg": self.kimg, "state_dict": state},
                          self.stage_dir / self.stage_file(stage))

    def read_stage(self, stage: int) -> dict[str, torch.Tensor]:
        """The state dict of a stage snapshot, read strictly: a ValueError in one line if it is not that stage's."""
        path = self.stage_dir / self.stage_file(stage)
        try:
            snapshot = torch.load(path, map_location="cpu", weights_only=True)
            ok = snapshot["segments"] == self.segments[stage] and set(snapshot["state_dict"]) == self.trained_names()
        except Exception as e:  # truncated file, not a snapshot
            raise ValueError(f"{path}: not a readable TSCD stage snapshot ({type(e).__name__}); delete it and "
                             "resume the run from a checkpoint before that stage ended") from None
        if not ok:
            raise ValueError(f"{path} holds other weights than stage {stage + 1} (k = {self.segments[stage]}) of this "
                             "TSCD configuration (method.segments or method.lora_rank changed?)")
        return snapshot["state_dict"]

    @contextlib.contextmanager
    def stage_weights(self, stage: int):
        """The sampling network holds `stage`'s snapshot inside the block, its own weights again after it."""
        network, snapshot = self.sampling_unet, self.read_stage(stage)
        current = {k: v.detach().clone() for k, v in network.state_dict().items() if k in snapshot}
        load_full_state(network, snapshot)
        try:
            yield
        finally:
            network.load_state_dict(current, strict=False)

    def on_fit_start(self) -> None:
        """A run resumed from a checkpoint outside its checkpoint folder copies the finished stages' snapshots
        from beside that checkpoint; a finished stage without one is named in a warning."""
        directory, ckpt = self.stage_dir, self.trainer.ckpt_path
        if directory is None or not self.trainer.is_global_zero:
            return
        for stage in range(int(self.stage)):
            target = directory / self.stage_file(stage)
            source = Path(ckpt).parent / target.name if ckpt else None
            if not target.is_file() and source is not None and source.is_file():
                save_torch_atomic(torch.load(source, map_location="cpu", weights_only=True), target)
            if not target.is_file():
                warnings.warn(f"tscd: stage {stage + 1} (k = {self.segments[stage]}) ended before this checkpoint "
                              f"but {target} is missing: its rows will be left out", stacklevel=2)

    def finished_stage(self, steps: int) -> int | None:
        """The last finished stage trained for `steps` (k = steps), unless the current stage is: None then."""
        if self.segments[int(self.stage)] == steps:
            return None
        return max((i for i in range(int(self.stage)) if self.segments[i] == steps), default=None)

    def row_sources(self, steps: int) -> list[RowSource]:
        """Hyper-SD's protocol: N steps from the stage trained with k = N segments, and the final model (the
        current weights) at every N as `tscd@final`. A finished stage's rows come from its snapshot; the current
        stage's, and those of an N that no stage reached, from the current weights. So a periodic evaluation during
        training scores the finished stages' snapshots and the current model. An untrained method, its control, or
        a one-stage configuration has its own rows only."""
        if self.control_guidance is not None or len(self.segments) == 1 or int(self.images_seen) == 0:
            return [RowSource(("",))]
        stage = self.finished_stage(steps)
        if stage is None:
            return [RowSource(("", FINAL_MODEL))]
        final = RowSource((FINAL_MODEL,))
        name = self.stage_file(stage)
        if self.stage_dir is None or not (self.stage_dir / name).is_file():
            warnings.warn(f"tscd: the weights of stage {stage + 1} (k = {steps}, {name}) are missing from "
                          f"{self.stage_dir or 'the checkpoint folder'}: its {steps}-step row is left out "
                          f"(`tscd{FINAL_MODEL}` has the final model's)", stacklevel=2)
            return [final]
        return [RowSource(("",), functools.partial(self.stage_weights, stage), name), final]

    # -- the DDIM map with a network's prediction ----------------------------------------------------
    def ddim_map(self, unet, x_t, t, s, cond):
        """Φ(x_t, t → s) = α_s x̂0 + σ_s ε̂ (and x̂0)."""
        x0_hat, eps_hat = self.backbone.denoise(unet, x_t, t, cond)
        return ddim_step(x0_hat, eps_hat, s, self.backbone.alphas_cumprod), x0_hat

    def consistency_pair(self, x0, noise, t_n, cond, uncond, k):
        """(student Φ_θ(x_{t_n}, t_n → t_e) with its x̂0, target Φ_θ⁻(x̂_{t_{n−1}}, t_{n−1} → t_e), t_e) for k segments."""
        bb, hp = self.backbone, self.hparams
        t_b = segment_boundary(t_n, k, bb.num_train_timesteps)
        t_prev = torch.maximum(t_n - bb.num_train_timesteps // hp.num_ddim_timesteps, t_b)
        t_end = t_b
        if hp.soft_end_time:  # uniform on {t_b, ..., t_{n−1}}
            t_end = t_b + (torch.rand(t_b.shape, device=t_b.device) * (t_prev - t_b + 1)).long().clamp(max=t_prev - t_b)
        x_t = q_sample(x0, t_n, noise, bb.alphas_cumprod)
        student, x0_hat = self.ddim_map(bb.unet, x_t, t_n, t_end, cond)
        with torch.no_grad():
            x_prev = teacher_solver_step(bb, self.teacher_unet, x_t, t_n, t_prev, cond, uncond, hp.teacher_guidance_scale)
            mapped, _ = self.ddim_map(self.sampling_unet, x_prev, t_prev.clamp(min=0), t_end, cond)
            at_end = append_dims(t_prev == t_end, x0.ndim)  # Φ(x, s → s) = x; also covers t_{n−1} = −1
            target = torch.where(at_end, x_prev, mapped)
        return student, x0_hat, target, t_end

    # -- training ------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        bb, hp = self.backbone, self.hparams
        opts = self.optimizers()
        opt_g, opt_d = (opts if isinstance(opts, list) else (opts, None))
        # 1. the current stage's k; data, prompt and empty-prompt embeddings
        k = self.advance_stage()
        x0 = bb.batch_to_x0(batch).float()
        cond = bb.batch_to_cond(batch)
        uncond = empty_prompt_cond(bb, cond)
        # 2. t_n on the solver grid; student and target mapped to its segment boundary (teacher's DDIM step between)
        t_n, _ = solver_grid_pairs(x0.shape[0], bb.num_train_timesteps, hp.num_ddim_timesteps, x0.device)
        student, x0_hat, target, t_end = self.consistency_pair(x0, torch.randn_like(x0), t_n, cond, uncond, k)
        losses = {"consistency": mse(student, target)}
        loss = losses["consistency"]
        # 3. optional adversarial term on the student's boundary sample
        adv_weight = self.adv_weights[int(self.stage)] if self.adv_weights else 0.0
        if adv_weight:
            losses["adv"] = g_loss_softplus(self.discriminator(student, t_end.clamp(min=0), cond))
            loss = loss + adv_weight * losses["adv"]
        # 4. optional reward feedback (ReFL) on the student's x̂0 at a late timestep
        loss = loss + self.feedback.add(losses, bb, x0, cond, batch.get("prompt"), lambda x, t, c: bb.denoise(bb.unet, x, t, c)[0])
        # 5. generator step, then the EMA target
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_gradients(opt_g, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()
        self.lr_schedulers().step()
        self.update_target()
        # 6. discriminator step: real q(x_{t_e} | x0) against the (detached) student sample
        if adv_weight:
            real = q_sample(x0, t_end, torch.randn_like(x0), bb.alphas_cumprod)
            t_d = t_end.clamp(min=0)
            d_real, d_fake = d_loss_softplus(self.discriminator(real, t_d, cond), self.discriminator(student.detach(), t_d, cond))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_real + d_fake)
            opt_d.step()
            losses.update(d_real=d_real, d_fake=d_fake)
        self.count_images(x0.shape[0])
        self.log_losses(losses, x0.shape[0])
        self.log("train/segments", float(k), on_step=True, on_epoch=False, batch_size=x0.shape[0])

    def configure_optimizers(self):
        student = super().configure_optimizers()
        if not self.adv_weights:
            return student
        opt_d = torch.optim.AdamW(self.discriminator.parameters(), lr=self.hparams.disc_lr, betas=tuple(self.hparams.betas))
        return [student["optimizer"], opt_d], [student["lr_scheduler"]]

    # -- sampling ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, noise, prompts, steps, generator=None, t_start=None):
        """DDIM on the trailing grid (last step to the clean sample); TCD's γ-step when sample_eta > 0; from
        `t_start` for image-to-image. Under `control()` the same steps with the teacher's CFG x̂0, ε̂ at
        `teacher_guidance_scale`."""
        bb, eta = self.backbone, self.hparams.sample_eta
        start = bb.num_train_timesteps - 1 if t_start is None else t_start
        timesteps = trailing_timesteps(steps, start + 1).tolist() + [-1]
        cond = bb.encode_prompts(prompts)
        x = noise.float()
        for t, t_next in zip(timesteps[:-1], timesteps[1:]):
            stochastic = eta > 0 and t_next >= 0
            s = math.floor((1 - eta) * t_next) if stochastic else t_next
            x0_hat, eps_hat = self.sampling_denoise(x, torch.full((x.shape[0],), t, device=x.device), cond)
            x = ddim_step(x0_hat, eps_hat, s, bb.alphas_cumprod)
            if stochastic:
                x = q_step(x, s, t_next, sampling_noise(x, generator), bb.alphas_cumprod)
        return x
