"""Per-t error of a trained consistency model (LCM or TSCD) on the points testbed, against the teacher's ODE.

    python benchmarks/consistency_per_t.py runs/lcm_points/checkpoints/last.ckpt [--n 2000] [--solver-steps 500]

x_T ~ N(0, I) is carried down by the teacher's deterministic DDIM chain (`--solver-steps` steps over [T−1, −1]), so
x_t at each probed t lies on the teacher's ODE trajectory whose end x0_ode is the chain's output. Per t it prints
- `err`: mean ‖f(x_t, t) − x0_ode‖ — how far the model's one-jump answer from x_t is from the ODE solution (LCM:
  its consistency function f of LCM eq. 9 with the sampling network; TSCD: Φ(x_t, t → −1) = the sampling network's
  x̂0, i.e. its final model);
- `residual` (LCM only): mean ‖f_θ(x_t, t) − f_θ⁻(x̂_{t−k}, t−k)‖ with x̂_{t−k} the teacher's guided DDIM step, the
  quantity the consistency loss drives to zero (k = T / num_ddim_timesteps, t−k clamped at 0 as in training);
- `ed`: the energy distance of f(x_t, t) to the held-out points of each prompt (averaged over prompts), which is
  what a sampler whose last step is taken at t scores when its x_t follows the ODE marginal;
- `teacher`: the same two for the teacher's own x̂0(x_t, t) (a posterior mean, not a sample).
"""

from __future__ import annotations

import argparse

import torch

from fastgen.core import ddim_step, lcm_solver_grid
from fastgen.eval.evaluator.checkpoint import method_from_checkpoint
from fastgen.eval.metrics.points import energy_distance
from fastgen.methods.consistency_distillation import empty_prompt_cond, teacher_solver_step
from fastgen.methods.lcm import LCM


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--solver-steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    method, dm, _ = method_from_checkpoint(args.ckpt)
    bb = method.backbone
    T = bb.num_train_timesteps
    prompts = dm.eval_prompts(args.n, 0)
    labels = dm.labels_of(prompts)
    cond = bb.encode_prompts(prompts)
    reference, reference_labels = dm.points("heldout")

    def ed(x):
        ks = labels.unique().tolist()
        return sum(energy_distance(x[labels == k], reference[reference_labels == k]) for k in ks) / len(ks)

    is_lcm = isinstance(method, LCM)
    grid = lcm_solver_grid(T, method.hparams.num_ddim_timesteps).flip(0).tolist()
    probes = [t for t in grid if t in (999, 759, 499, 259, 139, 99, 59, 39, 19)] or grid[:: max(1, len(grid) // 8)]
    chain = torch.linspace(T - 1, -1, args.solver_steps + 1).round().long().unique_consecutive().tolist()
    chain = sorted(set(chain) | set(probes), reverse=True)
    x = torch.randn(args.n, *bb.sample_shape, generator=torch.Generator().manual_seed(args.seed))
    states = {}
    with torch.no_grad():
        for t, s in zip(chain[:-1], chain[1:]):
            if t in probes:
                states[t] = x.clone()
            x0, eps = bb.denoise(method.teacher_unet, x, torch.full((args.n,), t), cond)
            x = ddim_step(x0, eps, s, bb.alphas_cumprod)
        ode = x
        print(f"teacher ODE ({len(chain) - 1} DDIM steps): ed {ed(ode):.4f}")
        if is_lcm:
            w_emb = method.guidance_embedding(torch.full((args.n,), float(method.sample_guidance)))
            uncond = empty_prompt_cond(bb, cond)
            k = T // method.hparams.num_ddim_timesteps
        for t in probes:
            x_t, t_b = states[t], torch.full((args.n,), t)
            teacher_x0, _ = bb.denoise(method.teacher_unet, x_t, t_b, cond)
            line = f"t={t:4d}"
            if is_lcm:
                f = method.consistency(method.sampling_unet, x_t, t_b, cond, w_emb)
                t_prev = (t_b - k).clamp(min=0)
                x_prev = teacher_solver_step(bb, method.teacher_unet, x_t, t_b, t_prev, cond, uncond,
                                             float(method.sample_guidance))
                target = method.consistency(method.sampling_unet, x_prev, t_prev, cond, w_emb)
                line += f"  residual {(f - target).norm(dim=1).mean():.4f}"
            else:
                f, _ = bb.denoise(method.sampling_unet, x_t, t_b, cond)
            line += (f"  err {(f - ode).norm(dim=1).mean():.4f}  ed {ed(f):.4f}"
                     f"  | teacher x̂0: err {(teacher_x0 - ode).norm(dim=1).mean():.4f}  ed {ed(teacher_x0):.4f}")
            print(line)


if __name__ == "__main__":
    main()
