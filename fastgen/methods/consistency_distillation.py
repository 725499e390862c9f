"""What the consistency-distillation methods (LCM, TSCD) share.

- `teacher_solver_step`: the frozen teacher's one DDIM step t → s with classifier-free guidance applied to
  both x̂0 and ε̂ (LCM, Luo et al. 2023, arXiv 2310.04378, eq. 8 and Alg. 1; TSCD, arXiv 2404.13686, Sec. 3.1).
- `solver_grid_pairs`: (t_{n+k}, t_n) pairs on the skipping-step DDIM solver grid.
- `ConsistencyDistillation`: the FewStepMethod base of both, which sets up the frozen teacher (`set_teacher`),
  the optional LoRA, the optional EMA target, and exports the sampling network at the end of training; its
  `control()` is the like-for-like untrained control: the teacher through the method's own sampler with CFG at
  `teacher_guidance_scale` (what the student distils), two evaluations per step unless the scale is 1.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fastgen.core import append_dims, classifier_free_guidance, ddim_step, lcm_solver_grid, randn_per_sample
from fastgen.methods.base import FewStepMethod
from fastgen.methods.optim import adamw_with_schedule
from fastgen.methods.sharding import whole_network
from fastgen.networks.builders import DTYPES
from fastgen.networks.lora import LCM_LORA_TARGETS, add_lora, export_unet, save_lora


def torch_dtype(name: str) -> torch.dtype:
    """The frozen teacher's dtype: `fp32`, or `bf16`/`fp16` to halve its memory and time."""
    if name not in DTYPES:
        raise ValueError(f"method.teacher_dtype={name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


@torch.no_grad()
def guided_denoise(backbone, unet, x_t, t, cond, uncond, guidance_scale):
    """(x̂0^w, ε̂^w): `unet`'s prediction with classifier-free guidance on both (LCM eq. 8).

    `guidance_scale` is the CFG scale (uncond + scale·(cond − uncond); LCM's ω = scale − 1), a float or a
    per-sample tensor [B]. A scale of exactly 1 skips the unconditional pass (one evaluation instead of two).
    """
    if not torch.is_tensor(guidance_scale) and guidance_scale == 1.0:
        return backbone.denoise(unet, x_t, t, cond)
    x0, eps = backbone.denoise(unet, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]))
    scale = append_dims(torch.as_tensor(guidance_scale, device=x_t.device, dtype=x0.dtype), x_t.ndim)
    return classifier_free_guidance(*x0.chunk(2), scale), classifier_free_guidance(*eps.chunk(2), scale)


@torch.no_grad()
def teacher_solver_step(backbone, teacher, x_t, t, s, cond, uncond, guidance_scale):
    """x_s = α_s x̂0^w + σ_s ε̂^w: one DDIM step t → s of the teacher with CFG on x̂0 and ε̂ (`guided_denoise`);
    `s` = −1 returns x̂0^w."""
    x0, eps = guided_denoise(backbone, teacher, x_t, t, cond, uncond, guidance_scale)
    return ddim_step(x0, eps, s, backbone.alphas_cumprod)


