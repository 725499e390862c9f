"""Plain diffusion training (DDPM, Ho et al. 2020, arXiv 2006.11239; eq. 14): trains the teacher.

Objective: E_{x0, t, ε} ‖ε − ε_θ(α_t x0 + σ_t ε, t, c)‖² for an eps-prediction backbone (the target
follows the backbone's prediction type: ε, v = α_t ε − σ_t x0, or x0). Prompts are replaced by the
empty prompt with probability `prompt_dropout` so classifier-free guidance works at sampling time
(Ho & Salimans 2022). The learning rate follows warmup-stable-decay (`fastgen.methods.optim`): constant
until `lr_decay_start`, then a cosine to 0 over `lr_decay_steps`. An EMA of the UNet is kept and used for sampling and export.

Loss key logged: `diffusion`. Sampling: DPM-Solver++ with CFG on the EMA UNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.core import prediction_target, q_sample
from fastgen.methods.base import FewStepMethod
from fastgen.methods.dpm_solver import dpm_solver_sample
from fastgen.methods.optim import adamw_with_schedule
from fastgen.methods.sharding import whole_network


class TeacherTraining(FewStepMethod):
    name = "diffusion"
    sharded_networks = ("backbone.unet", "ema_unet")

    def __init__(
        self,
        backbone,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 200,
        lr_decay_start: int | None = None,
        lr_decay_steps: int = 0,
        prompt_dropout: float = 0.1,
        ema_decay: float = 0.999,
        guidance_scale: float = 2.0,
        export_dir: str | None = None,
    ):
        super().__init__(backbone)
        self.save_hyperparameters(ignore=["backbone"])
        self.guidance_scale = guidance_scale
        self.ema_unet = self.make_ema(backbone.unet)

    def diffusion_target(self, x0, noise, t):
        return prediction_target(x0, noise, t, self.backbone.alphas_cumprod, self.backbone.prediction_type)

    def training_step(self, batch, batch_idx):
        bb = self.backbone
        # 1. data in model space; prompts dropped to "" for CFG
        x0 = bb.batch_to_x0(batch)
        prompts = [("" if torch.rand(()) < self.hparams.prompt_dropout else p) for p in batch["prompt"]]
        cond = bb.encode_prompts(prompts)
        # 2. forward process at a uniform timestep
        t = torch.randint(0, bb.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = q_sample(x0, t, noise, bb.alphas_cumprod)
        # 3. regress the backbone's prediction target
        out = bb.unet(x_t, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(out.float(), self.diffusion_target(x0, noise, t))
        self.count_images(x0.shape[0])
        self.log_losses({"diffusion": loss}, x0.shape[0])
        return loss

    def optimizer_step(self, *args, **kwargs):
        """The optimizer step, then the EMA: inside the training step, so the checkpoint and evaluation callbacks at
        the batch's end see the EMA of this very step."""
        super().optimizer_step(*args, **kwargs)
        self.update_ema(self.ema_unet, self.backbone.unet, self.hparams.ema_decay)

    def configure_optimizers(self):
        hp = self.hparams
        opt, sched = adamw_with_schedule(self.backbone.unet.parameters(), hp.lr, hp.betas, hp.weight_decay,
                                         hp.warmup_steps, hp.lr_decay_start, hp.lr_decay_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def sample(self, noise, prompts, steps, generator=None, t_start=None):
        return dpm_solver_sample(self.backbone, self.ema_unet, noise, prompts, steps, self.guidance_scale,
                                 generator=generator, t_start=t_start)

    def on_train_end(self):
        """Export the EMA teacher in the diffusers layout, so distillation runs load it by path."""
        if not self.hparams.export_dir:
            return
        ema_unet = whole_network(self.ema_unet)  # gathered on rank 0 under FSDP (every rank takes part)
        if self.trainer.is_global_zero:
            from fastgen.networks import save_backbone

            save_backbone(self.backbone, self.hparams.export_dir, unet=ema_unet)
            print(f"[fastgen] teacher exported to {self.hparams.export_dir}")
