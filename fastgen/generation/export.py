"""Export a trained method to diffusers: a `StableDiffusionPipeline` folder whose scheduler reproduces the method's
sampler, the UNet alone, or its LoRA in the format `load_lora_weights` reads.

Schedulers (each reproduces `method.sample` step for step; tests/test_export.py checks the images):
- UFOGen: `LCMScheduler` with `original_inference_steps` = T (so N steps are the trailing grid for N dividing T)
  and a timestep scaling so large that c_skip = 0 and c_out = 1: each step takes x̂0 and, except at the last step,
  re-noises it to the next time with fresh noise from the pipeline's generator — UFOGen's multistep sampler.
- LCM / LCM-LoRA: `LCMScheduler` with the method's solver grid (`original_inference_steps` = num_ddim_timesteps)
  and timestep scaling; the full LCM embeds ω = guidance_scale − 1 as diffusers' pipelines do.
- TSCD (sample_eta = 0): `DDIMScheduler` on the trailing grid with `set_alpha_to_one` (the last step ends at the
  clean sample, as fastgen's DDIM does).
- DPM-Solver++ baseline and the teacher: `DPMSolverMultistepScheduler` with the evaluation's settings, CFG in the
  pipeline's own `guidance_scale`.
Not exportable as a pipeline (one line says so; `format=unet` works): DDGAN / SIDDM (their generator takes a fresh
latent z each step, which StableDiffusionPipeline cannot feed) and TSCD with sample_eta > 0 (TCDScheduler ends at
t = 0, fastgen's sampler at the clean sample). `fastgen_export.json` in the folder records the call arguments
(`num_inference_steps`, `guidance_scale`) that reproduce fastgen's sampler.

TSCD's unified model (`method.unified_eta`, rows `tscd@unified`): `format=lora` also writes `scheduler/` — the stock
`TCDScheduler` grid (`original_inference_steps` = the method's num_ddim_timesteps, 50) — and `fastgen_export.json`
with the call (`eta`, `guidance_scale` 0): `pipe.load_lora_weights(DIR)`, `pipe.scheduler =
TCDScheduler.from_pretrained(DIR, subfolder="scheduler")`, `pipe(prompt, num_inference_steps=N, **call)` gives the
`tscd@unified` rows' images; `format=pipeline row=@unified` writes the same as one pipeline folder (LoRA fused).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from torch import nn

from fastgen.core.files import atomic_path, write_text_atomic

FORMATS = ("pipeline", "unet", "lora", "controlnet")
UFOGEN_TIMESTEP_SCALING = 1.0e6  # c_skip(t) = 0.25 / ((1e6 t)^2 + 0.25) < 3e-13 for t >= 1: the step is x̂0


def sampling_unet(method) -> nn.Module:
    """The network `method.sample` runs: the consistency methods' `sampling_unet`, else the EMA generator, else the
    backbone's UNet (the DPM-Solver++ baseline)."""
    for name in ("sampling_unet", "ema_unet"):
        unet = getattr(method, name, None)
        if isinstance(unet, nn.Module):
            # a method.controlnet run's ControlledUNet: the frozen generator inside it
            return unet.unet if isinstance(getattr(unet, "controlnet", None), nn.Module) else unet
    return method.backbone.unet


def has_lora(unet: nn.Module) -> bool:
    return bool(getattr(unet, "peft_config", None))


def merged_unet(unet: nn.Module) -> nn.Module:
    """A copy of `unet` with any LoRA fused into its weights and the adapter layers removed (a plain diffusers UNet)."""
    unet = copy.deepcopy(unet)
    if has_lora(unet):
        unet.fuse_lora()
        unet.unload_lora()
    return unet.requires_grad_(False)


def pipeline_scheduler(method):
    """(diffusers scheduler reproducing `method.sample`, the pipeline call's guidance_scale), or a ValueError."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler

    from fastgen.methods.dpm_solver import DPM_SOLVER_CONFIG

    bb, name = method.backbone, method.name
    base = dict(**bb.schedule, prediction_type=bb.prediction_type)
    hp = getattr(method, "hparams", {})
    if name == "ufogen":
        return LCMScheduler(**base, original_inference_steps=bb.num_train_timesteps,
                            timestep_scaling=UFOGEN_TIMESTEP_SCALING, clip_sample=False), 0.0
    if name in ("lcm", "lcm_lora"):
        if hp.sigma_data != 0.5:
            raise ValueError(f"LCMScheduler fixes sigma_data = 0.5; this LCM used method.sigma_data={hp.sigma_data}: "
                             "export format=unet")
        scheduler = LCMScheduler(**base, original_inference_steps=hp.num_ddim_timesteps,
                                 timestep_scaling=hp.timestep_scaling, clip_sample=False)
        return scheduler, (method.sample_guidance if hp.guidance_embed_dim else 0.0)
    if name == "tscd":
        if hp.sample_eta > 0:
            raise ValueError(f"tscd with method.sample_eta={hp.sample_eta} ends at the clean sample, diffusers' "
                             "TCDScheduler at t = 0: no stock scheduler reproduces it; export format=unet or lora")
        return DDIMScheduler(**base, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False,
                             steps_offset=0), 0.0
    if name in ("dpm_solver", "diffusion"):
        return DPMSolverMultistepScheduler(**base, algorithm_type="dpmsolver++", **DPM_SOLVER_CONFIG), \
            float(method.guidance_scale)
    raise ValueError(f"{name}'s generator takes a fresh latent z at every step, which StableDiffusionPipeline cannot "
                     "feed: export format=unet and sample with fastgen.generate")


def unified_scheduler(method):
    """The TCDScheduler that samples like TSCD's `unified_sampling`: original_inference_steps = the method's
    `num_ddim_timesteps` (the stock 50), every step TCD's γ-step at eta = `unified_eta`, the last to t = 0."""
    from diffusers import TCDScheduler

    bb = method.backbone
    return TCDScheduler(**bb.schedule, prediction_type=bb.prediction_type,
                        original_inference_steps=method.hparams.num_ddim_timesteps, clip_sample=False)