def solver_grid_pairs(batch_size: int, T: int, num_ddim_timesteps: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_start, t_prev) per sample: t_start uniform on the ascending solver grid k·j − 1 (j = 1..N, k = T // N;
    [19, 39, ..., 999] for T = 1000, N = 50) and t_prev = max(t_start − k, 0), as diffusers' LCM script."""
    grid = lcm_solver_grid(T, num_ddim_timesteps).to(device)
    t_start = grid[torch.randint(0, len(grid), (batch_size,), device=device)]
    return t_start, (t_start - T // num_ddim_timesteps).clamp(min=0)


def empty_prompt_cond(backbone, like: torch.Tensor) -> torch.Tensor:
    """The empty prompt's embedding expanded to the batch of `like` (the teacher's unconditional branch)."""
    return backbone.encode_prompts([""]).to(like.dtype).expand_as(like)


def sampling_noise(like: torch.Tensor, generator=None) -> torch.Tensor:
    """Fresh N(0, I) noise shaped like `like` from `generator` (one per sample, one, or None: `randn_per_sample`)."""
    return randn_per_sample(like.shape, generator, like.device, like.dtype)


class ConsistencyDistillation(FewStepMethod):
    """Teacher, student (full or LoRA), target (EMA or none) and export, shared by LCM and TSCD."""

    sharded_networks = ("backbone.unet", "target_unet")

    def init_networks(self, teacher_guidance_scale, teacher_dtype="fp32", lora_rank=None, lora_alpha=None,
                      target_ema_decay=None, make_student=None):
        """The teacher ← frozen copy of the backbone's UNet in `teacher_dtype`, its solver step guided at
        `teacher_guidance_scale` (`set_teacher`); the student is the backbone's UNet (optionally rebuilt by
        `make_student`, optionally with a LoRA on `LCM_LORA_TARGETS`); target_unet ← its EMA copy, or None (online under no_grad)."""
        bb = self.backbone
        self.set_teacher(bb.unet, teacher_guidance_scale, torch_dtype(teacher_dtype))
        if make_student is not None:
            bb.unet = make_student(bb.unet)
        self.lora = lora_rank is not None
        if self.lora:
            add_lora(bb.unet, lora_rank, lora_alpha, LCM_LORA_TARGETS)
        self.target_ema_decay = target_ema_decay
        self.target_unet = self.make_ema(bb.unet) if target_ema_decay is not None else None

    @property
    def sampling_unet(self) -> nn.Module:
        """The network samples come from: the EMA target when there is one, else the online student."""
        return self.target_unet if self.target_unet is not None else self.backbone.unet

    # -- sampling: the student, or the like-for-like control ------------------------------------------
    control_guidance: float | None = None  # set on control(): sample the teacher with CFG at this scale

    def control(self) -> "ConsistencyDistillation":
        """The untrained control sampled like the trained method: a view (sharing every network) whose sampler
        runs the frozen teacher with classifier-free guidance at `teacher_guidance_scale` — the guided teacher
        the student distils — instead of the student (whose guidance input or LoRA is zero at init, so it
        would sample the unguided teacher). Rows: guidance = that scale, NFE = 2 per step (1 at scale 1)."""
        view = copy.copy(self)
        view.control_guidance = float(self.teacher_guidance_scale)
        view.guidance_scale = view.control_guidance
        return view

    def nfe(self, steps: int) -> int:
        """One evaluation per step (ω is an input, not CFG); the control's CFG counts twice (once at scale 1)."""
        return steps * (2 if self.control_guidance not in (None, 1.0) else 1)

    def sampling_denoise(self, x, t, cond, **student_kwargs):
        """(x̂0, ε̂) the sampler uses: the sampling network's (`student_kwargs`: its extra inputs, e.g. LCM's
        ω-embedding), or under `control()` the teacher's with CFG at `control_guidance`."""
        if self.control_guidance is None:
            return self.backbone.denoise(self.sampling_unet, x, t, cond, **student_kwargs)
        uncond = empty_prompt_cond(self.backbone, cond)
        return guided_denoise(self.backbone, self.teacher_unet, x, t, cond, uncond, self.control_guidance)

    def update_target(self) -> None:
        if self.target_unet is not None:
            self.update_ema(self.target_unet, self.backbone.unet, self.target_ema_decay)

    def configure_optimizers(self):
        """AdamW with warm-up on the student's trainable parameters (hparams lr, betas, weight_decay, warmup_steps)."""
        hp = self.hparams
        opt, sched = adamw_with_schedule(self.backbone.unet.parameters(), hp.lr, hp.betas, hp.weight_decay, hp.warmup_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_end(self):
        """Export the sampling network to `export_dir`: its LoRA (diffusers format) or the full UNet."""
        export_dir = self.hparams.get("export_dir")
        if not export_dir:
            return
        unet = whole_network(self.sampling_unet)  # gathered on rank 0 under FSDP (every rank takes part)
        if self.trainer.is_global_zero:
            (save_lora if self.lora else export_unet)(unet, export_dir)
            print(f"[fastgen] {self.name} exported to {export_dir}")
