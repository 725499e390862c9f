"""The DPM-Solver++ baseline next to every distilled method: the method's own teacher UNet, the same prompts,
noises and metrics, at `eval.baseline_steps`, for each solver in `eval.baseline_solvers` (`dpmsolver++`: the
ODE solver, rows `dpm_solver`; `sde-dpmsolver++`: its stochastic variant, rows `dpm_solver_sde`), evaluated
once per (teacher weights, solver, evaluation fingerprint) and cached as JSON under
`<eval.cache_dir>/baselines/`, so each run's leaderboard shows method and baseline side by side without
re-sampling 25-step CFG images every time.

A method takes part if it declares a teacher (`FewStepMethod.teacher_unet`, the frozen teacher of distillation
methods); the baseline's guidance is `eval.baseline_guidance`, else the method's declared `teacher_guidance_scale`.
The sampler is `DPMSolverBaseline` on that teacher, the class `method=dpm_solver` evaluates.
"""

import hashlib
import json
from pathlib import Path

from fastgen.core.files import write_text_atomic
from fastgen.eval.evaluator.distributed import is_rank_zero
from fastgen.eval.leaderboard.io import append_rows, leaderboard_run_ids
from fastgen.eval.evaluator.run_eval import eval_prompts, run_eval
from fastgen.methods.dpm_solver import SOLVERS, DPMSolverBaseline


def teacher_baseline(method, guidance_scale: float, algorithm_type: str = "dpmsolver++") -> DPMSolverBaseline:
    """DPM-Solver++ (`algorithm_type`, one of `eval.baseline_solvers`) with CFG at `guidance_scale` on `method`'s
    declared teacher."""
    if algorithm_type not in SOLVERS:
        raise ValueError(f"eval.baseline_solvers: {algorithm_type!r} is not one of {list(SOLVERS)}")
    if method.teacher_unet is None:
        raise ValueError(f"{type(method).__name__} declares no teacher (teacher_unet is None): it has no baseline rows")
    return DPMSolverBaseline(method.backbone, guidance_scale, algorithm_type, teacher=method.teacher_unet)


def teacher_sha256(unet):
    """sha256 over the teacher's parameters and buffers (names, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def baseline_key(teacher_hash, settings, prompts, suite, guidance, algorithm_type):
    fingerprint = {"teacher": teacher_hash, "guidance": guidance, "solver": algorithm_type,
                   "steps": list(settings.baseline_steps),
                   "num_samples": settings.num_samples, "seed": settings.seed, "prompts": prompts,
                   **suite.fingerprint()}
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def baseline_rows(method, datamodule, settings, suite, **run_kwargs):
    """The baseline's rows for `method`'s teacher, every solver (computed once, then from the cache); [] without a
    teacher."""
    teacher = method.teacher_unet
    if teacher is None or not settings.baseline_steps:
        return []
    guidance = settings.get("baseline_guidance") or method.teacher_guidance_scale
    if guidance is None:
        raise ValueError(f"{type(method).__name__} has a teacher but declares no teacher_guidance_scale (set it with "
                         "FewStepMethod.set_teacher), and eval.baseline_guidance is not set")
    prompts = eval_prompts(datamodule, settings)
    teacher_hash = teacher_sha256(teacher)
    rows = []
    for algorithm_type in settings.baseline_solvers:
        baseline = teacher_baseline(method, guidance, algorithm_type)
        key = baseline_key(teacher_hash, settings, prompts, suite, guidance, algorithm_type)
        rows += _cached_rows(baseline, f"{baseline.name}-{key[:12]}", Path(settings.cache_dir) / "baselines" /
                             f"{key[:16]}.json", datamodule, settings, suite, run_kwargs)
    return rows


def _cached_rows(baseline, run_id, cache, datamodule, settings, suite, run_kwargs):
    """`baseline`'s rows from `cache` (appended to the leaderboard if its run is not there yet), else sampled."""
    if cache.is_file():
        rows = json.loads(cache.read_text())
        if settings.leaderboard and is_rank_zero() and run_id not in leaderboard_run_ids(settings.leaderboard):
            append_rows(settings.leaderboard, rows)
        return rows
    steps_settings = settings.copy()
    steps_settings.steps = list(settings.baseline_steps)
    rows = run_eval(baseline, datamodule, steps_settings, run_id=run_id, checkpoint="teacher", suite=suite,
                    **run_kwargs)
    if is_rank_zero():
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps(rows, default=str))
    return rows
