"""DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095): the multi-step baseline every method is compared with.

Sampling only, on the *same teacher* the methods distil from, with classifier-free guidance, through
diffusers' `DPMSolverMultistepScheduler` configured explicitly: order 2, `dpmsolver++`, midpoint,
lower-order final step, final sigma zero, `linspace` timestep spacing (so 1 step starts at t = 999;
`from_config` would inherit `leading`, which starts 1 step at t = 500). No thresholding.

`algorithm_type="sde-dpmsolver++"` is the stochastic variant (SDE-DPM-Solver++(2M): the same data-prediction
multistep update plus fresh noise each step, drawn from the caller's generator). Fresh noise corrects the
trajectory errors a small teacher accumulates along the deterministic ODE (the MNIST teacher's rows:
benchmarks/RESULTS.md). At 1 step both are the same update.
"""

from __future__ import annotations

import torch

from fastgen.core import classifier_free_guidance, randn_per_sample
from fastgen.methods.base import FewStepMethod

SOLVERS = {"dpmsolver++": "dpm_solver", "sde-dpmsolver++": "dpm_solver_sde"}  # algorithm_type -> leaderboard name
DPM_SOLVER_CONFIG = dict(
    solver_order=2,
    solver_type="midpoint",
    lower_order_final=True,
    final_sigmas_type="zero",
    timestep_spacing="linspace",
    thresholding=False,
)


def guided_model_output(backbone, unet, x_t, t, cond, uncond, guidance_scale: float) -> torch.Tensor:
    """The UNet's raw output (eps or v) with classifier-free guidance; one batched forward of 2B when guided."""
    dtype = next(unet.parameters()).dtype
    if guidance_scale > 1.0:
        t2 = torch.cat([t, t]) if t.ndim else t  # a per-sample timestep batch doubles with the inputs
        out = unet(torch.cat([x_t, x_t]).to(dtype), t2, encoder_hidden_states=torch.cat([cond, uncond]).to(dtype)).sample
        out_c, out_u = out.float().chunk(2)
        return classifier_free_guidance(out_c, out_u, guidance_scale)
    return unet(x_t.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample.float()


@torch.no_grad()
def dpm_solver_sample(backbone, unet, noise, prompts, steps: int, guidance_scale: float,
                      algorithm_type: str = "dpmsolver++", generator=None, t_start: int | None = None) -> torch.Tensor:
    """Run DPM-Solver++ (`algorithm_type` in SOLVERS) for `steps` steps from `noise`; returns x0 in model space.

    The SDE variant draws its per-step noise from `generator` (one per sample, one, or None: `randn_per_sample`).
    `t_start` (image-to-image) lays the `linspace` grid over [0, t_start] instead of [0, T − 1]."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        **backbone.schedule, prediction_type=backbone.prediction_type, algorithm_type=algorithm_type,
        **DPM_SOLVER_CONFIG,
    )
    if t_start is None:
        scheduler.set_timesteps(steps, device=noise.device)
    else:  # linspace spacing's own rule, linspace(0, T − 1, N + 1) rounded, with t_start for T − 1
        grid = torch.linspace(0, t_start, steps + 1, dtype=torch.float64).round().long().flip(0)[:-1]
        if len(set(grid.tolist())) < steps:
            raise ValueError(f"{steps} steps do not fit below the start time {t_start}: lower steps or raise strength")
        scheduler.set_timesteps(timesteps=grid.tolist(), device=noise.device)
    cond = backbone.encode_prompts(prompts)
    uncond = backbone.encode_prompts([""]).expand_as(cond) if guidance_scale > 1.0 else None
    stochastic = algorithm_type.startswith("sde-")
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        t_batch = t.expand(x.shape[0])
        out = guided_model_output(backbone, unet, x, t_batch, cond, uncond, guidance_scale)
        variance_noise = randn_per_sample(x.shape, generator, x.device) if stochastic else None
        x = scheduler.step(out, t, x, variance_noise=variance_noise).prev_sample
    return x


class DPMSolverBaseline(FewStepMethod):
    """DPM-Solver++ (`algorithm_type` in SOLVERS) with CFG on a teacher: no training, any number of steps. The teacher
    is the backbone's UNet (`method=dpm_solver`), or `teacher`, a distilled method's frozen `teacher_unet` (the
    evaluation's baseline rows, fastgen.eval.evaluator.baseline): both share one baseline cache, keyed by the teacher's weights."""

    name = "dpm_solver"

    def __init__(self, backbone, guidance_scale: float = 7.5, algorithm_type: str = "dpmsolver++", teacher=None):
        if algorithm_type not in SOLVERS:
            raise ValueError(f"method.algorithm_type={algorithm_type!r} is not one of {list(SOLVERS)}")
        super().__init__(backbone)
        self.save_hyperparameters(ignore=["backbone", "teacher"])
        self.name = SOLVERS[algorithm_type]
        self.guidance_scale = self.teacher_guidance_scale = float(guidance_scale)
        self.teacher_unet = (backbone.unet if teacher is None else teacher).requires_grad_(False).eval()

    def sample(self, noise, prompts, steps, generator=None, t_start=None):
        return dpm_solver_sample(self.backbone, self.teacher_unet, noise, prompts, steps, self.guidance_scale,
                                 self.hparams.algorithm_type, generator, t_start=t_start)