def unified_call(method) -> dict:
    """The pipeline call of the `tscd@unified` rows: TCD's eta = `unified_eta`, no CFG (the student distilled it)."""
    return {"eta": float(method.hparams.unified_eta), "guidance_scale": 0.0}


def write_unified_recipe(method, out: Path) -> None:
    """Beside an exported TSCD LoRA: `scheduler/` (`unified_scheduler`) and `fastgen_export.json` with the call."""
    unified_scheduler(method).save_pretrained(out / "scheduler")
    write_text_atomic(out / "fastgen_export.json", json.dumps({
        "method": method.name, "scheduler": "TCDScheduler", "rows": f"{method.name}@unified",
        "call": unified_call(method),
        "note": "pipe.load_lora_weights(DIR); pipe.scheduler = TCDScheduler.from_pretrained(DIR, subfolder='scheduler'); "
                "pipe(prompt, num_inference_steps=N, **call) reproduces fastgen's unified sampler",
    }, indent=2) + "\n")


def export_pipeline(method, out_dir, row: str | None = None) -> Path:
    """`out_dir` as a StableDiffusionPipeline folder (LoRA fused) plus `fastgen_export.json`, written into a temporary
    folder and renamed into place; `row="@unified"`: TSCD's unified model with its TCDScheduler and eta."""
    from diffusers import StableDiffusionPipeline

    from fastgen.methods.tscd import UNIFIED

    bb = method.backbone
    if bb.vae is None:
        raise ValueError(f"{bb.name} works in pixel space (no VAE): StableDiffusionPipeline needs one; export format=unet")
    if row not in (None, UNIFIED):
        raise ValueError(f"row={row!r}: a pipeline reproduces the method's own sampler (row=null) or TSCD's unified "
                         f"model (row={UNIFIED})")
    if row == UNIFIED and not (method.name == "tscd" and method.hparams.get("unified_eta") is not None):
        raise ValueError(f"row={UNIFIED}: only a TSCD trained with method.unified_eta has unified rows, not {method.name}")
    if row == UNIFIED:
        scheduler, call = unified_scheduler(method), unified_call(method)
    else:
        scheduler, guidance = pipeline_scheduler(method)
        call = {"guidance_scale": guidance}
    tokenizer = copy.deepcopy(bb.tokenizer)
    tokenizer.model_max_length = bb.max_prompt_length  # the pipeline pads prompts to this length, as fastgen does
    pipe = StableDiffusionPipeline(vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=tokenizer,
                                   unet=merged_unet(sampling_unet(method)), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    steps = list(method.supported_steps) if method.supported_steps else None
    with atomic_path(out_dir) as tmp:
        pipe.save_pretrained(tmp)
        (tmp / "fastgen_export.json").write_text(json.dumps({
            "method": method.name, "scheduler": type(scheduler).__name__, "supported_steps": steps,
            "rows": f"{method.name}{row or ''}", "call": call, "note": "pipe(prompt, num_inference_steps=N, **call) "
            "reproduces fastgen's sampler; latents are N(0, I) at the UNet's resolution",
        }, indent=2) + "\n")
    return Path(out_dir)


def export_method(method, out_dir, fmt: str = "pipeline", row: str | None = None) -> Path:
    """Write `method`'s sampling network to `out_dir` as `fmt` (pipeline | unet | lora), or the ControlNet a
    `method.controlnet` run trained (controlnet: a ControlNetModel folder, as `<run>/controlnet`); `row`: the
    pipeline's rows (`export_pipeline`)."""
    from fastgen.methods.consistency_distillation import export_unet, save_lora
    from fastgen.methods.controlnet import controlled_networks, sampling_controlnet, save_controlnet

    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not one of {list(FORMATS)}")
    if fmt == "controlnet":
        if not controlled_networks(method):
            raise ValueError(f"{method.name} was not trained with method.controlnet: no ControlNet to export")
        return save_controlnet(sampling_controlnet(method), out_dir)
    if row is not None and fmt != "pipeline":
        raise ValueError(f"row={row!r} applies to format=pipeline only (format={fmt})")
    if fmt == "pipeline":
        return export_pipeline(method, out_dir, row)
    unet = sampling_unet(method)
    if fmt == "unet":
        return export_unet(merged_unet(unet), out_dir)
    if not has_lora(unet):
        raise ValueError(f"{method.name} trained the whole UNet (no LoRA adapter): export format=unet or pipeline, "
                         "or train with method.lora_rank=...")
    out = save_lora(unet, out_dir)
    if method.name == "tscd" and method.hparams.get("unified_eta") is not None:
        write_unified_recipe(method, out)
    return out
